"""Integer kernels of the int8 runtime: the numpy reference and a registry of faster variants.

``matmul_int(x, w)`` computes ``x @ w`` exactly for integer ``x[R, K]`` (spikes or counts) and int8
``w[K, M]``; ``outer_acc(x, d)`` computes ``x.T @ d`` exactly for integer ``x[R, K]`` and int8
``d[R, M]``. Both return int64. The reference uses float32 BLAS, which is exact while every
partial sum stays below 2**24 (the bound is checked, with an int64 fallback where it can't hold).
"""
from __future__ import annotations

import os

import numpy as np

from edge_sdfa.int8.arith import FLOAT_EXACT_LIMIT


def _max_abs(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return int(max(abs(int(a.max())), abs(int(a.min()))))


def matmul_int_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    bound = x.shape[1] * _max_abs(x) * _max_abs(w)
    if bound < FLOAT_EXACT_LIMIT:
        return (x.astype(np.float32) @ w.astype(np.float32)).astype(np.int64)
    return x.astype(np.int64) @ w.astype(np.int64)


def outer_acc_ref(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    bound = x.shape[0] * _max_abs(x) * _max_abs(d)
    if bound < FLOAT_EXACT_LIMIT:
        return (x.T.astype(np.float32) @ d.astype(np.float32)).astype(np.int64)
    return x.T.astype(np.int64) @ d.astype(np.int64)


class Kernels:
    """A named pair of kernels; ``numpy`` is the reference every other variant is tested against."""

    def __init__(self, name: str, matmul_int, outer_acc, outer_acc_steps=None):
        self.name = name
        self.matmul_int = matmul_int
        self.outer_acc = outer_acc
        self.outer_acc_steps = outer_acc_steps  # optional fused sum_t (x_t^T d_t) << shift_t


NUMPY = Kernels("numpy", matmul_int_ref, outer_acc_ref)


def get_kernels(name: str | None = None) -> Kernels:
    """``numpy`` (reference), ``numba`` (sparse JIT kernels, needs the 'fast' extra) or ``auto``
    (numba where importable, else numpy). ``EDGE_SDFA_KERNELS`` overrides the default."""
    name = name or os.environ.get("EDGE_SDFA_KERNELS", "auto")
    if name == "numpy":
        return NUMPY
    if name in ("numba", "auto"):
        try:
            from edge_sdfa.int8 import fast_kernels
        except ImportError:
            if name == "numba":
                from edge_sdfa.errors import MissingDependency
                raise MissingDependency("numba", "the numba int8 kernels", extra="fast") from None
            return NUMPY
        return fast_kernels.KERNELS
    from edge_sdfa.errors import UserError
    raise UserError(f"unknown kernel set {name!r} (expected numpy, numba or auto)")
