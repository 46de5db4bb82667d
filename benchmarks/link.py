"""Serial link benchmark: the real agent (``edge-sdfa serve --trust`` in a subprocess) and the
host client over two pty pairs joined by the project's fault relay (firmware_bridge/faults.py,
run in its own process so it does not share the host's GIL).

    python benchmarks/link.py --json [--size 2000000] [--quick]

Noise ``r``: each byte, in both directions, is hit with probability r; a hit byte is corrupted,
dropped or duplicated with equal odds (``Faults.noise``).

* upload: a ~2 MB signed bundle (incompressible holdout, like real weights) deployed to a fresh
  store, clean / 1% / 5% noise; goals 2 s / 20 s / completes in 120 s.
* commands_at_5pct: status, eval, finetune with telemetry, commit, revert, monitor at 5% noise.
* baud_115200: a relay throttled to 115200 baud (8N1: 11,520 bytes/s): upload payload bytes per
  second over the line rate on a clean line (goal >= 0.9); a baseline in the same run is the old
  stop-and-wait figure this replaces, estimated from the measured round trip.
* redeploy: an N-MNIST MLP bundle (2312-800-10, T=10, cut after layer 0): bytes on the wire for
  the full bundle and for a fine-tuned head (same frozen part, new head.npz, revision 1); codecs
  zlib and lzma measured on the payload (ratio, compress and decompress seconds).
"""
from __future__ import annotations

import argparse
import json
import lzma
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_bridge import client  # noqa: E402
from firmware_bridge.faults import Faults, PtyPair, Relay  # noqa: E402
from firmware_bridge.packing import pack_bundle  # noqa: E402
from firmware_bridge.signing import new_keypair  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from edge_sdfa.cli import main; main(sys.argv[1:])"]
LINE = 115200 / 10


