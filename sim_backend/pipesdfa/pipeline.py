"""Pipelined training time and energy per update (closed forms): PipeSDFA against PipeLayer.

PipeSDFA (three levels):
- time steps: layer l runs step t while layer l+1 runs step t-1, so a sample's forward takes
  ``F = sum_l s_l + (T-1) max_l s_l``;
- samples: a new sample enters every ``I = max(T max_l s_l, projection, max_l deltas, DRAM)``; the
  error projection and the local deltas of all layers run at once, right after the forward;
- batches: when the last sample's deltas are done (``E = F + proj + deltas + (B-1) I`` after the
  batch started), every layer runs its dW pass (``D_l``) and the write engine programs the layers
  in the order their passes end (``W_l``, serial): ``end_l = max(E + D_l, end of the previous write) + W_l``. With ``raw = "wait"``
  (default) batch b+1 reads layer l only after batch b's write of layer l, a flow shop whose layer k
  frees at ``a_k = end_k - E``: its forward ends ``max_{k<=l} (a_k + sum_{k<=j<l} s_j + B T s_l +
  sum_{j>l} s_j)`` after batch b's deltas, and the period is that plus the projection and the
  deltas, at least ``B I`` and ``sum_l W_l``. With ``raw = "stale"`` batch b+1 streams through layers
  whose batch-b write is pending (one-batch-stale weights) and is only blocked while a layer's own
  arrays are written: ``max(max_l (B T s_l + W_l), B I, sum_l W_l)``.

PipeLayer (Song et al., HPCA 2017): one stage per layer and whole sample (L forward stages of
``T s'_l``, with conv positions split over G weight replicas, one error stage, L backward stages of
``max(back_l, deltas_l)`` on separate W^T arrays), a new sample per slowest stage; at the batch
boundary the pipeline drains, the dW passes run and every copy is written before the next batch
(writes in the order the backward pass finishes layers: top first).

Both designs keep the same histories by the same rule (forward state until a sample's deltas;
spikes and deltas until the batch's dW pass), in on-chip buffers of ``buffer_bits_per_array`` per
array they hold; what does not fit spills to DRAM. Leakage of everything held is charged for the
update's latency. ``schedule.py`` simulates the same pipelines event by event.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import costs as C
from .accounting import LayerCost
from .area import design_arrays, leakage_w
from .ledger import Breakdown, total, zero
from .params import HardwareParams
from .workloads import Workload

RAW_MODES = ("wait", "stale")


@dataclass(frozen=True)
class PipelineResult:
    latency_s: float            # per update, averaged over n_batches consecutive updates
    energy: Breakdown           # per update, joules (dynamic)
    busy: Breakdown             # per update, serial busy seconds by phase x component
    details: dict
    leakage_w: float = 0.0

    @property
    def leakage_j(self) -> float:
        return self.leakage_w * self.latency_s

    @property
    def total_energy_j(self) -> float:
        return self.energy.total() + self.leakage_j

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "energy_j": self.total_energy_j,
                "dynamic_energy_j": self.energy.total(), "leakage_j": self.leakage_j, "leakage_w": self.leakage_w,
                "breakdown": {"energy_j": self.energy.to_dict(), "busy_s": self.busy.to_dict()},
                "pipeline": self.details}


@dataclass(frozen=True)
class Stages:
    """The per-layer stage times both the closed forms and the schedule use."""

    T: int
    B: int
    step: list[float]           # forward time step per layer
    proj: float                 # SDFA: the projection of all layers (max)
    delta: list[float]          # per-sample deltas per layer (0 for frozen layers)
    back: list[float]           # PipeLayer backward stage per layer
    error: float                # PipeLayer error stage
    dw: list[float]             # per-batch dW pass per layer
    write: list[float]          # per-batch write per layer (0 for frozen layers)
    trainable: list[bool]
    dram_s: float               # DRAM bandwidth seconds per sample
    shared_arrays: bool = False  # PipeLayer without separate backward arrays
    serial_writes: bool = True  # one write engine (row-serial, write-verify); parallel: every layer at once


def spill(history: float, batch_history: float, capacity: float, in_flight: int, batch: int) -> float:
    """DRAM bits moved per sample: the part of the peak history that does not fit, written and read."""
    need = in_flight * history + batch * batch_history
    if need <= capacity or need == 0:
        return 0.0
    return (1.0 - capacity / need) * (history + batch_history) * 2


def sdfa_stages(layers: list[LayerCost], wl: Workload, hw: HardwareParams, act: C.Activity) -> tuple[Stages, float]:
    T, B = wl.spec.time_steps, wl.batch
    step = [c.step_s for c in layers]
    tr = [c.geometry.trainable for c in layers]
    proj = max((c.proj_s for c, t in zip(layers, tr) if t), default=0.0)
    delta = [c.grad_s for c in layers]
    interval = max(T * max(step), proj, max(delta))
    latency = sum(step) + (T - 1) * max(step) + proj + max(delta)
    in_flight = min(B, math.ceil(latency / interval))
    capacity = hw.periph.buffer_bits_per_array * sum(design_arrays(c, "sdfa") for c in layers)
    bits = spill(sum(c.history_bits for c in layers), sum(c.batch_history_bits for c in layers), capacity,
                 in_flight, B)
    st = Stages(T, B, step, proj, delta, [0.0] * len(layers), 0.0, [c.dw_s for c in layers],
                [c.write_s if t else 0.0 for c, t in zip(layers, tr)], tr, bits / hw.periph.dram_bits_per_s,
                serial_writes=act.update_mode != "parallel")
    return st, bits


def pipelayer_stages(layers: list[LayerCost], wl: Workload, hw: HardwareParams,
                     act: C.Activity) -> tuple[Stages, float]:
    T, B = wl.spec.time_steps, wl.batch
    step = [c.bp_step_s or c.step_s for c in layers]
    tr = [c.geometry.trainable for c in layers]
    back = [max(c.back_s, c.grad_s) if t else 0.0 for c, t in zip(layers, tr)]
    error = C.digital_time(hw, wl.num_classes * 4, 1)
    shared = not hw.baseline.backward_arrays
    st0 = Stages(T, B, step, 0.0, [c.grad_s for c in layers], back, error, [c.dw_s for c in layers],
                 [c.bp_write_s if t else 0.0 for c, t in zip(layers, tr)], tr, 0.0, shared,
                 act.update_mode != "parallel")
    interval = pipelayer_interval(st0)
    latency = T * sum(step) + error + sum(back)
    in_flight = min(B, math.ceil(latency / interval))
    capacity = hw.periph.buffer_bits_per_array * sum(design_arrays(c, "pipelayer") for c in layers)
    history = sum(c.bp_history_bits for c, t in zip(layers, tr) if t) + sum(
        c.history_bits for c, t in zip(layers, tr) if not t)
    bits = spill(history, sum(c.batch_history_bits for c in layers), capacity, in_flight, B)
    return Stages(**{**st0.__dict__, "dram_s": bits / hw.periph.dram_bits_per_s}), bits


def sdfa_interval(st: Stages) -> float:
    return max(st.T * max(st.step), st.proj, max(st.delta), st.dram_s)


def pipelayer_interval(st: Stages) -> float:
    if st.shared_arrays:
        stage = max(st.T * s + b for s, b in zip(st.step, st.back))
    else:
        stage = max(max(st.T * s for s in st.step), max(st.back))
    return max(stage, st.error, st.dram_s)


def sdfa_closed_form(st: Stages, n_batches: int, raw: str = "wait") -> dict:
    T, B = st.T, st.B
    interval = sdfa_interval(st)
    forward = sum(st.step) + (T - 1) * max(st.step)
    sample = forward + st.proj + max(st.delta)
    end_grads = sample + (B - 1) * interval
    ends, prev = [None] * len(st.step), 0.0
    # the write engine takes the layers in the order their dW passes finish (ties: layer order)
    for l in sorted((l for l, t in enumerate(st.trainable) if t), key=lambda l: (st.delta[l] + st.dw[l], l)):
        ready = forward + st.proj + st.delta[l] + (B - 1) * interval + st.dw[l]      # this layer's last deltas
        end = (max(ready, prev) if st.serial_writes else ready) + st.write[l]
        prev = end if st.serial_writes else max(prev, end)
        ends[l] = end
    first = max((e for e in ends if e is not None), default=end_grads)
    writes = sum(st.write) if st.serial_writes else max(st.write)
    if raw == "wait":
        blocked = _flow_shop(st, ends, end_grads)
    else:
        blocked = max(max(B * T * s + w for s, w in zip(st.step, st.write)),
                      max(B * d + w for d, w in zip(st.delta, st.dw)))      # a layer's lanes: deltas + dW
    period = max(blocked, B * interval, writes)
    return {"forward_latency_s": forward, "sample_latency_s": sample, "sample_interval_s": interval,
            "first_batch_s": first, "batch_period_s": period, "write_engine_s": writes,
            "latency_s": (first + (n_batches - 1) * period) / n_batches}


def _flow_shop(st: Stages, ends: list, end_grads: float) -> float:
    """Batch b+1 as a flow shop whose stages become free at ``a`` after batch b's last deltas: the
    forward layers when their writes end (frozen ones when batch b left them), each layer's lanes
    when its dW pass ends. Its last deltas end ``max_{k<=l} a_k + lead(k, l) + B p_l + tail(l)``
    later, ``p`` the per-sample time of a stage, ``lead`` the first sample's way from k to l,
    ``tail`` the last sample's way from l to its deltas."""
    T, B, L = st.T, st.B, len(st.step)
    s, dmax = st.step, max(st.delta)
    stages = []          # (availability, per-sample time, lead to the projection, tail, kind)
    for l in range(L):
        if ends[l] is not None:
            a = ends[l] - end_grads
        else:
            a = sum(s[:l]) + B * T * s[l] - end_grads
        to_proj = sum(s[l:]) + (T - 1) * max(s[l:])
        stages.append((a, T * s[l], to_proj, sum(s[l + 1:]) + st.proj + dmax, l))
    worst = -math.inf
    for k, (a, _, to_proj_k, _, _) in enumerate(stages):
        for l in range(k, L):
            worst = max(worst, a + sum(s[k:l]) + B * stages[l][1] + stages[l][3])
        worst = max(worst, a + to_proj_k + B * st.proj + dmax)
        for d, dw, t in zip(st.delta, st.dw, st.trainable):
            if t:
                worst = max(worst, a + to_proj_k + st.proj + B * d)
    for d, dw, t in zip(st.delta, st.dw, st.trainable):       # a layer's lanes free after its dW pass
        if t:
            worst = max(worst, dw + B * d)
    return worst


