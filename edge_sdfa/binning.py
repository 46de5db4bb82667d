"""Events -> dense frames, vectorised (one ``np.bincount`` per sample).

``split_by="number"`` and ``"time"`` reproduce SpikingJelly's
``integrate_events_by_fixed_frames_number`` (the reference's N-MNIST / DVS / N-Caltech frames):

- number: ``di = N // T``; frame i holds events ``[i*di, (i+1)*di)``, the last frame also the rest.
- time: ``dt = (t[-1] - t[0]) // T`` (integer µs); frame i holds ``t0 + i*dt <= t < t0 + (i+1)*dt``,
  the last frame also everything later. (SpikingJelly crashes on an empty time bin; here it stays empty.)
- fixed: fixed time bins of ``bin_us`` from the first event: frame i holds
  ``t0 + i*bin_us <= t < t0 + (i+1)*bin_us``; events after T bins are dropped.

A frame is ``[2, H, W]`` with channel 0 = polarity 0 (OFF) and channel 1 = polarity 1 (ON), as in
SpikingJelly; values are event counts clipped to 255 (``mode="count"``) or 0/1 (``"binary"``).
``downsample=f`` pools f x f pixels (counts add up). Events outside the sensor are dropped.

Two implementations give identical frames: a numpy one (the reference path, always available) and,
when numba is installed, a one-pass JIT kernel that saturates in place (no temporaries; much faster
for large recordings). ``EDGE_SDFA_BINNING=numpy`` forces the numpy path.
"""
from __future__ import annotations

import os

import numpy as np

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")])
CHANNEL_EVENT_DTYPE = np.dtype([("t", "<i8"), ("channel", "<i2")])


def make_events(t, x, y, p) -> np.ndarray:
    """Structured events (t int64 µs, x, y int16, p int8)."""
    n = len(t)
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"] = t
    ev["x"] = x
    ev["y"] = y
    ev["p"] = p
    return ev


SPLIT_BY = ("number", "time", "fixed")


def frame_index(t: np.ndarray, T: int, split_by: str = "number", bin_us: int = 1000) -> np.ndarray:
    """Frame number of every event (0..T-1; ``fixed`` may give >= T, meaning dropped);
    ``t`` must be sorted for ``time`` and ``fixed``."""
    n = len(t)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if n == 0:
        return np.zeros(0, np.int64)
    if split_by == "number":
        di = n // T
        if di == 0:  # SpikingJelly: every j_l = j_r = 0 except the last frame, which gets [0, N)
            return np.full(n, T - 1, np.int64)
        idx = np.arange(n, dtype=np.int64) // di
        np.minimum(idx, T - 1, out=idx)
        return idx
    if split_by == "time":
        t = np.asarray(t, dtype=np.int64)
        t0 = int(t[0])
        dt = (int(t[-1]) - t0) // T
        bounds = t0 + dt * np.arange(1, T, dtype=np.int64)
        idx = np.searchsorted(bounds, t, side="right").astype(np.int64)
        return idx
    if split_by == "fixed":
        if bin_us < 1:
            raise ValueError(f"bin_us must be >= 1, got {bin_us}")
        t = np.asarray(t, dtype=np.int64)
        return (t - t[0]) // int(bin_us)
    raise ValueError(f"unknown split_by {split_by!r} (expected 'number', 'time' or 'fixed')")


def _finish(counts: np.ndarray, mode: str) -> np.ndarray:
    if mode == "binary":
        return (counts > 0).astype(np.uint8)
    if mode == "count":
        np.minimum(counts, 255, out=counts)
        return counts.astype(np.uint8)
    raise ValueError(f"unknown mode {mode!r} (expected 'count' or 'binary')")


_KERNEL = None


