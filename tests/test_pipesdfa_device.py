"""The functional crossbar model: encoding, programming traces, readout, non-idealities."""
from __future__ import annotations

import numpy as np
import pytest

from sim_backend.pipesdfa.device import CrossbarLayer, NonIdealities, quantize_adc
from sim_backend.pipesdfa.params import load_preset

pytestmark = pytest.mark.unit


def layer(shape, ni=NonIdealities(), preset="neurosim32", seed=0):
    return CrossbarLayer(load_preset(preset), ni, shape, np.random.default_rng(seed))


@pytest.mark.parametrize("preset", ["neurosim32", "isaac"])
def test_every_int8_value_round_trips(preset):
    w = np.arange(-127, 128, dtype=np.int8).reshape(-1, 1).repeat(3, axis=1)
    xb = layer(w.shape, preset=preset)
    xb.program(w)
    assert np.array_equal(xb.effective_weights(), w.astype(np.float32))
    assert np.array_equal(xb.read_back(), w)
    x = (np.random.default_rng(1).random((7, w.shape[0])) < 0.3).astype(np.uint8)
    assert np.array_equal(xb.mvm(x), x.astype(np.int64) @ w.astype(np.int64))


def test_write_trace_by_hand():
    """4 slices of 2 bits (ISAAC cells). 0 -> 5 is digits (1, 1): one SET pulse on slices 0 and 1
    of the G+ array; 5 -> 4 is one RESET on slice 0; -1 on another cell is one SET on G- slice 0."""
    xb = layer((2, 2), preset="isaac")
    t = xb.program(np.array([[5, 0], [0, -1]], np.int8))
    # arrays are ordered (polarity, slice, row tile, col tile): 2 x 4 x 1 x 1
    assert t.set_phases.reshape(2, 4).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert t.reset_phases.sum() == 0 and t.pulses.sum() == 3
    t = xb.program(np.array([[4, 0], [0, -1]], np.int8))
    assert t.reset_phases.reshape(2, 4).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert t.set_phases.sum() == 0 and t.pulses.sum() == 1
    # 3 -> 4 wraps the 2-bit digit: slice 0 goes 3 -> 0 (3 RESET pulses), slice 1 goes 0 -> 1
    xb2 = layer((1, 1), preset="isaac")
    xb2.program(np.array([[3]], np.int8))
    t = xb2.program(np.array([[4]], np.int8))
    assert t.reset_phases.reshape(2, 4)[0, 0] == 3 and t.set_phases.reshape(2, 4)[0, 1] == 1
    assert t.max_pulses_per_cell == 3


def test_rows_are_the_unit_of_a_row_serial_write():
    xb = layer((256, 4))
    w = np.zeros((256, 4), np.int8)
    w[0, :] = 1          # one row, four cells: one SET phase
    w[200, 0] = 2        # a row on the second row tile: one phase of 2 levels
    t = xb.program(w)
    assert sorted(t.set_phases[t.set_phases > 0].tolist()) == [1, 2]
    assert t.pulses.sum() == 6


def test_adc_quantiser():
    fs = np.array([10.0])
    x = np.linspace(-20, 20, 4001)[:, None].astype(np.float32)
    q1 = quantize_adc(x, 1, fs)
    assert set(np.unique(q1)) == {-5.0, 0.0, 5.0}
    for bits in (2, 4, 6):
        q = quantize_adc(x, bits, fs)
        assert np.abs(q).max() <= 10.0
        assert len(np.unique(q)) == 2 ** bits - 1
    err = [np.abs(quantize_adc(x, b, fs) - np.clip(x, -10, 10)).max() for b in (2, 4, 6, 8)]
    assert err == sorted(err, reverse=True)


