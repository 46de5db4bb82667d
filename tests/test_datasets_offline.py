"""Offline real data: scikit-learn digits (rate coded and DVS-emulated), the emulator, user shifts."""
from __future__ import annotations

import numpy as np
import pytest

from edge_sdfa.errors import DataError
from host_tools.datasets import describe, load_arrays, open_dataset
from host_tools.datasets import emulator
from host_tools.datasets.digits import digits_spikes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("split,T", [("train", 10), ("test", 4)])
def test_digits_is_exactly_digits_spikes(split, T):
    x, y, s = load_arrays(f"digits?split={split}", time_steps=T)
    x2, y2 = digits_spikes(split, T)
    assert x.dtype == np.uint8 and np.array_equal(x, x2) and np.array_equal(y, y2) and s is None
    x3, _, _ = load_arrays(f"digits?split={split}&frames={T}", limit=7)
    assert np.array_equal(x3, x2[:7])


def test_digits_info():
    info = describe("digits")
    assert info["samples"] == 1258 and info["classes"] == 10 and info["subjects"] is None
    assert info["sensor"] == [64] and info["events_per_sample_mean"] > 0


def test_digits_events_are_nmnist_shaped_and_deterministic():
    ds = open_dataset("digits-events?split=test&limit=5")
    a, b = ds[0], ds[0]
    assert np.array_equal(a.events, b.events)
    ev = a.events
    assert ev.dtype.names == ("t", "x", "y", "p")
    assert ev["x"].max() < 34 and ev["y"].max() < 34 and set(np.unique(ev["p"])) <= {0, 1}
    assert np.all(np.diff(ev["t"]) >= 0) and 0 <= ev["t"].min() and ev["t"].max() < 300_000
    assert 1000 < len(ev) < 10000  # N-MNIST has ~4k events per digit
    x, y, _ = load_arrays("digits-events?split=test&limit=5", time_steps=10)
    assert x.shape == (5, 10, 2312)
    assert np.array_equal(load_arrays("digits?encoding=events&split=test&limit=5", 10)[0], x)
    other = open_dataset("digits-events?split=test&limit=5&seed=1")[0].events
    assert len(other) == len(ev) and not np.array_equal(other["t"], ev["t"])


def test_emulator_physics():
    blank = emulator.emulate(np.zeros((8, 8)))
    assert len(blank) == 0  # nothing moves, nothing changes
    square = np.zeros((28, 28))
    square[10:18, 10:18] = 1.0
    ev = emulator.emulate(square)
    # events only near the square's edges
    assert ev["x"].min() >= 3 + 10 - 3 and ev["x"].max() <= 3 + 18 + 2
    # brighter leading edge / darker trailing edge in equal amounts over a closed saccade loop
    on, off = int((ev["p"] == 1).sum()), int((ev["p"] == 0).sum())
    assert on > 0 and abs(on - off) <= 0.05 * (on + off)


def test_user_shift_deterministic_and_distinct():
    base = open_dataset("digits-events?limit=3")
    u1 = open_dataset("digits-events?limit=3&user=1")
    u1b = open_dataset("digits-events?limit=3&user=1")
    u2 = open_dataset("digits-events?limit=3&user=2")
    assert np.array_equal(u1[0].events, u1b[0].events)
    assert not np.array_equal(u1[0].events, base[0].events)
    assert u1.user_shift.describe() != u2.user_shift.describe()
    assert u1[0].subject == 1
    x, y, s = load_arrays("digits-events?limit=3&user=2", 10)
    assert s.tolist() == [2, 2, 2]
    u0 = open_dataset("digits-events?limit=3&user=0")
    assert np.array_equal(u0[1].events, base[1].events)
    only_time = open_dataset("digits-events?limit=2&user=4&shift=time")
    e0, e1 = base[0].events, only_time[0].events
    assert np.array_equal(e0["x"], e1["x"]) and not np.array_equal(e0["t"], e1["t"])
    with pytest.raises(DataError, match="rotation"):
        open_dataset("digits?user=1&shift=rotation")


def test_frame_shifts_and_subject_errors():
    x0, _, _ = load_arrays("digits?limit=4", 10)
    x1, _, s1 = load_arrays("digits?limit=4&user=3", 10)
    assert x1.shape == x0.shape and not np.array_equal(x0, x1) and s1.tolist() == [3] * 4
    with pytest.raises(DataError, match="no subject ids"):
        open_dataset("digits?subject=1")
