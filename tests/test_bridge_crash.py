"""The agent SIGKILLed at every file-system step of a remote COMMIT: after a restart the store
holds exactly the old or exactly the new weights (G4), and the agent serves again."""
from __future__ import annotations

import shutil
import sys
import time

import pytest

from bridge_fixtures import REPO, SLOW_LINK, AgentProcess, make_bundle, make_store, tree_bytes
from firmware_bridge.client import connect, status
from firmware_bridge.messages import MsgType, parse_message

pytestmark = pytest.mark.integration

LAUNCHER = [sys.executable, str(REPO / "tests" / "bridge_kill_launcher.py")]


def _count_commit_ops(root) -> int:
    from edge_sdfa.store import FileOps, Store

    class Counting(FileOps):
        n = 0

        def _hook(self, op, path, *extra):
            Counting.n += 1

    store = Store(root, ops=Counting())
    Counting.n = 0
    store.commit()
    return Counting.n


def test_sigkill_at_every_commit_step(tmp_path):
    template = tmp_path / "template"
    store = make_store(template, make_bundle(tmp_path / "v1", version=1, seed=0))
    store.install_candidate(make_bundle(tmp_path / "v2", version=2, seed=1))
    old = tree_bytes(store.active_dir())
    new = tree_bytes(store.candidate_dir())
    assert old != new
    probe = tmp_path / "probe"
    shutil.copytree(template, probe, symlinks=True)
    n_ops = _count_commit_ops(probe)
    assert n_ops >= 4
    outcomes = []
    for k in range(n_ops + 1):
        root = tmp_path / f"run{k}"
        shutil.copytree(template, root, symlinks=True)
        agent = AgentProcess(root, ["--insecure"], launcher=[*LAUNCHER, str(k)]).start()
        try:
            with connect(agent.url, config=SLOW_LINK) as dev:
                outcomes.append(_commit_or_death(dev, agent))
            if k < n_ops:
                assert outcomes[-1] == "killed" and agent.proc.returncode == -9, agent.log_text()
        finally:
            agent.stop()
        # restart: the store's recovery on open is what a restarted agent runs first
        from edge_sdfa.store import Store

        version = Store(root).status()["active"]["version"]
        if k in (0, n_ops // 2, n_ops - 1):  # and the real agent comes back and serves
            with AgentProcess(root, ["--insecure"]) as again, connect(again.url, config=SLOW_LINK) as dev:
                assert status(dev)["active"]["version"] == version
        active = tree_bytes(Store(root).active_dir())
        assert active in (old, new), k
        assert version == (1 if active == old else 2)
        if k == n_ops:
            assert active == new and outcomes[-1] == "done"
    assert outcomes.count("killed") == n_ops


def _commit_or_death(dev, agent, timeout: float = 30.0) -> str:
    """Send one COMMIT and watch both the line and the process: 'done' or 'killed'."""
    msg = dev.submit(MsgType.COMMIT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            return "killed"
        payload = dev.channel.recv(0.05)
        item = None if payload is None else parse_message(payload)
        if item is not None and item.seq == msg.seq:
            assert item.type == MsgType.OK, item.meta
            return "done"
    raise AssertionError("the agent neither answered nor died")
