"""Inference per sample: the device runtime (``edge_sdfa.Runtime``) vs ONNX Runtime vs TFLite. Prints JSON.

Three whole models (frozen front and head), each written as a bundle for the device runtime and
exported whole with ``host_tools.export_onnx`` / ``host_tools.export_tflite`` for the others:

- ``embedded``: the embedded default bundle (digits, 64-128-128-10 LIF MLP, T=10);
- ``nmnist_mlp``: ``mlp:2312-1000-10``, T=10, cut at 1, input spikes at 10% density;
- ``dvs_convnet``: the DVS ConvNet front ``blocks`` x [Conv2d 3x3 -> LIF -> MaxPool2d 2] on
  2xSxS (``benchmarks/executors.py``'s front) with a Dense(11) head, T=10, 10% density.

Each (model, runtime) pair runs in its own process, so its peak RSS (``ru_maxrss``) is its own:
the input is loaded, the model opened and warmed up, then ``repeats`` calls of ONE sample are
timed (median and p99: the latency an application deciding live windows sees), then calls of a
batch (the cost per sample when samples queue up). Every runtime's output counts are checked
equal to the device runtime's before timing (all are integer-exact). ``ratio_vs_onnxruntime``
is onnxruntime's median over the runtime's (> 1: faster than onnxruntime).

``--threads N`` gives every runtime N threads (onnxruntime intra-op, TFLite, the C kernels);
by default each picks its own (the device runtime: one thread for a one-sample call, all cores
for larger ones).

    python benchmarks/predict.py --json [--quick] [--threads N] [--repeats 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

RUNTIMES = ("device", "onnxruntime", "tflite")


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (a forked child's ``ru_maxrss`` starts at its parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 2 ** 20)


# ---------------------------------------------------------------------------------------------
# models (parent process)


def build_models(args, tmp: Path) -> dict:
    from edge_sdfa.bundle import read_bundle, write_bundle
    from edge_sdfa.finetune import DEFAULT_BUNDLE, DEFAULT_USER_TEST
    from edge_sdfa.spec import mlp
    from executors import dvs_convnet_front, spiking_qnet

    rng = np.random.default_rng(0)
    models = {}
    if "embedded" in args.models:
        b = read_bundle(DEFAULT_BUNDLE)
        x = np.load(DEFAULT_USER_TEST)["x"][: args.batch]
        models["embedded"] = dict(spec=b.spec, qnet=b.qnet, cut=b.cut, bundle=DEFAULT_BUNDLE, x=x,
                                  describe="embedded default bundle: digits 64-128-128-10 LIF, T=10")
    if "mlp" in args.models:
        spec = mlp([2312, 1000, 10], time_steps=args.time_steps)
        models["nmnist_mlp"] = dict(spec=spec, qnet=spiking_qnet(spec, 10.0), cut=1,
                                    describe="mlp:2312-1000-10 (N-MNIST), cut at 1")
    if "conv" in args.models:
        c, blocks, size = args.channels, args.blocks, args.size
        spec = dvs_convnet_front(c, blocks, size, args.time_steps)
        models["dvs_convnet"] = dict(spec=spec, qnet=spiking_qnet(spec, 10.0), cut=2 * blocks,
                                     describe=f"DVS ConvNet front 2x{size}x{size}, {blocks} x [Conv2d({c}) 3x3 + LIF + "
                                              "MaxPool2d 2] + Dense(11)")
    for name, m in models.items():
        spec = m["spec"]
        if "x" not in m:
            batch = min(args.batch, args.conv_batch) if name == "dvs_convnet" else args.batch
            m["x"] = (rng.random((batch, spec.time_steps, *spec.input_shape)) < args.density).astype(np.uint8)
        if "bundle" not in m:
            from edge_sdfa.int8.net import QLayer

            qnet = [q if i < m["cut"] or q.w8 is None
                    else QLayer(q.exp, q.w8, q.bias, q.master if q.master is not None else q.w8.astype(np.int16) << 8)
                    for i, q in enumerate(m["qnet"])]
            hold = (m["x"][:4], np.zeros(4, np.int64))
            m["bundle"] = write_bundle(tmp / f"{name}.bundle", spec, qnet, m["cut"], model_id=name, version=1,
                                       holdout=hold)
        np.save(tmp / f"{name}.x.npy", m["x"])
    return models


def export(models: dict, tmp: Path) -> None:
    from host_tools import export_onnx, export_tflite

    for name, m in models.items():
        n = len(m["spec"].layers)
        imax = int(m["x"].max())
        for fmt, mod in (("onnx", export_onnx), ("tflite", export_tflite)):
            t0 = time.perf_counter()
            path = mod.export_frozen(m["spec"], m["qnet"], n, tmp / f"{name}.{fmt}", input_max=max(imax, 1))
            m[f"{fmt}_export_s"] = round(time.perf_counter() - t0, 3)
            m[f"{fmt}_bytes"] = path.stat().st_size


# ---------------------------------------------------------------------------------------------
# the worker (one process per model and runtime)


def open_runner(kind: str, tmp: Path, name: str, bundle: str, threads: int | None):
    """A function sample-major x[N, T, ...] -> counts[N, C]."""
    if kind == "device":
        from edge_sdfa import Runtime

        rt = Runtime.open(bundle, batch=256, threads=threads)
        return lambda x: rt.predict(x).counts
    from edge_sdfa.bundle import read_bundle

    b = read_bundle(bundle)
    spec = b.spec
    if kind == "onnxruntime":
        from edge_sdfa.executor_onnx import OnnxExecutor

        ex = OnnxExecutor(path=tmp / f"{name}.onnx", spec=spec, threads=threads)
    elif kind == "tflite":
        from edge_sdfa.executor_tflite import TFLiteExecutor

        ex = TFLiteExecutor(path=tmp / f"{name}.tflite", spec=spec, threads=threads)
    else:
        raise SystemExit(f"unknown runtime {kind}")

    def run(x):
        out = ex.run(np.swapaxes(x, 0, 1))
        return out.reshape(out.shape[0], out.shape[1], -1).sum(axis=0, dtype=np.int64)

    return run


def worker(args) -> None:
    tmp = Path(args.worker_dir)
    x = np.load(tmp / f"{args.worker_model}.x.npy")
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    run = open_runner(args.worker_runtime, tmp, args.worker_model, args.worker_bundle, args.threads)
    open_s = time.perf_counter() - t0
    counts = run(x)  # warm-up and the answer checked against the device runtime's
    np.save(tmp / f"{args.worker_model}.{args.worker_runtime}.counts.npy", counts)
    single = []
    for i in range(args.repeats):
        s = x[i % len(x): i % len(x) + 1]
        t = time.perf_counter()
        run(s)
        single.append(time.perf_counter() - t)
    batched = []
    for _ in range(max(3, args.repeats // 20)):
        t = time.perf_counter()
        run(x)
        batched.append(time.perf_counter() - t)
    single_ms = np.asarray(single) * 1e3
    print(json.dumps({
        "median_ms": round(float(np.median(single_ms)), 4),
        "p99_ms": round(float(np.percentile(single_ms, 99)), 4),
        "batch_ms_per_sample": round(float(np.median(batched)) * 1e3 / len(x), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_open_mb": round(rss0, 1),
        "open_seconds": round(open_s, 3),
    }))


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON on one line (the default is indented JSON)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, a smaller ConvNet input (CI smoke)")
    ap.add_argument("--models", default="embedded,mlp,conv")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=32, help="samples per batched call (and distinct inputs)")
    ap.add_argument("--repeats", type=int, default=200, help="timed one-sample calls")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every runtime: onnxruntime intra-op, TFLite, the C kernels (default: each one's own)")
    ap.add_argument("--conv-batch", type=int, default=4, help="batch of the ConvNet (its activations are large)")
    for flag in ("--worker-dir", "--worker-model", "--worker-runtime", "--worker-bundle"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_dir:
        worker(args)
        return {}
    if args.quick:
        args.repeats, args.batch = min(args.repeats, 40), min(args.batch, 8)
        args.size = min(args.size, 64)
    import onnxruntime

    from edge_sdfa.int8 import kernels as kernel_sets

    try:
        import ai_edge_litert
        tfl = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:  # pragma: no cover
        tfl = "tflite_runtime"
    runtimes = [r for r in args.runtimes.split(",") if r]
    report = {
        "benchmark": "inference per sample: device runtime vs onnxruntime vs TFLite",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
                    "machine": platform.machine(), "onnxruntime": onnxruntime.__version__, "tflite": tfl,
                    "device_kernels": kernel_sets.get().NAME, "threads": args.threads or "runtime default"},
        "unit": "ms per sample: median and p99 of one-sample calls; batch_ms_per_sample: a batch call / batch",
        "repeats": args.repeats, "batch": args.batch, "conv_batch": min(args.batch, args.conv_batch),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="edge-sdfa-predict-bench-") as tmp_name:
        tmp = Path(tmp_name)
        progress("building models and exports")
        models = build_models(args, tmp)
        export(models, tmp)
        for name, m in models.items():
            entry = {"model": m["describe"], "input_shape": list(m["spec"].input_shape),
                     "time_steps": m["spec"].time_steps, "onnx_bytes": m["onnx_bytes"],
                     "tflite_bytes": m["tflite_bytes"], "runtimes": {}}
            for kind in runtimes:
                progress(f"[{name}] {kind}")
                cmd = [sys.executable, os.path.abspath(__file__), "--worker-dir", str(tmp), "--worker-model", name,
                       "--worker-runtime", kind, "--worker-bundle", str(m["bundle"]), "--repeats", str(args.repeats)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    entry["runtimes"][kind] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
                    continue
                entry["runtimes"][kind] = json.loads(proc.stdout)
            ref = tmp / f"{name}.device.counts.npy"
            for kind, r in entry["runtimes"].items():
                if "error" not in r and ref.exists():
                    r["equal_to_device"] = bool(np.array_equal(np.load(tmp / f"{name}.{kind}.counts.npy"), np.load(ref)))
            ort = entry["runtimes"].get("onnxruntime", {})
            for r in entry["runtimes"].values():
                if "median_ms" in r and "median_ms" in ort:
                    r["ratio_vs_onnxruntime"] = round(ort["median_ms"] / r["median_ms"], 2)
                    r["batch_ratio_vs_onnxruntime"] = round(ort["batch_ms_per_sample"] / r["batch_ms_per_sample"], 2)
            report["models"][name] = entry
    print(json.dumps(report, indent=None if args.json else 1))
    return report


if __name__ == "__main__":
    main()
