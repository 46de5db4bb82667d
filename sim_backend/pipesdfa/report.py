"""The ``bench`` report: PipeSDFA against PipeLayer-style BP for one workload, plus wear and the
ADC-less comparison. A library function; the CLI command is a thin layer over it."""
from __future__ import annotations

import dataclasses

from . import pipeline, schedule
from .accounting import LayerCost, workload_costs
from .area import area_mm2, layer_area_mm2
from .costs import Activity
from .params import HardwareParams, load_preset
from .wear import wear_report
from .workloads import Workload, load_workload

PAPER = {"speedup": [1.1, 10.5], "energy_ratio": [1.37, 2.1],
         "adc_less_energy": [2.0, 7.0], "adc_less_latency": [8.9, 24.6]}


def account(wl: Workload, hw: HardwareParams, act: Activity, raw: str = "wait") -> dict:
    layers = workload_costs(wl, hw, act)
    s = pipeline.sdfa(layers, wl, hw, act, raw)
    b = pipeline.pipelayer(layers, wl, hw, act)
    return {"layers": layers, "sdfa": s, "pipelayer": b}


def inference_cost(layers: list[LayerCost], wl: Workload) -> tuple[float, float]:
    """(latency, energy) of one sample's forward pass, time steps pipelined across layers."""
    steps = [c.step_s for c in layers]
    latency = sum(steps) + (wl.spec.time_steps - 1) * max(steps)
    return latency, sum(c.forward.total() for c in layers)


def adc_less(wl: Workload, hw: HardwareParams, act: Activity, bits=(1, 6, 8)) -> dict:
    rows = {}
    for b in bits:
        hb = hw.with_adc_bits(b)
        r = account(wl, hb, act)
        lat, en = inference_cost(r["layers"], wl)
        rows[str(b)] = {"inference_latency_s": lat, "inference_energy_j": en,
                        "update_latency_s": r["sdfa"].latency_s, "update_energy_j": r["sdfa"].total_energy_j,
                        "adc_energy_share": r["sdfa"].energy.component("adc") / r["sdfa"].total_energy_j}
    one = rows[str(min(bits))]
    for b, row in rows.items():
        row["energy_ratio_vs_1bit"] = {k: row[f"{k}_energy_j"] / one[f"{k}_energy_j"] for k in ("inference", "update")}
        row["latency_ratio_vs_1bit"] = {k: row[f"{k}_latency_s"] / one[f"{k}_latency_s"] for k in ("inference", "update")}
    return {"bits": rows, "paper_range": {"energy": PAPER["adc_less_energy"], "latency": PAPER["adc_less_latency"]}}


