"""The reference SDFA update in plain PyTorch (the peer of ``benchmarks/step.py --peer``).

What HershelYen/Spiking-Direct-Feedback-Alignment trains (module/sdfa.py, model/model.py,
train.py; see docs/learning-rule.md), written without spikingjelly: a multi-step LIF MLP
(Linear without bias -> LIF, tau 2, decay_input, v_th 1, hard reset to 0 not detached, ATan
surrogate alpha 2, spikingjelly's torch backend: a Python loop over T), output = firing rate,
cross-entropy on the rates, one N(0,1) feedback matrix B sliced per layer and normalised by
1/sqrt(max width), the rate error projected once and applied at every step to each hidden
block's output, BPTT inside each block (inputs detached), the output layer's true gradient, Adam.

Runs in any Python with torch and numpy (no edge_sdfa import), one shape per process:

    python benchmarks/torch_peer.py --shape 2312-1000-10 --batch 128 --steps 10 --repeats 7

prints one JSON object: the median seconds per update, CPU seconds, peak RSS (VmHWM), threads.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time

import numpy as np
import torch


class ATanSpike(torch.autograd.Function):
    """heaviside(x) forward; spikingjelly's ATan surrogate (alpha 2) backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        alpha = 2.0
        return grad * (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


def lif_multistep(x_seq: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, v_reset: float = 0.0) -> torch.Tensor:
    """spikingjelly LIFNode(step_mode='m', decay_input=True, detach_reset=False) on [T, N, M]."""
    v = torch.full_like(x_seq[0], v_reset)
    out = []
    for t in range(x_seq.shape[0]):
        h = v + (x_seq[t] - (v - v_reset)) / tau
        s = ATanSpike.apply(h - v_th)
        v = h * (1.0 - s) + v_reset * s
        out.append(s)
    return torch.stack(out)


class SDFAMLP(torch.nn.Module):
    def __init__(self, sizes: list[int], seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fcs = torch.nn.ModuleList(torch.nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        widths = sizes[1:-1]
        self.max_fb = max(widths) if widths else 1
        self.register_buffer("B", torch.randn(sizes[-1], self.max_fb))

    def update(self, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer) -> float:
        """One SDFA update on x [T, N, in] (float), labels y [N]."""
        t_steps, n = x.shape[:2]
        opt.zero_grad(set_to_none=True)
        inp = x
        points = []
        for i, fc in enumerate(self.fcs):
            if i:
                inp = inp.detach().requires_grad_(True)  # DFALayer: detached, requires_grad=True (as the reference)
            cur = fc(inp.reshape(t_steps * n, -1)).reshape(t_steps, n, -1)
            inp = lif_multistep(cur)
            points.append(inp)
        fr = inp.mean(0)
        loss = torch.nn.functional.cross_entropy(fr, y)
        e = torch.autograd.grad(loss, fr, retain_graph=True)[0]
        loss.backward()  # the output block: its true gradient (stops at its detached input)
        rp = e.detach() @ self.B / math.sqrt(self.max_fb)
        for out in points[:-1]:
            fb = rp[:, :out.shape[-1]].unsqueeze(0).expand(t_steps, n, out.shape[-1])
            out.backward(fb)
        opt.step()
        return float(loss)


def vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="2312-1000-10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.shape.split("-")]
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((args.steps, args.batch, sizes[0])) < args.density).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, sizes[-1], args.batch))
    model = SDFAMLP(sizes)
    with torch.no_grad():  # as the int8 worker: hidden layers that fire (default init is silent)
        for fc in model.fcs[:-1]:
            fc.weight.mul_(8.0)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    model.update(x, y, opt)
    first = time.perf_counter() - t0
    model.update(x, y, opt)
    times, cpu = [], []
    for _ in range(args.repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        model.update(x, y, opt)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    with torch.no_grad():
        h = x
        dens = []
        for fc in model.fcs:
            h = lif_multistep(fc(h.reshape(-1, h.shape[-1])).reshape(args.steps, args.batch, -1))
            dens.append(round(float(h.mean()), 4))
    print(json.dumps({"method": "reference_torch_sdfa", "layers": sizes, "batch": args.batch, "T": args.steps,
                      "s_per_update": float(np.median(times)), "cpu_s_per_update": float(np.median(cpu)),
                      "times_s": [round(t, 5) for t in times], "first_call_s": round(first, 3),
                      "peak_rss_mb": round(vm_hwm_mb(), 1), "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads(), "output_density": dens,
                      "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
