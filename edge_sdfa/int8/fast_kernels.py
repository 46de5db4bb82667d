"""numba kernels for the int8 runtime: sparse-spike gathers and scatters, and the fused update.

Spikes are binary (or small counts) and sparse, so ``x @ w`` is a sum of the int8 weight rows
that a row of ``x`` selects, and ``x^T d`` a scatter of int8 error rows into the rows of active
inputs. What the measurements on the 2-core Zen 3 dev machine kept (2312x1000, T=10, N=128,
10% spikes; see benchmarks/step.py and the lead's report for the numbers):

- ``SpikeIndex``: one padded CSR of a layer's input spikes per forward pass (branchless fill),
  reused by the forward gather and, transposed per step (``_csc_from_csr``), by the update.
- weights/errors are re-laid as contiguous zero-padded column tiles (``_tiled``, <1 ms); rows of
  a tile are summed 8 at a time in int16 (``_sum_rows16``; a chunk of at most ``_CHUNK16``
  binary rows cannot wrap: 255 * 128 <= 32767), widened to int32; counts > 1 use int32
  products. Wide tiles won (fewer passes over the spike lists): 128 -> 13.4 ms, 1008 -> 9 ms
  per forward gather; the threads split the *rows* (forward) or the *inputs* (update), not the
  columns (9.1 -> 4.5 ms on 2 threads, against 8.0 ms when splitting columns).
- ``dense_update`` fuses ``sum_t (x_t^T delta_t) << shift_t`` (summed in int32 at the smallest
  shift when ``_int32_plan`` proves it cannot overflow), the stochastic rounding of
  ``arith.apply_update`` (the same counter-based splitmix64 draw per element), the int16 master
  update with saturation and the int8 requantisation (``arith.w8_from_master``): the int64
  gradient (18 MB) is never written to memory.
- ``neuron_run`` records the surrogate LUT index (uint8) instead of the int64 membrane, and
  ``local_deltas`` fuses the feedback projection ``e @ B`` (int32 when provably exact), the LUT
  and the per-step int8 shift.

Everything here is bit-exact with the numpy reference (``kernels.NUMPY``, ``arith``, ``net``);
inputs the kernels do not cover (other dtypes, negative or > 255 counts, shifts > 62) go to the
reference. Importing this module needs numba (the ``fast`` extra); ``kernels.get_kernels("auto")``
falls back to numpy without it. Compiled code is cached on disk (``cache=True``).
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

if not os.environ.get("NUMBA_THREADING_LAYER"):
    # numba's default OpenMP layer spins at its barriers; on a busy 2-core device (or beside
    # OpenBLAS's own spinning threads) that made an update 3x slower than one thread. The
    # workqueue layer sleeps instead (measured: 79 ms vs 300 ms per update under load).
    numba.config.THREADING_LAYER = "workqueue"

from edge_sdfa.int8 import arith
from edge_sdfa.int8.kernels import Kernels, as_i8, as_u8, matmul_int_ref, outer_acc_ref

TILE = 1024         # widest column tile (int8 columns)
_CHUNK16 = 255      # binary rows summed in int16: 255 * 128 = 32640 <= 32767 (int8 lies in [-128, 127])
_MASTER_BITS = arith.MASTER_EXTRA_BITS
_HALF = 1 << (arith.MASTER_EXTRA_BITS - 1)
_DECAY_BITS = arith.DECAY_BITS
_DELTA_BITS = arith.DELTA_BITS
_SG_LUT = np.ascontiguousarray(arith.SG_LUT, dtype=np.int64)
_SG_HALF = arith.SG_RANGE << arith.SG_RES_BITS
assert 2 * _SG_HALF <= 256  # the LUT index fits uint8

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


# ---------------------------------------------------------------------------------------------
# sparse structure of the spikes


@njit(cache=True, parallel=True)
def _csr(x):
    """Rows of x[R, K] (uint8) as a padded CSR: row r's nonzeros are idx[starts[r]:ends[r]]
    (column, int32) with values val[...] (uint8; not filled when every nonzero is 1); and
    whether every nonzero is 1. Each row has one spare slot, so the branchless fill of one row
    never writes into the next (rows are filled in parallel)."""
    r_n, k_n = x.shape
    counts = np.zeros(r_n, np.int64)
    vmax = np.zeros(max(r_n, 1), np.uint8)
    for r in prange(r_n):
        c = 0
        mx = np.uint8(0)
        for k in range(k_n):
            v = x[r, k]
            c += v != 0
            mx = max(mx, v)
        counts[r] = c
        vmax[r] = mx
    binary = vmax.max() <= 1
    starts = np.empty(r_n, np.int64)
    total = 0
    for r in range(r_n):
        starts[r] = total
        total += counts[r] + 1
    idx = np.empty(total, np.int32)
    val = np.empty(total if not binary else 1, np.uint8)
    for r in prange(r_n):
        p = starts[r]
        if binary:
            for k in range(k_n):
                idx[p] = k
                p += x[r, k] != 0
        else:
            for k in range(k_n):
                v = x[r, k]
                idx[p] = k
                val[p] = v
                p += v != 0
    ends = starts + counts
    return starts, ends, idx, val, binary


@njit(cache=True)
def _csc_from_csr(starts, ends, idx, val, binary, t_n, n_n, k_n):
    """For rows r = t * N + n: per (t, k) the samples n with a spike, as ptr[T * K + 1] into
    (sample int32, value uint8: not filled when binary)."""
    cnt = np.zeros(t_n * k_n + 1, np.int64)
    for t in range(t_n):
        base = t * k_n + 1
        for n in range(n_n):
            r = t * n_n + n
            for p in range(starts[r], ends[r]):
                cnt[base + idx[p]] += 1
    ptr = np.cumsum(cnt)
    nnz = ptr[t_n * k_n]
    pos = ptr[:-1].copy()
    smp = np.empty(nnz, np.int32)
    sval = np.empty(nnz if not binary else 1, np.uint8)
    for t in range(t_n):
        base = t * k_n
        for n in range(n_n):
            r = t * n_n + n
            for p in range(starts[r], ends[r]):
                q = pos[base + idx[p]]
                smp[q] = n
                if not binary:
                    sval[q] = val[p]
                pos[base + idx[p]] = q + 1
    return ptr, smp, sval


class SpikeIndex:
    """Sparse views of spikes ``x[T, N, K]`` (uint8): rows (for the forward gather) and, built
    from them on demand, per-step columns (for the weight-gradient scatter)."""

    def __init__(self, x3: np.ndarray):
        self.shape = x3.shape
        t_n, n_n, k_n = x3.shape
        self.starts, self.ends, self.idx, self.val, binary = _csr(x3.reshape(t_n * n_n, k_n))
        self.binary = bool(binary)
        self._csc = None

    def csc(self):
        if self._csc is None:
            t_n, n_n, k_n = self.shape
            self._csc = _csc_from_csr(self.starts, self.ends, self.idx, self.val, self.binary, t_n, n_n, k_n)
        return self._csc

    def max_per_column(self) -> int:
        """Largest number of samples that fired one input at one step."""
        ptr = self.csc()[0]
        return int(np.diff(ptr).max()) if ptr.size > 1 else 0


def spike_index(x: np.ndarray, t_steps: int, n: int) -> SpikeIndex | None:
    """The sparse index of spikes ``x`` (``[T*N, K]`` or ``[T, N, K]``), or None when x is not
    uint8-representable (negative or > 255 counts: the caller uses the reference)."""
    xu = as_u8(x)
    if xu is None or xu.size == 0:
        return None
    return SpikeIndex(xu.reshape(t_steps, n, -1))


# ---------------------------------------------------------------------------------------------
# forward: sum of selected weight rows


def _tiled(a: np.ndarray, width: int) -> np.ndarray:
    """``a[..., M]`` as zero-padded column tiles ``[n_tiles, ..., width]`` (each tile contiguous)."""
    m_n = a.shape[-1]
    n_tiles = max(1, -(-m_n // width))
    pad = np.zeros((*a.shape[:-1], n_tiles * width), a.dtype)
    pad[..., :m_n] = a
    return np.ascontiguousarray(np.moveaxis(pad.reshape(*a.shape[:-1], n_tiles, width), -2, 0))


def _blocks(n: int) -> int:
    """Parallel work items for n rows: a few per thread (balances uneven rows), at least 1."""
    return max(1, min(n, 4 * numba.get_num_threads()))


def _tile_width(m_n: int) -> int:
    """Columns per tile: one tile per thread (wider tiles mean fewer passes over the spike
    lists; measured serially on 2312x1000: 128 -> 13.4 ms, 256 -> 11.4, 512 -> 10.1, 1008 ->
    9.0 for the forward gather, 33 / 24 / 22 / 20 ms for the fused update), a multiple of 16,
    at most TILE."""
    per_thread = -(-m_n // max(1, numba.get_num_threads()))
    return max(16, min(TILE, -(-per_thread // 16) * 16))


@njit(cache=True, inline="always")
def _sum_rows16(rows, idx, a, b, acc16):
    """acc16[:] += sum_{p in [a, b)} rows[idx[p], :] (int8 rows, int16 sum, b - a <= _CHUNK16)."""
    tw = acc16.shape[0]
    p = a
    while p + 8 <= b:
        w0 = rows[idx[p]]
        w1 = rows[idx[p + 1]]
        w2 = rows[idx[p + 2]]
        w3 = rows[idx[p + 3]]
        w4 = rows[idx[p + 4]]
        w5 = rows[idx[p + 5]]
        w6 = rows[idx[p + 6]]
        w7 = rows[idx[p + 7]]
        for c in range(tw):
            acc16[c] += (((np.int16(w0[c]) + np.int16(w1[c])) + (np.int16(w2[c]) + np.int16(w3[c])))
                         + ((np.int16(w4[c]) + np.int16(w5[c])) + (np.int16(w6[c]) + np.int16(w7[c]))))
        p += 8
    if p + 4 <= b:
        w0 = rows[idx[p]]
        w1 = rows[idx[p + 1]]
        w2 = rows[idx[p + 2]]
        w3 = rows[idx[p + 3]]
        for c in range(tw):
            acc16[c] += (np.int16(w0[c]) + np.int16(w1[c])) + (np.int16(w2[c]) + np.int16(w3[c]))
        p += 4
    while p < b:
        w0 = rows[idx[p]]
        for c in range(tw):
            acc16[c] += w0[c]
        p += 1


@njit(cache=True, inline="always")
def _sum_rows(rows, idx, val, a, b, binary, acc16, acc32):
    """acc32[:] = sum_{p in [a, b)} val[p] * rows[idx[p], :], exactly."""
    tw = acc32.shape[0]
    acc32[:] = 0
    if binary:
        p0 = a
        while p0 < b:
            p1 = min(p0 + _CHUNK16, b)
            acc16[:] = 0
            _sum_rows16(rows, idx, p0, p1, acc16)
            for c in range(tw):
                acc32[c] += acc16[c]
            p0 = p1
    else:
        for p in range(a, b):
            wr = rows[idx[p]]
            v = np.int32(val[p])
            for c in range(tw):
                acc32[c] += v * wr[c]


@njit(cache=True, parallel=True)
def _gather(starts, ends, idx, val, wt, binary, n_blocks, out):
    """out[r, :] = sum_p val[p] * w[idx[p], :] over row r's nonzeros; ``wt`` = _tiled(w).
    Rows in parallel blocks (every thread reads the same weights from the shared cache; splitting
    the columns instead scaled worse: 9.1 -> 8.0 ms on 2 threads)."""
    r_n = starts.shape[0]
    n_tiles, _, tw = wt.shape
    m_n = out.shape[1]
    for bi in prange(n_blocks):
        r0 = bi * r_n // n_blocks
        r1 = (bi + 1) * r_n // n_blocks
        acc16 = np.zeros(tw, np.int16)
        acc32 = np.zeros(tw, np.int32)
        for ti in range(n_tiles):
            c0 = ti * tw
            n_c = min(tw, m_n - c0)
            rows = wt[ti]
            for r in range(r0, r1):
                _sum_rows(rows, idx, val, starts[r], ends[r], binary, acc16, acc32)
                for c in range(n_c):
                    out[r, c0 + c] = acc32[c]


# ---------------------------------------------------------------------------------------------
# weight gradient: scatter of error rows into the rows of active inputs


@njit(cache=True, inline="always")
def _row_grad(ptr, smp, val, binary, dt, shifts, use32, s_min, k, k_n, g, acc16, acc32, g32):
    """g[:] = sum_t (sum_{n active at (t, k)} val * d[t, n, tile]) << shifts[t] (int64);
    ``dt`` is one tile of the errors, [T, N, width]. With ``use32`` (the caller checked that
    sum_t (N * 128) << (shifts[t] - s_min) < 2**31) the steps are summed in int32 at s_min."""
    t_n = dt.shape[0]
    tw = g.shape[0]
    if use32:
        g32[:] = 0
        for t in range(t_n):
            a = ptr[t * k_n + k]
            b = ptr[t * k_n + k + 1]
            if a == b:
                continue
            rel = np.int32(shifts[t] - s_min)
            acc16[:] = 0
            _sum_rows16(dt[t], smp, a, b, acc16)
            for c in range(tw):
                g32[c] += np.int32(acc16[c]) << rel
        for c in range(tw):
            g[c] = np.int64(g32[c]) << s_min
        return
    g[:] = 0
    for t in range(t_n):
        a = ptr[t * k_n + k]
        b = ptr[t * k_n + k + 1]
        if a == b:
            continue
        s = shifts[t]
        if binary and b - a <= _CHUNK16:
            acc16[:] = 0
            _sum_rows16(dt[t], smp, a, b, acc16)
            for c in range(tw):
                g[c] += np.int64(acc16[c]) << s
        else:
            _sum_rows(dt[t], smp, val, a, b, binary, acc16, acc32)
            for c in range(tw):
                g[c] += np.int64(acc32[c]) << s


@njit(cache=True, parallel=True)
def _outer_steps(ptr, smp, val, binary, dt, shifts, use32, s_min, k_n, out):
    n_tiles, _, _, tw = dt.shape
    m_n = out.shape[1]
    for ti in prange(n_tiles):
        c0 = ti * tw
        n_c = min(tw, m_n - c0)
        g = np.zeros(tw, np.int64)
        acc16 = np.zeros(tw, np.int16)
        acc32 = np.zeros(tw, np.int32)
        g32 = np.zeros(tw, np.int32)
        for k in range(k_n):
            _row_grad(ptr, smp, val, binary, dt[ti], shifts, use32, s_min, k, k_n, g, acc16, acc32, g32)
            for c in range(n_c):
                out[k, c0 + c] = g[c]


def _int32_plan(index: SpikeIndex, shifts: np.ndarray) -> tuple[bool, int]:
    """(use32, s_min): whether the per-step sums of one input's error rows can be added in int32
    at the smallest shift without overflow (binary spikes, at most _CHUNK16 samples per step)."""
    if not index.binary or shifts.size == 0:
        return False, 0
    per = index.max_per_column()
    if per > _CHUNK16:
        return False, 0
    s_min = int(shifts.min())
    bound = sum((per * 128) << int(s - s_min) for s in shifts)
    return bound < (1 << 31), s_min


@njit(cache=True, inline="always")
def _splitmix64(z):
    z = z + _C0
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


@njit(cache=True, parallel=True)
def _fused_update(ptr, smp, val, binary, dt, shifts, use32, s_min, k_n, master, m, kbits, key, new_master, new_w8,
                  sat):
    """new_master = master - stochastic_round(grad * m / 2**kbits) on rows with any input spike
    (saturating at +-32767), new_w8 = arith.w8_from_master(new_master) on every row;
    sat[block] = (saturated master values, |w8| == 127 values). Input rows k in parallel blocks
    (one per ``sat`` row), every block over all column tiles: measured faster than splitting the
    columns between threads."""
    n_tiles, t_n, _, tw = dt.shape
    m_n = master.shape[1]
    # kbits == 0 draws no random bits: shift by 63 and mask to 0 (a shift by 64 is undefined)
    rshift = np.uint64(64 - kbits) if kbits > 0 else np.uint64(63)
    rmask = np.int64(-1) if kbits > 0 else np.int64(0)
    half = np.int64(_HALF)
    n_blocks = sat.shape[0]
    for bi in prange(n_blocks):
        k0 = bi * k_n // n_blocks
        k1 = (bi + 1) * k_n // n_blocks
        g = np.zeros(tw, np.int64)
        acc16 = np.zeros(tw, np.int16)
        acc32 = np.zeros(tw, np.int32)
        g32 = np.zeros(tw, np.int32)
        n_sat = 0
        n_127 = 0
        for ti in range(n_tiles):
            c0 = ti * tw
            n_c = min(tw, m_n - c0)
            for k in range(k0, k1):
                active = False
                for t in range(t_n):
                    if ptr[t * k_n + k + 1] > ptr[t * k_n + k]:
                        active = True
                        break
                if active:
                    _row_grad(ptr, smp, val, binary, dt[ti], shifts, use32, s_min, k, k_n, g, acc16, acc32, g32)
                    base = np.uint64(k * m_n + c0)
                    for c in range(n_c):
                        z = _splitmix64((base + np.uint64(c)) ^ key)
                        rb = np.int64(z >> rshift) & rmask
                        v = np.int64(master[k, c0 + c]) - ((g[c] * m + rb) >> kbits)
                        n_sat += np.int64(v > 32767) + np.int64(v < -32767)
                        v = min(max(v, -32767), 32767)
                        new_master[k, c0 + c] = v
                        q = min(max((v + half) >> _MASTER_BITS, -127), 127)
                        new_w8[k, c0 + c] = q
                        n_127 += np.int64(q == 127) + np.int64(q == -127)
                else:
                    for c in range(n_c):
                        v = np.int64(master[k, c0 + c])
                        new_master[k, c0 + c] = v
                        q = min(max((v + half) >> _MASTER_BITS, -127), 127)
                        new_w8[k, c0 + c] = q
                        n_127 += np.int64(q == 127) + np.int64(q == -127)
        sat[bi, 0] = n_sat
        sat[bi, 1] = n_127


# ---------------------------------------------------------------------------------------------
# neuron dynamics and local errors (arith.neuron_step_int, arith.surrogate_q, arith.to_int8_dynamic)


@njit(cache=True, parallel=True)
def _neuron_run(cur, kind, decay_input, soft, vth, vr, decay, hs, spikes, want, sg_shift, sgi):
    """kind 0 = LIF, 1 = IF; v starts at vr; steps in order. ``want``: 0 nothing, 1 h into hs,
    2 the surrogate LUT index of h - vth into sgi (uint8)."""
    t_n, n_n, m_n = cur.shape
    half = _SG_HALF
    for n in prange(n_n):
        v = np.full(m_n, vr, np.int64)
        for t in range(t_n):
            for c in range(m_n):
                vc = v[c]
                x = np.int64(cur[t, n, c])
                if kind == 0:
                    if decay_input:
                        h = vc + (((x - (vc - vr)) * decay) >> _DECAY_BITS)
                    else:
                        h = vc - (((vc - vr) * decay) >> _DECAY_BITS) + x
                else:
                    h = vc + x
                s = h >= vth
                if soft:
                    v[c] = h - vth * np.int64(s)
                else:
                    v[c] = vr if s else h
                spikes[t, n, c] = s
                if want == 1:
                    hs[t, n, c] = h
                elif want == 2:
                    d = h - vth
                    i = (d >> sg_shift) if sg_shift >= 0 else (d << -sg_shift)
                    sgi[t, n, c] = min(max(i, -half), half - 1) + half


@njit(cache=True, parallel=True)
def _local_deltas(h, from_index, e, b, project, vth, sg_shift, lut, deltas, shifts):
    """delta_t = to_int8_dynamic(g_t * surrogate_q(h_t)) for every step t, with g = e @ b (int64)
    when ``project``, else g = e. ``e`` is [T, N, C] or [1, N, C] (the same error at every
    step). With ``from_index``, ``h`` holds the LUT index (uint8) instead of the membrane."""
    t_n, n_n, m_n = h.shape
    half = lut.shape[0] // 2
    n_cls = e.shape[2]
    for t in prange(t_n):
        raw = np.empty((n_n, m_n), np.int64)
        gr = np.empty(m_n, e.dtype)  # int32 when the caller proved C * max|e| * 128 < 2**31
        et = e[t] if e.shape[0] > 1 else e[0]
        mx = np.int64(0)
        for n in range(n_n):
            if project:
                gr[:] = 0
                for j in range(n_cls):
                    ej = et[n, j]
                    for c in range(m_n):
                        gr[c] += ej * b[j, c]
            else:
                for c in range(m_n):
                    gr[c] = et[n, c]
            for c in range(m_n):
                if from_index:
                    i = np.int64(h[t, n, c])
                else:
                    d = np.int64(h[t, n, c]) - vth
                    i = (d >> sg_shift) if sg_shift >= 0 else (d << -sg_shift)
                    i = min(max(i, -half), half - 1) + half
                r = np.int64(gr[c]) * lut[i]
                raw[n, c] = r
                mx = max(mx, abs(r))
        bits = 0
        while bits < 64 and (mx >> bits) > 0:
            bits += 1
        sh = max(0, bits - _DELTA_BITS)
        shifts[t] = sh
        if sh == 0:
            for n in range(n_n):
                for c in range(m_n):
                    deltas[t, n, c] = raw[n, c]
        else:
            rnd = np.int64(1) << (sh - 1)
            for n in range(n_n):
                for c in range(m_n):
                    deltas[t, n, c] = min(max((raw[n, c] + rnd) >> sh, -127), 127)


def neuron_run(neuron, const: dict, cur: np.ndarray, want_h: bool = True, sg_exp: int | None = None):
    """Spikes (uint8) and, with ``want_h``, membranes h (int64) of ``cur[T, N, M]`` from rest:
    the same integers as stepping ``arith.neuron_step_int``. With ``sg_exp`` (the layer's weight
    exponent) the second result is instead the surrogate LUT index of ``h - vth`` (uint8, what
    ``local_deltas`` needs; 8x smaller than h)."""
    if cur.dtype not in (np.int32, np.int64):
        cur = cur.astype(np.int64)
    cur = np.ascontiguousarray(cur)
    spikes = np.empty(cur.shape, np.uint8)
    want = 0 if not want_h else (2 if sg_exp is not None else 1)
    hs = np.empty(cur.shape if want == 1 else (1, 1, 1), np.int64)
    sgi = np.empty(cur.shape if want == 2 else (1, 1, 1), np.uint8)
    sg_shift = (sg_exp if sg_exp is not None else 0) - arith.SG_RES_BITS
    _neuron_run(cur, 0 if neuron.kind == "lif" else 1, bool(neuron.decay_input), neuron.v_reset is None,
                np.int64(const["vth"]), np.int64(const["vreset"]), np.int64(const["decay"]), hs, spikes, want,
                np.int64(sg_shift), sgi)
    return spikes, (hs if want == 1 else sgi if want == 2 else None)


def local_deltas(h: np.ndarray, e: np.ndarray, vth: int, exp: int, b: np.ndarray | None = None,
                 from_index: bool = False):
    """(int8 deltas [T, N, M], shifts [T]) as ``net.local_deltas`` computes them from the
    projected error ``g = e @ b`` (``b`` given: a hidden layer's int8 feedback) or ``g = e``.
    With ``from_index``, ``h`` is ``neuron_run``'s surrogate LUT index instead of the membrane."""
    if not from_index:
        h = np.ascontiguousarray(h, dtype=np.int64)
    if e.ndim == 3 and e.shape[0] == h.shape[0] and e.shape[0] > 1 and e.strides[0] == 0:
        e = e[:1]  # the same error at every step (exact mode): do not materialise it
    project = b is not None
    e_max = int(np.abs(e).max()) if e.size else 0
    b_max = int(np.abs(b.astype(np.int64)).max()) if project and b.size else 1
    small = e.shape[-1] * e_max * b_max < (1 << 31) if project else e_max < (1 << 31)
    dt = np.int32 if small else np.int64  # int32 products vectorise; int64 ones are emulated on AVX2
    e = np.ascontiguousarray(e, dtype=dt)
    bb = np.ascontiguousarray(b, dtype=dt) if project else np.zeros((1, 1), dt)
    deltas = np.empty(h.shape, np.int8)
    shifts = np.zeros(h.shape[0], np.int64)
    if h.size:
        _local_deltas(h, from_index, e, bb, project, np.int64(vth), np.int64(exp - arith.SG_RES_BITS), _SG_LUT,
                      deltas, shifts)
    return deltas, shifts


# ---------------------------------------------------------------------------------------------
# the public kernels


def matmul_index(index: SpikeIndex, w: np.ndarray, small: bool = False) -> np.ndarray:
    """Exact ``x @ w`` (int64 [T*N, M]) for the spikes of ``index`` and int8 ``w[K, M]``; with
    ``small``, int32 when every sum provably fits (K * 255 * 128 < 2**30)."""
    wi = as_i8(w)
    t_n, n_n, k_n = index.shape
    if wi is None or wi.ndim != 2 or wi.shape[0] != k_n:
        raise ValueError(f"matmul_index: weights {w.shape} {w.dtype} do not fit spikes {index.shape}")
    dtype = np.int32 if small and k_n * 255 * 128 < (1 << 30) else np.int64
    out = np.empty((t_n * n_n, wi.shape[1]), dtype)
    if out.size:
        width = max(16, min(TILE, -(-wi.shape[1] // 16) * 16))  # one tile: threads split the rows
        _gather(index.starts, index.ends, index.idx, index.val, _tiled(wi, width), index.binary, _blocks(out.shape[0]),
                out)
    return out


def matmul_int(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``x @ w`` (int64) for spikes/counts ``x[R, K]`` and int8 ``w[K, M]``."""
    xu, wi = as_u8(x), as_i8(w)
    if xu is None or wi is None or x.ndim != 2 or w.ndim != 2:
        return matmul_int_ref(x, w)
    if xu.shape[1] != wi.shape[0]:
        raise ValueError(f"matmul_int: shapes {x.shape} and {w.shape} do not align")
    if xu.size == 0:
        return np.zeros((xu.shape[0], wi.shape[1]), np.int64)
    return matmul_index(SpikeIndex(xu[None]), wi)


def outer_acc_steps(x: np.ndarray, d: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``sum_t (x_t^T d_t) << shift_t`` (int64 [K, M]) for x[T, R, K] and int8 d[T, R, M]."""
    shifts = np.asarray(shifts, dtype=np.int64)
    if (shifts < 0).any():
        raise ValueError("negative shift")
    xu, di = as_u8(x), as_i8(d)
    if xu is None or di is None or x.ndim != 3 or d.ndim != 3 or (shifts > 62).any():
        from edge_sdfa.int8.net import outer_acc_steps_ref
        return outer_acc_steps_ref(NUMPY_FALLBACK, x, d, shifts)
    k_n = xu.shape[2]
    out = np.zeros((k_n, di.shape[2]), np.int64)
    if out.size == 0 or xu.size == 0:
        return out
    index = SpikeIndex(xu)
    ptr, smp, val = index.csc()
    use32, s_min = _int32_plan(index, shifts)
    _outer_steps(ptr, smp, val, index.binary, _tiled(di, _tile_width(di.shape[2])), shifts, use32, np.int64(s_min),
                 k_n, out)
    return out


def outer_acc(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Exact ``x.T @ d`` (int64 [K, M]) for x[R, K] and int8 d[R, M]."""
    if x.ndim != 2 or d.ndim != 2:
        return outer_acc_ref(x, d)
    if as_u8(x) is None or as_i8(d) is None:
        return outer_acc_ref(x, d)
    return outer_acc_steps(x[None], d[None], np.zeros(1, np.int64))


def dense_update(x: np.ndarray, d: np.ndarray, shifts: np.ndarray, master: np.ndarray, m: int, k: int,
                 key: int, index: SpikeIndex | None = None):
    """The fused dense update, equal to the reference sequence in ``net.sdfa_update``::

        grad = outer_acc_steps(x, d, shifts)
        rows = inputs that fired at any step in any sample
        master, sat = arith.apply_update(master, grad, m, k, key, rows)
        w8 = arith.w8_from_master(master); sat_w8 = count(|w8| == 127)

    ``index`` is the forward pass's ``SpikeIndex`` of x (built here when None). Returns
    ``(master, w8, sat, sat_w8)``, or None when the inputs need the reference path."""
    shifts = np.asarray(shifts, dtype=np.int64)
    di = as_i8(d)
    if (di is None or x.ndim != 3 or d.ndim != 3 or master.dtype != np.int16
            or master.ndim != 2 or (shifts < 0).any() or (shifts > 62).any()
            or not 0 <= k <= 62 or not 0 <= m < (1 << 62)):
        return None
    k_n, m_n = master.shape
    if x.shape[2] != k_n or di.shape[2] != m_n or x.shape[:2] != di.shape[:2]:
        raise ValueError(f"dense_update: shapes x{x.shape} d{d.shape} master{master.shape} do not align")
    if index is None:
        xu = as_u8(x)
        if xu is None:
            return None
        if xu.size == 0:
            w8 = arith.w8_from_master(master)
            return master.copy(), w8, 0, int(np.count_nonzero(np.abs(w8) == 127))
        index = SpikeIndex(xu)
    dt = _tiled(di, max(16, min(TILE, -(-m_n // 16) * 16)))
    sat = np.zeros((_blocks(k_n), 2), np.int64)
    new_master = np.empty_like(master)
    new_w8 = np.empty((k_n, m_n), np.int8)
    if master.size:
        ptr, smp, val = index.csc()
        use32, s_min = _int32_plan(index, shifts)
        _fused_update(ptr, smp, val, index.binary, dt, shifts, use32, np.int64(s_min), k_n,
                      np.ascontiguousarray(master), np.int64(m), np.int64(k), np.uint64(key), new_master, new_w8, sat)
    return new_master, new_w8, int(sat[:, 0].sum()), int(sat[:, 1].sum())


from edge_sdfa.int8.kernels import NUMPY as NUMPY_FALLBACK  # noqa: E402

KERNELS = Kernels("numba", matmul_int, outer_acc, outer_acc_steps, dense_update=dense_update,
                  neuron_run=neuron_run, local_deltas=local_deltas, spike_index=spike_index,
                  matmul_index=matmul_index, surrogate_index=True)
NUM_THREADS = numba.config.NUMBA_NUM_THREADS
