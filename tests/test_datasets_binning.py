"""Event binning against a literal transcription of SpikingJelly's frame integration and the
reference's SHD binning."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_sdfa import binning
from edge_sdfa.binning import make_events

pytestmark = pytest.mark.unit


def sj_segments(t, split_by, T):
    """SpikingJelly cal_fixed_frames_number_segment_index, as written there (time: non-empty bins)."""
    N = t.size
    j_l = np.zeros(T, int)
    j_r = np.zeros(T, int)
    if split_by == "number":
        di = N // T
        for i in range(T):
            j_l[i] = i * di
            j_r[i] = j_l[i] + di
        j_r[-1] = N
    else:
        dt = (t[-1] - t[0]) // T
        idx = np.arange(N)
        for i in range(T):
            t_l = dt * i + t[0]
            t_r = t_l + dt
            mask = np.logical_and(t >= t_l, t < t_r)
            idx_masked = idx[mask]
            j_l[i] = idx_masked[0]
            j_r[i] = idx_masked[-1] + 1 if i < T - 1 else N
    return j_l, j_r


def sj_frames(ev, split_by, T, H, W):
    j_l, j_r = sj_segments(ev["t"], split_by, T)
    frames = np.zeros([T, 2, H, W])
    for i in range(T):
        frame = np.zeros([2, H * W])
        x = ev["x"][j_l[i]:j_r[i]].astype(int)
        y = ev["y"][j_l[i]:j_r[i]].astype(int)
        p = ev["p"][j_l[i]:j_r[i]]
        mask = [p == 0]
        mask.append(np.logical_not(mask[0]))
        for c in range(2):
            position = y[mask[c]] * W + x[mask[c]]
            n = np.bincount(position)
            frame[c][np.arange(n.size)] += n
        frames[i] = frame.reshape(2, H, W)
    return frames


def rand_events(rng, n, H, W, dur=300_000):
    return make_events(np.sort(rng.integers(0, dur, n)), rng.integers(0, W, n), rng.integers(0, H, n),
                       rng.integers(0, 2, n))


BACKENDS = ["numpy"] + (["numba"] if binning._numba_kernel() is not None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 3, 10, 30])
@pytest.mark.parametrize("n", [0, 5, 1000, 4321])
def test_number_matches_spikingjelly(T, n, backend):
    rng = np.random.default_rng(n + T)
    ev = rand_events(rng, n, 34, 34)
    ours = binning.events_to_frames(ev, (34, 34), T, "number", backend=backend)
    if n:
        assert np.array_equal(ours, np.minimum(sj_frames(ev, "number", T, 34, 34), 255))
    assert ours.dtype == np.uint8 and ours.shape == (T, 2, 34, 34)
    assert int(ours.sum()) == n


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [1, 4, 10])
def test_time_matches_spikingjelly(T, backend):
    rng = np.random.default_rng(T)
    ev = rand_events(rng, 5000, 128, 128)  # dense enough that no time bin is empty
    ours = binning.events_to_frames(ev, (128, 128), T, "time", backend=backend)
    assert np.array_equal(ours, np.minimum(sj_frames(ev, "time", T, 128, 128), 255))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=200), st.integers(1, 12),
       st.sampled_from(["number", "time"]), st.integers(0, 2**31))
def test_binning_conserves_events_property(ts, T, split_by, seed):
    rng = np.random.default_rng(seed)
    t = np.sort(np.asarray(ts))
    ev = make_events(t, rng.integers(0, 10, len(t)), rng.integers(0, 8, len(t)), rng.integers(0, 2, len(t)))
    fr = binning.events_to_frames(ev, (8, 10), T, split_by, backend="numpy")
    assert int(fr.sum()) == len(t)  # counts per pixel stay far below the 255 clip here
    for backend in BACKENDS:
        for mode in ("count", "binary"):
            for f in (1, 3):
                assert np.array_equal(binning.events_to_frames(ev, (8, 10), T, split_by, mode, f, backend=backend),
                                      binning.events_to_frames(ev, (8, 10), T, split_by, mode, f, backend="numpy"))
    fi = binning.frame_index(t, T, split_by)
    assert np.all(np.diff(fi) >= 0) and fi.min() >= 0 and fi.max() < T
    if split_by == "time":
        with np.errstate(all="ignore"):
            assert all(fi[np.flatnonzero(t == t[0])] == fi[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_clip_downsample_and_out_of_range(backend):
    ev = make_events([0] * 300 + [1, 2], [5] * 300 + [40, 3], [6] * 300 + [1, 3], [1] * 300 + [0, 0])
    fr = binning.events_to_frames(ev, (34, 34), 1, mode="count", backend=backend)
    assert fr[0, 1, 6, 5] == 255 and fr.sum() == 255 + 1  # (40, 1) is outside the sensor: dropped
    assert binning.events_to_frames(ev, (34, 34), 1, mode="binary", backend=backend)[0, 1, 6, 5] == 1
    ds = binning.events_to_frames(ev, (34, 34), 1, downsample=4, backend=backend)
    assert ds.shape == (1, 2, 9, 9) and ds[0, 1, 1, 1] == 255 and ds[0, 0, 0, 0] == 1


def test_shd_reference_binning():
    rng = np.random.default_rng(0)
    times_s = np.sort(rng.random(3000) * 1.45).astype(np.float32)
    units = rng.integers(0, 700, 3000)
    T = 100
    # the reference: digitize(t, linspace(0, 1.4, T)) -> sparse COO -> to_dense (duplicates add up)
    idx = np.digitize(times_s, np.linspace(0, 1.4, num=T))
    ref = np.zeros((T + 1, 700))
    np.add.at(ref, (idx, units), 1)
    ref = ref[:T]  # t >= 1.4 would index T (out of range): dropped here
    t_us = np.rint(times_s.astype(np.float64) * 1e6).astype(np.int64)
    ours = binning.channel_events_to_frames(t_us, units, 700, T)
    assert ours.shape == (T, 700) and ours[0].sum() == 0
    # identical except where rounding to whole µs moves an event across a bin edge
    diff = np.abs(ours.astype(int) - ref).sum()
    assert diff <= 2
    uni = binning.channel_events_to_frames(t_us, units, 700, T, binning="uniform")
    assert uni.sum() == 3000


def test_rebin_frames():
    fr = np.ones((10, 3), np.uint8)
    out = binning.rebin_frames(fr, 5)
    assert out.shape == (5, 3) and (out == 2).all()
    assert (binning.rebin_frames(fr, 5, "binary") == 1).all()
    assert binning.rebin_frames(fr, 10) is fr


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_bins_and_unsorted_input_is_safe(backend):
    t = np.array([100, 1100, 1999, 2100, 9000, 50_000])
    ev = make_events(t, [1, 2, 3, 4, 5, 6], [0] * 6, [1] * 6)
    fr = binning.events_to_frames(ev, (34, 34), 3, "fixed", bin_us=1000, backend=backend)
    # bins from the first event: [100, 1100), [1100, 2100), [2100, 3100); later events dropped
    assert fr[0, 1, 0].nonzero()[0].tolist() == [1]
    assert fr[1, 1, 0].nonzero()[0].tolist() == [2, 3]
    assert fr[2, 1, 0].nonzero()[0].tolist() == [4]
    assert fr.sum() == 4
    shuffled = ev[[3, 0, 5, 1, 4, 2]]  # unsorted times must never index outside the frames
    for split_by in binning.SPLIT_BY:
        a = binning.events_to_frames(shuffled, (34, 34), 3, split_by, backend=backend)
        assert a.shape == (3, 2, 34, 34) and a.sum() <= 6
        if split_by != "time":  # "time" is only defined for sorted events
            assert np.array_equal(a, binning.events_to_frames(shuffled, (34, 34), 3, split_by, backend="numpy"))
