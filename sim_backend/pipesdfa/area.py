"""Silicon area (mm^2) and leakage power (W) per layer and component, for either design.

PipeSDFA holds each layer's weight arrays and its feedback arrays B_l; the PipeLayer baseline holds
G replicas of each conv layer's weights and, when it keeps separate backward arrays, as many W^T
copies. Every physical array brings its cells, one driver per row, its share of the converters
(one per ``cols_per_adc`` columns of a differential pair), ``buffer_bits_per_array`` of buffer,
and its share of a tile's digital lanes and interconnect (``arrays_per_tile`` arrays per tile).
"""
from __future__ import annotations

from .accounting import LayerCost
from .ledger import COMPONENTS
from .params import HardwareParams, table_value

DESIGNS = ("sdfa", "pipelayer")


def design_arrays(c: LayerCost, design: str) -> int:
    if design == "sdfa":
        return c.arrays + c.feedback_arrays
    return c.bp_arrays or c.arrays


def per_array_um2(hw: HardwareParams) -> dict[str, float]:
    """um^2 per physical array, by component."""
    x, a, p = hw.crossbar, hw.area, hw.periph
    cell = x.cell_height_f * x.cell_width_f * x.feature_size_m ** 2 * 1e12
    converters = x.cols / hw.adc.columns_per_converter() / 2.0      # one converter per pair of arrays
    tile_share = 1.0 / p.arrays_per_tile
    return {"array": x.rows * x.cols * cell,
            "adc": converters * table_value(a.adc_table_um2, hw.adc.bits),
            "drivers": x.rows * a.driver_um2,
            "buffers": p.buffer_bits_per_array * a.buffer_um2_per_bit,
            "digital": tile_share * p.digital_ops_per_cycle_per_tile * a.lane_um2,
            "interconnect": tile_share * a.interconnect_um2_per_tile}


def layer_area_mm2(c: LayerCost, hw: HardwareParams, design: str) -> dict[str, float]:
    n = design_arrays(c, design)
    return {k: n * v * 1e-6 for k, v in per_array_um2(hw).items()}


def area_mm2(layers: list[LayerCost], hw: HardwareParams, design: str) -> dict:
    per_layer = [layer_area_mm2(c, hw, design) for c in layers]
    by_component = {k: sum(r[k] for r in per_layer) for k in COMPONENTS}
    return {"total": sum(by_component.values()), "by_component": by_component,
            "arrays": sum(design_arrays(c, design) for c in layers)}


def converter_leakage_w(hw: HardwareParams, bits: int | None = None) -> float:
    """Static power of one converter: ``adc_fraction`` of the peak power of the ADC at the reference
    resolution ``bits_ref`` (ISAAC's 8 bits, where PUMA gives the leakage share), scaled with the
    area table to other resolutions (Accelergy scales leakage like area, pow_base(2)); a 1-bit
    sense amplifier leaks as the table extrapolates to 1 bit."""
    ref = hw.adc.bits_ref
    b = hw.adc.bits if bits is None else bits
    peak = hw.adc.conversion_energy(ref) / hw.adc.conversion_time(ref)
    table = hw.area.adc_table_um2
    scale = table_value(table, b) / table_value(table, ref) if table else 1.0
    return hw.leakage.adc_fraction * peak * scale


def leakage_w(layers: list[LayerCost], hw: HardwareParams, design: str) -> float:
    """Static power of everything the design holds."""
    return arrays_leakage_w(hw, sum(design_arrays(c, design) for c in layers))


def arrays_leakage_w(hw: HardwareParams, n: float) -> float:
    """Static power of ``n`` physical arrays with their converters, buffers, drivers and lanes."""
    x, lk, p = hw.crossbar, hw.leakage, hw.periph
    converters = n * x.cols / hw.adc.columns_per_converter() / 2.0
    return (converters * converter_leakage_w(hw) + n * p.buffer_bits_per_array * lk.buffer_w_per_bit
            + n * x.rows * lk.driver_w + n / p.arrays_per_tile * p.digital_ops_per_cycle_per_tile * lk.lane_w)