def test_nonidealities_perturb_and_verify_repairs():
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (64, 32)).astype(np.int8)
    open_loop = layer(w.shape, NonIdealities(nonlinearity=True, c2c=True, d2d=True))
    open_loop.program(w)
    verified = layer(w.shape, NonIdealities(nonlinearity=True, c2c=True, d2d=True, write_verify=True))
    t = verified.program(w)
    e_open = np.abs(open_loop.effective_weights() - w).mean()
    e_ver = np.abs(verified.effective_weights() - w).mean()
    assert e_open > 1.0 and e_ver < e_open and t.verify_pulses > 0


def test_stuck_at_faults_pin_cells():
    ni = NonIdealities(stuck_at=True)
    hw = load_preset("neurosim32")
    hw = hw.replace(device={"stuck_at_off": 0.1, "stuck_at_on": 0.1})
    xb = CrossbarLayer(hw, ni, (64, 64), np.random.default_rng(0))
    xb.program(np.zeros((64, 64), np.int8))
    assert np.count_nonzero(xb.g == xb.top) == np.count_nonzero(xb.stuck == 2) > 0
    assert np.count_nonzero(xb.read_back()) > 0


def test_read_noise_is_seeded_and_zero_mean():
    w = np.full((128, 16), 10, np.int8)
    x = np.ones((200, 128), np.uint8)
    a = layer(w.shape, NonIdealities(read_noise=True, seed=5), seed=5)
    a.program(w)
    out = a.mvm(x)
    assert abs(out.mean() - 1280) < 5 and out.std() > 0


@pytest.mark.parametrize("polarity,expected", [(0, 5 + 3 * 32), (1, 5 - 3 * 32)])
def test_stuck_msb_cell_reads_within_the_msb_slice_range(polarity, expected):
    """32-level cells: an int8 magnitude is (MSB digit 0..3, LSB digit 0..31). A stuck-on MSB cell
    reads as the MSB slice's top digit 3 (weight 5 -> 5 +- 96), not as level 31 (5 + 992 = 997)."""
    xb = layer((1, 1), NonIdealities(stuck_at=True, seed=0))
    assert xb.slice_top.tolist() == [31, 3]
    xb.stuck[:] = 0
    xb.stuck[polarity, 1, 0, 0] = 2
    xb.program(np.array([[5]], np.int8))
    assert xb.read_back()[0, 0] == expected
    assert abs(float(xb.effective_weights()[0, 0])) <= 127
    # a stuck-on LSB cell reads as 31, the top of its own slice
    lsb = layer((1, 1), NonIdealities(stuck_at=True, seed=0))
    lsb.stuck[:] = 0
    lsb.stuck[0, 0, 0, 0] = 2
    lsb.program(np.array([[5]], np.int8))
    assert lsb.read_back()[0, 0] == 31


def test_isaac_msb_slice_uses_its_own_range():
    xb = layer((1, 1), preset="isaac")
    assert xb.slice_top.tolist() == [3, 3, 3, 1]          # 127 = 1|3|3|3 in base 4
    t = xb.program(np.array([[64]], np.int8))              # MSB digit 1: a full-range step, 3 level pulses
    assert t.pulses.sum() == pytest.approx(3)


def test_adc_converts_each_slice_on_its_own():
    """The functional ADC converts each slice's differential current separately (one conversion
    per column and slice, as the cost model charges), then shifts and adds."""
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, size=(40, 6)).astype(np.int8)
    xb = layer(w.shape, NonIdealities(adc_bits=4, seed=0))
    xb.program(w)
    x = (rng.random((9, 40)) < 0.3).astype(np.uint8)
    got = xb.mvm(x)
    diff = xb.g[0] - xb.g[1]
    scales = xb._adc_scales(xb.hw.crossbar.rows)[0]
    want = sum(xb.place[s] * quantize_adc(x.astype(np.float32) @ diff[s], 4, scales[s]) for s in range(2))
    assert np.array_equal(got, np.rint(want).astype(np.int64))
    combined = quantize_adc(x.astype(np.float32) @ xb.effective_weights(), 4,
                            4.0 * np.sqrt(0.25 * (xb.effective_weights() ** 2).sum(0)))
    assert not np.array_equal(got, np.rint(combined).astype(np.int64))

