"""Seconds per learning-rule update on the N-MNIST MLP shapes, with peak RSS per method.

    python benchmarks/step.py --json

For each (method, shape) a fresh subprocess builds the network, runs warm-up updates (the first
call's time is reported as ``first_call_s`` and never enters the median), then times
``--repeats`` updates and reports the median and its own peak RSS (``VmHWM`` from /proc where
available, else ``ru_maxrss``, which on Linux also counts the parent's RSS at fork time; the
process ran that method alone). Methods:

- ``sdfa_int8_online``: ``edge_sdfa.int8.net.sdfa_update`` (mode online) with the kernel set of
  ``--kernels`` (default ``numpy``, the reference).
- ``sdfa_int8_online_c``: the same update with the C kernel set (built at install time; skipped
  with a note where the install could not build it).

``--baseline-tree DIR`` (a checkout of an older revision, e.g. ``git worktree add /tmp/base main``)
also runs that tree's own worker for ``sdfa_int8_online_c`` on the same weights and inputs, right
before this tree's, and reports ``ratio_vs_baseline`` (this / baseline medians): "no slower than
before" is measured in the same run.
- ``sdfa_int8_exact_c``: the int8 ``exact`` rule (the reference's: in-layer BPTT) with the C set.
- ``sdfa_float_exact``: ``float_net.sdfa_exact_grads`` + an Adam step (float32 numpy).
- ``reference_torch_sdfa`` (``--peer``): the reference SDFA update in plain PyTorch
  (``benchmarks/torch_peer.py``: spikingjelly-style multi-step LIF MLP, Adam, cross-entropy on
  rates), run in its own process with an interpreter that has torch (``make peer-venv``); the int8
  rows then carry ``speedup_vs_reference_measured`` and ``rss_fraction_of_reference`` (goals: >= 10,
  <= 0.1).

``--worker-python peer`` runs this tree's workers under the peer's interpreter (this tree on
``PYTHONPATH``), so that both sides of the comparison import the same Python and numpy; the int8
workers update their weights in place (``sdfa_update(in_place=True)``; ``--no-in-place``: new
arrays per update, as ``edge-sdfa finetune`` does). ``benchmarks/update_memory.py`` breaks the
int8 worker's peak RSS down by what the process holds.

The int8 rows also carry (``--stages``, default on) the per-stage breakdown of the update
(``benchmarks/update_stages.py``: spike index, forward gather, neuron steps, output error, local
errors = projection + surrogate/eligibility + int8 shift, weight update = gradient + stochastic
rounding + write-back) and, for the C set, ``compute_floor``: the integer ops the update does per
second against the machine's int16 SIMD peak measured in the same process
(``c_kernels.int16_peak_ops_per_s``).
- ``bptt_float``: ``float_net.bptt_grads`` + an Adam step.

Inputs are random binary spikes at 10% density; the weights are PyTorch's default init scaled per
layer so that every hidden layer fires at about 10% (a silent hidden layer would flatter the
sparse kernels); the measured densities are in the output.

``gflops_equiv`` counts the dense work of an update, forward ``x @ W`` plus weight gradient
``x^T d`` (2 * 2 * R * K * M flops per layer, R = T * batch rows), whatever the method really
does; ``matmul_f32_*`` times exactly those float32 matmuls with numpy's BLAS in the same run, so
the distance to the machine's dense limit is visible. Reference figures (PyTorch SDFA, cited from
the issue, not measured here): 0.15 s per update for the 2-layer shape, 0.40 s for the 5-layer
shape, about 840 MB peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METHODS = ("sdfa_int8_online", "sdfa_int8_online_c", "sdfa_int8_exact_c", "sdfa_float_exact", "bptt_float")
INT8_METHODS = ("sdfa_int8_online", "sdfa_int8_online_c", "sdfa_int8_exact_c")
C_METHODS = ("sdfa_int8_online_c", "sdfa_int8_exact_c")
PEER = "reference_torch_sdfa"
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py")
SHAPES = ("2312-1000-10", "2312-1000-1000-1000-1000-10")
REFERENCE_S = {"2312-1000-10": 0.15, "2312-1000-1000-1000-1000-10": 0.40}
REFERENCE_RSS_MB = 840.0
GOAL_S = {"2312-1000-10": 0.030}


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# worker: one (method, shape) in its own process


def _calibrated_params(spec, x, target: float = 0.1, seed: int = 0):
    """Default init, each layer's weights scaled (layer by layer) so it fires at ~target."""
    import numpy as np

    from edge_sdfa import float_net as fn
    from edge_sdfa import ops

    params = fn.init_params(spec, seed)
    t_steps, n = x.shape[:2]
    rows = x.reshape(t_steps * n, -1).astype(np.float32)
    syn = spec.synaptic_layers()
    for i in syn:
        layer = spec.layers[i]
        w0 = params[i]["weight"]
        best = None
        for gain in (1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64):
            cur = rows @ (w0 * gain).T
            _, s = ops.neuron_forward(layer.neuron, cur.reshape(t_steps, n, -1))
            best = (gain, s)
            if s.mean() >= target or i == syn[-1]:
                break
        gain, s = best
        params[i]["weight"] = (w0 * gain).astype(np.float32)
        rows = s.reshape(t_steps * n, -1)
    return params


