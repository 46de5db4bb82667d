"""The device-side user-data file (npz:PATH): round trips, validation, streaming, corrupt files."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edge_sdfa import userdata
from edge_sdfa.errors import DataError
from host_tools.datasets import describe, iter_batches, load_arrays, open_dataset
from edge_sdfa.binning import events_to_frames, make_events

pytestmark = pytest.mark.unit


def _spikes(n=12, T=5, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, T) + shape) < 0.3).astype(np.uint8), rng.integers(0, 4, n), rng.integers(0, 3, n)


def test_spikes_roundtrip(tmp_path):
    x, y, s = _spikes()
    p = str(tmp_path / "user.npz")
    userdata.save_user_data(p, y=y, x=x, subject=s)
    d = userdata.load_user_data(p)
    assert d.kind == "spikes" and np.array_equal(d.x, x) and np.array_equal(d.y, y) and np.array_equal(d.subject, s)
    x2, y2, s2 = load_arrays(f"npz:{p}")
    assert np.array_equal(x2, x) and np.array_equal(s2, s)
    x3, _, _ = load_arrays(f"npz:{p}?flatten=1&subject=1")
    assert x3.shape[1:] == (5, 12) and len(x3) == int((s == 1).sum())
    info = describe(f"npz:{p}")
    assert info["samples"] == 12 and info["subjects"] == len(set(s.tolist())) and info["time_steps"] == 5
    dev = userdata.describe(p)
    assert dev["samples"] == 12 and dev["input_shape"] == [3, 4] and dev["time_steps"] == 5
    with pytest.raises(DataError, match="T=5.*T=7"):
        load_arrays(f"npz:{p}", time_steps=7)
    with pytest.raises(DataError, match="no train/test split"):
        open_dataset(f"npz:{p}?split=test")


def test_events_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    per = [np.sort(rng.integers(0, 10000, k)) for k in (5, 0, 40)]
    evs = [make_events(t, rng.integers(0, 34, len(t)), rng.integers(0, 34, len(t)), rng.integers(0, 2, len(t)))
           for t in per]
    offsets = np.cumsum([0] + [len(e) for e in evs])
    p = str(tmp_path / "ev.npz")
    userdata.save_user_data(p, y=[1, 2, 3], events=np.concatenate(evs), offsets=offsets, sensor=(34, 34))
    ds = open_dataset(f"npz:{p}")
    assert ds.data_type == "camera" and len(ds) == 3
    for i in range(3):
        assert np.array_equal(ds[i].events, evs[i])
    x, y, s = load_arrays(f"npz:{p}", time_steps=4)
    assert x.shape == (3, 4, 2312) and s is None
    assert np.array_equal(x[2], events_to_frames(evs[2], (34, 34), 4).reshape(4, -1))
    assert describe(f"npz:{p}")["events_per_sample_mean"] == pytest.approx(15.0)


def test_validation_and_corrupt_files(tmp_path):
    x, y, s = _spikes()
    p = tmp_path / "u.npz"
    with pytest.raises(DataError, match="u.npz"):
        userdata.save_user_data(str(p), y=y[:-1], x=x)
    userdata.save_user_data(str(p), y=y, x=x, subject=s)
    raw = p.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="trunc.npz"):
        userdata.load_user_data(str(tmp_path / "trunc.npz"))
    with pytest.raises(DataError, match="trunc.npz"):
        load_arrays(f"npz:{tmp_path / 'trunc.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"hello")
    with pytest.raises(DataError, match="junk.npz"):
        userdata.load_user_data(str(tmp_path / "junk.npz"))
    with pytest.raises(DataError, match="no such user-data file: .*missing.npz"):
        userdata.load_user_data(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(DataError, match="nolabels.npz: missing array 'y'"):
        userdata.load_user_data(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "neg.npz", x=x, y=-np.ones(len(x), np.int64))
    with pytest.raises(DataError, match="neg.npz: labels"):
        userdata.load_user_data(str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "obj.npz", x=x, y=np.array([{"a": 1}] * len(x), dtype=object))
    with pytest.raises(DataError, match="obj.npz"):
        userdata.load_user_data(str(tmp_path / "obj.npz"))
    np.savez(tmp_path / "f32.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(DataError, match="f32.npz: x must be uint8"):
        userdata.load_user_data(str(tmp_path / "f32.npz"))


@pytest.mark.parametrize("compress", [False, True])
def test_streaming_batches_bounded_memory(tmp_path, compress):
    n, T, F = 1500, 20, 700  # 21 MB of spikes
    rng = np.random.default_rng(0)
    x = (rng.random((n, T, F), dtype=np.float32) < 0.05).astype(np.uint8)
    y = rng.integers(0, 20, n)
    p = str(tmp_path / "big.npz")
    userdata.save_user_data(p, y=y, x=x, compress=compress)
    del x
    tracemalloc.start()
    total = 0
    for xb, yb, sb in userdata.iter_user_batches(p, 16):
        total += len(yb)
        assert xb.shape[1:] == (T, F)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == n
    assert peak < 4 * 16 * T * F + 2_000_000, peak  # a few batches, not 21 MB


def test_iter_batches_bounded_memory_over_event_files(tmp_path):
    from host_tools.datasets import synth

    synth.write_atis_tree(str(tmp_path / "Train"), {"": [str(d) for d in range(10)]}, 20, events=(3000, 5000))
    tracemalloc.start()
    seen = 0
    for xb, yb in iter_batches(f"nmnist:{tmp_path}", 8, time_steps=10):
        seen += len(yb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == 200
    full = 200 * 10 * 2312
    assert peak < full / 4, (peak, full)  # one batch is 185 KB; the whole set 4.6 MB
