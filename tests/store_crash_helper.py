"""Helpers for tests/test_store.py: tiny real bundles, and a subprocess entry point that runs one
store operation and dies (SIGKILL or os._exit) just before file-system operation number N.

    python tests/store_crash_helper.py ROOT ACTION CRASH_AT MODE [BUNDLE]
    python tests/store_crash_helper.py batch ACTION BUNDLE ROOT0 ROOT1 ...   (root k dies at op k)
        ACTION   install | commit | revert | reset | discard | open | soak
        CRASH_AT index of the FileOps call to die at (-1: never)
        MODE     sigkill | exit
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_sdfa.bundle import write_bundle  # noqa: E402
from edge_sdfa.int8.net import QLayer  # noqa: E402
from edge_sdfa.spec import mlp  # noqa: E402
from edge_sdfa.store import FileOps, Store  # noqa: E402

MODEL_ID = "store-test"


def make_bundle(out: Path, *, version: int = 1, revision: int = 0, seed: int = 0,
                model_id: str = MODEL_ID) -> Path:
    """A real (tiny) bundle: an 8-6-4 MLP cut after the first layer; weights depend on ``seed``."""
    spec = mlp([8, 6, 4], time_steps=2)
    rng = np.random.default_rng(seed)
    w0 = rng.integers(-127, 128, size=(8, 6), dtype=np.int8)
    w1 = rng.integers(-127, 128, size=(6, 4), dtype=np.int8)
    qnet = [QLayer(-6, w0), QLayer(-6, w1, None, w1.astype(np.int16) * 256)]
    x = rng.integers(0, 2, size=(5, 2, 8), dtype=np.uint8)
    y = rng.integers(0, 4, size=5)
    return write_bundle(out, spec, qnet, 1, model_id=model_id, version=version, revision=revision,
                        holdout=(x, y))


class KillOps(FileOps):
    """Dies just before operation ``crash_at``: SIGKILL to itself, or os._exit(137)."""

    def __init__(self, crash_at: int, mode: str):
        self.crash_at, self.mode, self.n = crash_at, mode, 0

    def _hook(self, op, path, *extra):
        i, self.n = self.n, self.n + 1
        if i == self.crash_at:
            if self.mode == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(137)


def _soak(root: str, bundle_dir: str) -> None:
    """Commit, revert and reset forever until killed from outside."""
    store = Store(root)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        st = store.status()
        try:
            store.install_candidate(bundle_dir, allow_same_version=True)
        except Exception:  # revision not newer (after a commit of it): go back first
            store.reset()
            continue
        store.commit() if i % 3 else store.discard_candidate()
        if i % 5 == 0 and st["has_previous"]:
            store.revert()


def _batch(action: str, bundle: str, roots: list[str]) -> None:
    """Fork one child per root; child k dies (SIGKILL if k is even, os._exit if odd) just before
    operation k. Imports happen once, here. Prints the children's fates as JSON."""
    fates = []
    for k, root in enumerate(roots):
        mode = "sigkill" if k % 2 == 0 else "exit"
        pid = os.fork()
        if pid == 0:
            try:
                _act(root, action, k, mode, bundle)
            finally:
                os._exit(0)  # survived: the operation had fewer than k+1 steps
        _, status = os.waitpid(pid, 0)
        fates.append({"root": root, "mode": mode, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                      "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
    print(json.dumps(fates))


def main(argv: list[str]) -> int:
    if argv[0] == "batch":
        _batch(argv[1], argv[2], argv[3:])
        return 0
    root, action, crash_at, mode = argv[0], argv[1], int(argv[2]), argv[3]
    if action == "soak":
        _soak(root, argv[4])
        return 0
    print(_act(root, action, crash_at, mode, argv[4] if len(argv) > 4 else None))
    return 0


def _act(root: str, action: str, crash_at: int, mode: str, bundle: str | None) -> int:
    ops = KillOps(crash_at, mode)
    store = Store(root, ops=ops)
    if action == "install":
        store.install_candidate(bundle, allow_same_version=True)
    elif action == "commit":
        store.commit()
    elif action == "revert":
        store.revert()
    elif action == "reset":
        store.reset()
    elif action == "discard":
        store.discard_candidate()
    elif action != "open":
        raise SystemExit(f"unknown action {action}")
    return ops.n


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
