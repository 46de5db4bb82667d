"""Serial link benchmark: protocol efficiency and bundle upload time over a pty.

    python benchmarks/link.py --json [--size 2000000] [--corrupt 0.01] [--chunk 4096]

* efficiency: payload bytes / wire bytes for a bundle upload with 4 KiB chunks (goal >= 0.97),
  one way (host to device) and counting the replies too; baseline in the same run: the same
  frames sent base64-encoded with a newline (a text protocol), which cannot beat 0.75.
* upload: a real ``edge-sdfa serve`` agent in a subprocess on a pty, the host client on another
  pty, a relay between them (clean, then corrupting each byte with probability ``--corrupt`` in
  both directions). The ~2 MB bundle is verified and installed by the device each time.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_bridge.client import LinkConfig, connect, upload  # noqa: E402
from firmware_bridge.faults import Faults, PtyPair, Relay  # noqa: E402
from firmware_bridge.framing import encode_frame  # noqa: E402
from firmware_bridge.messages import MsgType, chunk_blob, encode_payload  # noqa: E402
from firmware_bridge.packing import pack_bundle  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from edge_sdfa.cli import main; main(sys.argv[1:])"]


def make_bundle(out: Path, version: int, holdout_bytes: int) -> Path:
    from edge_sdfa.bundle import write_bundle
    from edge_sdfa.int8.net import QLayer
    from edge_sdfa.spec import mlp

    rng = np.random.default_rng(version)
    w0 = rng.integers(-60, 61, size=(8, 6), dtype=np.int8)
    w1 = rng.integers(-60, 61, size=(6, 4), dtype=np.int8)
    qnet = [QLayer(-6, w0), QLayer(-6, w1, None, w1.astype(np.int16) * 256)]
    n = max(8, holdout_bytes // 16)  # 16 bytes of spike counts per sample (labels compress away)
    x = rng.integers(0, 256, size=(n, 2, 8), dtype=np.uint8)  # incompressible, like real weights
    return write_bundle(out, mlp([8, 6, 4], time_steps=2), qnet, 1, model_id="link-bench", version=version,
                        holdout=(x, rng.integers(0, 4, size=n)))


def chunk_efficiency(chunk: int) -> dict:
    """Analytic: one PUT_CHUNK frame and its OK reply, for random data."""
    data = os.urandom(chunk)
    frame = encode_frame(int(MsgType.PUT_CHUNK), 123456, encode_payload({}, chunk_blob("ab" * 32, 1 << 20, data)))
    reply = encode_frame(int(MsgType.OK), 123456, encode_payload({"offset": 1 << 21}))
    text = base64.b64encode(frame[:-1]) + b"\n"
    return {"frame_bytes": len(frame), "reply_bytes": len(reply),
            "one_way": chunk / len(frame), "with_replies": chunk / (len(frame) + len(reply)),
            "baseline_base64_one_way": chunk / len(text)}


def _relay(host_fd: int, dev_fd: int, faults: Faults | None, seed: int) -> None:
    r = Relay(host_fd, dev_fd, to_device=faults, to_host=faults, seed=seed)
    r.run()


def run_upload(work: Path, factory: Path, blob: bytes, faults: Faults | None, chunk: int, seed: int,
               time_limit: float) -> dict:
    store = work / f"store-{seed}"
    subprocess.run([*CLI, "finetune", "--help"], capture_output=True)  # warm the import cache
    from edge_sdfa.store import Store

    Store.init(store, factory)
    host, dev = PtyPair(), PtyPair()
    # The relay (the "wire") runs in its own process so that it does not share the host's GIL.
    import multiprocessing

    relay = multiprocessing.get_context("fork").Process(target=_relay, args=(host.master, dev.master, faults, seed),
                                                        daemon=True)
    relay.start()
    agent = subprocess.Popen([*CLI, "serve", "--port", dev.path, "--store", str(store), "--insecure"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    cfg = LinkConfig(timeout=2.0, chunk_size=chunk, give_up_after=time_limit)
    try:
        with connect(host.path, config=cfg) as d:
            t0 = time.perf_counter()
            r = upload(d, blob, "bundle")
            seconds = time.perf_counter() - t0
            stats = d.link.stats
        return {"bytes": len(blob), "seconds": round(seconds, 3), "MB_per_s": round(len(blob) / seconds / 1e6, 3),
                "installed_version": r.get("version"), "chunks_sent": r["chunks_sent"],
                "retransmits": r["retransmits"], "wire_bytes_out": stats.bytes_out, "wire_bytes_in": stats.bytes_in,
                "bad_frames_seen_by_host": stats.bad_frames,
                "efficiency_one_way": round(len(blob) / stats.bytes_out, 4),
                "efficiency_with_replies": round(len(blob) / (stats.bytes_out + stats.bytes_in), 4)}
    finally:
        agent.terminate()
        agent.wait(10)
        relay.terminate()
        relay.join(5)
        host.close()
        dev.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size", type=int, default=2_000_000, help="approximate bundle size in bytes")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--corrupt", type=float, default=0.01, help="byte corruption probability (0: skip)")
    ap.add_argument("--time-limit", type=float, default=900.0, help="give up an upload after this long")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="link-bench-") as tmp:
        work = Path(tmp)
        factory = make_bundle(work / "v1", 1, 1000)
        big = make_bundle(work / "v2", 2, args.size)
        blob = pack_bundle(big)
        report = {"chunk_size": args.chunk, "bundle_bytes": len(blob), "goal_efficiency": 0.97,
                  "per_chunk": {k: (round(v, 4) if isinstance(v, float) else v)
                                for k, v in chunk_efficiency(args.chunk).items()}}
        report["clean"] = run_upload(work, factory, blob, None, args.chunk, 1, args.time_limit)
        report["efficiency"] = report["clean"]["efficiency_one_way"]
        report["meets_goal"] = report["efficiency"] >= 0.97
        if args.corrupt > 0:
            try:
                report[f"corrupt_{args.corrupt:g}"] = run_upload(work, factory, blob, Faults(corrupt=args.corrupt),
                                                                 args.chunk, 2, args.time_limit)
            except Exception as exc:  # report a failed run instead of losing the clean numbers
                report[f"corrupt_{args.corrupt:g}"] = {"error": str(exc)}
        report["setup"] = {"link": "pty -> relay process -> pty (both runs)", "agent": "edge-sdfa serve subprocess",
                           "corruption": "each byte XORed with a random non-zero value, both directions",
                           "python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
