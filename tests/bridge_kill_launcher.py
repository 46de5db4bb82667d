"""Run ``edge-sdfa ARGS`` with a store that SIGKILLs its own process just before file-system
operation number CRASH_AT of a commit (counted from the start of ``Store.commit``).

    python tests/bridge_kill_launcher.py CRASH_AT serve --port PTY --store DIR --insecure

Only the store's fault-injection seam (``FileOps``) is replaced; the agent is the real one.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_sdfa import store as store_mod  # noqa: E402


class KillDuringCommit(store_mod.FileOps):
    def __init__(self, crash_at: int):
        self.crash_at, self.armed, self.n = crash_at, False, 0

    def _hook(self, op, path, *extra):
        if not self.armed:
            return
        if self.n == self.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.n += 1


def install(crash_at: int) -> None:
    ops = KillDuringCommit(crash_at)
    init, commit = store_mod.Store.__init__, store_mod.Store.commit

    def patched_init(self, root, *, ops_=None, **kw):
        init(self, root, ops=ops)

    def patched_commit(self):
        ops.armed = True
        try:
            return commit(self)
        finally:
            ops.armed = False

    store_mod.Store.__init__ = patched_init
    store_mod.Store.commit = patched_commit


if __name__ == "__main__":
    install(int(sys.argv[1]))
    from edge_sdfa.cli import main

    main(sys.argv[2:])
