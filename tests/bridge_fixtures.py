"""Shared harness for the firmware_bridge tests: an agent on one pty, the host on another, a
fault-injecting relay between them. Imported by tests/test_bridge_*.py (not a conftest)."""
from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from firmware_bridge.agent import Agent
from firmware_bridge.client import LinkConfig
from firmware_bridge.faults import Faults, PtyPair, Relay
from firmware_bridge.link import Channel, open_port
from firmware_bridge.transfer import Staging

FAST = LinkConfig(give_up_after=4.0, reconnects=0)


@dataclass
class RecordingOps:
    """Device operations that only keep what was uploaded (for link-level tests)."""

    accepted: list[bytes] = field(default_factory=list)

    def hello(self) -> dict[str, Any]:
        return {"runtime_abi": 1, "active": None}

    def status(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted)}

    commits: int = 0

    def commit(self) -> dict[str, Any]:
        self.commits += 1
        return {"commits": self.commits}

    def accept_upload(self, up) -> dict[str, Any]:
        from firmware_bridge.transfer import unpack

        data = unpack(up)
        self.accepted.append(data)
        return {"accepted_sha256": hashlib.sha256(data).hexdigest(), "data": up.sha}


@dataclass
class Harness:
    tmp: Path
    ops: Any
    agent: Agent
    device_pty: PtyPair
    host_pty: PtyPair
    relay: Relay
    _ports: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.host_pty.path

    def reconnect(self, *, to_device: Faults | None = None, to_host: Faults | None = None,
                  seed: int = 0, tap=None) -> None:
        """A fresh host-side line to the same running agent (after a cut)."""
        self.relay.stop()
        self.host_pty.close()
        self.host_pty = PtyPair()
        self.relay = Relay(self.host_pty.master, self.device_pty.master, to_device=to_device,
                           to_host=to_host, seed=seed, tap=tap, hang_up=self.host_pty.hang_up)
        self.relay.start()


@contextlib.contextmanager
def agent_harness(tmp: Path, ops: Any = None, *, to_device: Faults | None = None,
                  to_host: Faults | None = None, seed: int = 0, tap=None,
                  insecure: bool = True, guard=None) -> Iterator[Harness]:
    ops = ops if ops is not None else RecordingOps()
    dev, host = PtyPair(), PtyPair()
    relay = Relay(host.master, dev.master, to_device=to_device, to_host=to_host, seed=seed, tap=tap,
                  hang_up=host.hang_up)
    relay.start()
    ser = open_port(dev.path)
    agent = Agent(Channel(ser, role="device"), ops, Staging(Path(tmp) / "staging"), insecure=insecure,
                  guard=guard)
    stop = threading.Event()
    thread = threading.Thread(target=agent.serve, args=(stop,), kwargs={"poll": 0.05}, daemon=True)
    thread.start()
    h = Harness(Path(tmp), ops, agent, dev, host, relay)
    try:
        yield h
    finally:
        stop.set()
        thread.join(timeout=2)
        agent.channel.close()
        h.relay.stop()
        ser.close()
        h.host_pty.close()
        dev.close()


# ------------------------------------------------------------------------------ real device side
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from edge_sdfa.cli import main; main(sys.argv[1:])"]
MODEL_ID = "bridge-test"


def make_bundle(out: Path, *, version: int = 1, seed: int = 0, pad_bytes: int = 0,
                model_id: str = MODEL_ID) -> Path:
    """A real, tiny bundle (8-6-4 MLP, T=2, cut after layer 0); ``pad_bytes`` of extra holdout
    samples make it bigger (for transfer tests)."""
    from edge_sdfa.bundle import write_bundle
    from edge_sdfa.int8.net import QLayer
    from edge_sdfa.spec import mlp

    spec = mlp([8, 6, 4], time_steps=2)
    rng = np.random.default_rng(seed)
    w0 = rng.integers(-60, 61, size=(8, 6), dtype=np.int8)
    w1 = rng.integers(-60, 61, size=(6, 4), dtype=np.int8)
    qnet = [QLayer(-6, w0), QLayer(-6, w1, None, w1.astype(np.int16) * 256)]
    n = 12 + pad_bytes // 16
    x = rng.integers(0, 2, size=(n, 2, 8), dtype=np.uint8)
    y = rng.integers(0, 4, size=n)
    return write_bundle(out, spec, qnet, 1, model_id=model_id, version=version, holdout=(x, y),
                        finetune_defaults={"epochs": 2, "batch_size": 4})


def make_user_data(path: Path, n: int = 12, seed: int = 1) -> Path:
    from edge_sdfa.userdata import save_user_data

    rng = np.random.default_rng(seed)
    save_user_data(str(path), rng.integers(0, 4, size=n), x=rng.integers(0, 2, size=(n, 2, 8), dtype=np.uint8))
    return path


def make_store(root: Path, factory: Path):
    from edge_sdfa.store import Store

    return Store.init(root, factory)


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (following the slot views), for byte-identity checks."""
    path = Path(os.path.realpath(path))
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["EDGE_SDFA_KERNELS"] = "numpy"  # no JIT warm-up in short-lived test agents
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class AgentProcess:
    """The real agent (``edge-sdfa serve``) in a subprocess on a pty, the host on another pty."""

    store: Path
    args: list[str]
    launcher: list[str] | None = None
    proc: subprocess.Popen | None = None
    host_pty: PtyPair | None = None
    device_pty: PtyPair | None = None
    relay: Relay | None = None
    log: Path | None = None
    faults: Faults | None = None

    @property
    def url(self) -> str:
        return self.host_pty.path

    def start(self) -> "AgentProcess":
        self.host_pty, self.device_pty = PtyPair(), PtyPair()
        self.relay = Relay(self.host_pty.master, self.device_pty.master, to_device=self.faults,
                           to_host=self.faults, seed=5)
        self.relay.start()
        cmd = self.launcher or CLI
        self.log = self.store.parent / f"agent-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([*cmd, "serve", "--port", self.device_pty.path, "--store", str(self.store),
                                      *self.args], env=agent_env(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"), cwd=REPO)
        return self

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.relay is not None:
            self.relay.stop()
        for p in (self.host_pty, self.device_pty):
            if p is not None:
                p.close()
        return None if self.proc is None else self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


SLOW_LINK = LinkConfig(give_up_after=30.0)


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``edge-sdfa ARGS`` as a user would."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True,
                          env=agent_env(), cwd=REPO, timeout=timeout)
