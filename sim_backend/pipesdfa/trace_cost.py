"""Cost of one functional update: the analytic accounting of the head, fed with what the update
really did (spike rates seen by the crossbars, and the per-array write trace)."""
from __future__ import annotations

import dataclasses

import numpy as np

from edge_sdfa.spec import NetworkSpec

from . import costs as C
from . import pipeline
from .accounting import LayerCost, workload_costs
from .device import WriteTrace
from .ledger import PHASES, COMPONENTS, Breakdown
from .params import HardwareParams
from .workloads import Workload


def traced_write(cost: LayerCost, traces: list[WriteTrace], hw: HardwareParams, act: C.Activity) -> LayerCost:
    """Replace a layer's analytic write with the row-serial (or write-verify) cost of its trace."""
    if act.update_mode == "parallel" or not traces:
        return cost
    m = cost.geometry.mapping
    verify = act.update_mode == "write-verify"
    set_ph = np.concatenate([t.set_phases for t in traces]).astype(float)
    reset_ph = np.concatenate([t.reset_phases for t in traces]).astype(float)
    pulses = np.concatenate([t.pulses for t in traces]).astype(float)
    extra = sum(t.verify_pulses for t in traces)
    iters = 1.0 + extra / pulses.sum() if verify and pulses.sum() else 1.0
    hw_iters = hw.replace(write={"verify_iterations": iters})
    energy = Breakdown()
    times = []
    for s_n, r_n, p_n in zip(set_ph, reset_ph, pulses):
        aw = C.row_serial_write(hw_iters, act, s_n, r_n, 1.0, 1.0, p_n, m.cols_used, verify)
        energy = energy + aw.energy
        times.append(aw.latency_s)
    master_ops = 3 * m.weights
    master_time = C.digital_time(hw, master_ops, m.arrays)
    pulse_time = max(max(times, default=0.0), sum(times) / hw.write.parallel_arrays)
    p = hw.periph
    changed = sum(t.cells_changed for t in traces)
    energy = energy + Breakdown.of(
        "write", digital=master_ops * p.e_digital_op_j, buffers=m.weights * 3 * hw.membrane_bits * p.sram_j_per_bit,
        interconnect=C.transfer_energy(hw, changed * hw.membrane_bits))
    return dataclasses.replace(cost, write_s=pulse_time + master_time, write=energy,
                               pulses_per_cell=(pulses.sum() * iters) / m.cells,
                               busy_write=Breakdown.of("write", array=pulse_time, digital=master_time))


def update_cost(spec: NetworkSpec, trainable_from: int, batch: int, hw: HardwareParams, spike_rate: float,
                update_density: float, update_mode: str, temporal_mode: str,
                traces: dict[int, list[WriteTrace]]) -> tuple[pipeline.PipelineResult, list[LayerCost]]:
    wl = Workload("head", spec, batch, trainable_from=trainable_from)
    act = C.Activity(spike_rate=float(np.clip(spike_rate, 0, 1)), update_density=float(np.clip(update_density, 0, 1)),
                     update_mode=update_mode, temporal_mode=temporal_mode, n_batches=1)
    layers = [traced_write(c, traces.get(c.geometry.index, []), hw, act) if c.geometry.trainable else c
              for c in workload_costs(wl, hw, act)]
    return pipeline.sdfa(layers, wl, hw, act), layers


def flat_breakdown(result: pipeline.PipelineResult, layers: list[LayerCost], pulses: int) -> dict[str, float]:
    """Additive numbers only, so that a fine-tune can sum them over updates."""
    out = {}
    e = result.energy
    for ph in PHASES:
        out[f"energy_j.{ph}"] = e.phase(ph)
        out[f"busy_s.{ph}"] = result.busy.phase(ph)
    for comp in COMPONENTS:
        out[f"energy_j.{comp}"] = e.component(comp)
    out["energy_j.leakage"] = result.leakage_j
    out["write_pulses"] = float(pulses)
    return out
