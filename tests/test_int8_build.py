"""The install-time build of the C kernel set (setup.py): it honours CC, never breaks the install,
and cross-builds for aarch64. Integration: these run the C compiler in a subprocess."""
from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EM_AARCH64 = 183


def _build(tmp_path, **env):
    lib, tmp = tmp_path / "lib", tmp_path / "tmp"
    run_env = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib), "--build-temp",
                          str(tmp), "--force"], cwd=ROOT, capture_output=True, text=True, env=run_env, timeout=600,
                         check=False)
    libs = glob.glob(str(lib / "edge_sdfa" / "int8" / "_c_kernels*"))
    return out, libs


def _elf_machine(path: str) -> int:
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_build_with_the_system_compiler_loads(tmp_path):
    out, libs = _build(tmp_path, CC=shutil.which("gcc") or shutil.which("cc"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(libs) == 1, out.stderr[-2000:]
    lib = ctypes.CDLL(libs[0])
    from edge_sdfa.int8 import c_kernels

    assert lib.esd_abi_version() == c_kernels.ABI_VERSION


def test_a_failing_compiler_leaves_a_working_install(tmp_path):
    """No compiler (or a broken one): the build step warns and succeeds, and no library ships,
    so the numpy set runs."""
    out, libs = _build(tmp_path, CC="false")
    assert out.returncode == 0, out.stderr[-2000:]
    assert libs == []
    assert "could not be built" in out.stderr + out.stdout


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 cross compiler")
def test_cross_build_for_aarch64(tmp_path):
    out, libs = _build(tmp_path, CC="aarch64-linux-gnu-gcc")
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(libs) == 1, out.stderr[-2000:]
    assert _elf_machine(libs[0]) == EM_AARCH64