def make_bundle(out: Path, version: int, holdout_bytes: int, model_id: str = "link-bench") -> Path:
    from edge_sdfa.bundle import write_bundle
    from edge_sdfa.int8.net import QLayer
    from edge_sdfa.spec import mlp

    rng = np.random.default_rng(version)
    w0 = rng.integers(-60, 61, size=(8, 6), dtype=np.int8)
    w1 = rng.integers(-60, 61, size=(6, 4), dtype=np.int8)
    qnet = [QLayer(-6, w0), QLayer(-6, w1, None, w1.astype(np.int16) * 256)]
    n = max(8, holdout_bytes // 16)
    x = rng.integers(0, 256, size=(n, 2, 8), dtype=np.uint8)  # incompressible, like real weights
    return write_bundle(out, mlp([8, 6, 4], time_steps=2), qnet, 1, model_id=model_id, version=version,
                        holdout=(x, rng.integers(0, 4, size=n)))


def make_nmnist_bundle(out: Path) -> Path:
    """The N-MNIST MLP of the SDFA reference: 2312 inputs, 800 hidden, 10 classes, T=10."""
    from edge_sdfa.bundle import write_bundle
    from edge_sdfa.int8.net import QLayer
    from edge_sdfa.spec import mlp

    rng = np.random.default_rng(0)
    w0 = np.clip(np.round(rng.normal(0, 30, size=(2312, 800))), -127, 127).astype(np.int8)
    w1 = np.clip(np.round(rng.normal(0, 30, size=(800, 10))), -127, 127).astype(np.int8)
    qnet = [QLayer(-7, w0), QLayer(-6, w1, None, w1.astype(np.int16) * 256)]
    x = (rng.random((64, 10, 2312)) < 0.03).astype(np.uint8)   # sparse event frames
    return write_bundle(out, mlp([2312, 800, 10], time_steps=10), qnet, 1, model_id="nmnist-mlp", version=1,
                        holdout=(x, rng.integers(0, 10, size=64)))


def tuned_head(bundle_dir: Path, out: Path) -> Path:
    from edge_sdfa.bundle import read_bundle, with_head
    from edge_sdfa.int8.net import QLayer

    b = read_bundle(bundle_dir)
    head = [QLayer(layer.exp, layer.w8, layer.bias, layer.master) for layer in b.head()]
    last = head[-1]
    rng = np.random.default_rng(1)
    delta = rng.integers(-3, 4, size=last.w8.shape)
    w8 = np.clip(last.w8.astype(np.int16) + delta, -127, 127).astype(np.int8)
    head[-1] = QLayer(last.exp, w8, last.bias, w8.astype(np.int16) * 256)
    return with_head(b, head, out, revision=1)


def _relay(host_fd: int, dev_fd: int, faults: Faults | None, seed: int, baud: int | None) -> None:
    Relay(host_fd, dev_fd, to_device=faults, to_host=faults, seed=seed, baud=baud).run()


class Rig:
    """Agent subprocess + relay process + host-side pty."""

    def __init__(self, work: Path, factory: Path, pub: Path, noise: float, seed: int, baud: int | None = None,
                 store: Path | None = None):
        from edge_sdfa.store import Store

        self.store = store or work / f"store-{seed}"
        if not (self.store / "state.json").exists():
            Store.init(self.store, factory)
        self.host, self.dev = PtyPair(), PtyPair()
        faults = Faults.noise(noise) if noise else None
        self.relay = multiprocessing.get_context("fork").Process(
            target=_relay, args=(self.host.master, self.dev.master, faults, seed, baud), daemon=True)
        self.relay.start()
        env = dict(os.environ, EDGE_SDFA_KERNELS="numpy")
        self.agent = subprocess.Popen([*CLI, "serve", "--port", self.dev.path, "--store", str(self.store),
                                       "--trust", str(pub)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        self.url = self.host.path

    def close(self) -> None:
        self.agent.terminate()
        self.agent.wait(10)
        self.relay.terminate()
        self.relay.join(5)
        self.host.close()
        self.dev.close()


def run_upload(work: Path, factory: Path, keys: tuple[Path, Path], packed, noise: float, seed: int,
               give_up: float) -> dict:
    rig = Rig(work, factory, keys[1], noise, seed)
    try:
        cfg = client.LinkConfig(give_up_after=give_up)
        t_open = time.perf_counter()
        with client.connect(rig.url, config=cfg, sign=keys[0]) as dev:
            t0 = time.perf_counter()
            r = client.deploy(dev, packed, codec="none")
            seconds = time.perf_counter() - t0
            s = dev.channel.stats
            return {"seconds": round(seconds, 3), "connect_seconds": round(t0 - t_open, 3),
                    "payload_bytes": r["payload_bytes"], "installed_version": r["version"],
                    "wire_bytes_out": s.bytes_out, "wire_bytes_in": s.bytes_in, "segments": s.segments,
                    "retransmits": s.retransmits, "timer_retransmits": s.timeouts,
                    "wire_bytes_per_payload_byte": round(s.bytes_out / r["payload_bytes"], 2),
                    "final_segment_size": dev.channel.seg_size,
                    "estimated_byte_error_rate": round(dev.channel.p_err, 5),
                    "goodput_MB_per_s": round(r["payload_bytes"] / seconds / 1e6, 4)}
    except Exception as exc:  # a failed run is a figure too
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        rig.close()


def run_commands(work: Path, factory: Path, keys, packed_v2, data: Path, noise: float, seed: int) -> dict:
    """Every remote command at ``noise``: each result is ok + seconds (or the error)."""
    from firmware_bridge.monitor import monitor

    rig = Rig(work, factory, keys[1], noise, seed)
    out: dict = {}

    def step(name, fn):
        t0 = time.perf_counter()
        try:
            res = fn()
            out[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **(res or {})}
        except Exception as exc:
            out[name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                         "error": f"{type(exc).__name__}: {exc}"[:300]}

    try:
        cfg = client.LinkConfig(give_up_after=60.0)
        with client.connect(rig.url, config=cfg, sign=keys[0]) as dev:
            step("status", lambda: {"active_version": client.status(dev)["version"]})
            step("deploy", lambda: {"version": client.deploy(dev, packed_v2)["version"]})
            step("commit", lambda: {"active": client.commit(dev)["active"]})
            events = []
            step("finetune", lambda: {"committed": client.finetune(
                dev, f"npz:{data}", config={"epochs": 3, "batch_size": 4}, on_event=events.append)["committed"],
                "telemetry_events": len(events)})
            step("eval", lambda: {"accuracy": client.evaluate(dev)["accuracy"]})
            step("revert", lambda: {"action": client.revert(dev)["action"]})
        import io

        buf = io.StringIO()
        step("monitor", lambda: {"events_replayed": monitor(rig.url, out=buf, as_json=True, duration=120)})
    finally:
        rig.close()
    out["all_ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


def run_baud(work: Path, factory: Path, keys, packed) -> dict:
    """Clean line throttled to 115200 baud: payload rate / line rate."""
    rig = Rig(work, factory, keys[1], 0.0, 11, baud=115200)
    try:
        with client.connect(rig.url, sign=keys[0], config=client.LinkConfig(baud=115200)) as dev:
            # round trip of a small request: what a stop-and-wait link would pay per 4 KiB chunk
            t0 = time.perf_counter()
            for _ in range(5):
                client.status(dev)
            rtt = (time.perf_counter() - t0) / 5
            t0 = time.perf_counter()
            r = client.deploy(dev, packed, codec="none")
            seconds = time.perf_counter() - t0
            size = r["payload_bytes"]
        ratio = size / seconds / LINE
        saw = 4096 / (4142 / LINE + rtt + 60 / LINE)   # old stop-and-wait: chunk, then its reply
        return {"payload_bytes": size, "seconds": round(seconds, 2), "line_bytes_per_s": LINE,
                "payload_over_line_rate": round(ratio, 4), "goal": 0.9, "meets_goal": ratio >= 0.9,
                "status_round_trip_s": round(rtt, 4),
                "baseline_stop_and_wait_estimate": round(saw / LINE, 4), "installed_version": r["version"]}
    finally:
        rig.close()


def run_redeploy(work: Path, keys) -> dict:
    nm = make_nmnist_bundle(work / "nmnist")
    tuned = tuned_head(nm, work / "nmnist-r1")
    full_pack = pack_bundle(nm, sign_key=keys[0])
    raw = full_pack.payload(sorted(full_pack.files))
    codecs = {}
    for name, comp, decomp in (("zlib", lambda d: zlib.compress(d, 6), zlib.decompress),
                               ("lzma", lambda d: lzma.compress(d, preset=6), lzma.decompress)):
        t0 = time.perf_counter()
        c = comp(raw)
        t1 = time.perf_counter()
        decomp(c)
        t2 = time.perf_counter()
        codecs[name] = {"ratio": round(len(c) / len(raw), 4), "compress_s": round(t1 - t0, 3),
                        "decompress_s": round(t2 - t1, 3),
                        "seconds_at_115200_incl_compress": round(len(c) / LINE + (t1 - t0) + (t2 - t1), 1)}
    rig = Rig(work, nm, keys[1], 0.0, 12)   # the device already holds the factory N-MNIST model ...
    try:
        with client.connect(rig.url, sign=keys[0]) as dev:
            head = client.deploy(dev, pack_bundle(tuned, sign_key=keys[0]))
    finally:
        rig.close()
    fresh = Rig(work, make_bundle(work / "tiny", 1, 1000, model_id="other"), keys[1], 0.0, 13)
    try:                                     # ... and a fresh device with another model gets it all
        with client.connect(fresh.url, sign=keys[0]) as dev:
            first = client.deploy(dev, full_pack, new_model=True)
    finally:
        fresh.close()
    bundle_bytes = full_pack.size
    return {"bundle_bytes": bundle_bytes, "codecs": codecs,
            "full_deploy_to_fresh_device": {k: first[k] for k in ("bytes_sent", "payload_bytes", "codec", "files_sent")},
            "finetuned_head": {k: head[k] for k in ("bytes_sent", "payload_bytes", "codec", "files_sent", "files_skipped")},
            "head_over_full_bundle": round(head["bytes_sent"] / bundle_bytes, 5),
            "seconds_at_115200": {"full_bundle_uncompressed": round(bundle_bytes / LINE, 1),
                                  "full_deploy_sent": round(first["bytes_sent"] / LINE, 1),
                                  "finetuned_head": round(head["bytes_sent"] / LINE, 2)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=2_000_000, help="approximate bundle size in bytes")
    ap.add_argument("--quick", action="store_true", help="200 kB bundle, 20 kB at 115200 baud")
    ap.add_argument("--only", choices=["upload", "commands", "baud", "redeploy"], action="append")
    args = ap.parse_args()
    size = 200_000 if args.quick else args.size
    only = set(args.only or ["upload", "commands", "baud", "redeploy"])
    report: dict = {"noise_model": "each byte hit with probability r; corrupt / drop / duplicate, equal odds"}
    def section(name, fn):
        try:
            report[name] = fn()
        except Exception as exc:  # a failed section is reported, the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}

    with tempfile.TemporaryDirectory(prefix="link-bench-") as tmp:
        work = Path(tmp)
        keys = new_keypair(work / "owner")
        factory = make_bundle(work / "v1", 1, 1000)
        big = pack_bundle(make_bundle(work / "v2", 2, size), sign_key=keys[0])
        report["bundle_bytes"] = big.size
        if "upload" in only:
            goals = {0.0: 2.0, 0.01: 20.0, 0.05: 120.0}
            report["upload"] = {}
            for i, noise in enumerate(goals):
                r = run_upload(work, factory, keys, big, noise, 1 + i, give_up=60.0)
                r["goal_seconds"] = goals[noise]
                r["meets_goal"] = "seconds" in r and r["seconds"] <= goals[noise]
                report["upload"][f"{noise:.0%}"] = r
        if "commands" in only:
            small = pack_bundle(make_bundle(work / "v3", 3, 2000), sign_key=keys[0])
            data = work / "user.npz"
            from edge_sdfa.userdata import save_user_data

            rng = np.random.default_rng(1)
            save_user_data(str(data), rng.integers(0, 4, size=12), x=rng.integers(0, 2, size=(12, 2, 8), dtype=np.uint8))
            section("commands_at_5pct", lambda: run_commands(work, factory, keys, small, data, 0.05, 7))
        if "baud" in only:
            mid = pack_bundle(make_bundle(work / "v4", 4, 20_000 if args.quick else 150_000), sign_key=keys[0])
            section("baud_115200", lambda: run_baud(work, factory, keys, mid))
        if "redeploy" in only:
            section("redeploy_nmnist_mlp", lambda: run_redeploy(work, keys))
    report["setup"] = {"link": "pty -> relay process -> pty", "agent": "edge-sdfa serve --trust (subprocess)",
                       "python": platform.python_version(), "machine": platform.machine(),
                       "cpus": os.cpu_count(), "load_avg": round(os.getloadavg()[0], 2)}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
