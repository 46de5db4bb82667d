"""The numpy kernel set: the int8 spec as pure functions (no hooks, no dispatch).

A kernel set is a module with ``NAME`` and the layer-level entry points below; the registry
(``edge_sdfa.int8.kernels``) lists the sets, and ``edge_sdfa.int8.net`` walks the layers and calls
the chosen set. This module is the executable specification: every other set (``c_kernels``) and
backend is tested bit-exact against it (tests/test_conformance.py, tests/golden/int8/).

Entry points (shapes: T steps, N samples, K inputs, M outputs, C classes):

- ``prepare_inputs(x[T, N, K])`` -> the set's view of a layer's integer input (here the array
  itself; the C set builds a spike index once and reuses it in the forward and the update).
- ``dense_current(inputs, w8[K, M], bias[M] | None)`` -> ``cur[T, N, M]`` (int32 or int64), exact.
- ``conv_current(x[R, C, H, W], w8[O, C, k, k], bias[O] | None, stride, padding)`` -> ``cur[R, OH,
  OW, O]`` (channels last; int32 or int64), exact: ``im2col(x) @ w8`` flattened C-major like a
  torch weight, zero padding. R = T * N rows.
- ``neuron_run(neuron, const, cur[T, N, M], sg_exp)`` -> ``(spikes uint8, sg uint8 | None)``: the
  fixed-point neuron from rest over T steps (``arith.neuron_step_int``); with ``sg_exp`` (the
  layer's weight exponent) also the surrogate LUT index of every ``h - vth``.
- ``local_deltas(sg[T, N, M], e[T, N, C], b[C, M] | None)`` -> ``(deltas int8, shifts int64[T])``:
  ``g_t = e_t @ b`` (hidden layer) or ``e_t`` (output layer), ``to_int8_dynamic(g_t * LUT[sg_t])``.
- ``exact_deltas(sg[T, N, M], e[N, C], b[C, M] | None, carry int64[len(SG_LUT)])`` ->
  ``(deltas int8, shifts int64[T])``: the exact rule, ``g = e @ b`` or ``e`` once, then
  ``arith.exact_deltas(sg, g, carry)`` (BPTT through the layer's membrane, ``carry =
  arith.carry_lut(neuron)``).
- ``dense_update(inputs, deltas, shifts, master int16[K, M], m, k, key)`` ->
  ``(master, w8, saturated_master, saturated_w8)``: ``grad = sum_t (x_t^T delta_t) << shift_t``,
  ``arith.apply_update`` on the rows of active inputs, ``arith.w8_from_master``.
"""
from __future__ import annotations

import numpy as np

from edge_sdfa.int8 import arith

NAME = "numpy"


# ---------------------------------------------------------------------------------------------
# exact integer products (float BLAS where it is provably exact)


def _max_abs(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    return int(max(abs(int(a.max())), abs(int(a.min()))))


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x @ w`` (int64) for integer ``x[R, K]`` and ``w[K, M]``: float32 BLAS while every
    partial sum stays below 2**24, int64 otherwise."""
    bound = x.shape[1] * _max_abs(x) * _max_abs(w)
    if bound < arith.FLOAT_EXACT_LIMIT:
        return (x.astype(np.float32) @ w.astype(np.float32)).astype(np.int64)
    return x.astype(np.int64) @ w.astype(np.int64)


def outer_acc(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Exact ``x.T @ d`` (int64 [K, M]) for integer ``x[R, K]`` and ``d[R, M]``."""
    bound = x.shape[0] * _max_abs(x) * _max_abs(d)
    if bound < arith.FLOAT_EXACT_LIMIT:
        return (x.T.astype(np.float32) @ d.astype(np.float32)).astype(np.int64)
    return x.T.astype(np.int64) @ d.astype(np.int64)


def project(e: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``e @ b`` exactly, int64: float64 BLAS while every sum stays below 2**53 (numpy's int64
    matmul has no BLAS), int64 otherwise. A broadcast ``e`` (the same error at every step) is
    projected once and broadcast back."""
    if e.ndim == 3 and e.shape[0] > 1 and e.strides[0] == 0:
        return np.broadcast_to(project(e[0], b), (e.shape[0], e.shape[1], b.shape[1]))
    bound = e.shape[-1] * _max_abs(e) * _max_abs(b)
    if bound < (1 << 53):
        return (e.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return e.astype(np.int64) @ b.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# the entry points


def prepare_inputs(x: np.ndarray) -> np.ndarray:
    """Integer spikes or counts ``x[T, N, K]`` (the reference needs no index)."""
    return np.asarray(x)


def dense_current(inputs: np.ndarray, w8: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    t_n, n_n, k_n = inputs.shape
    cur = matmul(inputs.reshape(t_n * n_n, k_n), w8)
    if bias is not None:
        cur += bias.astype(np.int64)
    return cur.reshape(t_n, n_n, -1)


def conv_current(x: np.ndarray, w8: np.ndarray, bias: np.ndarray | None, stride: int, padding: int) -> np.ndarray:
    from edge_sdfa.ops import im2col

    cols = im2col(x, w8.shape[-1], stride, padding)
    cur = matmul(cols.reshape(-1, cols.shape[-1]), w8.reshape(w8.shape[0], -1).T)
    if bias is not None:
        cur += bias.astype(np.int64)
    return cur.reshape(*cols.shape[:3], -1)


def neuron_run(neuron, const: dict, cur: np.ndarray, sg_exp: int | None = None):
    t_n = cur.shape[0]
    v = np.full(cur.shape[1:], const["vreset"], np.int64)
    spikes = np.empty(cur.shape, np.uint8)
    sg = np.empty(cur.shape, np.uint8) if sg_exp is not None else None
    for t in range(t_n):
        h, spikes[t], v = arith.neuron_step_int(neuron, const, v, cur[t].astype(np.int64))
        if sg is not None:
            sg[t] = arith.surrogate_index(h, const["vth"], sg_exp)
    return spikes, sg


def local_deltas(sg: np.ndarray, e: np.ndarray, b: np.ndarray | None):
    g = e if b is None else project(e, b)
    t_n = sg.shape[0]
    deltas = np.empty(sg.shape, np.int8)
    shifts = np.zeros(t_n, np.int64)
    for t in range(t_n):
        deltas[t], shifts[t] = arith.to_int8_dynamic(g[t].astype(np.int64) * arith.SG_LUT[sg[t]])
    return deltas, shifts


def exact_deltas(sg: np.ndarray, e: np.ndarray, b: np.ndarray | None, carry: np.ndarray):
    g = np.asarray(e, np.int64) if b is None else project(e, b)
    return arith.exact_deltas(sg, g, carry)


def gradient(x: np.ndarray, deltas: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``sum_t (x_t^T delta_t) << shift_t``, int64 [K, M]."""
    acc = np.zeros((x.shape[-1], deltas.shape[-1]), np.int64)
    for t in range(x.shape[0]):
        if shifts[t] < 0:
            raise ValueError("negative shift")
        acc += outer_acc(x[t], deltas[t]) << int(shifts[t])
    return acc


def dense_update(inputs: np.ndarray, deltas: np.ndarray, shifts: np.ndarray, master: np.ndarray,
                 m: int, k: int, key: int):
    x = np.asarray(inputs)
    grad = gradient(x, deltas, shifts)
    rows = np.flatnonzero(x.reshape(-1, x.shape[-1]).any(axis=0))
    new_master, sat = arith.apply_update(master, grad, m, k, key, rows)
    w8 = arith.w8_from_master(new_master)
    return new_master, w8, sat, int(np.count_nonzero(np.abs(w8) == 127))