def _inputs(sizes, batch, steps, density):
    import numpy as np

    rng = np.random.default_rng(0)
    x = (rng.random((steps, batch, sizes[0])) < density).astype(np.uint8)
    y = rng.integers(0, sizes[-1], batch)
    return x, y


def write_params(shape: str, batch: int, steps: int, density: float, path: str) -> None:
    """Calibrate the weights once in the parent (so the workers' peak RSS is the update's)."""
    import numpy as np

    from edge_sdfa.spec import mlp

    sizes = [int(s) for s in shape.split("-")]
    spec = mlp(sizes, time_steps=steps)
    x, y = _inputs(sizes, batch, steps, density)
    params = _calibrated_params(spec, x)
    from edge_sdfa.int8 import net

    qnet, _ = net.quantize(spec, params)  # a device loads a quantised head (head.npz), as here
    arrays = {"x": x, "y": y}
    for i, (p, q) in enumerate(zip(params, qnet)):
        arrays[f"w{i}"] = p["weight"]
        arrays[f"w8_{i}"], arrays[f"master_{i}"], arrays[f"exp_{i}"] = q.w8, q.master, np.int64(q.exp)
    np.savez(path, **arrays)


def _vm_hwm_mb() -> float | None:
    """This process's own peak RSS (VmHWM, reset at exec). ``ru_maxrss`` is not: Linux carries the
    forked parent's RSS over into the child's maximum, so a small worker reports the parent's."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _stage_report(spec, qnet, x, y, feedback, ks, config, repeats: int, s_per_update: float) -> dict:
    """The per-stage breakdown (``update_stages``) and the distance to the compute floor: the
    integer ops the update does per second against the machine's measured int16 SIMD peak."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import update_stages

    rep = update_stages.profile(spec, qnet, x, y, feedback, ks, config.mode, config.lr, repeats)
    if ks.NAME == "c":
        peak = ks.int16_peak_ops_per_s()
        achieved = rep["int_ops"] / s_per_update
        rep["compute_floor"] = {
            "int_ops_per_update": rep["int_ops"], "achieved_int_ops_per_s": round(achieved),
            "int16_simd_peak_ops_per_s": round(peak), "fraction_of_peak": round(achieved / peak, 4),
            "floor_s_per_update": round(rep["int_ops"] / peak, 6),
            "distance_to_floor_x": round(s_per_update * peak / rep["int_ops"], 2)}
    return rep


