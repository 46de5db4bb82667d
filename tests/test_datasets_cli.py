"""``edge-sdfa data info|export`` end to end, in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from host_tools.datasets import synth

pytestmark = pytest.mark.integration


def run(*args):
    return subprocess.run([sys.executable, "-c", "from edge_sdfa.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_info_json_digits():
    r = run("data", "info", "digits", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("samples", "classes", "subjects", "sensor", "events_per_sample_mean"):
        assert key in info
    assert info["samples"] == 1258 and info["classes"] == 10 and info["subjects"] is None


def test_info_json_shd_and_export(tmp_path):
    synth.write_shd(str(tmp_path / "shd_train.h5"), 10, speakers=(3, 4), seed=1)
    synth.write_shd(str(tmp_path / "shd_test.h5"), 4, speakers=(9,))
    r = run("data", "info", f"shd:{tmp_path}?split=all", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["samples"] == 14 and info["subjects"] == 3 and info["sensor"] == [700]
    out = tmp_path / "user.npz"
    r = run("data", "export", f"shd:{tmp_path}?split=test", str(out), "--frames", "20", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["samples"] == 4
    with np.load(out) as z:
        assert z["x"].shape == (4, 20, 700) and z["subject"].tolist() == [9] * 4
    r = run("data", "info", f"npz:{out}", "--json")
    assert json.loads(r.stdout)["time_steps"] == 20


@pytest.mark.parametrize("spec_fmt,needle", [
    ("nmnist:{d}/nowhere", "{d}/nowhere"),
    ("shd:{d}/bad.h5", "bad.h5"),
    ("npz:{d}/bad.npz", "bad.npz"),
    ("digits?bogus=1", "unknown option 'bogus'"),
    ("mnist:{d}", "unknown data set kind"),
])
def test_errors_are_one_line_exit_2(tmp_path, spec_fmt, needle):
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    r = run("data", "info", spec_fmt.format(d=tmp_path), "--json")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle.format(d=tmp_path) in lines[0]
    assert r.stdout == ""
