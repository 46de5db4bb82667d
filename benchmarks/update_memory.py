"""Where the int8 update's peak RSS goes: VmHWM at successive points of one process.

    python benchmarks/update_memory.py --json [--shape 2312-1000-10] [--no-in-place]

Points: ``import numpy``; + ``edge_sdfa.int8.net`` and the C library; + the batch and the
quantised model (as ``benchmarks/step.py`` writes them: calibrated weights, batch 128, T=10, 10%
input spikes; written by the parent, so this process holds only what it loads); + the feedback
matrices (``net.feedback_int8``: numpy 2 imports ``numpy.random`` here); then the peak over
``--updates`` int8 SDFA updates with the C set (in place unless ``--no-in-place``). Run it under
another tree with ``PYTHONPATH=TREE`` to compare revisions (``sdfa_update`` without ``in_place``
there: pass ``--no-in-place``). Prints one JSON object (MB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    raise OSError("no VmHWM in /proc/self/status")


def measure(params_path: str, shape: str, updates: int, in_place: bool) -> dict:
    points = {}
    import numpy as np

    points["import numpy"] = _hwm_mb()
    from edge_sdfa.int8 import kernels, net
    from edge_sdfa.spec import mlp

    ks = kernels.get("c")
    points["+ edge_sdfa.int8.net and the C library"] = _hwm_mb()
    spec = mlp([int(s) for s in shape.split("-")], time_steps=10)
    with np.load(params_path, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
        qnet = [net.QLayer(int(z[f"exp_{i}"]), z[f"w8_{i}"], None, z[f"master_{i}"]) for i in range(len(spec.layers))]
    points["+ the batch and the model"] = _hwm_mb()
    feedback = net.feedback_int8(spec, 0)
    points["+ the feedback matrices"] = _hwm_mb()
    cfg = net.UpdateConfig(lr=0.05, mode="online")
    kw = {"in_place": True} if in_place else {}
    for i in range(updates):
        qnet, _ = net.sdfa_update(spec, qnet, x, y, feedback, cfg, i, ks, **kw)
    points[f"peak over {updates} updates"] = _hwm_mb()
    return {"shape": shape, "in_place": in_place, "python": sys.version.split()[0], "numpy": np.__version__,
            "vmhwm_mb": points}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON (the only output form)")
    ap.add_argument("--shape", default="2312-1000-10")
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--in-place", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.params:  # the measuring child
        print(json.dumps(measure(args.params, args.shape, args.updates, args.in_place)))
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import step

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "params.npz")
        step.write_params(args.shape, 128, 10, 0.1, path)
        cmd = [sys.executable, os.path.abspath(__file__), "--shape", args.shape, "--updates", str(args.updates),
               "--params", path] + ([] if args.in_place else ["--no-in-place"])
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"error: the measuring process failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads(out.stdout), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
