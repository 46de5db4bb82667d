"""The int8 learning rules against the reference rule (float SDFA exact) on N-MNIST-format data.

Data: scikit-learn's digits through the DVS emulator (``digits-events``, 34x34x2 event counts,
T=10, 1258 train / 539 held-out test); network: MLP 2312-1000-10, LIF tau 2, trained from scratch.

Two parts, in one run:
- ``gradients``: on one batch, the int8 rules' weight gradients (before stochastic rounding, in
  real units) against the float ``exact`` gradients (= the reference SDFA to 3e-7): cosine and
  size ratio per layer, and the hidden/output learning-rate ratio relative to the reference's.
- ``accuracy``: test accuracy after training from scratch: float exact (Adam, as the reference),
  int8 exact, int8 online, and int8 online with the old 1/T on the hidden layer (the rule before
  the fix, emulated as the hidden layer at lr/T). The int8 learning rate is chosen per rule on a
  validation split of the training set (never on the test split).

    python benchmarks/rule.py --json [--epochs 15] [--seeds 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.int8 import net as qn
from edge_sdfa.int8 import kernels as kernel_sets
from edge_sdfa.spec import mlp
from edge_sdfa.train import TrainConfig, accuracy, train

SIZES = [2312, 1000, 10]
T = 10
HEADROOM = 4.0


def load_data(cache: str | None):
    if cache and os.path.exists(cache):
        d = np.load(cache)
        return d["xtr"], d["ytr"], d["xte"], d["yte"]
    from host_tools.datasets import load_arrays

    xtr, ytr, _ = load_arrays("digits-events?split=train", time_steps=T)
    xte, yte, _ = load_arrays("digits-events?split=test", time_steps=T)
    if cache:
        np.savez(cache, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    return xtr, ytr, xte, yte


# ---------------------------------------------------------------------------------------------
# gradients


def compare(a: dict, ref: list) -> dict:
    rows = {}
    for i, g in a.items():
        r = ref[i]["weight"].astype(np.float64)
        na, nr = float(np.linalg.norm(g)), float(np.linalg.norm(r))
        rows[i] = {"cosine": float(np.sum(g * r) / (na * nr)) if na and nr else 0.0,
                   "size_ratio": na / nr if nr else float("nan")}
    return rows


def gradient_report(spec, qnet, x, y, seed):
    fb_float = fn.feedback_matrices(spec, seed)
    fb_int = qn.feedback_int8(spec, seed)
    params = qn.dequantize(spec, qnet)
    _, ref, _ = fn.sdfa_exact_grads(spec, params, x, y, fb_float)
    _, online_f, _ = fn.sdfa_online_grads(spec, params, x, y, fb_float)
    hidden, last = spec.synaptic_layers()[0], spec.synaptic_layers()[-1]
    res = {}
    for name, grads in (("int8_exact", qn.real_gradients(spec, qnet, x, y, fb_int, "exact")),
                        ("int8_online", qn.real_gradients(spec, qnet, x, y, fb_int, "online")),
                        ("float_online", {i: online_f[i]["weight"].astype(np.float64) for i in (hidden, last)})):
        rows = compare(grads, ref)
        res[name] = {
            "hidden_cosine": rows[hidden]["cosine"], "output_cosine": rows[last]["cosine"],
            "hidden_size_ratio": rows[hidden]["size_ratio"], "output_size_ratio": rows[last]["size_ratio"],
            # the hidden/output learning-rate ratio of the rule relative to the reference's (1 = same)
            "hidden_output_ratio_vs_reference": rows[hidden]["size_ratio"] / rows[last]["size_ratio"],
        }
        if name == "int8_online":  # before the fix: the hidden layer had an extra 1/T
            res["int8_online_before_fix"] = dict(res[name], hidden_size_ratio=rows[hidden]["size_ratio"] / T,
                                                 hidden_output_ratio_vs_reference=res[name]["hidden_output_ratio_vs_reference"] / T)
    return res


# ---------------------------------------------------------------------------------------------
# training from scratch


def _with_trainable(qnet, keep):
    return [q if (i in keep or q.master is None) else replace(q, master=None) for i, q in enumerate(qnet)]


def train_int8(spec, qnet, feedback, xtr, ytr, lr, epochs, batch, seed, mode, kernels, hidden_div=1.0):
    """SGD with cosine lr over epochs. ``hidden_div`` divides the hidden layers' lr (T: the old
    online rule, whose hidden layers carried an extra 1/T)."""
    rng = np.random.default_rng(seed)
    last = spec.synaptic_layers()[-1]
    update = 0
    for epoch in range(epochs):
        lr_e = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
        cfg = qn.UpdateConfig(lr=lr_e, mode=mode, seed=seed, feedback_seed=seed)
        order = rng.permutation(len(ytr))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            xb, yb = np.swapaxes(xtr[idx], 0, 1), ytr[idx]
            if hidden_div == 1.0:
                qnet, _ = qn.sdfa_update(spec, qnet, xb, yb, feedback, cfg, update, kernels)
            else:
                masters = [q.master for q in qnet]
                a, _ = qn.sdfa_update(spec, _with_trainable(qnet, {last}), xb, yb, feedback, cfg, update, kernels)
                b, _ = qn.sdfa_update(spec, _with_trainable(qnet, set(range(len(qnet))) - {last}), xb, yb, feedback,
                                      replace(cfg, lr=lr_e / hidden_div), update, kernels)
                qnet = [a[i] if i == last else (b[i] if masters[i] is not None else q)
                        for i, q in enumerate(qnet)]
            update += 1
    return qnet


def run_int8(xtr, ytr, xval, yval, xte, yte, seed, epochs, batch, mode, lrs, kernels, hidden_div=1.0):
    spec = mlp(SIZES, time_steps=T)
    feedback = qn.feedback_int8(spec, seed)
    q0, _ = qn.quantize(spec, fn.init_params(spec, seed), headroom=HEADROOM)
    val = {}
    for lr in lrs:
        q = train_int8(spec, q0, feedback, xtr, ytr, lr, epochs, batch, seed, mode, kernels, hidden_div)
        val[lr] = float(np.mean(qn.predict(spec, q, xval, kernels) == yval))
    best = max(lrs, key=lambda lr: val[lr])
    xall, yall = np.concatenate([xtr, xval]), np.concatenate([ytr, yval])
    q = train_int8(spec, q0, feedback, xall, yall, best, epochs, batch, seed, mode, kernels, hidden_div)
    return {"test": float(np.mean(qn.predict(spec, q, xte, kernels) == yte)), "lr": best, "validation": val}


def run_float(xtr, ytr, xte, yte, seed, epochs, batch, lr):
    spec = mlp(SIZES, time_steps=T)
    params, _ = train(spec, fn.init_params(spec, seed), xtr, ytr,
                      TrainConfig(method="sdfa_exact", epochs=epochs, batch_size=batch, lr=lr, seed=seed,
                                  feedback_seed=seed))
    return {"test": accuracy(spec, params, xte, yte), "lr": lr}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lrs", default="0.3,1,3", help="int8 SGD learning rates tried (on validation)")
    ap.add_argument("--float-lr", type=float, default=3e-3, help="Adam lr of float exact")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edge-sdfa-digits-events.npz"))
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, one lr")
    ap.add_argument("--parts", default="gradients,float,int8",
                    help="what to run: gradients, float (float exact accuracy), int8 (the int8 rules' accuracy)")
    ap.add_argument("--variants", default="int8_exact,int8_online,int8_online_before_fix",
                    help="int8 rules of the accuracy part")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.lrs = 3, 1, "1"
    lrs = [float(v) for v in args.lrs.split(",")]
    t0 = time.perf_counter()
    kernels = kernel_sets.get()
    xtr, ytr, xte, yte = load_data(args.cache)
    spec = mlp(SIZES, time_steps=T)
    report = {"network": "mlp 2312-1000-10, LIF tau=2, T=10", "kernels": kernels.NAME,
              "data": f"digits-events (DVS-emulated digits, N-MNIST layout): {len(ytr)} train / {len(yte)} test",
              "epochs": args.epochs, "batch": args.batch, "seeds": args.seeds}
    # gradients: at init and after a short float-exact training (both from the same seed)
    xb, yb = np.swapaxes(xtr[:128], 0, 1), ytr[:128]
    parts = set(args.parts.split(","))
    if "gradients" in parts:
        grads = {}
        p0 = fn.init_params(spec, 0)
        p1, _ = train(spec, p0, xtr, ytr, TrainConfig(method="sdfa_exact", epochs=2, batch_size=32, lr=3e-3,
                                                      seed=0, feedback_seed=0))
        for name, p in (("init", p0), ("after_2_epochs", p1)):
            qnet, _ = qn.quantize(spec, p, headroom=HEADROOM)
            grads[name] = gradient_report(spec, qnet, xb, yb, 0)
            print(f"gradients {name}: {json.dumps(grads[name])}", file=sys.stderr)
        report["gradients"] = grads
    if parts & {"float", "int8"}:
        rng = np.random.default_rng(123)
        perm = rng.permutation(len(ytr))
        nval = len(ytr) // 5
        val, tr = perm[:nval], perm[nval:]
        variants = [v for v in args.variants.split(",") if v] if "int8" in parts else []
        acc = {k: [] for k in (["float_exact"] if "float" in parts else []) + variants}
        for seed in range(args.seeds):
            if "float" in parts:
                acc["float_exact"].append(run_float(xtr, ytr, xte, yte, seed, args.epochs, args.batch, args.float_lr))
            for key, mode, div in (("int8_exact", "exact", 1.0), ("int8_online", "online", 1.0),
                                   ("int8_online_before_fix", "online", float(T))):
                if key not in variants:
                    continue
                acc[key].append(run_int8(xtr[tr], ytr[tr], xtr[val], ytr[val], xte, yte, seed, args.epochs,
                                         args.batch, mode, lrs, kernels, div))
            for key, runs in acc.items():
                print(f"seed {seed} {key}: {runs[-1]}", file=sys.stderr)
        report["accuracy"] = {k: {"mean": float(np.mean([r["test"] for r in v])), "runs": v} for k, v in acc.items()}
    report["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
