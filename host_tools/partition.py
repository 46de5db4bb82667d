"""Partition a NIR model into a frozen front and a trainable head, quantise it to int8 from
calibration data, plan the device memory of every cut, check named design rules, write the bundle.

``edge-sdfa partition model.nir --out bundle/ (--trainable-layers K | --memory-budget 64MB)
--calib SPEC --frozen-format npz|onnx|tflite [--holdout SPEC] [--json]``

The memory model (bytes; T time steps, B the fine-tuning batch, Bf = 256 the frozen-part batch,
C classes, for every synaptic layer ``in``/``out`` its input/output sizes and ``w`` its weight
count) is documented in docs/host.md and implemented by :func:`plan_cut`.
"""
from __future__ import annotations

import hashlib
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.spec import Dense, NetworkSpec, Pool2d, has_synapses

FROZEN_BATCH = 256                 # edge_sdfa.executors.run_frozen batch
RUNTIME_OVERHEAD = 40 * 2 ** 20    # peak RSS of Python + numpy + edge_sdfa with the C kernels loaded, before
                                   # any data (36.0 MiB measured, docs/host.md), rounded up
SATURATION_LIMIT = 0.01            # int8_ranges: at most 1 % of a layer's weights clipped at +-127
# the personalisation recipe (docs/personalisation.md): every dense layer trains, int8 exact rule,
# 30 epochs, batch 8, lr 0.6
FINETUNE_DEFAULTS = {"epochs": 30, "batch_size": 8, "lr": 0.6, "rehearsal_ratio": 1.0, "mode": "exact"}
EXPORTERS = {"onnx": "host_tools.export_onnx", "tflite": "host_tools.export_tflite"}


# ---------------------------------------------------------------------------------------------
# sizes


