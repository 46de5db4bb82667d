"""Circuit-level cost primitives: one array read cycle, one row write, one conversion.

Everything here is a pure function of ``HardwareParams`` and ``Activity``; the layer and pipeline
accounting (``accounting.py``) only multiplies these by counts. Formulas (rram-simulators.md):
cell read energy V_r^2 * G * t_read with the access transistor in series; bit/word-line charging
C * V^2 with C = length * 0.2 fF/um; write pulse energy V_w^2 * t / (R_cell + R_access); SAR ADC
latency (b+1) unit cycles; row-serial write latency sum over rows of (n_SET + n_RESET) * t_pulse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edge_sdfa.errors import UserError

from edge_sdfa.spec import temporal_mode

from .ledger import Breakdown
from .params import HardwareParams

UPDATE_MODES = ("row-serial", "parallel", "write-verify")


@dataclass(frozen=True)
class Activity:
    """Workload statistics the analytic model assumes (the functional backend measures them)."""

    spike_rate: float = 0.1           # fraction of a layer's inputs that spike in one time step
    update_density: float = 0.05      # fraction of int8 weights whose value changes in one update
    level_fraction: float = 0.25      # mean programmed level / top level of a cell
    error_bit_density: float = 0.5    # fraction of ones in one bit-plane of an error or delta
    update_mode: str = "row-serial"
    temporal_mode: str = "exact"      # exact: intra-layer BPTT keeps a T-long history; online: none
    n_batches: int = 100              # consecutive updates over which pipelined time is averaged

    def __post_init__(self):
        if self.update_mode not in UPDATE_MODES:
            raise UserError(f"unknown update mode {self.update_mode!r} (known: {', '.join(UPDATE_MODES)})")
        temporal_mode(self.temporal_mode)
        for name in ("spike_rate", "update_density", "level_fraction", "error_bit_density"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_batches < 1:
            raise UserError(f"n_batches must be >= 1, got {self.n_batches}")


def mean_conductance(hw: HardwareParams, level_fraction: float) -> float:
    d = hw.device
    return d.g_off + level_fraction * (d.g_on - d.g_off)


def cell_read_energy(hw: HardwareParams, act: Activity) -> float:
    g = mean_conductance(hw, act.level_fraction)
    g_eff = 1.0 / (1.0 / g + hw.crossbar.access_r_ohm)
    return hw.crossbar.v_read ** 2 * g_eff * hw.crossbar.t_read_s


def bitline_cap(hw: HardwareParams) -> float:
    x = hw.crossbar
    return x.rows * x.cell_height_f * x.feature_size_m * x.wire_cap_f_per_m


def wordline_cap(hw: HardwareParams) -> float:
    x = hw.crossbar
    return x.cols * x.cell_width_f * x.feature_size_m * x.wire_cap_f_per_m


def converters_per_array(hw: HardwareParams, bits: int | None = None) -> int:
    return max(1, math.ceil(hw.crossbar.cols / hw.adc.columns_per_converter(bits)))


def cycle_time(hw: HardwareParams, cols_read: int, bits: int | None = None) -> float:
    """One array read: the pulse, the multiplexed conversions of ``cols_read`` columns, one shift-add."""
    rounds = math.ceil(cols_read / converters_per_array(hw, bits))
    return hw.crossbar.t_read_s + rounds * hw.adc.conversion_time(bits) + 1.0 / hw.periph.clock_hz


def cycle_busy(hw: HardwareParams, phase: str, cols_read: int, bits: int | None = None) -> Breakdown:
    """``cycle_time`` split by component (seconds): pulse -> array, conversions -> adc, shift-add -> digital."""
    rounds = math.ceil(cols_read / converters_per_array(hw, bits))
    return Breakdown.of(phase, array=hw.crossbar.t_read_s, adc=rounds * hw.adc.conversion_time(bits),
                        digital=1.0 / hw.periph.clock_hz)


def column_resistance(hw: HardwareParams, act: Activity, active_rows: float) -> float:
    """Resistance of a column while it is read: its active cells (with access transistors) in parallel."""
    g = mean_conductance(hw, act.level_fraction)
    g_eff = 1.0 / (1.0 / g + hw.crossbar.access_r_ohm)
    return 1.0 / (max(active_rows, 1.0) * g_eff)


def conversion_energy(hw: HardwareParams, act: Activity, active_rows: float, bits: int | None = None) -> float:
    return hw.adc.conversion_energy(bits, column_resistance(hw, act, active_rows))


def mvm_cycle(hw: HardwareParams, act: Activity, phase: str, tiles: int, rows_used: float,
              cols_used: float, slices: int, row_activity: float, bits: int | None = None) -> Breakdown:
    """Energy of one read cycle of ``tiles`` tiles (each ``slices`` differential pairs of arrays).
    An active row's driver is held for the whole cycle (pulse and multiplexed conversions), as
    ISAAC accounts its DACs; one conversion per used column and slice (the pair is subtracted)."""
    arrays = tiles * slices * 2
    active_rows = row_activity * rows_used
    array = arrays * (active_rows * cols_used * cell_read_energy(hw, act)
                      + cols_used * bitline_cap(hw) * hw.crossbar.v_read ** 2)
    held = cycle_time(hw, int(math.ceil(cols_used)), bits)
    drivers = arrays * active_rows * (hw.periph.p_driver_w * held + wordline_cap(hw) * hw.crossbar.v_dd ** 2)
    conversions = tiles * slices * cols_used
    return Breakdown.of(phase, array=array, drivers=drivers,
                        adc=conversions * conversion_energy(hw, act, active_rows, bits),
                        digital=conversions * hw.periph.e_digital_op_j)


def write_pulse_energy(hw: HardwareParams, act: Activity) -> float:
    g = mean_conductance(hw, act.level_fraction)
    return hw.write.v_write ** 2 * hw.write.t_pulse_s / (1.0 / g + hw.crossbar.access_r_ohm)


def tiles_of(hw: HardwareParams, arrays: float) -> int:
    """Physical tiles (``arrays_per_tile`` crossbars sharing a buffer and digital units)."""
    return max(1, math.ceil(arrays / hw.periph.arrays_per_tile))


def digital_time(hw: HardwareParams, ops: float, arrays: int) -> float:
    """Seconds for ``ops`` 16-bit operations on the digital lanes of the tiles holding ``arrays``."""
    lanes = tiles_of(hw, arrays) * hw.periph.digital_ops_per_cycle_per_tile
    return ops / (lanes * hw.periph.clock_hz)


def transfer_energy(hw: HardwareParams, bits: float, hops: float = 1.0) -> float:
    p = hw.periph
    return bits * hops * (p.wire_j_per_bit_mm * p.link_mm + p.hop_j_per_bit)


@dataclass(frozen=True)
class ArrayWrite:
    """Write of one array in one update: time and energy, and pulses the cells received."""

    latency_s: float
    energy: Breakdown
    pulses: float               # total cell pulses in this array


def row_serial_write(hw: HardwareParams, act: Activity, rows_with_set: float, rows_with_reset: float,
                     set_levels: float, reset_levels: float, cell_pulses: float, cols_used: float,
                     verify: bool) -> ArrayWrite:
    """NeuroSim-style write: row by row, a SET phase then a RESET phase, each as long as the
    largest level step in the row. With ``verify`` every pulse is followed by a read of the row and
    its conversions, and a level step takes ``verify_iterations`` pulses on average."""
    w = hw.write
    iters = w.verify_iterations if verify else 1.0
    step = w.t_pulse_s
    if verify:
        step += cycle_time(hw, int(math.ceil(cols_used)))
    phases = rows_with_set * set_levels + rows_with_reset * reset_levels
    latency = phases * iters * step
    pulses = cell_pulses * iters
    row_line = wordline_cap(hw) * w.v_write ** 2
    col_line = bitline_cap(hw) * w.v_write ** 2
    array = pulses * write_pulse_energy(hw, act)
    drivers = phases * iters * row_line + pulses * col_line
    adc = 0.0
    if verify:
        reads = phases * iters
        array += reads * cols_used * cell_read_energy(hw, act)
        adc = reads * cols_used * conversion_energy(hw, act, 1.0)
    return ArrayWrite(latency, Breakdown.of("write", array=array, drivers=drivers, adc=adc), pulses)


def expected_row_serial(hw: HardwareParams, act: Activity, rows_used: float, cols_used: float,
                        slice_index: int, verify: bool) -> ArrayWrite:
    """Analytic expectation for one array of a differential pair, slice ``slice_index`` (0 = LSB).

    A weight changes by one int8 step with probability ``update_density``. The step lands on the
    LSB slice; with probability 1/L it wraps the digit (31 -> 0 for L = 32), which costs L-1
    pulses on this slice and carries one step into the next, so slice s sees changes with
    probability d / L**s. Increments and decrements are equally likely and the sign picks the
    array of the pair, so a cell of one array is SET or RESET with probability d_s/4 each. A row's
    SET phase is as long as its largest SET step (1, or L-1 if some cell of the row wraps)."""
    levels = hw.device.levels
    top_slice = slice_index == hw.slices - 1
    d = act.update_density * float(levels) ** (-slice_index)
    p_cell = d / 4.0
    p_wrap = 0.0 if top_slice else p_cell / levels
    p_any = 1.0 - (1.0 - p_cell) ** cols_used
    p_row_wrap = 1.0 - (1.0 - p_wrap) ** cols_used
    row_levels = p_row_wrap * (levels - 1) + (p_any - p_row_wrap) * 1.0
    step = 1.0 if top_slice else (1.0 - 1.0 / levels) + (levels - 1) / levels
    cell_pulses = rows_used * cols_used * 2 * p_cell * step
    return row_serial_write(hw, act, rows_used, rows_used, row_levels, row_levels, cell_pulses, cols_used, verify)
