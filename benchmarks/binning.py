"""Event binning throughput and bounded-memory iteration. Prints JSON on stdout.

1. ``binning``: events/s of ``events_to_frames`` / ``channel_events_to_frames`` on N-MNIST-, DVS- and
   SHD-sized samples (median of repeats), against a transcription of SpikingJelly's per-frame loop
   (the reference's binning) as the baseline in the same run. Goal: >= 5 M events/s.
2. ``read_and_bin``: events/s for parsing N-MNIST ``.bin`` files and binning them (iter_batches).
3. ``memory``: a large SHD-layout HDF5 file is generated, then iterated with ``iter_batches`` in
   child processes for several batch sizes (and a 4x smaller file); peak RSS above the
   post-import baseline is reported next to the batch size and the dense size of the whole set.

    python benchmarks/binning.py --json [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge_sdfa import binning  # noqa: E402
from host_tools.datasets import iter_batches, synth  # noqa: E402
from edge_sdfa.binning import make_events  # noqa: E402


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spikingjelly_loop(ev, T, H, W):
    """The reference's integrate_events_by_fixed_frames_number (split_by='number'), as written."""
    N = len(ev)
    di = N // T
    frames = np.zeros([T, 2, H, W])
    x_all, y_all, p_all = ev["x"], ev["y"], ev["p"]
    for i in range(T):
        jl, jr = i * di, (i + 1) * di if i < T - 1 else N
        frame = np.zeros([2, H * W])
        x = x_all[jl:jr].astype(int)
        y = y_all[jl:jr].astype(int)
        p = p_all[jl:jr]
        mask = [p == 0]
        mask.append(np.logical_not(mask[0]))
        for c in range(2):
            position = y[mask[c]] * W + x[mask[c]]
            n = np.bincount(position)
            frame[c][np.arange(n.size)] += n
        frames[i] = frame.reshape(2, H, W)
    return frames


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_binning(repeats: int, samples: int) -> list[dict]:
    rng = np.random.default_rng(0)
    cases = [("nmnist", 4200, (34, 34), 10, "number"), ("nmnist", 4200, (34, 34), 10, "time"),
             ("dvsgesture", 300_000, (128, 128), 30, "number"), ("dvsgesture", 300_000, (128, 128), 30, "time"),
             ("dvsgesture-down4", 300_000, (128, 128), 30, "number")]
    out = []
    for name, n, hw, T, split_by in cases:
        k = max(1, samples if n < 100_000 else samples // 50)
        evs = [make_events(np.sort(rng.integers(0, 6_000_000, n)), rng.integers(0, hw[1], n),
                           rng.integers(0, hw[0], n), rng.integers(0, 2, n)) for _ in range(k)]
        down = 4 if name.endswith("down4") else 1
        binning.events_to_frames(evs[0][:10], hw, T, split_by, downsample=down)  # JIT warm-up
        sec = timed(lambda: [binning.events_to_frames(e, hw, T, split_by, downsample=down) for e in evs], repeats)
        sec_np = timed(lambda: [binning.events_to_frames(e, hw, T, split_by, downsample=down, backend="numpy")
                                for e in evs], repeats)
        row = {"case": name, "events_per_sample": n, "T": T, "split_by": split_by, "samples": k,
               "backend": "numba" if binning._numba_kernel() is not None else "numpy",
               "events_per_s_median": n * k / sec, "numpy_path_events_per_s_median": n * k / sec_np}
        if split_by == "number" and down == 1:
            kb = max(1, k // 5)
            sec_b = timed(lambda: [spikingjelly_loop(e, T, hw[0], hw[1]) for e in evs[:kb]], max(1, repeats // 2))
            row["baseline_spikingjelly_loop_events_per_s_median"] = n * kb / sec_b
            row["speedup_vs_baseline"] = row["events_per_s_median"] / row["baseline_spikingjelly_loop_events_per_s_median"]
        out.append(row)
        progress(f"binning {name}/{split_by}: {row['events_per_s_median'] / 1e6:.1f} M events/s "
                 f"(numpy path {row['numpy_path_events_per_s_median'] / 1e6:.1f})")
    # SHD-like channel events, the reference's digitize binning
    n, k = 8000, samples
    chans = [(np.sort(rng.integers(0, 1_400_000, n)), rng.integers(0, 700, n)) for _ in range(k)]
    sec = timed(lambda: [binning.channel_events_to_frames(t, c, 700, 100) for t, c in chans], repeats)
    out.append({"case": "shd", "events_per_sample": n, "T": 100, "split_by": "reference-digitize",
                "samples": k, "events_per_s_median": n * k / sec})
    progress(f"binning shd: {out[-1]['events_per_s_median'] / 1e6:.1f} M events/s")
    return out


def bench_read_and_bin(tmp: str, repeats: int, n_per_class: int) -> dict:
    root = os.path.join(tmp, "nmnist")
    written = synth.write_atis_tree(os.path.join(root, "Train"), {"": [str(d) for d in range(10)]}, n_per_class,
                                    events=(3500, 5000))
    total = sum(len(e) for e in written.values())
    sec = timed(lambda: sum(len(y) for _, y in iter_batches(f"nmnist:{root}", 64, time_steps=10)), repeats)
    return {"case": "nmnist .bin parse + bin (iter_batches, T=10)", "files": len(written), "events": total,
            "events_per_s_median": total / sec, "samples_per_s_median": len(written) / sec}


CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
import numpy as np
from host_tools.datasets import iter_batches, open_dataset
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
def hwm():  # peak RSS of this process image (ru_maxrss would include the parent's, inherited at fork)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
spec, batch = {spec!r}, {batch}
ds = open_dataset(spec); n = len(ds)
ds.to_frames(ds[0], 100); ds.close()   # warm up h5py, the binning kernel and the allocator
base = hwm()
seen, marks = 0, []
for x, y in iter_batches(spec, batch, time_steps=100):
    seen += len(y)
    if len(marks) < 4 and seen >= (len(marks) + 1) * n // 4:
        marks.append(rss())
peak = hwm()
print(json.dumps({{"samples": seen, "baseline_rss": base, "peak_rss": peak, "rss_at_quarters": marks}}))
"""


def bench_memory(tmp: str, n_large: int, batches: list[int]) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {}
    for label, n in (("large", n_large), ("quarter", n_large // 4)):
        d = os.path.join(tmp, f"shd_{label}")
        os.makedirs(d)
        t0 = time.perf_counter()
        synth.write_shd(os.path.join(d, "shd_train.h5"), n, speakers=tuple(range(10)), events=(200, 2000))
        files[label] = (d, n)
        progress(f"memory: wrote {n} SHD samples ({os.path.getsize(os.path.join(d, 'shd_train.h5')) / 1e6:.0f} MB) "
                 f"in {time.perf_counter() - t0:.1f} s")
    rows = []
    for label, (d, n) in files.items():
        for b in batches if label == "large" else batches[-1:]:
            code = CHILD.format(root=root, spec=f"shd:{d}", batch=b)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr)
            m = json.loads(r.stdout)
            batch_bytes = b * 100 * 700
            rows.append({"file": label, "samples": n, "file_mb": os.path.getsize(os.path.join(d, "shd_train.h5")) / 1e6,
                         "dense_dataset_mb": n * 100 * 700 / 1e6, "batch_size": b, "batch_mb": batch_bytes / 1e6,
                         "peak_rss_mb": m["peak_rss"] / 1e6,
                         "peak_rss_above_baseline_mb": (m["peak_rss"] - m["baseline_rss"]) / 1e6,
                         "rss_at_quarters_mb": [round(v / 1e6, 1) for v in m["rss_at_quarters"]],
                         "baseline_rss_mb": m["baseline_rss"] / 1e6})
            progress(f"memory: {label} batch={b}: peak +{rows[-1]['peak_rss_above_baseline_mb']:.1f} MB "
                     f"(batch {rows[-1]['batch_mb']:.1f} MB, whole set {rows[-1]['dense_dataset_mb']:.0f} MB dense)")
    worst = max(r["peak_rss_above_baseline_mb"] - 3 * r["batch_mb"] for r in rows)
    large = [r for r in rows if r["file"] == "large"]
    return {"rows": rows, "bounded_by_batch": bool(worst < 32.0),
            "max_peak_above_baseline_mb": max(r["peak_rss_above_baseline_mb"] for r in rows),
            "largest_dense_dataset_mb": max(r["dense_dataset_mb"] for r in rows),
            "peak_grows_with_batch": bool(large[-1]["peak_rss_above_baseline_mb"] > large[0]["peak_rss_above_baseline_mb"]),
            "criterion": "for every run: peak RSS above the post-import baseline < 3 batches + 32 MB "
                         "(the whole set, dense, is far larger); the same batch on a 4x smaller file peaks alike"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON (the default output anyway)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    tmp = tempfile.mkdtemp(prefix="edge-sdfa-binning-")
    try:
        rows = bench_binning(repeats, 20 if args.quick else 100)
        rb = bench_read_and_bin(tmp, 3, 10 if args.quick else 50)
        progress(f"read+bin: {rb['events_per_s_median'] / 1e6:.1f} M events/s")
        mem = bench_memory(tmp, 2000 if args.quick else 8000, [8, 64, 256])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    nmnist = next(r for r in rows if r["case"] == "nmnist" and r["split_by"] == "number")
    report = {
        "benchmark": "binning",
        "machine": {"cpus": os.cpu_count(), "numpy": np.__version__, "python": sys.version.split()[0]},
        "goal_events_per_s": 5e6,
        "binning": rows,
        "min_binning_events_per_s": min(r["events_per_s_median"] for r in rows),
        "min_numpy_path_events_per_s": min(r.get("numpy_path_events_per_s_median", r["events_per_s_median"])
                                           for r in rows),
        "nmnist_events_per_s_median": nmnist["events_per_s_median"],
        "meets_goal": bool(min(r["events_per_s_median"] for r in rows) >= 5e6),
        "read_and_bin": rb,
        "memory": mem,
    }
    print(json.dumps(report, indent=None))


if __name__ == "__main__":
    main()