def mapping_table(layers: list[LayerCost]) -> list[dict]:
    out = []
    for c in layers:
        m = c.geometry.mapping
        row = {"layer": c.geometry.index, "kind": m.kind, "method": m.method, "matrix": [m.in_features, m.out_features],
               "tiles": m.tiles, "arrays": m.arrays, "cycles_per_step": m.cycles_per_step, "cc": m.cc,
               "duplication": m.stored_weights // max(1, m.weights), "trainable": c.geometry.trainable}
        if m.conv is not None:
            row["window"] = [m.conv.window_h, m.conv.window_w]
        out.append(row)
    return out


SCHEDULE_MAX_OPS = 6000       # forward operations per batch (B*T*layers) up to which bench simulates
SCHEDULE_BATCHES = 3


def simulated_schedule(layers: list[LayerCost], wl: Workload, hw: HardwareParams, act: Activity,
                       raw: str = "wait", closed: dict | None = None) -> dict:
    """The event-driven schedule of both pipelines over ``SCHEDULE_BATCHES`` batches, next to the
    closed forms for the same number of batches; stalls as the schedule saw them."""
    out = {"batches": SCHEDULE_BATCHES}
    st, _ = pipeline.sdfa_stages(layers, wl, hw, act)
    sim = schedule.run(st, SCHEDULE_BATCHES, "sdfa", raw)
    cf = pipeline.sdfa_closed_form(st, SCHEDULE_BATCHES, raw)
    out["sdfa"] = {**sim, "closed_form_latency_s": cf["latency_s"], "ratio": sim["latency_s"] / cf["latency_s"]}
    st, _ = pipeline.pipelayer_stages(layers, wl, hw, act)
    sim = schedule.run(st, SCHEDULE_BATCHES, "pipelayer")
    cf = pipeline.pipelayer_closed_form(st, SCHEDULE_BATCHES)
    out["pipelayer"] = {**sim, "closed_form_latency_s": cf["latency_s"], "ratio": sim["latency_s"] / cf["latency_s"]}
    for side in ("sdfa", "pipelayer"):
        out[side].pop("batch_end_s", None)
    return out


def training_ops(layers: list[LayerCost], wl: Workload) -> float:
    """Dense-equivalent operations of one update (2 per MAC; forward, error and dW of trained
    layers, forward of frozen ones; spike sparsity not discounted), the same for both designs."""
    ops = 0.0
    for c in layers:
        m = c.geometry.mapping
        macs = wl.spec.time_steps * m.weights * (m.outputs_per_step // max(1, m.out_features))
        ops += 2 * macs * (3 if c.geometry.trainable else 1)
    return wl.batch * ops


def layer_rows(layers: list[LayerCost], wl: Workload, hw: HardwareParams) -> list[dict]:
    """Per layer and design: busy time per update (forward steps of the batch, deltas, dW, write),
    dynamic energy per update, area."""
    T, B = wl.spec.time_steps, wl.batch
    rows = []
    for c in layers:
        sd = {"latency_s": B * (T * c.step_s + c.proj_s + c.grad_s) + c.dw_s + c.write_s,
              "energy_j": (B * (c.forward + c.error_sdfa + c.gradient) + c.dw + c.write).total(),
              "area_mm2": sum(layer_area_mm2(c, hw, "sdfa").values())}
        bp = {"latency_s": B * (T * (c.bp_step_s or c.step_s) + max(c.back_s, c.grad_s)) + c.dw_s + c.bp_write_s,
              "energy_j": (B * (c.forward + c.error_bp + c.gradient) + c.dw + c.bp_write).total(),
              "area_mm2": sum(layer_area_mm2(c, hw, "pipelayer").values())}
        rows.append({"layer": c.geometry.index, "kind": c.geometry.mapping.kind, "trainable": c.geometry.trainable,
                     "sdfa": sd, "pipelayer": bp})
    return rows


def bench(workload: str, preset: str = "neurosim32", batch: int | None = None,
          activity: Activity | None = None, adc_bits: int | None = None, with_adc_less: bool = True,
          endurance: float | None = None, hw: HardwareParams | None = None, raw: str = "wait",
          with_schedule: bool = True) -> dict:
    """Everything ``edge-sdfa bench --backend pipesdfa`` prints (``hw`` overrides ``preset``)."""
    if endurance is not None and not endurance > 0:
        from edge_sdfa.errors import UserError
        raise UserError(f"endurance must be a positive number of pulses, got {endurance}")
    if raw not in pipeline.RAW_MODES:
        from edge_sdfa.errors import UserError
        raise UserError(f"unknown read-after-write mode {raw!r} (known: {', '.join(pipeline.RAW_MODES)})")
    wl = load_workload(workload, batch)
    hw = hw or load_preset(preset)
    if adc_bits is not None:
        hw = hw.with_adc_bits(adc_bits)
    act = activity or Activity()
    r = account(wl, hw, act, raw)
    s, b = r["sdfa"], r["pipelayer"]
    ops = training_ops(r["layers"], wl)
    sd, bd = s.to_dict(), b.to_dict()
    for d, res, design in ((sd, s, "sdfa"), (bd, b, "pipelayer")):
        d["area_mm2"] = area_mm2(r["layers"], hw, design)
        d["throughput_samples_per_s"] = wl.batch / res.latency_s
        d["tops"] = ops / res.latency_s / 1e12
        d["tops_per_w"] = ops / res.total_energy_j / 1e12
    report = {
        "workload": wl.name, "preset": hw.name, "batch": wl.batch, "time_steps": wl.spec.time_steps,
        "source": wl.source, "activity": dataclasses.asdict(act),
        "arrays": sum(c.arrays + c.feedback_arrays for c in r["layers"]),
        "ops_per_update": ops,
        "sdfa": sd, "pipelayer": bd,
        "speedup": b.latency_s / s.latency_s,
        "energy_ratio": b.total_energy_j / s.total_energy_j,
        "layers": layer_rows(r["layers"], wl, hw),
        "paper_range": {"speedup": PAPER["speedup"], "energy_ratio": PAPER["energy_ratio"]},
        "mapping": mapping_table(r["layers"]),
        "wear": wear_report(r["layers"], endurance or hw.device.endurance_pulses, s.latency_s),
    }
    size = wl.batch * wl.spec.time_steps * len(r["layers"])
    if not with_schedule:
        pass
    elif size <= SCHEDULE_MAX_OPS:
        report["schedule"] = simulated_schedule(r["layers"], wl, hw, act, raw)
    else:
        report["schedule"] = {"skipped": f"{size} forward operations per batch > {SCHEDULE_MAX_OPS}: closed form only"}
    if with_adc_less:
        report["adc_less"] = adc_less(wl, hw, act)
    return report