def _numba_kernel():
    """The JIT kernel, compiled on first use; None without numba or with EDGE_SDFA_BINNING=numpy."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL or None
    if os.environ.get("EDGE_SDFA_BINNING", "").lower() == "numpy":
        return None
    try:
        import numba
    except ImportError:
        _KERNEL = False
        return None

    @numba.njit(cache=True, nogil=True)
    def kernel(t, x, y, p, T, how, bin_us, H, W, P, f, h, w, binary, out):  # pragma: no cover - JIT
        n = t.shape[0]
        di = n // T
        t0 = t[0]
        dt = (t[n - 1] - t0) // T
        for i in range(n):
            xi = np.int64(x[i])
            yi = np.int64(y[i])
            pi = np.int64(p[i])
            if xi < 0 or xi >= W or yi < 0 or yi >= H or pi < 0 or pi >= P:
                continue
            if how == 2:
                fi = (t[i] - t0) // bin_us
                if fi > T - 1 or fi < 0:
                    continue
            elif how == 1:
                if dt > 0:
                    fi = (t[i] - t0) // dt
                    if fi > T - 1:
                        fi = T - 1
                    elif fi < 0:
                        fi = 0
                else:
                    fi = T - 1
            else:
                fi = i // di if di > 0 else T - 1
                if fi > T - 1:
                    fi = T - 1
            k = ((fi * P + pi) * h + yi // f) * w + xi // f
            if binary:
                out[k] = 1
            elif out[k] < 255:
                out[k] += 1
        return out

    _KERNEL = kernel
    return kernel


def events_to_frames(events: np.ndarray, sensor_hw: tuple[int, int], T: int, split_by: str = "number",
                     mode: str = "count", downsample: int = 1, polarities: int = 2,
                     backend: str = "auto", bin_us: int = 1000) -> np.ndarray:
    """Camera events -> uint8 frames ``[T, polarities, ceil(H/f), ceil(W/f)]``.

    ``backend``: ``auto`` (numba if available), ``numba`` or ``numpy``; all give the same frames.
    """
    H, W = int(sensor_hw[0]), int(sensor_hw[1])
    f = int(downsample)
    if f < 1:
        raise ValueError(f"downsample must be >= 1, got {f}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"unknown split_by {split_by!r} (expected 'number', 'time' or 'fixed')")
    if split_by == "fixed" and int(bin_us) < 1:
        raise ValueError(f"bin_us must be >= 1, got {bin_us}")
    if mode not in ("count", "binary"):
        raise ValueError(f"unknown mode {mode!r} (expected 'count' or 'binary')")
    h, w = -(-H // f), -(-W // f)
    size = polarities * h * w
    n = len(events)
    if n == 0:
        return np.zeros((T, polarities, h, w), np.uint8)
    kernel = _numba_kernel() if backend in ("auto", "numba") else None
    if backend == "numba" and kernel is None:
        raise RuntimeError("numba binning requested but numba is not available")
    if kernel is not None:
        out = np.zeros(T * size, np.uint8)
        kernel(np.ascontiguousarray(events["t"], np.int64), events["x"], events["y"], events["p"], T,
               SPLIT_BY.index(split_by), int(bin_us), H, W, polarities, f, h, w, mode == "binary", out)
        return out.reshape(T, polarities, h, w)
    fi = frame_index(events["t"], T, split_by, bin_us)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    if (x.min() < 0 or y.min() < 0 or x.max() >= W or y.max() >= H or p.min() < 0 or p.max() >= polarities
            or fi.min() < 0 or fi.max() >= T):
        keep = (x >= 0) & (x < W) & (y >= 0) & (y < H) & (p >= 0) & (p < polarities) & (fi >= 0) & (fi < T)
        x, y, p, fi = x[keep], y[keep], p[keep], fi[keep]
    if f > 1:
        x //= f
        y //= f
    # flat index = ((frame * P + p) * h + y) * w + x, computed in place
    fi *= size
    p *= h * w
    fi += p
    y *= w
    fi += y
    fi += x
    counts = np.bincount(fi, minlength=T * size)
    return _finish(counts, mode).reshape(T, polarities, h, w)


def channel_events_to_frames(times_us: np.ndarray, channels: np.ndarray, num_channels: int, T: int,
                             binning: str = "reference", max_time_us: float = 1.4e6,
                             mode: str = "count", split_by: str | None = None, bin_us: int = 1000) -> np.ndarray:
    """Channel (audio) events -> uint8 frames ``[T, num_channels]``.

    ``reference`` is the reference's SHD binning: ``np.digitize(t, linspace(0, max_time, T))``, so
    bin 0 only gets events at t < 0 (never) and events at t >= max_time (index T) are dropped.
    ``uniform``: T equal bins over ``[0, max_time)``, later events in the last bin. ``split_by``
    (number/time/fixed) overrides both with the camera data's cuts.
    """
    t = np.asarray(times_us)
    c = np.asarray(channels).astype(np.int64)
    if len(t) == 0:
        return np.zeros((T, num_channels), np.uint8)
    if split_by is not None:
        order_ok = split_by == "number" or bool(np.all(np.diff(t) >= 0))
        if not order_ok:
            o = np.argsort(t, kind="stable")
            t, c = t[o], c[o]
        b = frame_index(t.astype(np.int64), T, split_by, bin_us)
    elif binning == "reference":
        edges = np.linspace(0.0, float(max_time_us), num=T)
        b = np.digitize(t, edges).astype(np.int64)
    elif binning == "uniform":
        b = np.floor(t.astype(np.float64) * (T / float(max_time_us))).astype(np.int64)
        np.clip(b, 0, T - 1, out=b)
    else:
        raise ValueError(f"unknown binning {binning!r} (expected 'reference' or 'uniform')")
    keep = (b >= 0) & (b < T) & (c >= 0) & (c < num_channels)
    if not keep.all():
        b, c = b[keep], c[keep]
    b *= num_channels
    b += c
    counts = np.bincount(b, minlength=T * num_channels)
    return _finish(counts, mode).reshape(T, num_channels)


def rebin_frames(frames: np.ndarray, T: int, mode: str = "count") -> np.ndarray:
    """Dense frames [S, ...] -> [T, ...] by summing S/T-sized consecutive groups (``linspace`` cuts)."""
    S = frames.shape[0]
    if S == T:
        return frames
    cuts = np.linspace(0, S, T + 1).round().astype(np.int64)
    out = np.zeros((T,) + frames.shape[1:], np.int64)
    for i in range(T):
        if cuts[i + 1] > cuts[i]:
            out[i] = frames[cuts[i]:cuts[i + 1]].sum(axis=0)
    return _finish(out, mode)
