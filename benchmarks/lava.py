"""Lava backend benchmark: SDFA training speed and peak memory of an MLP 784-256-10, Lava
(``fixed_pt`` process models) against the numpy int8 backend in the same run.

    python benchmarks/lava.py --json
    python benchmarks/lava.py --updates 40 --batch 32 --time-steps 10 --json

Each backend runs in its own subprocess (a clean peak RSS). The parent samples the resident set
of the worker *and all its descendants* (Lava runs every Process and its runtime service in
separate OS processes) every 20 ms; the worker also reports its own ``ru_maxrss``. One Lava
step advances every sample of the batch by one SNN time step (batch-parallel streaming), so
``time_steps_per_s`` counts batch time steps and ``sample_steps_per_s`` multiplies by the batch.
Both backends train on the same head, data and seed; ``bit_exact`` compares the final int16
masters and int8 weights. JSON on stdout, progress on stderr.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this file is named lava.py: keep its folder off sys.path so that ``import lava`` finds lava-nc
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# worker (one backend, in its own process)


def worker(args) -> dict:
    import numpy as np

    from edge_sdfa import float_net as fn
    from edge_sdfa.backend import load_backend
    from edge_sdfa.int8 import net as qn
    from edge_sdfa.spec import mlp

    spec = mlp([784, 256, 10], time_steps=args.time_steps)
    params = [{k: v * args.gain for k, v in p.items()} for p in fn.init_params(spec, 0)]
    qnet, _ = qn.quantize(spec, params)
    cfg = qn.UpdateConfig(lr=args.lr, mode=args.mode, seed=1)
    rng = np.random.default_rng(0)
    data = [((rng.random((args.time_steps, args.batch, 784)) < args.rate).astype(np.uint8),
             rng.integers(0, 10, args.batch)) for _ in range(args.updates + 1)]
    options = {"kernels": args.kernels} if args.kernels and args.backend == "numpy" else {}
    if args.backend == "lava":
        options["capacity"] = args.batch
    t0 = time.perf_counter()
    be = load_backend(args.backend, **options)
    be.program(spec, qnet, 7, cfg)
    be.update(*data[0], 0)                       # warm-up: graph build, first step, JIT
    setup = time.perf_counter() - t0
    spikes = 0
    t0 = time.perf_counter()
    for u, (x, y) in enumerate(data[1:], start=1):
        stats = be.update(x, y, u)
        spikes += int(x.sum())
    train = time.perf_counter() - t0
    t0 = time.perf_counter()
    be.forward(data[0][0])
    fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    layers = be.read_weights()
    read = time.perf_counter() - t0
    digest = hashlib.sha256()
    for q in layers:
        digest.update(q.master.tobytes())
        digest.update(q.w8.tobytes())
    if hasattr(be, "close"):
        be.close()
    steps = args.updates * args.time_steps
    return {"backend": args.backend, "kernels": getattr(be, "kernel_set", "numpy"),
            "setup_s": setup, "train_s": train, "updates": args.updates, "time_steps_per_s": steps / train,
            "sample_steps_per_s": steps * args.batch / train, "seconds_per_update": train / args.updates,
            "forward_time_steps_per_s": args.time_steps / fwd, "read_weights_s": read,
            "last_loss": stats.loss, "weights_sha256": digest.hexdigest(),
            "worker_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


# ---------------------------------------------------------------------------------------------
# parent


def _tree_rss_kb(pid: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def run_worker(backend: str, kernels: str | None, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, "--updates", str(args.updates), "--batch", str(args.batch),
           "--time-steps", str(args.time_steps), "--mode", args.mode, "--lr", str(args.lr), "--gain", str(args.gain),
           "--rate", str(args.rate)]
    if kernels:
        cmd += ["--kernels", kernels]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"kb": 0, "procs": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["kb"] = max(peak["kb"], _tree_rss_kb(proc.pid))
            done.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise SystemExit(f"error: the {backend} worker did not finish within {args.timeout} s")
    finally:
        done.set()
        thread.join()
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
        raise SystemExit(f"error: the {backend} worker failed: {tail}")
    result = json.loads(out)
    result["peak_rss_tree_mb"] = peak["kb"] / 1024.0
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="JSON on stdout (the default output anyway)")
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--mode", default="online", choices=["online", "exact"])
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--gain", type=float, default=8.0, help="scale of the random init (spiking activity)")
    ap.add_argument("--rate", type=float, default=0.15, help="input spike probability per step")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kernels", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.backend = args.worker
        sys.stdout.write(json.dumps(worker(args)) + "\n")
        return
    runs = {"numpy": ("numpy", None), "numpy_reference": ("numpy", "numpy"), "lava": ("lava", None)}
    results = {}
    for key, (backend, kernels) in runs.items():
        log(f"lava bench: {key} worker ({args.updates} updates, batch {args.batch}, T={args.time_steps})")
        results[key] = run_worker(backend, kernels, args)
        log(f"lava bench: {key}: {results[key]['time_steps_per_s']:.0f} time steps/s, "
            f"peak {results[key]['peak_rss_tree_mb']:.0f} MB")
    lava = results["lava"]
    fastest = max(results["numpy"]["time_steps_per_s"], results["numpy_reference"]["time_steps_per_s"])
    report = {
        "network": "mlp 784-256-10 (int8, LIF tau=2)", "mode": args.mode, "batch": args.batch,
        "time_steps": args.time_steps, "updates": args.updates, "cpu_count": os.cpu_count(), **results,
        "lava_slowdown_vs_fastest_numpy": fastest / lava["time_steps_per_s"],
        "lava_memory_ratio": lava["peak_rss_tree_mb"] / max(results["numpy"]["peak_rss_tree_mb"], 1e-9),
        "bit_exact": len({(r["weights_sha256"], r["last_loss"]) for r in results.values()}) == 1,
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
