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


def as_u8(x: np.ndarray) -> np.ndarray | None:
    """x as a C-contiguous uint8 array with the same values, or None if it does not fit
    (the fast kernels then leave the work to the reference)."""
    if x.dtype == np.uint8 or x.dtype == np.bool_:
        return np.ascontiguousarray(x).view(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        return None
    if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
        return None
    return np.ascontiguousarray(x, dtype=np.uint8)


def as_i8(a: np.ndarray) -> np.ndarray | None:
    """a as a C-contiguous int8 array with the same values, or None if it does not fit."""
    if a.dtype == np.int8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        return None
    if a.size and (int(a.min()) < -128 or int(a.max()) > 127):
        return None
    return np.ascontiguousarray(a, dtype=np.int8)


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
    """A named set of kernels; ``numpy`` is the reference every other variant is tested against.

    Required: ``matmul_int`` and ``outer_acc``. Optional fused hooks (None in the reference; a
    hook may also return None for inputs it does not cover, and the caller then runs the
    reference sequence):
    - ``outer_acc_steps(x[T,R,K], d[T,R,M], shifts)``: ``sum_t (x_t^T d_t) << shift_t``, int64.
    - ``dense_update(x, d, shifts, master, m, k, key)``: the whole dense-layer update of
      ``net.sdfa_update`` (gradient, ``arith.apply_update`` on the rows of active inputs,
      ``arith.w8_from_master``), returning ``(master, w8, saturated_master, saturated_w8)``.
    """

    def __init__(self, name: str, matmul_int, outer_acc, outer_acc_steps=None, dense_update=None,
                 neuron_run=None, local_deltas=None, spike_index=None, matmul_index=None,
                 surrogate_index=False, exact_deltas=None):
        self.name = name
        self.matmul_int = matmul_int
        self.outer_acc = outer_acc
        self.outer_acc_steps = outer_acc_steps  # optional fused sum_t (x_t^T d_t) << shift_t
        self.dense_update = dense_update
        self.neuron_run = neuron_run
        self.local_deltas = local_deltas
        self.spike_index = spike_index
        self.matmul_index = matmul_index
        self.surrogate_index = surrogate_index  # neuron_run(..., sg_exp) / local_deltas(..., from_index)
        self.exact_deltas = exact_deltas  # (idx, g, carry) -> arith.exact_deltas(idx, g, carry) or None

    def __repr__(self) -> str:
        return f"Kernels({self.name!r})"


NUMPY = Kernels("numpy", matmul_int_ref, outer_acc_ref)


def get_kernels(name: str | None = None) -> Kernels:
    """``numpy`` (reference), ``numba`` (sparse JIT kernels, needs the 'fast' extra), ``c``
    (ahead-of-time compiled C kernels: a C compiler is needed once, on first use; see
    ``c_kernels``) or ``auto``: c where it builds and loads (no LLVM at run time: measured faster
    and 120 MB smaller than numba, docs/performance.md), else numba where importable, else numpy.
    A failed C build is remembered in the cache, so ``auto`` does not retry it in every process.
    ``EDGE_SDFA_KERNELS`` overrides the default."""
    name = name or os.environ.get("EDGE_SDFA_KERNELS", "auto")
    if name == "numpy":
        return NUMPY
    if name == "c":
        from edge_sdfa.int8 import c_kernels

        return c_kernels.get(retry_failed=True)  # UserError (one line) without a working compiler
    if name == "auto":
        from edge_sdfa.errors import UserError

        try:
            from edge_sdfa.int8 import c_kernels

            return c_kernels.get(retry_failed=False)
        except (UserError, ImportError, OSError):
            pass  # no compiler, a failed build or load: the next option, silently
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
    raise UserError(f"unknown kernel set {name!r} (expected numpy, numba, c or auto)")
