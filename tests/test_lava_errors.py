"""`--backend lava` without a usable lava-nc: one line, exit 2. Runs everywhere (needs no lava)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edge_sdfa.errors import UserError
from sim_backend.lava.backend import check_python

BLOCK_LAVA = """
import sys
sys.modules['lava'] = None          # as if lava-nc were not installed
from edge_sdfa.cli import main
main(['finetune', '--backend', 'lava', '--store', sys.argv[1], '--epochs', '0', '--json'])
"""


@pytest.mark.parametrize("version", [(3, 11), (3, 12), (3, 9)])
def test_other_pythons_are_refused_in_one_line(version):
    with pytest.raises(UserError, match=r"needs Python 3\.10"):
        check_python(version)


def test_check_python_accepts_3_10():
    check_python((3, 10))


@pytest.mark.integration
def test_cli_backend_lava_without_lava_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_LAVA, str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    if sys.version_info[:2] == (3, 10):
        assert "lava-nc" in lines[0] and "edge-sdfa[lava]" in lines[0]
    else:
        assert "Python 3.10" in lines[0]
    assert proc.stdout == ""