def pipelayer_closed_form(st: Stages, n_batches: int) -> dict:
    interval = pipelayer_interval(st)
    L = len(st.step)
    fwd_end = st.T * sum(st.step) + st.error
    ready, t_back = {}, fwd_end
    for k in reversed(range(L)):                      # backward stages top-down, then dW, then writes
        if not st.trainable[k]:
            continue
        t_back += st.back[k]
        ready[k] = t_back + (st.B - 1) * interval + st.dw[k]
    ends, prev = [], 0.0
    for k in sorted(ready, key=lambda k: (ready[k], -k)):
        end = (max(ready[k], prev) if st.serial_writes else ready[k]) + st.write[k]
        prev = end if st.serial_writes else prev
        ends.append(end)
    sample = t_back
    period = max(ends) if ends else sample + (st.B - 1) * interval
    return {"sample_latency_s": sample, "sample_interval_s": interval,
            "fill_drain_s": sample - interval,
            "write_engine_s": sum(st.write) if st.serial_writes else max(st.write), "batch_period_s": period,
            "first_batch_s": period, "latency_s": period}


def sdfa(layers: list[LayerCost], wl: Workload, hw: HardwareParams, act: C.Activity,
         raw: str = "wait") -> PipelineResult:
    B = wl.batch
    st, spill_bits = sdfa_stages(layers, wl, hw, act)
    cf = sdfa_closed_form(st, act.n_batches, raw)
    trainable = [c for c in layers if c.geometry.trainable]
    energy = (B * total(c.forward + c.error_sdfa + c.gradient for c in layers)
              + total(c.dw + c.write for c in layers)
              + Breakdown.of("gradient", buffers=B * spill_bits * hw.periph.dram_j_per_bit))
    busy = (B * total(c.busy_forward for c in layers)
            + B * Breakdown(max((c.busy_error_sdfa for c in trainable), key=lambda b: b.total(),
                                default=zero()).table)
            + B * Breakdown(max((c.busy_gradient for c in trainable), key=lambda b: b.total(),
                                default=zero()).table)
            + Breakdown.of("gradient", digital=max(st.dw, default=0.0))
            + _write_busy(trainable, act, "sdfa"))
    details = {**{k: v for k, v in cf.items() if k != "latency_s"}, "raw": raw,
               "in_flight_samples": min(B, math.ceil(cf["sample_latency_s"] / cf["sample_interval_s"])),
               "dram_spill_bits_per_sample": spill_bits}
    return PipelineResult(cf["latency_s"], energy, busy, details, leakage_w(layers, hw, "sdfa"))


