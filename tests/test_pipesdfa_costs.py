"""Hand-computed latency and energy of a small crossbar, and monotonic properties of the model."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from edge_sdfa.spec import mlp
from sim_backend.pipesdfa import costs as C
from sim_backend.pipesdfa.accounting import layer_cost, layer_geometries
from sim_backend.pipesdfa.params import (AdcParams, CrossbarParams, DeviceParams, HardwareParams, PeripheralParams,
                                         WriteParams, load_preset)
from sim_backend.pipesdfa.workloads import Workload

pytestmark = pytest.mark.unit


def tiny_hw(**adc) -> HardwareParams:
    """A 4x4 crossbar with round numbers: cell read 1e-14 J, conversion 1e-12 J / 9 ns, no wires."""
    return HardwareParams(
        name="tiny",
        device=DeviceParams(r_on_ohm=1e5, r_off_ohm=1e6, levels=256, nl_ltp=0, nl_ltd=0, c2c_sigma=0, d2d_sigma=0,
                            read_noise_sigma=0, stuck_at_off=0, stuck_at_on=0, endurance_pulses=1e6),
        crossbar=CrossbarParams(rows=4, cols=4, access_r_ohm=0.0, v_read=1.0, t_read_s=1e-8, v_dd=1.0,
                                feature_size_m=3.2e-8, cell_height_f=4, cell_width_f=12, wire_cap_f_per_m=0.0),
        write=WriteParams(v_write=4.0, t_pulse_s=5e-8, parallel_arrays=1, verify_iterations=2.0, stochastic_bl=31),
        adc=AdcParams(**({"bits": 8, "cols_per_adc": 2, "model": "exp2", "t_unit_s": 1e-9, "p_per_bit_w": 0.0,
                          "p_base_w": 0.0, "e_ref_j": 1e-12, "bits_ref": 8, "sense_amp_cols": 1} | adc)),
        periph=PeripheralParams(p_driver_w=1e-15 / 29e-9, sram_j_per_bit=1e-15, wire_j_per_bit_mm=0.0,
                                hop_j_per_bit=1e-15, link_mm=1.0, dram_j_per_bit=1e-12, dram_bits_per_s=1e12,
                                buffer_bits_per_array=1e9, e_digital_op_j=1e-13, digital_ops_per_cycle_per_tile=1,
                                arrays_per_tile=1, clock_hz=1e9),
    )


def tiny_layer(hw, act, T=1):
    wl = Workload("tiny", mlp([4, 4], time_steps=T), batch=1)
    (g,) = layer_geometries(wl, hw)
    return layer_cost(g, wl, hw, act, propagates_error=False)


def test_tiny_crossbar_forward_by_hand():
    hw = tiny_hw()
    act = C.Activity(spike_rate=0.5, level_fraction=0.0)
    c = tiny_layer(hw, act)
    m = c.geometry.mapping
    assert (m.tiles, m.arrays, m.slices, m.cycles_per_step) == (1, 2, 1, 1)
    # 10 ns pulse + 2 rounds of 2 converters x 9 ns + 1 ns shift-add; 12 neuron ops on the 2 tiles'
    # 1 lane each (one array per tile)
    assert c.step_s == pytest.approx(10e-9 + 2 * 9e-9 + 1e-9 + 6e-9)
    e = c.forward
    assert e.get("forward", "array") == pytest.approx(2 * 2 * 4 * 1e-14)     # 2 arrays x 2 rows x 4 cells
    assert e.get("forward", "drivers") == pytest.approx(2 * 2 * 1e-15)     # 29 ns cycle at 1e-15/29e-9 W
    assert e.get("forward", "adc") == pytest.approx(4 * 1e-12)
    assert e.get("forward", "digital") == pytest.approx((4 + 12) * 1e-13)
    assert e.get("forward", "buffers") == pytest.approx((4 + 4 * 2 * 16 + 4) * 1e-15)
    assert e.get("forward", "interconnect") == pytest.approx(4 * 1e-15)
    assert c.forward.total() == pytest.approx(sum(e.get("forward", k) for k in
                                                  ("array", "drivers", "adc", "digital", "buffers", "interconnect")))
    # T steps cost T times one step
    assert tiny_layer(hw, act, T=7).forward.total() == pytest.approx(7 * e.total())


def test_row_serial_write_by_hand():
    hw = tiny_hw()
    act = C.Activity(level_fraction=0.0)
    w = C.row_serial_write(hw, act, rows_with_set=3, rows_with_reset=1, set_levels=1, reset_levels=2,
                           cell_pulses=7, cols_used=4, verify=False)
    assert w.latency_s == pytest.approx((3 * 1 + 1 * 2) * 50e-9)
    assert w.energy.get("write", "array") == pytest.approx(7 * 16 * 50e-9 / 1e6)
    assert w.pulses == 7
    v = C.row_serial_write(hw, act, 3, 1, 1, 2, 7, 4, verify=True)
    # every pulse is followed by a verify read (10 + 2*9 + 1 ns), 2 iterations per level step
    assert v.latency_s == pytest.approx(5 * 2 * (50e-9 + 29e-9))
    assert v.pulses == 14


def test_adc_models():
    hw = load_preset("isaac")
    # Accelergy's ISAAC table, pow2 outside it
    assert hw.adc.conversion_energy(8) == pytest.approx(1.67e-12)
    assert hw.adc.conversion_energy(6) == pytest.approx(1.20e-12)
    assert hw.adc.conversion_energy(2) == pytest.approx(0.79e-12 / 4)
    assert hw.adc.conversion_time(8) == pytest.approx(1 / 1.28e9, rel=1e-3)
    ns = load_preset("neurosim32")
    assert ns.adc.conversion_time(6) == pytest.approx(7e-9)
    assert ns.adc.conversion_energy(6) == pytest.approx((1.1294 * 6 + 8.8998) * 1e-6 * 7e-9)
    # NeuroSim's column term: +0.0794 exp(-2.297 log10 R) W, about +20% at 25 kOhm
    with_col = ns.adc.conversion_energy(6, 25e3)
    assert with_col == pytest.approx(((1.1294 * 6 + 8.8998) * 1e-6 + 0.079449 * math.exp(-2.297 * math.log10(25e3))) * 7e-9)
    assert with_col / ns.adc.conversion_energy(6) == pytest.approx(1.21, abs=0.02)
    assert ns.adc.columns_per_converter(1) == 1 and ns.adc.columns_per_converter(6) == 8


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 11), st.sampled_from(["neurosim32", "isaac"]))
def test_more_adc_bits_cost_more_energy_and_time(bits, preset):
    hw = load_preset(preset)
    assert hw.adc.conversion_energy(bits + 1) > hw.adc.conversion_energy(bits)
    lo, hi = hw.with_adc_bits(bits), hw.with_adc_bits(bits + 1)
    act = C.Activity()
    a, b = tiny_layer(lo, act), tiny_layer(hi, act)
    assert b.forward.component("adc") >= a.forward.component("adc")
    if bits > 1:  # 1 bit switches to one sense amplifier per column, a different periphery
        assert b.forward.total() > a.forward.total() and b.step_s > a.step_s


@settings(max_examples=25, deadline=None)
@given(st.floats(0, 200), st.floats(0.5, 50), st.integers(1, 3))
def test_more_rows_written_take_longer(rows, more, levels):
    hw = load_preset("neurosim32")
    act = C.Activity()
    a = C.row_serial_write(hw, act, rows, rows, levels, levels, rows, 128, False)
    b = C.row_serial_write(hw, act, rows + more, rows + more, levels, levels, rows + more, 128, False)
    assert b.latency_s > a.latency_s and b.energy.total() > a.energy.total()


@pytest.mark.parametrize("mode", C.UPDATE_MODES)
def test_denser_updates_take_longer_to_write(mode):
    hw = load_preset("neurosim32")
    wl = Workload("w", mlp([256, 256, 10]), batch=8)
    geos = layer_geometries(wl, hw)
    prev = None
    for d in (0.001, 0.01, 0.1, 0.5):
        act = C.Activity(update_density=d, update_mode=mode)
        c = layer_cost(geos[0], wl, hw, act, False)
        if prev is not None and mode != "parallel":
            assert c.write_s > prev.write_s and c.write.total() > prev.write.total()
        prev = c


def test_activity_validation():
    from edge_sdfa.errors import UserError

    with pytest.raises(UserError):
        C.Activity(update_mode="sideways")
    with pytest.raises(UserError):
        C.Activity(spike_rate=1.5)