def worker(method: str, shape: str, batch: int, steps: int, density: float, repeats: int, kernels: str,
           params_path: str | None = None, stages: bool = False, in_place: bool = True) -> dict:
    import numpy as np

    from edge_sdfa import float_net as fn
    from edge_sdfa.spec import mlp

    sizes = [int(s) for s in shape.split("-")]
    spec = mlp(sizes, time_steps=steps)
    qnet = None
    if params_path:
        with np.load(params_path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
            if method in INT8_METHODS:
                from edge_sdfa.int8.net import QLayer

                qnet = [QLayer(int(z[f"exp_{i}"]), z[f"w8_{i}"], None, z[f"master_{i}"]) for i in range(len(spec.layers))]
            else:
                params = [{"weight": z[f"w{i}"]} for i in range(len(spec.layers))]
    else:
        x, y = _inputs(sizes, batch, steps, density)
        params = _calibrated_params(spec, x)
    extra: dict = {}
    if method in INT8_METHODS:
        from edge_sdfa.int8 import kernels as kernel_sets
        from edge_sdfa.int8 import net

        k = kernel_sets.get("c" if method in C_METHODS else kernels)
        if qnet is None:
            qnet, _ = net.quantize(spec, params)
        feedback = net.feedback_int8(spec, 0)
        config = net.UpdateConfig(lr=0.05, mode="exact" if method == "sdfa_int8_exact_c" else "online")
        state = {"q": qnet, "i": 0}

        def update():
            # the same batch every time, fresh rounding draws; weights evolve as in training, in
            # place (the device keeps one copy of its weights)
            state["q"], _ = net.sdfa_update(spec, state["q"], x, y, feedback, config, state["i"], k,
                                            in_place=in_place)
            state["i"] += 1

        def density():  # after the peak RSS is read: the probe's numpy forward is not the update's memory
            tr = net.forward(spec, qnet, x, None, keep=set(spec.synaptic_layers()))
            return [round(float(np.count_nonzero(tr.inputs[i]) / tr.inputs[i].size), 4) for i in spec.synaptic_layers()]

        extra["in_place"] = in_place
        extra["kernels"] = k.NAME
        if k.NAME == "c":
            extra["c_threads"] = k.info()["threads"]
    else:
        xf = x.astype(np.float32)
        feedback = fn.feedback_matrices(spec, 0)
        opt = fn.optimizer_init("adam", params)
        state = {"p": params, "o": opt}
        rule = fn.bptt_grads if method == "bptt_float" else None

        def update():
            if rule is not None:
                _, grads, _ = rule(spec, state["p"], xf, y)
            else:
                _, grads, _ = fn.sdfa_exact_grads(spec, state["p"], xf, y, feedback)
            state["p"], state["o"] = fn.optimizer_step(state["p"], grads, state["o"], 1e-3)

        def density():
            tr = fn.forward(spec, params, xf)
            return [round(float((tr.inputs[i] != 0).mean()), 4) for i in spec.synaptic_layers()]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    update()
    first = time.perf_counter() - t0
    update()  # second warm-up: page cache, allocator
    times, cpu = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        update()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    del cpu0
    ru_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rss_mb = _vm_hwm_mb()
    if rss_mb is None:
        rss_mb = ru_mb
    extra["input_density"] = density()
    extra["ru_maxrss_mb"] = round(ru_mb, 1)  # on Linux includes the parent's RSS at fork time
    extra["cpu_s_per_update"] = round(float(np.median(cpu)), 5)  # all threads; less load-sensitive
    r = t_rows = steps * batch
    flops = sum(4.0 * r * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    med = float(np.median(times))
    if method in INT8_METHODS and stages:
        extra.update(_stage_report(spec, state["q"], x, y, feedback, k, config, repeats, med))
    extra["python"] = sys.version.split()[0]
    extra["numpy"] = np.__version__
    return {"method": method, "layers": sizes, "batch": batch, "T": steps, "s_per_update": med,
            "peak_rss_mb": round(rss_mb, 1), "times_s": [round(t, 5) for t in times],
            "first_call_s": round(first, 3), "gflops_equiv": round(flops / med / 1e9, 2),
            "rows": t_rows, **extra}


# ---------------------------------------------------------------------------------------------
# the baseline matmul and the driver


def matmul_baseline(shape: str, batch: int, steps: int, density: float, repeats: int) -> dict:
    """float32 BLAS time of the same dense work: x @ W and x^T d for every layer."""
    import numpy as np

    sizes = [int(s) for s in shape.split("-")]
    r = steps * batch
    rng = np.random.default_rng(1)
    mats = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        xs = (rng.random((r, a)) < density).astype(np.float32)
        mats.append((xs, rng.standard_normal((a, b)).astype(np.float32), rng.standard_normal((r, b)).astype(np.float32)))

    def run():
        for xs, w, d in mats:
            xs @ w
            xs.T @ d

    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    flops = sum(4.0 * r * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return {"matmul_f32_s": med, "matmul_f32_gflops": round(flops / med / 1e9, 2)}


def blas_info() -> dict:
    info = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info

        blas = [d for d in threadpool_info() if d.get("user_api") == "blas"]
        if blas:
            info.update({"blas": blas[0].get("internal_api"), "blas_kernel": blas[0].get("architecture"),
                         "blas_threads": blas[0].get("num_threads")})
    except ImportError:
        info["blas"] = "unknown (threadpoolctl not installed)"
    return info


def _run_worker(method, shape, args, params_path, tree: str | None = None) -> dict:
    """One worker; ``tree``: run that checkout's own step.py on its own code (PYTHONPATH)."""
    script = os.path.join(tree, "benchmarks", "step.py") if tree else os.path.abspath(__file__)
    python = sys.executable if tree else (args.worker_python or sys.executable)
    cmd = [python, script, "--worker", method, "--shape", shape,
           "--batch", str(args.batch), "--steps", str(args.steps), "--density", str(args.density),
           "--repeats", str(args.repeats), "--kernels", "c" if tree else args.kernels, "--params", params_path]
    if args.stages and not tree and method in INT8_METHODS:
        cmd.append("--stages")
    if not args.in_place and not tree:
        cmd.append("--no-in-place")
    env = None
    if python != sys.executable and not tree:  # this tree's code under another interpreter
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    if tree:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), EDGE_SDFA_CACHE_DIR=_baseline_cache(tree))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: worker {method} {shape} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def _baseline_cache(tree: str) -> str:
    return os.path.join(os.path.abspath(tree), ".bench-cache")


def _prepare_baseline(tree: str) -> float:
    """Build (outside any timing) whatever the baseline tree compiles on first use; seconds."""
    t0 = time.perf_counter()
    code = ("from edge_sdfa.int8 import kernels as k\n"
            "s = k.get_kernels('c') if hasattr(k, 'get_kernels') else k.get('c')\n")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), EDGE_SDFA_CACHE_DIR=_baseline_cache(tree))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: the baseline tree {tree} cannot load its C kernels: "
                         f"{out.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def _peer_python(choice: str) -> str | None:
    """An interpreter that imports torch: ``choice`` itself, or (auto) .venv-peer, the env var, this one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cands = [choice] if choice != "auto" else [os.environ.get("EDGE_SDFA_PEER_PYTHON"),
                                              os.path.join(root, ".venv-peer", "bin", "python"), sys.executable]
    for py in cands:
        if py and os.path.exists(py):
            ok = subprocess.run([py, "-c", "import torch, numpy"], capture_output=True).returncode == 0
            if ok:
                return py
    return None


def _run_peer(python: str, shape: str, args) -> dict:
    cmd = [python, PEER_SCRIPT, "--shape", shape, "--batch", str(args.batch), "--steps", str(args.steps),
           "--density", str(args.density), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: the torch peer {shape} failed: {out.stderr.strip().splitlines()[-1:]}")
    r = json.loads(out.stdout)
    r["gflops_equiv"] = round(sum(4.0 * args.steps * args.batch * a * b for a, b in
                                  zip(r["layers"][:-1], r["layers"][1:])) / r["s_per_update"] / 1e9, 2)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the JSON list on stdout")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=7, help="timed updates per method (median; >= 5)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--kernels", default="numpy", help="int8 kernel set of sdfa_int8_online: numpy, c or auto "
                    "(sdfa_int8_online_c always uses c)")
    ap.add_argument("--baseline-tree", default=None,
                    help="an older checkout whose sdfa_int8_online_c runs in the same run, for ratio_vs_baseline")
    ap.add_argument("--stages", action=argparse.BooleanOptionalAction, default=True,
                    help="per-stage breakdown and distance to the int16 SIMD peak of the int8 methods")
    ap.add_argument("--peer", nargs="?", const="auto", default=None, metavar="PYTHON",
                    help="also run the reference torch SDFA (benchmarks/torch_peer.py) in the same run, with "
                         "PYTHON or (auto) .venv-peer/bin/python, $EDGE_SDFA_PEER_PYTHON, or this interpreter "
                         "if it imports torch (make peer-venv creates .venv-peer)")
    ap.add_argument("--worker-python", default=None, metavar="PYTHON",
                    help="interpreter of this tree's workers (default: this one); 'peer': the --peer interpreter, "
                         "so that both sides run the same Python and numpy (this tree on PYTHONPATH; the C "
                         "library built for this interpreter is loaded: it has no Python ABI)")
    ap.add_argument("--in-place", action=argparse.BooleanOptionalAction, default=True,
                    help="int8 workers update the weights in place (sdfa_update(in_place=True), default) or "
                         "into new arrays")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be >= 5")
    if args.worker:
        print(json.dumps(worker(args.worker, args.shape, args.batch, args.steps, args.density, args.repeats,
                                args.kernels, args.params, args.stages, args.in_place)))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    shapes = [s for s in args.shapes.split(",") if s]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}")
    import tempfile

    results = []
    notes = {}
    with tempfile.TemporaryDirectory() as pdir:
        paths = {}
        for shape in shapes:
            paths[shape] = os.path.join(pdir, f"{shape}.npz")
            write_params(shape, args.batch, args.steps, args.density, paths[shape])
        if set(C_METHODS) & set(methods):
            from edge_sdfa.errors import UserError
            from edge_sdfa.int8 import kernels as kernel_sets

            try:
                kernel_sets.get("c")
            except UserError as exc:
                _log(f"skipping {', '.join(C_METHODS)}: {exc}")
                methods = [m for m in methods if m not in C_METHODS]
        peer_python = _peer_python(args.peer) if args.peer else None
        if args.peer and peer_python is None:
            _log("no PyTorch for --peer (make peer-venv, or --peer PYTHON): the reference is not measured")
            notes["peer"] = "not measured: no PyTorch found"
        if args.worker_python == "peer":
            if peer_python is None:
                print("error: --worker-python peer needs --peer with an interpreter that imports torch", file=sys.stderr)
                return 2
            args.worker_python = peer_python
        if args.baseline_tree:
            notes["baseline_tree"] = os.path.abspath(args.baseline_tree)
            notes["baseline_prepare_s"] = round(_prepare_baseline(args.baseline_tree), 3)
        for shape in shapes:
            base = matmul_baseline(shape, args.batch, args.steps, args.density, args.repeats)
            if peer_python:
                _log(f"{PEER} {shape} ...")
                load0 = os.getloadavg()[0]
                r = _run_peer(peer_python, shape, args)
                r["loadavg_1min_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                r["tree"] = "this"
                r.update(base)
                results.append(r)
            for m in methods:
                trees = [args.baseline_tree, None] if (args.baseline_tree and m == "sdfa_int8_online_c") else [None]
                for tree in trees:
                    _log(f"{m} {shape}{' (baseline)' if tree else ''} ...")
                    load0 = os.getloadavg()[0]
                    r = _run_worker(m, shape, args, paths[shape], tree)
                    r["loadavg_1min_before_after"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                    r["tree"] = "baseline" if tree else "this"
                    r.update(base)
                    if m in INT8_METHODS:
                        r.update(notes)
                    results.append(r)
            _log(f"matmul f32 {shape}: {base['matmul_f32_s'] * 1e3:.1f} ms")
    by = {(r["method"], "-".join(map(str, r["layers"]))): r for r in results if r["tree"] == "this"}
    for r in results:
        if r["tree"] == "baseline":
            mine = by.get((r["method"], "-".join(map(str, r["layers"]))))
            if mine is not None:
                mine["baseline_s_per_update"] = r["s_per_update"]
                mine["baseline_peak_rss_mb"] = r["peak_rss_mb"]
                mine["ratio_vs_baseline"] = round(mine["s_per_update"] / r["s_per_update"], 3)
    for shape, int8_method in [(s, m) for s in shapes for m in INT8_METHODS]:
        r = by.get((int8_method, shape))
        if r is None:
            continue
        ref = REFERENCE_S.get(shape)
        ratios = {"reference_pytorch_s_cited": ref, "reference_pytorch_rss_mb_cited": REFERENCE_RSS_MB}
        if ref:
            ratios["speedup_vs_reference"] = round(ref / r["s_per_update"], 2)
        for other in ("bptt_float", "sdfa_float_exact"):
            if (other, shape) in by:
                ratios[f"speedup_vs_{other}"] = round(by[(other, shape)]["s_per_update"] / r["s_per_update"], 2)
        ratios["goal_5x_reference"] = bool(ref and r["s_per_update"] * 5 <= ref)
        peer = by.get((PEER, shape))
        if peer is not None:  # the reference measured in this run
            ratios["reference_s_measured"] = peer["s_per_update"]
            ratios["reference_rss_mb_measured"] = peer["peak_rss_mb"]
            ratios["speedup_vs_reference_measured"] = round(peer["s_per_update"] / r["s_per_update"], 2)
            ratios["rss_fraction_of_reference"] = round(r["peak_rss_mb"] / peer["peak_rss_mb"], 3)
            ratios["goal_10x_reference"] = ratios["speedup_vs_reference_measured"] >= 10
            ratios["goal_rss_tenth_of_reference"] = ratios["rss_fraction_of_reference"] <= 0.1
        ratios["goal_rss_150mb"] = r["peak_rss_mb"] < 150
        if shape in GOAL_S:
            ratios["goal_s_per_update"] = r["s_per_update"] <= GOAL_S[shape]
        if "speedup_vs_bptt_float" in ratios:
            ratios["goal_3x_bptt_float"] = ratios["speedup_vs_bptt_float"] >= 3
        r.update(ratios)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    env = {"cpus": os.cpu_count(), "loadavg": load, **blas_info()}
    for r in results:
        r["env"] = env
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['method']:18s} {r['tree']:8s} {'-'.join(map(str, r['layers'])):28s} {r['s_per_update'] * 1e3:8.1f} ms "
                  f"{r['peak_rss_mb']:7.1f} MB {r['gflops_equiv']:7.1f} GF/s-eq (f32 matmul {r['matmul_f32_gflops']} GF/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
