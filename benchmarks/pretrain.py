"""Pretraining speed on the reference's N-MNIST MLP-A shape (2312-1000-10, LIF tau 2, T=10, batch 128,
Adam), numpy (this project) against a PyTorch re-implementation of the reference's step, same CPU.

    python benchmarks/pretrain.py --json [--batches 20] [--torch-python /tmp/torchvenv/bin/python]

The data are random spike frames at N-MNIST's density (about 1.6 % of the 2312 inputs active per
step; counts 0..3). Reported: seconds per training batch and the implied seconds per epoch over
N-MNIST's 60,000 training samples. torch is not a project dependency: the PyTorch side runs in
``--torch-python`` (an interpreter with torch installed) or is skipped when torch is absent.
The PyTorch step mirrors the reference: nn.Linear (no bias) -> multi-step LIF (SpikingJelly
semantics: decay_input, hard reset to 0, ATan surrogate alpha=2) for both layers, CE on the mean
output rate, loss.backward() (BPTT), Adam.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SIZES = (2312, 1000, 10)
T, BATCH, EPOCH_SAMPLES = 10, 128, 60000

TORCH_STEP = r"""
import json, sys, time, math
import numpy as np, torch
torch.manual_seed(0)
T, B, batches, density = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
class ATan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x); return (x >= 0).to(x.dtype)
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors; a = 2.0
        return g * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
def lif(cur, tau=2.0):
    v = torch.zeros_like(cur[0]); out = []
    for t in range(cur.shape[0]):
        h = v + (cur[t] - v) / tau
        s = ATan.apply(h - 1.0)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)
fc1 = torch.nn.Linear(2312, 1000, bias=False); fc2 = torch.nn.Linear(1000, 10, bias=False)
opt = torch.optim.Adam(list(fc1.parameters()) + list(fc2.parameters()), lr=1e-2)
rng = np.random.default_rng(0)
xs = [torch.from_numpy(((rng.random((T, B, 2312)) < density) * rng.integers(1, 4, (T, B, 2312))).astype(np.float32)) for _ in range(3)]
y = torch.from_numpy(rng.integers(0, 10, B))
def step(x):
    s1 = lif(fc1(x.reshape(T * B, -1)).reshape(T, B, -1))
    s2 = lif(fc2(s1.reshape(T * B, -1)).reshape(T, B, -1))
    loss = torch.nn.functional.cross_entropy(s2.mean(0), y)
    opt.zero_grad(); loss.backward(); opt.step()
step(xs[0])
t0 = time.perf_counter()
for i in range(batches):
    step(xs[i % 3])
dt = (time.perf_counter() - t0) / batches
print(json.dumps({"seconds_per_batch": dt, "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""


def _data(rng, density):
    return [((rng.random((BATCH, T, SIZES[0])) < density) * rng.integers(1, 4, (BATCH, T, SIZES[0]))).astype(np.uint8)
            for _ in range(3)]


def numpy_step_seconds(method: str, batches: int, density: float) -> float:
    from edge_sdfa import float_net as fn
    from edge_sdfa.spec import mlp
    from edge_sdfa.train import gradients

    spec = mlp(list(SIZES), time_steps=T)
    params = fn.init_params(spec, 0)
    state = fn.optimizer_init("adam", params)
    feedback = fn.feedback_matrices(spec, 0)
    rng = np.random.default_rng(0)
    xs = _data(rng, density)
    y = rng.integers(0, 10, BATCH)

    def step(x):
        nonlocal params, state
        xb = np.swapaxes(x, 0, 1)
        _, grads, _ = gradients(spec, params, xb, y, method, feedback)
        params, state = fn.optimizer_step(params, grads, state, 1e-2)

    step(xs[0])
    t0 = time.perf_counter()
    for i in range(batches):
        step(xs[i % 3])
    return (time.perf_counter() - t0) / batches


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--density", type=float, default=0.016)
    ap.add_argument("--torch-python", default=None, help="python with torch (default: this one, if torch imports)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = {"shape": "-".join(map(str, SIZES)), "time_steps": T, "batch": BATCH, "epoch_samples": EPOCH_SAMPLES,
              "cpus": os.cpu_count()}
    for method in ("bptt", "sdfa_exact", "sdfa_online"):
        s = numpy_step_seconds(method, args.batches, args.density)
        report[f"numpy_{method}_s_per_batch"] = s
        report[f"numpy_{method}_s_per_epoch"] = s * EPOCH_SAMPLES / BATCH
    py = args.torch_python
    if py is None:
        try:
            import torch  # noqa: F401
            py = sys.executable
        except ImportError:
            py = None
    if py is None:
        report["torch"] = "skipped: torch not importable (pass --torch-python)"
    else:
        proc = subprocess.run([py, "-c", TORCH_STEP, str(T), str(BATCH), str(args.batches), str(args.density)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            report["torch"] = f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        else:
            t = json.loads(proc.stdout)
            report["torch"] = t["torch"]
            report["torch_threads"] = t["threads"]
            report["torch_bptt_s_per_batch"] = t["seconds_per_batch"]
            report["torch_bptt_s_per_epoch"] = t["seconds_per_batch"] * EPOCH_SAMPLES / BATCH
            report["speedup_numpy_bptt_vs_torch"] = t["seconds_per_batch"] / report["numpy_bptt_s_per_batch"]
            report["speedup_numpy_sdfa_exact_vs_torch"] = t["seconds_per_batch"] / report["numpy_sdfa_exact_s_per_batch"]
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
