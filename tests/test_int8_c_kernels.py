"""The C int8 kernels' build, cache and fallback behaviour (their bit-exactness against the
reference is in test_int8_fast_kernels.py). Skipped when no C compiler is available."""
from __future__ import annotations

import os
import sys

import pytest

from edge_sdfa.errors import UserError
from edge_sdfa.int8.kernels import NUMPY, get_kernels

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ck():
    from edge_sdfa.int8 import c_kernels

    if c_kernels.find_compiler() is None:
        pytest.skip("no C compiler")
    try:
        c_kernels.load()
    except UserError as exc:
        pytest.skip(f"C kernels unavailable: {exc}")
    return c_kernels


# ---------------------------------------------------------------------------------------------
# registry, build cache and fallbacks


def _numba_or_numpy():
    try:
        import edge_sdfa.int8.fast_kernels as fk  # noqa: F401
        return "numba"
    except ImportError:
        return "numpy"


def test_get_kernels_registry(ck, monkeypatch):
    monkeypatch.delenv("EDGE_SDFA_KERNELS", raising=False)
    assert get_kernels("c") is ck.KERNELS
    assert get_kernels("auto") is ck.KERNELS  # c first: it builds here
    assert get_kernels() is ck.KERNELS
    monkeypatch.setenv("EDGE_SDFA_KERNELS", "numpy")
    assert get_kernels() is NUMPY
    with pytest.raises(UserError, match="numpy, numba, c or auto"):
        get_kernels("cuda")


@pytest.fixture()
def fresh(ck, monkeypatch, tmp_path):
    """c_kernels with nothing loaded and an empty cache directory."""
    monkeypatch.setattr(ck, "_LIB", None)
    monkeypatch.setattr(ck, "_INFO", {})
    monkeypatch.setenv("EDGE_SDFA_CACHE_DIR", str(tmp_path / "cache"))
    return ck


def test_no_compiler_one_line_error_and_auto_falls_back(fresh, monkeypatch):
    monkeypatch.setattr(fresh, "find_compiler", lambda: None)
    with pytest.raises(UserError) as info:
        get_kernels("c")
    assert "C compiler" in str(info.value) and "\n" not in str(info.value)
    assert get_kernels("auto").name == _numba_or_numpy()


def test_auto_falls_back_to_numpy_without_c_and_numba(fresh, monkeypatch):
    import edge_sdfa.int8 as pkg

    monkeypatch.setattr(fresh, "find_compiler", lambda: None)
    monkeypatch.setitem(sys.modules, "edge_sdfa.int8.fast_kernels", None)
    monkeypatch.delattr(pkg, "fast_kernels", raising=False)
    assert get_kernels("auto") is NUMPY


def test_failed_compile_is_remembered_for_auto(fresh, monkeypatch, tmp_path):
    import shutil

    false = shutil.which("false")
    if false is None:
        pytest.skip("no 'false' command")
    monkeypatch.setattr(fresh, "find_compiler", lambda: [false])
    calls = []
    real = fresh._compile
    monkeypatch.setattr(fresh, "_compile", lambda *a: (calls.append(1), real(*a))[1])
    with pytest.raises(UserError) as info:
        get_kernels("c")
    assert "compiling the C int8 kernels failed" in str(info.value) and "\n" not in str(info.value)
    assert len(calls) == 1
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir() if p.name.endswith(".failed")]
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert get_kernels("auto").name == _numba_or_numpy()  # silently, without compiling again
    assert len(calls) == 1
    with pytest.raises(UserError):
        get_kernels("c")  # an explicit request retries
    assert len(calls) == 2


def test_build_is_cached_and_atomic(fresh, monkeypatch, tmp_path):
    lib = fresh.load()
    cache = tmp_path / "cache"
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 1 and names[0].startswith("c_kernels-"), names
    assert fresh.info()["path"] == str(cache / names[0])
    assert lib.esd_num_threads() >= 1
    # a second process (here: a fresh module state) loads the cached library without compiling
    monkeypatch.setattr(fresh, "_LIB", None)
    monkeypatch.setattr(fresh, "_compile", lambda *a: pytest.fail("compiled twice"))
    fresh.load()


def test_damaged_cache_entry_is_rebuilt(ck, tmp_path):
    """In a fresh process (dlopen would return this process's already loaded copy)."""
    import subprocess

    env = dict(os.environ, EDGE_SDFA_CACHE_DIR=str(tmp_path))
    code = "from edge_sdfa.int8 import c_kernels as c; c.load(); print(c.info()['path'])"
    path = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    size = os.path.getsize(path)
    tmp = path + ".damaged"
    with open(tmp, "wb") as f:
        f.write(b"not a shared library")
    os.replace(tmp, path)
    code2 = ("from edge_sdfa.int8.kernels import get_kernels; import sys; "
             "print(get_kernels(sys.argv[1]).name)")
    out = subprocess.run([sys.executable, "-c", code2, "c"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "c"
    assert os.path.getsize(path) == size


def test_cache_key_depends_on_source_and_compiler(ck):
    cc = ck.find_compiler()
    k1 = ck._key(cc, b"int a;")
    assert k1 == ck._key(cc, b"int a;")
    assert k1 != ck._key(cc, b"int b;")
    assert k1 != ck._key([*cc, "-m32"], b"int a;")

