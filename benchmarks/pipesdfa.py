"""PipeSDFA benchmarks: the workload table against PipeLayer, the sensitivity of its figures to
every assumption, validation against published figures, the ADC-less comparison, the accuracy study
on digits, the speed of the functional backend against the numpy backend, and the time the
accounting of dvs-vgg11 takes.

    python benchmarks/pipesdfa.py --json                 # everything (a few minutes on 2 cores)
    python benchmarks/pipesdfa.py --only accounting --json
    python benchmarks/pipesdfa.py --only sensitivity --json
    python benchmarks/pipesdfa.py --only validation --json
    python benchmarks/pipesdfa.py --only timing --repeats 5 --json
    python benchmarks/pipesdfa.py --only accuracy --seeds 4 --epochs 10 --json
    python benchmarks/pipesdfa.py --only speed --repeats 5 --json

JSON on stdout (medians over repeats / seeds), progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim_backend.pipesdfa.costs import UPDATE_MODES, Activity  # noqa: E402
from sim_backend.pipesdfa.report import PAPER, adc_less, bench  # noqa: E402
from sim_backend.pipesdfa.workloads import load_workload, named_workloads  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# accounting


def accounting(presets=("neurosim32", "isaac")) -> dict:
    rows = []
    for preset in presets:
        for name in named_workloads():
            for mode in UPDATE_MODES:
                r = bench(name, preset=preset, activity=Activity(update_mode=mode), with_adc_less=False,
                          with_schedule=False)
                s, b = r["sdfa"], r["pipelayer"]
                rows.append({"workload": name, "preset": preset, "update_mode": mode, "speedup": r["speedup"],
                             "energy_ratio": r["energy_ratio"],
                             "dynamic_energy_ratio": b["dynamic_energy_j"] / s["dynamic_energy_j"],
                             "sdfa_latency_s": s["latency_s"], "sdfa_energy_j": s["energy_j"],
                             "pipelayer_latency_s": b["latency_s"], "pipelayer_energy_j": b["energy_j"],
                             "sdfa_leakage_share": s["leakage_j"] / s["energy_j"],
                             "sdfa_area_mm2": s["area_mm2"]["total"], "pipelayer_area_mm2": b["area_mm2"]["total"],
                             "sdfa_tops_per_w": s["tops_per_w"], "pipelayer_tops_per_w": b["tops_per_w"],
                             "gradient_energy_share": s["breakdown"]["energy_j"]["by_phase"]["gradient"]
                             / s["dynamic_energy_j"],
                             "pulses_per_cell_per_update": r["wear"]["pulses_per_cell_per_update"],
                             "lifetime_updates": r["wear"]["lifetime_updates"]})
        log(f"accounting: {preset} done")
    return {"rows": rows, "paper_range": {"speedup": PAPER["speedup"], "energy_ratio": PAPER["energy_ratio"]}}


ACTIVITY_ASSUMPTIONS = ("activity.spike_rate", "activity.update_density", "activity.level_fraction",
                        "activity.error_bit_density")


def sensitivity(preset: str = "neurosim32", factors=(0.5, 2.0)) -> dict:
    """Every assumption of the preset (values without a published source) and of the analytic
    activity, at 0.5x and 2x: speedup and energy ratio of every workload (a tornado table)."""
    from sim_backend.pipesdfa.params import get_value, load_preset
    from sim_backend.pipesdfa.sweep import point_inputs

    hw = load_preset(preset)
    keys = list(hw.assumptions) + list(ACTIVITY_ASSUMPTIONS)
    base = {}
    for name in named_workloads():
        r = bench(name, hw=hw, with_adc_less=False, with_schedule=False)
        base[name] = {"speedup": r["speedup"], "energy_ratio": r["energy_ratio"]}
    rows = []
    for key in keys:
        value = getattr(Activity(), key.split(".", 1)[1]) if key.startswith("activity.") else get_value(hw, key)
        for f in factors:
            v = value * f
            if key.startswith("activity."):
                v = min(v, 1.0)
            h, a, b = point_inputs(preset, {key: v}, Activity(), None)
            for name in named_workloads():
                r = bench(name, hw=h, activity=a, batch=b, with_adc_less=False, with_schedule=False)
                rows.append({"assumption": key, "baseline_value": value, "factor": f, "value": v, "workload": name,
                             "speedup": r["speedup"], "energy_ratio": r["energy_ratio"],
                             "speedup_change": r["speedup"] / base[name]["speedup"] - 1,
                             "energy_ratio_change": r["energy_ratio"] / base[name]["energy_ratio"] - 1})
        log(f"sensitivity: {key} done")
    tornado = []
    for key in keys:
        sel = [r for r in rows if r["assumption"] == key]
        tornado.append({"assumption": key,
                        "speedup_range": [min(r["speedup"] for r in sel), max(r["speedup"] for r in sel)],
                        "energy_ratio_range": [min(r["energy_ratio"] for r in sel), max(r["energy_ratio"] for r in sel)],
                        "max_abs_speedup_change": max(abs(r["speedup_change"]) for r in sel),
                        "max_abs_energy_ratio_change": max(abs(r["energy_ratio_change"]) for r in sel)})
    tornado.sort(key=lambda t: -max(t["max_abs_speedup_change"], t["max_abs_energy_ratio_change"]))
    return {"preset": preset, "factors": list(factors), "baseline": base, "rows": rows, "tornado": tornado}


def schedule_table(batches: int = 3, max_ops: int = 60000) -> dict:
    """The event-driven schedule against the closed form for every workload small enough
    (B*T*layers forward operations per batch <= max_ops), with read-after-write enforced (wait,
    the default) and with one-batch-stale weights allowed; stalls as the schedule saw them."""
    from sim_backend.pipesdfa import pipeline as P
    from sim_backend.pipesdfa import schedule as S
    from sim_backend.pipesdfa.accounting import workload_costs
    from sim_backend.pipesdfa.params import load_preset

    rows = []
    hw = load_preset("neurosim32")
    for name in named_workloads():
        wl, act = load_workload(name), Activity()
        layers = workload_costs(wl, hw, act)
        size = wl.batch * wl.spec.time_steps * len(layers)
        if size > max_ops:
            rows.append({"workload": name, "skipped": f"{size} operations per batch"})
            continue
        st, _ = P.sdfa_stages(layers, wl, hw, act)
        row = {"workload": name, "operations_per_batch": size}
        for raw in ("wait", "stale"):
            sim = S.run(st, batches, "sdfa", raw)
            cf = P.sdfa_closed_form(st, batches, raw)
            row[f"sdfa_{raw}_schedule_s"] = sim["latency_s"]
            row[f"sdfa_{raw}_closed_form_s"] = cf["latency_s"]
            row[f"sdfa_{raw}_ratio"] = sim["latency_s"] / cf["latency_s"]
            row[f"sdfa_{raw}_stalls"] = sim["stalls"]
        stb, _ = P.pipelayer_stages(layers, wl, hw, act)
        sim = S.run(stb, batches, "pipelayer")
        row["pipelayer_schedule_s"] = sim["latency_s"]
        row["pipelayer_ratio"] = sim["latency_s"] / P.pipelayer_closed_form(stb, batches)["latency_s"]
        row["pipelayer_stalls"] = sim["stalls"]
        row["speedup_wait"] = sim["latency_s"] / row["sdfa_wait_schedule_s"]
        row["speedup_stale"] = sim["latency_s"] / row["sdfa_stale_schedule_s"]
        rows.append(row)
        log(f"schedule: {name} done")
    return {"batches": batches, "preset": "neurosim32", "rows": rows}


def validation_rows() -> list[dict]:
    from sim_backend.pipesdfa.validation import validation

    return validation()


def timing(repeats: int = 5) -> dict:
    """Wall time of the full ``bench`` report of dvs-vgg11 (area, per-layer rows, the simulated
    schedule, the ADC-less comparison), medians over repeats; the limit is 1 s."""
    bench("dvs-vgg11")                                    # warm imports
    full, core = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        r = bench("dvs-vgg11")
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        bench("dvs-vgg11", with_adc_less=False, with_schedule=False)
        core.append(time.perf_counter() - t)
    assert "area_mm2" in r["sdfa"] and r["layers"]
    return {"repeats": repeats, "limit_s": 1.0, "dvs_vgg11_full_report_s_median": statistics.median(full),
            "dvs_vgg11_accounting_only_s_median": statistics.median(core),
            "within_limit": statistics.median(full) < 1.0}


def adc_less_table(presets=("neurosim32", "isaac")) -> dict:
    out = []
    for preset in presets:
        from sim_backend.pipesdfa.params import load_preset

        hw = load_preset(preset)
        for name in named_workloads():
            r = adc_less(load_workload(name), hw, Activity())
            for bits in ("6", "8"):
                row = r["bits"][bits]
                out.append({"workload": name, "preset": preset, "adc_bits": int(bits),
                            "inference_energy_x": row["energy_ratio_vs_1bit"]["inference"],
                            "inference_latency_x": row["latency_ratio_vs_1bit"]["inference"],
                            "update_energy_x": row["energy_ratio_vs_1bit"]["update"],
                            "update_latency_x": row["latency_ratio_vs_1bit"]["update"],
                            "adc_energy_share": row["adc_energy_share"]})
    return {"rows": out, "paper_range": {"energy": PAPER["adc_less_energy"], "latency": PAPER["adc_less_latency"]}}


# ---------------------------------------------------------------------------------------------
# accuracy on digits


def _digits():
    from edge_sdfa.bundle import read_bundle
    from edge_sdfa.executors import open_executor, run_frozen
    from edge_sdfa.finetune import DEFAULT_BUNDLE, DEFAULT_USER_BATCH, DEFAULT_USER_TEST

    b = read_bundle(DEFAULT_BUNDLE)
    ex = open_executor(b)
    user, test = np.load(DEFAULT_USER_BATCH), np.load(DEFAULT_USER_TEST)
    hx, hy = b.holdout()
    reh = b.rehearsal()
    data = {"train": (run_frozen(ex, user["x"]), user["y"].astype(np.int64)),
            "test": (run_frozen(ex, test["x"]), test["y"].astype(np.int64)),
            "holdout": (run_frozen(ex, hx), hy)}
    if reh is not None:
        data["rehearsal"] = (run_frozen(ex, reh[0]), reh[1])
    return b, data


def _accuracy(be, x, y) -> float:
    return float(np.mean(be.forward(np.swapaxes(x, 0, 1)).argmax(1) == y))


def _finetune(be, b, data, epochs: int, schedule, seed: int, batch: int = 16, lr: float = 1.0):
    """SDFA epochs over the user's batch mixed 1:1 with rehearsal samples; ``schedule(epoch)``
    returns the NonIdealities to train under (None: keep)."""
    from edge_sdfa.int8 import net as qn

    cfg = qn.UpdateConfig(lr=lr, mode="online", seed=seed, feedback_seed=b.feedback_seed)
    be.program(b.head_spec(), b.head(), b.feedback_seed, cfg)
    rng = np.random.default_rng([seed, 7])
    x_u, y_u = data["train"]
    u = 0
    for epoch in range(epochs):
        ni = schedule(epoch) if schedule else None
        if ni is not None and ni != getattr(be, "ni", None):
            be.set_nonidealities(ni)
        xs, ys = x_u, y_u
        if "rehearsal" in data:
            xr, yr = data["rehearsal"]
            pick = rng.choice(len(yr), min(len(yr), len(y_u)), replace=False)
            xs, ys = np.concatenate([x_u, xr[pick]]), np.concatenate([y_u, yr[pick]])
        order = rng.permutation(len(ys))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            be.update(np.swapaxes(xs[idx], 0, 1), ys[idx], u)
            u += 1
    return be


def accuracy_study(seeds: int = 4, epochs: int = 10) -> dict:
    """Full-precision readout vs ADC-less (1-bit sense amplifiers, plus the device's other
    non-idealities), before and after fine-tuning with increasing hardware awareness:
    none (fine-tuned on ideal hardware, deployed as is), direct (fine-tuned through the target
    hardware), progressive (readout bits 8 -> 4 -> 2 -> 1 and non-idealities switched on in stages)."""
    from sim_backend.pipesdfa.backend import PipeSDFABackend
    from sim_backend.pipesdfa.device import NonIdealities

    b, data = _digits()
    targets = {"full_precision": lambda s: NonIdealities(seed=s),
               "adc_less": lambda s: NonIdealities(adc_bits=1, seed=s),
               "adc_less_device": lambda s: NonIdealities.all_on(adc_bits=1, seed=s, write_verify=True)}

    def progressive(target, s):
        stages = [NonIdealities(adc_bits=8, seed=s), NonIdealities(adc_bits=4, seed=s),
                  NonIdealities(adc_bits=2, seed=s), target]
        if target.nonlinearity:
            stages[2] = NonIdealities.all_on(adc_bits=2, seed=s, write_verify=True)
        return lambda epoch: stages[min(len(stages) - 1, epoch * len(stages) // epochs)]

    results = {}
    for tname, make in targets.items():
        runs = {k: [] for k in ("before", "after_unaware", "after_direct", "after_progressive")}
        for seed in range(seeds):
            target = make(seed)
            deployed = PipeSDFABackend(nonidealities=target)
            from edge_sdfa.int8 import net as qn

            deployed.program(b.head_spec(), b.head(), b.feedback_seed, qn.UpdateConfig(feedback_seed=b.feedback_seed))
            runs["before"].append(_metrics(deployed, data))
            # unaware: fine-tune on ideal cells, then program the result onto the target hardware
            ideal = _finetune(PipeSDFABackend(), b, data, epochs, None, seed)
            deployed.program(b.head_spec(), ideal.read_weights(), b.feedback_seed, ideal.config)
            runs["after_unaware"].append(_metrics(deployed, data))
            direct = _finetune(PipeSDFABackend(nonidealities=target), b, data, epochs, None, seed)
            runs["after_direct"].append(_metrics(direct, data))
            prog = _finetune(PipeSDFABackend(nonidealities=NonIdealities(adc_bits=8, seed=seed)), b, data, epochs,
                             progressive(target, seed), seed)
            runs["after_progressive"].append(_metrics(prog, data))
            log(f"accuracy: {tname} seed {seed} done")
        results[tname] = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    return {"seeds": seeds, "epochs": epochs, "results": results,
            "note": "medians over device seeds; 'test' is the new user's held-out digits, 'holdout' the original task"}


def _metrics(be, data) -> dict:
    return {"test": _accuracy(be, *data["test"]), "holdout": _accuracy(be, *data["holdout"])}


def functional_wear(updates: int = 60) -> dict:
    """Pulses per cell from real updates of the embedded default head (row-serial, ideal cells)."""
    from edge_sdfa.int8 import net as qn
    from sim_backend.pipesdfa.backend import PipeSDFABackend

    b, data = _digits()
    x, y = data["train"]
    be = PipeSDFABackend()
    be.program(b.head_spec(), b.head(), b.feedback_seed,
               qn.UpdateConfig(lr=1.0, mode="online", seed=0, feedback_seed=b.feedback_seed))
    density = []
    for u in range(updates):
        s = (u * 16) % (len(y) - 16)
        old = {i: q.w8.copy() for i, q in enumerate(be.read_weights()) if q.trainable}
        be.update(np.swapaxes(x[s:s + 16], 0, 1), y[s:s + 16], u)
        new = be.read_weights()
        density.append(sum(int(np.count_nonzero(new[i].w8 != w)) for i, w in old.items())
                       / sum(w.size for w in old.values()))
    w = be.wear()
    per_update_max = w["pulses_per_cell_max"] / updates
    return {"updates": updates, "update_density_median": statistics.median(density),
            "pulses_per_cell_per_update_mean": w["pulses_per_cell_mean"] / updates,
            "pulses_per_cell_max": w["pulses_per_cell_max"],
            "lifetime_updates_hottest_cell": w["endurance_pulses"] / per_update_max if per_update_max else None}


# ---------------------------------------------------------------------------------------------
# speed


def speed(repeats: int = 3) -> dict:
    """Wall time of ``edge_sdfa.finetune.finetune`` on the embedded default (30 epochs), numpy
    backend vs pipesdfa (ideal, and with every non-ideality on), medians over repeats."""
    from edge_sdfa.finetune import FinetuneConfig, finetune

    variants = {"numpy": ("numpy", {}), "pipesdfa_ideal": ("pipesdfa", {}),
                "pipesdfa_all_nonidealities": ("pipesdfa", {"nonidealities": {
                    "nonlinearity": True, "c2c": True, "d2d": True, "read_noise": True, "stuck_at": True,
                    "adc_bits": 6}})}
    out = {}
    for _ in range(repeats):
        for name, (backend, options) in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                c0 = time.process_time()
                r = finetune(store=Path(tmp) / "store", config=FinetuneConfig(backend=backend, backend_options=options))
                out.setdefault(name, {"wall_s": [], "cpu_s": [], "accuracy_after": r["accuracy_after"],
                                      "updates": r["updates"]})
                out[name]["wall_s"].append(time.perf_counter() - t)
                out[name]["cpu_s"].append(time.process_time() - c0)
                if "cost" in r:
                    out[name]["cost_per_update"] = {"latency_s": r["cost"]["latency_s"] / r["updates"],
                                                    "energy_j": r["cost"]["energy_j"] / r["updates"]}
            log(f"speed: {name} {out[name]['wall_s'][-1]:.2f}s")
    for v in out.values():
        v["wall_s_median"] = statistics.median(v.pop("wall_s"))
        v["cpu_s_median"] = statistics.median(v.pop("cpu_s"))
    base = out["numpy"]
    for name, v in out.items():
        v["slowdown_wall"] = v["wall_s_median"] / base["wall_s_median"]
        v["slowdown_cpu"] = v["cpu_s_median"] / base["cpu_s_median"]
    return {"repeats": repeats, "limit": 5.0, "variants": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["accounting", "sensitivity", "validation", "timing", "schedule", "adc_less", "wear",
                                       "accuracy", "speed"], action="append")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    parts = args.only or ["accounting", "sensitivity", "validation", "timing", "schedule", "adc_less", "wear",
                          "accuracy", "speed"]
    if parts == ["validation"]:
        print(json.dumps(validation_rows(), indent=1 if not args.json else None))
        return
    report = {}
    if "accounting" in parts:
        report["accounting"] = accounting()
    if "sensitivity" in parts:
        report["sensitivity"] = sensitivity()
    if "validation" in parts:
        report["validation"] = validation_rows()
    if "timing" in parts:
        report["timing"] = timing(args.repeats)
    if "schedule" in parts:
        report["schedule"] = schedule_table()
    if "adc_less" in parts:
        report["adc_less"] = adc_less_table()
    if "wear" in parts:
        report["wear"] = functional_wear()
    if "accuracy" in parts:
        report["accuracy"] = accuracy_study(args.seeds, args.epochs)
    if "speed" in parts:
        report["speed"] = speed(args.repeats)
    print(json.dumps(report, indent=1 if not args.json else None))


if __name__ == "__main__":
    main()
