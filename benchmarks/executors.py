"""Frozen-part inference per sample: numpy int8 reference vs ONNX Runtime vs TFLite. Prints JSON.

Two frozen fronts, each exported with ``host_tools.export_onnx`` / ``host_tools.export_tflite``
and checked bit-exact against the numpy reference before it is timed:

- ``nmnist_mlp``: the N-MNIST MLP front ``2312 -> 1000`` LIF of ``mlp:2312-1000-10`` cut at 1,
  T=10, random input spikes at 10% density (N-MNIST-like);
- ``dvs_convnet``: the reference DVS ConvNet front on 2x128x128 input: ``blocks`` x [Conv2d 3x3
  pad 1 -> LIF -> MaxPool2d 2] with ``channels`` channels (default 32 channels, 3 blocks; ``--full``
  is the reference's 128 channels, 5 blocks), T=10, 10% input density.

Weights are PyTorch-default init scaled so the neurons fire (rates are reported), quantised with
``edge_sdfa.int8.net.quantize``. Each executor is warmed up once, then the median of ``repeats``
runs of one batch is divided by the batch size. ``numpy`` is ``NumpyExecutor``'s path with the
kernels a device would pick (C where built at install time), ``numpy_reference`` the pure-numpy kernels;
``speedup`` is against ``numpy``.

    python benchmarks/executors.py --json [--quick] [--full] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge_sdfa import float_net as fn  # noqa: E402
from edge_sdfa.int8 import net as qn  # noqa: E402
from edge_sdfa.int8 import kernels as kernel_sets  # noqa: E402
from edge_sdfa.spec import Conv2d, Flatten, NetworkSpec, Pool2d, Dense, mlp  # noqa: E402


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dvs_convnet_front(channels: int, blocks: int, size: int, time_steps: int) -> NetworkSpec:
    """The reference's DVS ConvNet front: ``blocks`` x [Conv2d(channels) 3x3 pad 1 + LIF + MaxPool2d 2]
    on 2 x size x size events, then Flatten and an 11-way Dense."""
    layers, ch, hw = [], 2, size
    for _ in range(blocks):
        layers += [Conv2d(ch, channels), Pool2d(2)]
        ch, hw = channels, hw // 2
    layers += [Flatten(), Dense(channels * hw * hw, 11)]
    return NetworkSpec((2, size, size), tuple(layers), time_steps=time_steps)


def spiking_qnet(spec: NetworkSpec, gain: float, seed: int = 1):
    params = fn.init_params(spec, seed)
    for p in params:
        for k in p:
            p[k] = p[k] * gain
    return qn.quantize(spec, params)[0]


def fronts(args) -> dict:
    out = {}
    if "mlp" in args.fronts:
        spec = mlp([2312, 1000, 10], time_steps=args.time_steps)
        out["nmnist_mlp"] = dict(spec=spec, cut=1, gain=10.0, batch=args.mlp_batch,
                                 describe="mlp:2312-1000-10 cut at 1 (Dense 2312->1000 + LIF)")
    if "conv" in args.fronts:
        c, blocks, size = (128, 5, 128) if args.full else (args.channels, args.blocks, args.size)
        spec = dvs_convnet_front(c, blocks, size, args.time_steps)
        out["dvs_convnet"] = dict(spec=spec, cut=2 * blocks, gain=10.0, batch=args.conv_batch,
                                  describe=f"2x{size}x{size}, {blocks} x [Conv2d({c}) 3x3 pad 1 + LIF + MaxPool2d 2]")
    return out


def timed(run, x, repeats: int) -> tuple[float, np.ndarray]:
    out = run(x)  # warm-up (JIT, allocation, first resize)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def bench_front(name: str, f: dict, args, tmp: Path) -> dict:
    from edge_sdfa.executor_onnx import OnnxExecutor
    from edge_sdfa.executor_tflite import TFLiteExecutor
    from host_tools import export_onnx, export_tflite

    spec, cut, batch = f["spec"], f["cut"], f["batch"]
    frozen = spec.split(cut)[0]
    qnet = spiking_qnet(spec, f["gain"])
    rng = np.random.default_rng(0)
    x = (rng.random((spec.time_steps, batch, *spec.input_shape)) < args.density).astype(np.uint8)
    kernels = kernel_sets.get()
    progress(f"[{name}] numpy reference ({batch} samples, T={spec.time_steps})")
    ref = qn.output_spikes(frozen, qnet[:cut], x, "numpy")
    result = {"front": f["describe"], "input_shape": list(spec.input_shape), "output_shape": list(frozen.shapes()[-1]),
              "time_steps": spec.time_steps, "batch": batch, "input_density": args.density,
              "output_spike_rate": round(float(ref.mean()), 4), "executors": {}}
    runs = {"numpy": (lambda a: qn.output_spikes(frozen, qnet[:cut], a, kernels), {"kernels": kernels.NAME})}
    if not args.skip_reference:
        runs["numpy_reference"] = (lambda a: qn.output_spikes(frozen, qnet[:cut], a, "numpy"), {"kernels": "numpy"})
    for fmt, mod, cls in (("onnx", export_onnx, OnnxExecutor), ("tflite", export_tflite, TFLiteExecutor)):
        t0 = time.perf_counter()
        path = mod.export_frozen(spec, qnet, cut, tmp / f"{name}.{fmt}", input_max=1)
        export_s = time.perf_counter() - t0
        ex = cls(path=path, spec=frozen, threads=args.threads)
        runs["onnxruntime" if fmt == "onnx" else "tflite"] = (ex.run, {"file_bytes": path.stat().st_size,
                                                                        "export_seconds": round(export_s, 3)})
    for ex_name, (run, extra) in runs.items():
        progress(f"[{name}] {ex_name}")
        seconds, out = timed(run, x, args.repeats)
        entry = {"ms_per_sample": round(seconds / batch * 1e3, 4), "bit_exact": bool(np.array_equal(out, ref))}
        entry.update(extra)
        result["executors"][ex_name] = entry
    base = result["executors"]["numpy"]["ms_per_sample"]
    for entry in result["executors"].values():
        entry["speedup"] = round(base / entry["ms_per_sample"], 2) if entry["ms_per_sample"] else None
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    ap.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats (CI smoke)")
    ap.add_argument("--full", action="store_true", help="the reference ConvNet front: 128 channels, 5 blocks")
    ap.add_argument("--fronts", default="mlp,conv")
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--mlp-batch", type=int, default=64)
    ap.add_argument("--conv-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: runtime's choice)")
    ap.add_argument("--skip-reference", action="store_true", help="do not time the pure-numpy kernels")
    args = ap.parse_args(argv)
    if args.quick:
        args.mlp_batch, args.conv_batch, args.repeats = min(args.mlp_batch, 16), min(args.conv_batch, 2), min(args.repeats, 2)
        if not args.full:
            args.size = min(args.size, 64)
    import onnxruntime
    try:
        import ai_edge_litert
        tfl_version = getattr(ai_edge_litert, "__version__", "ai-edge-litert")
    except ImportError:  # pragma: no cover
        tfl_version = "tflite_runtime"
    report = {
        "benchmark": "frozen-part executors",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
                    "machine": platform.machine(), "onnxruntime": onnxruntime.__version__, "tflite": tfl_version,
                    "threads": args.threads or "runtime default"},
        "unit": "ms per sample (median of repeats of one batch, divided by the batch size)",
        "repeats": args.repeats,
        "fronts": {},
    }
    with tempfile.TemporaryDirectory(prefix="edge-sdfa-bench-") as tmp:
        for name, f in fronts(args).items():
            report["fronts"][name] = bench_front(name, f, args, Path(tmp))
    print(json.dumps(report, indent=None if args.json else 1))
    return report


if __name__ == "__main__":
    main()