def pipelayer(layers: list[LayerCost], wl: Workload, hw: HardwareParams, act: C.Activity) -> PipelineResult:
    B = wl.batch
    st, spill_bits = pipelayer_stages(layers, wl, hw, act)
    cf = pipelayer_closed_form(st, act.n_batches)
    trainable = [c for c in layers if c.geometry.trainable]
    energy = (B * total(c.forward + c.error_bp + c.gradient for c in layers)
              + total(c.dw + c.bp_write for c in layers)
              + Breakdown.of("gradient", buffers=B * spill_bits * hw.periph.dram_j_per_bit))
    busy = (B * total(c.busy_forward + c.busy_error_bp + c.busy_gradient for c in layers)
            + Breakdown.of("gradient", digital=max(st.dw, default=0.0))
            + _write_busy(trainable, act, "pipelayer"))
    details = {**{k: v for k, v in cf.items() if k != "latency_s"},
               "in_flight_samples": min(B, math.ceil(cf["sample_latency_s"] / cf["sample_interval_s"])),
               "dram_spill_bits_per_sample": spill_bits, "granularity": hw.baseline.granularity,
               "backward_arrays": bool(hw.baseline.backward_arrays)}
    return PipelineResult(cf["latency_s"], energy, busy, details, leakage_w(layers, hw, "pipelayer"))


def _write_busy(trainable: list[LayerCost], act: C.Activity, design: str) -> Breakdown:
    if not trainable:
        return zero()
    busy = [c.busy_write if design == "sdfa" else c.bp_busy_write for c in trainable]
    if act.update_mode == "parallel":
        return Breakdown(max(busy, key=lambda b: b.total()).table)
    return total(busy)