def parse_bytes(text: str | int | float) -> int:
    """``64MB`` (10**6), ``64MiB`` (2**20), ``1.5GB``, ``512k``, ``1000000`` -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", str(text), re.I)
    if not m or (m.group(3) and not m.group(2)):
        raise UserError(f"cannot read the memory size {text!r} (e.g. 64MB, 64MiB, 1.5GB, 500000)")
    value, prefix, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    power = " kmgt".index(prefix) if prefix else 0
    return int(value * (1024 if binary else 1000) ** power)


def _prod(shape) -> int:
    return int(math.prod(shape))


@dataclass(frozen=True)
class PlanConfig:
    batch: int = 16                  # fine-tuning batch (the bundle's finetune default)
    frozen_batch: int = FROZEN_BATCH
    cache_samples: int = 600         # head inputs cached once: user batch + holdout + rehearsal
    overhead: int = RUNTIME_OVERHEAD


def cut_points(spec: NetworkSpec) -> list[int]:
    """Possible partition points: the index of every synaptic layer (head = layers[cut:])."""
    return spec.synaptic_layers()


def plan_cut(spec: NetworkSpec, cut: int, config: PlanConfig = PlanConfig()) -> dict:
    """Device memory (bytes) for fine-tuning the head ``layers[cut:]``; see docs/host.md."""
    from edge_sdfa import float_net as fn

    shapes = spec.shapes()
    T, B, Bf, C = spec.time_steps, config.batch, config.frozen_batch, spec.num_classes
    frozen_w = head_w8 = masters = head_bias = 0
    acc = 0
    frozen_act = 0
    tr_layers = []
    for i, layer in enumerate(spec.layers):
        if not has_synapses(layer):
            continue
        w = _prod(layer.param_shapes()["weight"])
        bias = 4 * _prod(layer.param_shapes()["bias"]) if layer.bias else 0
        n_in, n_out = _prod(shapes[i]), _prod(shapes[i + 1])
        if i < cut:
            frozen_w += w + bias
            frozen_act = max(frozen_act, T * Bf * (n_in + 9 * n_out))
        else:
            head_w8 += w
            masters += 2 * w
            head_bias += bias
            acc = max(acc, 8 * w)
            tr_layers.append((i, n_in, n_out))
    head_spec = spec.split(cut)[1]
    hshapes = head_spec.shapes()
    feedback = 0
    for first, last in fn.feedback_blocks(head_spec):
        feedback += C * _prod(hshapes[last + 1])
    spikes = sum(_prod(s) for s in hshapes[1:])
    act = T * B * (sum(n_in + 8 * n_out for _, n_in, n_out in tr_layers) + spikes + 16 * C
                   + max((9 * n_out for _, _, n_out in tr_layers), default=0))
    cache = config.cache_samples * T * _prod(shapes[cut])
    parts = {
        "frozen_weights": frozen_w,
        "trainable_int8": head_w8,
        "trainable_int16_masters": masters,
        "trainable_bias": head_bias,
        "optimizer_state": acc + feedback,
        "activations": act,
        "frozen_activations": frozen_act,
        "cached_head_inputs": cache,
        "runtime_overhead": config.overhead,
    }
    syn = spec.synaptic_layers()
    return {"cut": cut, "trainable_layers": sum(1 for i in syn if i >= cut),
            "trainable_kinds": sorted({spec.layers[i].type for i in syn if i >= cut}),
            "trainable_parameters": head_w8, "frozen_parameters": sum(_prod(spec.layers[i].param_shapes()["weight"])
                                                                       for i in syn if i < cut),
            "bytes": parts, "total_bytes": int(sum(parts.values())),
            "total_mib": round(sum(parts.values()) / 2 ** 20, 3)}


def plan_all(spec: NetworkSpec, config: PlanConfig = PlanConfig()) -> list[dict]:
    return [plan_cut(spec, cut, config) for cut in cut_points(spec)]


def choose_cut(spec: NetworkSpec, plans: list[dict], trainable_layers: int | None, budget: int | None) -> int:
    """The partition point: K trainable synaptic layers, or the largest dense-only suffix within
    budget; with neither, the largest dense-only suffix (the int8 rule trains dense layers only)."""
    syn = spec.synaptic_layers()
    if trainable_layers is None and budget is None:
        dense = [p["cut"] for p in plans if p["trainable_kinds"] == ["dense"]]
        if not dense:
            raise UserError("no suffix of the network is dense-only; pass --trainable-layers or --memory-budget")
        return min(dense)
    if trainable_layers is not None:
        if not 1 <= trainable_layers <= len(syn):
            raise UserError(f"--trainable-layers must be between 1 and {len(syn)} (the network has {len(syn)} "
                            "synaptic layers)")
        return syn[-trainable_layers]
    fitting = [p for p in plans if p["total_bytes"] <= budget and p["trainable_kinds"] == ["dense"]]
    if not fitting:
        dense = [p for p in plans if p["trainable_kinds"] == ["dense"]]
        need = min((p["total_bytes"] for p in dense), default=None)
        detail = (f"the smallest head (1 dense layer) needs {need} bytes ({need / 2 ** 20:.1f} MiB)"
                  if need is not None else "no suffix of the network is dense-only")
        raise UserError(f"design rule memory_budget failed: no trainable suffix fits {budget} bytes "
                        f"({budget / 2 ** 20:.1f} MiB); {detail}")
    return min(p["cut"] for p in fitting)


# ---------------------------------------------------------------------------------------------
# calibration


def _blocks(spec: NetworkSpec) -> list[tuple[int, int]]:
    """(start, synaptic index): the non-synaptic layers before a synaptic layer, and it."""
    out, start = [], 0
    for i in spec.synaptic_layers():
        out.append((start, i))
        start = i + 1
    return out


def _qlayer(layer, params: dict, exp: int, fold: float, trainable: bool):
    from edge_sdfa.int8 import arith
    from edge_sdfa.int8.net import QLayer

    w = params["weight"].astype(np.float64) * fold
    w8, sat = arith.quantize_weight(w, exp)
    if isinstance(layer, Dense):
        w8 = np.ascontiguousarray(w8.T)
    bias = None
    if "bias" in params:
        bias = np.round(params["bias"].astype(np.float64) * 2.0 ** exp).astype(np.int32)
    return QLayer(exp, w8, bias, arith.master_from_w8(w8) if trainable else None), sat


def calibrate(spec: NetworkSpec, params, x: np.ndarray, cut: int, headroom: float = 2.0,
              candidates: int = 3) -> tuple[list, dict]:
    """int8 layers with power-of-two scales chosen on sample data ``x[N, T, ...]``.

    Frozen layers, in order: for exponents e_max .. e_max + candidates - 1 (e_max the largest
    without clipping), quantise, run the int8 layer on the int8 network's own input to it, and keep
    the exponent whose output spikes differ least from the float layer's on the same input (ties:
    the smaller exponent, less clipping). Trainable layers keep ``headroom`` of the int8 range free
    to grow during fine-tuning (e = largest with max|w| * headroom <= 127) and are not searched.
    Returns (qnet, report) with per-layer exponent, spike mismatch, clipped weights, the largest
    input value and the float32-exactness bound of its integer sums.
    """
    from edge_sdfa.int8 import arith
    from edge_sdfa.int8 import net as qn
    from edge_sdfa.int8.net import QLayer

    shapes = spec.shapes()
    qnet = [QLayer() for _ in spec.layers]
    rows = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # [T, N, ...]
    layers_report = []
    for start, i in _blocks(spec):
        layer = spec.layers[i]
        block = NetworkSpec(shapes[start], spec.layers[start:i + 1], spec.time_steps, spec.loss)
        fold = 1.0
        for j in range(start, i):
            lj = spec.layers[j]
            if isinstance(lj, Pool2d) and lj.mode == "avg":
                fold /= lj.kernel_size ** 2
        wmax = float(np.abs(params[i]["weight"]).max()) * fold
        trainable = i >= cut
        in_max = int(rows.max()) if rows.size else 0
        pooled_max = in_max
        for j in range(start, i):
            lj = spec.layers[j]
            if isinstance(lj, Pool2d) and lj.mode == "avg":
                pooled_max *= lj.kernel_size ** 2
        f_params = [{} for _ in range(start, i)] + [params[i]]
        f_spikes = _float_block_spikes(block, f_params, rows)  # the float layer on the same int8 input
        if trainable:
            exps = [arith.weight_exponent(wmax, headroom)]
        else:
            e0 = arith.weight_exponent(wmax, 1.0)
            exps = [e0 + k for k in range(max(1, candidates))]
        best = None
        for e in exps:
            q, sat = _qlayer(layer, params[i], e, fold, trainable)
            blk_q = [QLayer() for _ in range(start, i)] + [q]
            out = qn.forward(block, blk_q, rows).out_spikes
            mismatch = float(np.mean(out != f_spikes.reshape(out.shape))) if out.size else 0.0
            key = (mismatch, e)
            if best is None or key < best[0]:
                best = (key, q, sat, out)
        (mismatch, e), q, sat, out = best
        qnet[i] = q
        fan_in = _prod(layer.param_shapes()["weight"][1:])
        w8max = int(np.abs(q.w8.astype(np.int32)).max()) if q.w8.size else 0
        const = arith.neuron_constants(layer.neuron, e)
        layers_report.append({
            "layer": i, "type": layer.type, "trainable": trainable, "exp": e, "candidates": exps,
            "spike_mismatch": mismatch, "spike_rate": float(out.mean()) if out.size else 0.0,
            "clipped": int(sat), "clipped_fraction": sat / max(q.w8.size, 1), "weights": int(q.w8.size),
            "input_max": pooled_max, "fan_in": fan_in, "w8_max": w8max,
            "sum_bound": int(fan_in * pooled_max * 127), "vth_q": const["vth"], "vreset_q": const["vreset"],
            "decay_q": const["decay"],
            "bias_max": int(np.abs(q.bias.astype(np.int64)).max()) if q.bias is not None and q.bias.size else 0,
        })
        rows = out.reshape(out.shape[0], out.shape[1], *shapes[i + 1])
    return qnet, {"samples": int(len(x)), "layers": layers_report}


def _float_block_spikes(block: NetworkSpec, params, rows: np.ndarray) -> np.ndarray:
    from edge_sdfa import float_net as fn

    trace = fn.forward(block, params, rows.astype(np.float32), keep=True)
    out = trace.outputs[-1]
    return out.reshape(rows.shape[0], rows.shape[1], *out.shape[1:])


# ---------------------------------------------------------------------------------------------
# design rules


def design_rules(spec: NetworkSpec, cut: int, qnet, calib: dict, plan: dict, budget: int | None,
                 frozen_format: str, x_dtype) -> list[dict]:
    """Named checks of what the device runtime supports. Each: {rule, status: pass|warn|fail, detail}."""
    from edge_sdfa.int8 import arith

    rules = []

    def add(rule, ok, detail, warn=False):
        rules.append({"rule": rule, "status": "pass" if ok else ("warn" if warn else "fail"), "detail": detail})

    bad = [f"layer {i} {l.neuron.kind}" for i, l in enumerate(spec.layers) if has_synapses(l)
           and (l.neuron.kind not in ("lif", "if") or (l.neuron.kind == "lif" and not 1 < l.neuron.tau <= 4096))]
    add("supported_neurons", not bad, "LIF (1 < tau <= 4096 steps) and IF, hard or subtract reset"
        + (f"; unsupported: {', '.join(bad)}" if bad else ""))
    syn = spec.synaptic_layers()
    head_syn = [i for i in syn if i >= cut]
    add("trainable_head", bool(head_syn), f"{len(head_syn)} trainable synaptic layer(s) from layer {cut}")
    conv_head = [i for i in head_syn if not isinstance(spec.layers[i], Dense)]
    add("trainable_dense_only", not conv_head,
        "only dense layers train in int8" + (f"; trainable non-dense layers: {conv_head} (move the cut to "
                                             f"layer {max(conv_head) + 1} or later)" if conv_head else ""))
    integer = np.issubdtype(np.dtype(x_dtype), np.integer) or np.dtype(x_dtype) == np.bool_
    add("integer_inputs", integer, f"inputs are {np.dtype(x_dtype)}; the int8 runtime takes uint8 spikes/counts")
    sat = [(r["layer"], r["clipped_fraction"]) for r in calib["layers"] if r["clipped_fraction"] > SATURATION_LIMIT]
    add("int8_weight_range", not sat, f"at most {SATURATION_LIMIT:.0%} of a layer's weights clipped at +-127"
        + (f"; over: {', '.join(f'layer {i} {f:.1%}' for i, f in sat)}" if sat else ""))
    lim = (1 << 31) - 1
    bad_thr = [r["layer"] for r in calib["layers"] if not (1 <= r["vth_q"] <= lim) or abs(r["vreset_q"]) > lim
               or r["bias_max"] > lim or (spec.layers[r["layer"]].neuron.kind == "lif" and r["decay_q"] < 1)]
    add("int8_neuron_range", not bad_thr, "threshold >= 1 LSB and fits int32, reset/bias fit int32, LIF decay >= 1/4096"
        + (f"; out of range in layers {bad_thr}" if bad_thr else ""))
    in_max = calib["layers"][0]["input_max"] if calib["layers"] else 0
    add("input_range", in_max <= 255, f"largest input value {in_max} (uint8: <= 255)")
    over = [(r["layer"], r["sum_bound"]) for r in calib["layers"] if r["sum_bound"] >= arith.FLOAT_EXACT_LIMIT]
    add("float32_exact", not over, "integer sums below 2^24 run exactly on float32 BLAS"
        + (f"; layers over the bound use the slower int64 path: "
           f"{', '.join(f'layer {i} ({b:.3g})' for i, b in over)}" if over else ""), warn=True)
    if budget is None:
        add("memory_budget", True, f"no budget given; plan total {plan['total_bytes']} bytes")
    else:
        add("memory_budget", plan["total_bytes"] <= budget,
            f"plan total {plan['total_bytes']} bytes vs budget {budget} bytes")
    if cut == 0:
        add("frozen_exporter", True, "no frozen part (every layer trains)")
    elif frozen_format == "npz":
        add("frozen_exporter", True, "npz frozen part (numpy int8 executor)")
    else:
        ok = _exporter(frozen_format, check_only=True)
        add("frozen_exporter", ok, f"{frozen_format} exporter {EXPORTERS[frozen_format]}.export_frozen "
            + ("available" if ok else "is not installed in this checkout"))
    return rules


def _exporter(fmt: str, check_only: bool = False):
    import importlib

    try:
        mod = importlib.import_module(EXPORTERS[fmt])
    except ModuleNotFoundError as exc:
        if check_only:
            return False
        raise UserError(f"--frozen-format {fmt}: the exporter {EXPORTERS[fmt]} is not available ({exc})") from None
    fn = getattr(mod, "export_frozen", None)
    if check_only:
        return fn is not None
    if fn is None:
        raise UserError(f"--frozen-format {fmt}: {EXPORTERS[fmt]} has no export_frozen()")
    return fn


# ---------------------------------------------------------------------------------------------
# the command


def _fit_shape(x: np.ndarray, spec: NetworkSpec, what: str) -> np.ndarray:
    if tuple(x.shape[2:]) == tuple(spec.input_shape):
        return x
    if _prod(x.shape[2:]) == _prod(spec.input_shape):
        return x.reshape(len(x), x.shape[1], *spec.input_shape)
    raise UserError(f"{what}: samples have shape {tuple(x.shape[2:])}, the model takes {tuple(spec.input_shape)}")


def partition(model: str | Path, out: str | Path, *, calib: str, trainable_layers: int | None = None,
              memory_budget: str | int | None = None, frozen_format: str = "npz", holdout: str | None = None,
              calib_samples: int = 256, holdout_samples: int = 200, rehearsal_samples: int = 300,
              holdout_limit: int | None = 2000, headroom: float = 2.0, batch: int | None = None,
              model_id: str | None = None, version: int = 1, feedback_seed: int | None = None, seed: int = 0,
              dt: float | None = None, reset: str = "auto", approximate: bool = False,
              time_steps: int | None = None, runtime_overhead: str | int | None = None,
              progress: bool = False) -> dict:
    """Import, calibrate, plan, check, write the bundle; returns the report ``--json`` prints."""
    import sys

    from edge_sdfa import float_net as fn
    from edge_sdfa.bundle import write_bundle
    from edge_sdfa.int8 import net as qn
    from host_tools import nir_io
    from host_tools.datasets import load_arrays
    from host_tools.pretrain import holdout_split, split_specs

    t0 = time.perf_counter()
    if trainable_layers is not None and memory_budget is not None:
        raise UserError("give at most one of --trainable-layers K or --memory-budget SIZE")
    if frozen_format not in ("npz", "onnx", "tflite"):
        raise UserError(f"--frozen-format {frozen_format!r} must be npz, onnx or tflite")
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out")
    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    log = (lambda msg: sys.stderr.write(msg + "\n")) if progress else (lambda msg: None)

    imp = nir_io.import_graph(model, dt=dt, reset=reset, approximate=approximate, time_steps=time_steps)
    spec, params = imp.spec, imp.params
    ours = imp.metadata.get("edge_sdfa") if isinstance(imp.metadata.get("edge_sdfa"), dict) else {}
    if feedback_seed is None and str(ours.get("method", "")).startswith("sdfa") and "seed" in ours:
        # pretrained with SDFA: the device must use the same feedback matrices, or its hidden-layer
        # updates are not aligned with the forward weights (docs/personalisation.md)
        feedback_seed = int(ours["seed"])
    log(f"partition: imported {len(spec.layers)} layers from {model}")
    ft = dict(FINETUNE_DEFAULTS)
    if batch is not None:
        ft["batch_size"] = int(batch)
    config = PlanConfig(batch=int(ft["batch_size"]), cache_samples=holdout_samples + rehearsal_samples + 100,
                        overhead=RUNTIME_OVERHEAD if runtime_overhead is None else parse_bytes(runtime_overhead))
    plans = plan_all(spec, config)
    cut = choose_cut(spec, plans, trainable_layers, budget)
    plan = next(p for p in plans if p["cut"] == cut)

    train_ds, test_ds = split_specs(calib)
    x, y, _ = load_arrays(train_ds, time_steps=spec.time_steps)
    x = _fit_shape(x, spec, calib)
    rng = np.random.default_rng([seed, 31])
    if holdout is not None:
        xh, yh, _ = load_arrays(holdout, time_steps=spec.time_steps, limit=holdout_limit)
        hold_how = holdout
    elif test_ds is not None:
        xh, yh, _ = load_arrays(test_ds, time_steps=spec.time_steps, limit=holdout_limit)
        hold_how = "split=test of --calib"
    else:
        tr, te = holdout_split(y, 0.2, seed)
        xh, yh, x, y = x[te], y[te], x[tr], y[tr]
        hold_how = "seeded stratified 20 % of --calib"
    xh = _fit_shape(xh, spec, holdout or calib)
    if len(y) == 0 or len(yh) == 0:
        raise UserError("calibration and holdout data must not be empty")
    classes = spec.num_classes
    if max(int(y.max()), int(yh.max())) >= classes:
        raise UserError(f"data labels go up to {max(int(y.max()), int(yh.max()))}, the model has {classes} outputs")

    cal_idx = rng.choice(len(y), min(calib_samples, len(y)), replace=False)
    if x.dtype.kind == "f":
        calib_report = {"samples": 0, "layers": []}
        qnet = None
    else:
        qnet, calib_report = calibrate(spec, params, x[cal_idx], cut, headroom)
    rules = design_rules(spec, cut, qnet, calib_report, plan, budget, frozen_format, x.dtype)
    failed = [r for r in rules if r["status"] == "fail"]
    if failed:
        raise UserError("; ".join(f"design rule {r['rule']} failed: {r['detail']}" for r in failed))
    log(f"partition: cut at layer {cut}, {plan['trainable_layers']} trainable layer(s), plan {plan['total_mib']} MiB")

    float_acc = float(np.mean(fn.predict(spec, params, xh) == yh))
    int8_acc = float(np.mean(qn.predict(spec, qnet, xh) == yh))
    hold_pick = np.sort(rng.choice(len(yh), min(holdout_samples, len(yh)), replace=False))
    reh_pick = np.sort(rng.choice(len(y), min(rehearsal_samples, len(y)), replace=False))
    bundle_hold_int8 = float(np.mean(qn.predict(spec, qnet, xh[hold_pick]) == yh[hold_pick]))

    src = Path(model)
    sha = hashlib.sha256(src.read_bytes()).hexdigest() if src.is_file() else None
    frozen_files, fmt = None, None
    tmpdir = None
    try:
        if cut > 0 and frozen_format != "npz":
            export = _exporter(frozen_format)
            tmpdir = Path(tempfile.mkdtemp(prefix="edge-sdfa-frozen-"))
            path = Path(export(spec, qnet, cut, tmpdir / f"frozen.{frozen_format}"))
            frozen_files, fmt = {f"frozen.{frozen_format}": path}, frozen_format
        metadata = {"source_nir": str(model), "source_sha256": sha, "nir_dt": imp.dt,
                    "encoding": imp.metadata.get("encoding"), "import_notes": imp.notes,
                    "calibration": {"spec": calib, "samples": calib_report["samples"],
                                    "exps": {str(r["layer"]): r["exp"] for r in calib_report["layers"]}},
                    "accuracy": {"float": float_acc, "int8": int8_acc, "holdout": hold_how, "samples": int(len(yh))},
                    "plan": plan, "design_rules": {r["rule"]: r["status"] for r in rules},
                    "made_by": "edge-sdfa partition"}
        write_bundle(out, spec, qnet, cut, model_id=model_id or src.stem, version=version,
                     holdout=(xh[hold_pick], yh[hold_pick]), rehearsal=(x[reh_pick], y[reh_pick]),
                     feedback_seed=int(seed + 1234 if feedback_seed is None else feedback_seed),
                     frozen_files=frozen_files, frozen_format=fmt, metadata=metadata, finetune_defaults=ft)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    return {
        "out": str(out),
        "cut": cut,
        "trainable_layers": plan["trainable_layers"],
        "frozen_format": "none" if cut == 0 else frozen_format,
        "float_accuracy": float_acc,
        "int8_accuracy": int8_acc,
        "accuracy_drop": float_acc - int8_acc,
        "holdout": hold_how,
        "holdout_samples_evaluated": int(len(yh)),
        "bundle_holdout_samples": int(len(hold_pick)),
        "bundle_holdout_int8_accuracy": bundle_hold_int8,
        "rehearsal_samples": int(len(reh_pick)),
        "memory_budget": budget,
        "plan": plan,
        "plans": plans,
        "calibration": calib_report,
        "design_rules": rules,
        "notes": imp.notes,
        "files": files,
        "seconds": time.perf_counter() - t0,
    }
