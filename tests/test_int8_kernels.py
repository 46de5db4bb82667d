"""The kernel registry: names, the `auto` order and its fallbacks (the numba and C kernels'
bit-exactness is in test_int8_fast_kernels.py)."""
from __future__ import annotations

import sys

import pytest

from edge_sdfa.int8.kernels import NUMPY, get_kernels

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fk():
    pytest.importorskip("numba")
    from edge_sdfa.int8 import fast_kernels

    return fast_kernels


def test_get_kernels_registry(fk, monkeypatch):
    assert get_kernels("numpy") is NUMPY
    assert get_kernels("numba").name == "numba"
    assert get_kernels("auto").name in ("c", "numba")  # c where a C compiler is available
    monkeypatch.setenv("EDGE_SDFA_KERNELS", "numpy")
    assert get_kernels() is NUMPY


def test_auto_falls_back_without_numba(monkeypatch):
    from edge_sdfa.errors import MissingDependency, UserError

    import edge_sdfa.int8 as pkg
    from edge_sdfa.int8 import c_kernels

    monkeypatch.setattr(c_kernels, "_LIB", None)  # no C kernels either
    monkeypatch.setattr(c_kernels, "find_compiler", lambda: None)
    monkeypatch.setitem(sys.modules, "edge_sdfa.int8.fast_kernels", None)  # import fails
    monkeypatch.delattr(pkg, "fast_kernels", raising=False)
    assert get_kernels("auto") is NUMPY
    with pytest.raises(MissingDependency):
        get_kernels("numba")
    with pytest.raises(UserError):
        get_kernels("cuda")
