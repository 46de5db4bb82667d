"""Test accuracy of the learning rules on real handwritten digits (held-out split), mean of seeds.

scikit-learn's bundled 8x8 digits, rate-coded over T=10 steps; an MLP 64-128-128-10 of LIF
neurons (two hidden layers); trained from scratch on the train split, tested on the held-out test
split (never used for any choice). Float rules use Adam (as the reference); the int8 rule uses
SGD with stochastic rounding (int16 masters), from the same initial weights quantised to int8.

    python benchmarks/accuracy.py --json [--seeds 3] [--epochs 30]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.int8 import net as qn
from edge_sdfa.int8 import kernels as kernel_sets
from edge_sdfa.spec import mlp
from edge_sdfa.train import TrainConfig, accuracy, train
from host_tools.datasets.digits import digits_spikes

SIZES = [64, 128, 128, 10]
T = 10


def run_float(method, seed, epochs, xtr, ytr, xte, yte):
    spec = mlp(SIZES, time_steps=T)
    params = fn.init_params(spec, seed)
    params, _ = train(spec, params, xtr, ytr, TrainConfig(method=method, epochs=epochs, batch_size=32, lr=3e-3,
                                                          seed=seed, feedback_seed=seed))
    return accuracy(spec, params, xte, yte)


def run_int8(seed, epochs, xtr, ytr, xte, yte, lr=3.0, headroom=4.0):
    spec = mlp(SIZES, time_steps=T)
    qnet, _ = qn.quantize(spec, fn.init_params(spec, seed), headroom=headroom)
    feedback = qn.feedback_int8(spec, seed)
    kernels = kernel_sets.get()
    rng = np.random.default_rng(seed)
    update = 0
    for epoch in range(epochs):
        cfg = qn.UpdateConfig(lr=0.5 * lr * (1 + math.cos(math.pi * epoch / epochs)), mode="online", seed=seed)
        order = rng.permutation(len(ytr))
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            qnet, _ = qn.sdfa_update(spec, qnet, np.swapaxes(xtr[idx], 0, 1), ytr[idx], feedback, cfg, update, kernels)
            update += 1
    return float(np.mean(qn.predict(spec, qnet, xte, kernels) == yte))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    xtr, ytr = digits_spikes("train", T, seed=1)
    xte, yte = digits_spikes("test", T, seed=2)
    runs = {"bptt_float": [], "sdfa_float_exact": [], "sdfa_float_online": [], "sdfa_int8_online": []}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for method in ("bptt", "sdfa_exact", "sdfa_online"):
            key = "bptt_float" if method == "bptt" else f"{method.replace('sdfa_', 'sdfa_float_')}"
            runs[key].append(run_float(method, seed, args.epochs, xtr, ytr, xte, yte))
            print(f"seed {seed} {key}: {runs[key][-1]:.4f}", file=sys.stderr)
        runs["sdfa_int8_online"].append(run_int8(seed, args.epochs, xtr, ytr, xte, yte))
        print(f"seed {seed} sdfa_int8_online: {runs['sdfa_int8_online'][-1]:.4f}", file=sys.stderr)
    report = {k: float(np.mean(v)) for k, v in runs.items()}
    report.update({
        "per_seed": runs,
        "gap_sdfa_exact_vs_bptt": report["bptt_float"] - report["sdfa_float_exact"],
        "gap_sdfa_online_vs_bptt": report["bptt_float"] - report["sdfa_float_online"],
        "gap_int8_vs_float_online": report["sdfa_float_online"] - report["sdfa_int8_online"],
        "goal_sdfa_within_0.03_of_bptt": bool(report["bptt_float"] - report["sdfa_float_exact"] <= 0.03
                                              and report["bptt_float"] - report["sdfa_float_online"] <= 0.03),
        "goal_int8_within_0.02_of_float": bool(report["sdfa_float_online"] - report["sdfa_int8_online"] <= 0.02),
        "network": "mlp " + "-".join(map(str, SIZES)) + f", LIF tau=2, T={T}",
        "data": f"sklearn digits rate-coded: {len(ytr)} train / {len(yte)} held-out test",
        "epochs": args.epochs, "seeds": args.seeds, "seconds": time.perf_counter() - t0,
    })
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
