"""Pipelined training time and energy per update: PipeSDFA against a PipeLayer-style BP baseline.

PipeSDFA (three levels):
- time steps: layer l runs step t while layer l+1 runs step t-1, so a sample's forward takes
  ``sum_l s_l + (T-1) max_l s_l`` instead of ``T sum_l s_l``;
- samples: a new sample enters every ``I = max(T max_l s_l, projection, max_l gradient)``; the error
  projection and the local gradients of all layers run at once, right after the forward;
- batches: no drain; a layer's arrays are written while the next batch streams through the other
  layers, so one update costs ``max(max_l (B T s_l + W_l), B I, sum_l W_l)`` in steady state.

PipeLayer-style BP: stages of one layer for one whole sample (L forward, 1 error, L backward), the
backward chain sequential (layer l needs the error of layer l+1, by transposed MVMs through the
same arrays, every time step), a new sample per ``max_l (F_l + back_l)``, the pipeline drained at
every batch boundary and the update written after the batch, nothing overlapped with it.

On-chip buffers (``buffer_bits_per_array`` per array) hold the activity history of the samples in
flight; what does not fit spills to DRAM, costing energy and bandwidth time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import costs as C
from .accounting import LayerCost
from .ledger import Breakdown, total, zero
from .params import HardwareParams
from .workloads import Workload


@dataclass(frozen=True)
class PipelineResult:
    latency_s: float            # per update, averaged over n_batches consecutive updates
    energy: Breakdown           # per update, joules
    busy: Breakdown             # per update, serial busy seconds by phase x component
    details: dict

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "energy_j": self.energy.total(),
                "breakdown": {"energy_j": self.energy.to_dict(), "busy_s": self.busy.to_dict()},
                "pipeline": self.details}


def _spill(layers: list[LayerCost], hw: HardwareParams, in_flight: int) -> tuple[float, float]:
    """(DRAM bits moved per sample, seconds of DRAM bandwidth per sample)."""
    history = sum(c.history_bits for c in layers)
    capacity = hw.periph.buffer_bits_per_array * sum(c.arrays + c.feedback_arrays for c in layers)
    need = in_flight * history
    if need <= capacity or history == 0:
        return 0.0, 0.0
    spilled = (1.0 - capacity / need) * history * 2          # written, then read back
    return spilled, spilled / hw.periph.dram_bits_per_s


def _write_engine_time(layers: list[LayerCost], act: C.Activity) -> float:
    w = [c.write_s for c in layers if c.geometry.trainable]
    if not w:
        return 0.0
    return max(w) if act.update_mode == "parallel" else sum(w)


def sdfa(layers: list[LayerCost], wl: Workload, hw: HardwareParams, act: C.Activity) -> PipelineResult:
    T, B, n = wl.spec.time_steps, wl.batch, act.n_batches
    steps = [c.step_s for c in layers]
    trainable = [c for c in layers if c.geometry.trainable]
    proj = max((c.proj_s for c in trainable), default=0.0)
    grad = max((c.grad_s for c in trainable), default=0.0)
    forward_latency = sum(steps) + (T - 1) * max(steps)
    sample_latency = forward_latency + proj + grad
    interval = max(T * max(steps), proj, grad)
    in_flight = min(B, math.ceil(sample_latency / interval))
    spill_bits, spill_s = _spill(layers, hw, in_flight)
    interval = max(interval, spill_s)
    writes = _write_engine_time(layers, act)
    period = max(max(B * T * c.step_s + c.write_s for c in layers), B * interval, writes)
    first = sample_latency + (B - 1) * interval + writes
    latency = (first + (n - 1) * period) / n
    energy = (B * total(c.forward + c.error_sdfa + c.gradient for c in layers) + total(c.write for c in layers)
              + Breakdown.of("gradient", buffers=B * spill_bits * hw.periph.dram_j_per_bit))
    busy = (B * total(c.busy_forward for c in layers)
            + B * Breakdown(max((c.busy_error_sdfa for c in trainable), key=lambda b: b.total(),
                                default=zero()).table)
            + B * Breakdown(max((c.busy_gradient for c in trainable), key=lambda b: b.total(),
                                default=zero()).table)
            + _write_busy(layers, act))
    details = {"forward_latency_s": forward_latency, "sample_latency_s": sample_latency,
               "sample_interval_s": interval, "batch_period_s": period, "write_engine_s": writes,
               "first_batch_s": first, "in_flight_samples": in_flight, "dram_spill_bits_per_sample": spill_bits}
    return PipelineResult(latency, energy, busy, details)


def pipelayer(layers: list[LayerCost], wl: Workload, hw: HardwareParams, act: C.Activity) -> PipelineResult:
    T, B = wl.spec.time_steps, wl.batch
    trainable = [c for c in layers if c.geometry.trainable]
    error_stage = C.digital_time(hw, wl.num_classes * 4, 1)
    back = [max(c.back_s, c.grad_s) for c in trainable]
    sample_latency = sum(T * c.step_s for c in layers) + error_stage + sum(back)
    interval = max(max(T * c.step_s + c.back_s for c in layers), max((c.grad_s for c in trainable), default=0.0))
    in_flight = min(B, math.ceil(sample_latency / interval))
    spill_bits, spill_s = _spill(layers, hw, in_flight)
    interval = max(interval, spill_s)
    writes = _write_engine_time(layers, act)
    latency = sample_latency + (B - 1) * interval + writes
    energy = (B * total(c.forward + c.error_bp + c.gradient for c in layers) + total(c.write for c in layers)
              + Breakdown.of("gradient", buffers=B * spill_bits * hw.periph.dram_j_per_bit))
    busy = (B * total(c.busy_forward + c.busy_error_bp + c.busy_gradient for c in layers)
            + _write_busy(layers, act))
    details = {"sample_latency_s": sample_latency, "sample_interval_s": interval,
               "fill_drain_s": sample_latency - interval, "write_engine_s": writes, "batch_period_s": latency,
               "in_flight_samples": in_flight, "dram_spill_bits_per_sample": spill_bits}
    return PipelineResult(latency, energy, busy, details)


def _write_busy(layers: list[LayerCost], act: C.Activity) -> Breakdown:
    trainable = [c for c in layers if c.geometry.trainable]
    if not trainable:
        return zero()
    if act.update_mode == "parallel":
        return Breakdown(max((c.busy_write for c in trainable), key=lambda b: b.total()).table)
    return total(c.busy_write for c in trainable)
