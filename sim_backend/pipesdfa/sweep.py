"""Parameter sweeps of the bench report: ``KEY=V1,V2,...`` for one or several keys, the full grid,
evaluated in parallel over the cores.

Keys: any preset value as ``section.field`` (``write.parallel_arrays``, ``adc.bits``,
``baseline.granularity``, ...), an activity assumption as ``activity.field`` (``activity.spike_rate``,
``activity.update_density``, ...), or ``batch``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
from concurrent.futures import ProcessPoolExecutor

from edge_sdfa.errors import UserError

from .costs import Activity
from .params import load_preset, with_value

COLUMNS = ("speedup", "energy_ratio", "sdfa_latency_s", "sdfa_energy_j", "pipelayer_latency_s",
           "pipelayer_energy_j", "sdfa_area_mm2", "pipelayer_area_mm2", "sdfa_tops_per_w", "pipelayer_tops_per_w")
_ACTIVITY = {f.name: f.type for f in dataclasses.fields(Activity)}


def parse_sweep(items: list[str]) -> dict[str, list]:
    """``["write.parallel_arrays=8,64", "batch=8,16"]`` -> ``{"write.parallel_arrays": [8.0, 64.0], ...}``."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--sweep needs KEY=V1,V2,... got {item!r}")
        out = []
        for v in values.split(","):
            v = v.strip()
            if key in ("activity.update_mode", "activity.temporal_mode"):
                out.append(v)
                continue
            try:
                out.append(float(v))
            except ValueError:
                raise UserError(f"--sweep {key}: {v!r} is not a number") from None
        if key in grid:
            raise UserError(f"--sweep {key} given twice")
        grid[key] = out
    return grid


def point_inputs(preset: str, point: dict, base_activity: Activity, batch: int | None):
    """(hardware, activity, batch) of one grid point; raises UserError on an unknown key."""
    hw = load_preset(preset)
    act_fields, b = {}, batch
    for key, value in point.items():
        if key == "batch":
            b = int(value)
        elif key.startswith("activity."):
            name = key.split(".", 1)[1]
            if name not in _ACTIVITY:
                raise UserError(f"unknown sweep key {key!r} (activity fields: {', '.join(_ACTIVITY)})")
            act_fields[name] = value if isinstance(value, str) else (
                int(value) if name == "n_batches" else float(value))
        else:
            hw = with_value(hw, key, value)
    return hw, dataclasses.replace(base_activity, **act_fields), b


def _run(args) -> dict:
    from .report import bench

    workload, preset, point, act, batch = args
    hw, a, b = point_inputs(preset, point, act, batch)
    r = bench(workload, batch=b, activity=a, hw=hw, with_adc_less=False, with_schedule=False)
    row = dict(point)
    row.update({"speedup": r["speedup"], "energy_ratio": r["energy_ratio"],
                "sdfa_latency_s": r["sdfa"]["latency_s"], "sdfa_energy_j": r["sdfa"]["energy_j"],
                "pipelayer_latency_s": r["pipelayer"]["latency_s"], "pipelayer_energy_j": r["pipelayer"]["energy_j"],
                "sdfa_area_mm2": r["sdfa"]["area_mm2"]["total"], "pipelayer_area_mm2": r["pipelayer"]["area_mm2"]["total"],
                "sdfa_tops_per_w": r["sdfa"]["tops_per_w"], "pipelayer_tops_per_w": r["pipelayer"]["tops_per_w"]})
    return row


def run_sweep(workload: str, grid: dict[str, list], preset: str = "neurosim32", activity: Activity | None = None,
              batch: int | None = None, workers: int | None = None) -> list[dict]:
    """Every point of the grid (row order: the last key varies fastest)."""
    act = activity or Activity()
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    for p in points:                       # fail on a bad key or value before any worker starts
        point_inputs(preset, p, act, batch)
    from .workloads import load_workload

    load_workload(workload, batch)
    jobs = [(workload, preset, p, act, batch) for p in points]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) == 1:
        return [_run(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(_run, jobs))


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
