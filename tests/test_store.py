"""The device store: API, compatibility rules, state machine, and crash safety (G4-G7).

Crash safety is tested the MCUboot way: count the file-system operations of a good run, then for
every index i interrupt the operation there and "reboot" (open the store afresh). Interruptions:
an exception (process death), a torn write (half the bytes, then death), and two power-loss
models: unsynced file data lost (kept directory changes), and every directory change not followed
by an fsync of its directory undone too. The subprocess tests die for real (SIGKILL, os._exit).
After each, the store must verify and hold exactly the old or exactly the new weights.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_sdfa.bundle import pack_tar, read_bundle
from edge_sdfa.errors import BundleError, UserError
from edge_sdfa.store import CONFIRMED, FACTORY, PENDING, REVERTED, SLOTS_DIR, FileOps, Store

sys.path.insert(0, str(Path(__file__).parent))
from store_crash_helper import make_bundle  # noqa: E402

HELPER = Path(__file__).with_name("store_crash_helper.py")
ROOT = Path(__file__).resolve().parents[1]


def head(d: Path) -> bytes:
    return (Path(d) / "head.npz").read_bytes()


@pytest.fixture
def bundles(tmp_path):
    """factory v1r0, two fine-tunes v1r1 / v1r2, an upgrade v2r0."""
    b = tmp_path / "bundles"
    return {
        "factory": make_bundle(b / "factory", version=1, revision=0, seed=0),
        "r1": make_bundle(b / "r1", version=1, revision=1, seed=1),
        "r2": make_bundle(b / "r2", version=1, revision=2, seed=2),
        "v2": make_bundle(b / "v2", version=2, revision=0, seed=3),
        "r3": make_bundle(b / "r3", version=1, revision=3, seed=7),
    }


def check_consistent(root: Path) -> dict:
    """Open afresh; every referenced slot verifies, no leftovers or derived files, state is coherent."""
    s = Store(root)
    st = s.status()
    assert all(v in ("ok", None) for v in s.verify().values()), s.verify()
    keep = {d.split("/", 1)[1] for d in st["slots"].values() if d and d.startswith(SLOTS_DIR + "/")}
    assert sorted(p.name for p in (root / SLOTS_DIR).iterdir()) == sorted(keep)
    assert sorted(p.name for p in root.iterdir()) == [".lock", FACTORY, SLOTS_DIR, "state.json"]
    assert (st["state"] == PENDING) == st["has_candidate"]
    # "recover" means state.json named a directory that was gone: only a lying disk may do that
    assert "recover" not in [e["event"] for e in s.events()]
    assert s.active_dir() == root / st["slots"]["active"]
    return st


# ---------------------------------------------------------------------------------------------
# API


@pytest.mark.unit
def test_init_status_and_factory_read_only(tmp_path, bundles):
    s = Store.init(tmp_path / "store", bundles["factory"])
    st = check_consistent(s.root)
    assert st["state"] == CONFIRMED and st["active_is_factory"] and not st["has_candidate"]
    assert (st["model_id"], st["version"], st["revision"]) == ("store-test", 1, 0)
    assert head(s.active_dir()) == head(bundles["factory"]) == head(s.factory_dir())
    assert s.factory_dir() == s.root / "factory"
    for p in [s.factory_dir(), *s.factory_dir().iterdir()]:
        assert not os.stat(p).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), p
    json.dumps(st)
    assert [e["event"] for e in st["events"]] == ["init"]
    # init again: just opens
    s2 = Store.init(s.root, bundles["v2"])
    assert s2.status()["version"] == 1
    with pytest.raises(UserError):
        Store.init(s.root, bundles["v2"], exist_ok=False)


@pytest.mark.unit
def test_not_a_store(tmp_path, bundles):
    with pytest.raises(UserError, match="not an edge-sdfa store"):
        Store(tmp_path / "nothing")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        Store.init(tmp_path / "home", bundles["factory"])
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    with pytest.raises(BundleError):
        Store.init(tmp_path / "s", tmp_path / "no-bundle")
    root = tmp_path / "s2"
    Store.init(root, bundles["factory"])
    (root / "state.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        Store(root)


@pytest.mark.unit
def test_install_commit_revert_reset_cycle(tmp_path, bundles):
    s = Store.init(tmp_path / "store", bundles["factory"])
    cdir = s.install_candidate(bundles["r1"], allow_same_version=True)
    st = check_consistent(s.root)
    assert st["state"] == PENDING and st["candidate"]["revision"] == 1
    assert head(cdir) == head(bundles["r1"]) and head(s.active_dir()) == head(bundles["factory"])
    s.commit()
    st = check_consistent(s.root)
    assert st["state"] == CONFIRMED and st["revision"] == 1 and st["previous"]["dir"] == "factory"
    assert head(s.active_dir()) == head(bundles["r1"])
    s.install_candidate(bundles["r2"], allow_same_version=True)
    s.commit()
    assert head(s.active_dir()) == head(bundles["r2"])
    assert head(s.previous_dir()) == head(bundles["r1"])
    s.revert()
    st = check_consistent(s.root)
    assert st["state"] == REVERTED and head(s.active_dir()) == head(bundles["r1"]) and not st["has_previous"]
    with pytest.raises(UserError, match="no last good"):
        s.revert()
    s.install_candidate(bundles["v2"])
    s.commit()
    s.reset()
    st = check_consistent(s.root)
    assert st["active_is_factory"] and not st["has_previous"] and not st["has_candidate"]
    assert list((s.root / SLOTS_DIR).iterdir()) == []  # personal weights are gone after a reset
    with pytest.raises(UserError, match="no candidate"):
        s.commit()
    s.discard_candidate()  # nothing to discard: no-op


@pytest.mark.unit
def test_symlink_views_of_earlier_versions_are_removed_on_open(tmp_path, bundles):
    """state.json is the only record of which weights are active; the symlinks earlier versions
    kept beside it go stale after the next commit, so opening the store removes them."""
    s = Store.init(tmp_path / "store", bundles["factory"])
    os.symlink(FACTORY, s.root / "active")
    os.symlink("slots/g000001", s.root / ".candidate.tmp")
    Store(s.root)
    assert sorted(p.name for p in s.root.iterdir()) == [".lock", FACTORY, SLOTS_DIR, "state.json"]
    check_consistent(s.root)


@pytest.mark.unit
def test_event_log_state_machine(tmp_path, bundles):
    """G5: a table of action sequences -> final state and exact event chain."""
    table = [
        (["install", "commit"], CONFIRMED, ["init", "install", "commit"]),
        (["install", "discard"], REVERTED, ["init", "install", "discard"]),
        (["install", "commit", "revert"], REVERTED, ["init", "install", "commit", "revert"]),
        (["install", "install"], PENDING, ["init", "install", "install"]),
        (["install", "commit", "install", "reset"], CONFIRMED, ["init", "install", "commit", "install", "reset"]),
    ]
    for k, (actions, final, chain) in enumerate(table):
        s = Store.init(tmp_path / f"s{k}", bundles["factory"])
        revs = iter(["r1", "r2"])
        for a in actions:
            if a == "install":
                s.install_candidate(bundles[next(revs)], allow_same_version=True)
            else:
                {"commit": s.commit, "discard": s.discard_candidate, "revert": s.revert, "reset": s.reset}[a]()
        st = check_consistent(s.root)
        assert st["state"] == final, actions
        assert [e["event"] for e in s.events()] == chain
        assert [e["seq"] for e in s.events()] == list(range(1, len(chain) + 1))


@pytest.mark.unit
def test_rejections_leave_the_store_untouched(tmp_path, bundles):
    """G1/G7: corrupt, incompatible ABI, other model, downgrade, same version: rejected, nothing changes."""
    s = Store.init(tmp_path / "store", bundles["factory"])
    s.install_candidate(bundles["v2"])
    s.commit()
    before = (s.root / "state.json").read_bytes(), head(s.active_dir()), sorted(os.listdir(s.root / SLOTS_DIR))

    def untouched():
        assert ((s.root / "state.json").read_bytes(), head(s.active_dir()),
                sorted(os.listdir(s.root / SLOTS_DIR))) == before

    b = tmp_path / "bad"
    cases = {}
    cases["downgrade"] = bundles["r2"]
    cases["other model"] = make_bundle(b / "other", version=3, model_id="someone-else")
    cases["same version"] = make_bundle(b / "same", version=2, revision=5, seed=9)
    abi = make_bundle(b / "abi", version=3)
    m = json.loads((abi / "manifest.json").read_text())
    m["runtime_abi"] = 99
    (abi / "manifest.json").write_text(json.dumps(m))
    cases["abi"] = abi
    flipped = make_bundle(b / "flip", version=3)
    data = bytearray((flipped / "head.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "head.npz").write_bytes(bytes(data))
    cases["bit flip"] = flipped
    cases["missing"] = b / "nope"
    for name, path in cases.items():
        with pytest.raises(BundleError):
            s.install_candidate(path)
        untouched()
    with pytest.raises(BundleError, match="not newer"):
        s.install_candidate(make_bundle(b / "samerev", version=2, revision=0, seed=4), allow_same_version=True)
    untouched()
    # allowed with the explicit flags
    s.install_candidate(cases["same version"], allow_same_version=True)
    s.install_candidate(cases["other model"], allow_model_change=True)
    assert s.status()["candidate"]["model_id"] == "someone-else"


@pytest.mark.unit
def test_install_from_tar_and_copy_is_verified(tmp_path, bundles):
    s = Store.init(tmp_path / "store", pack_tar(bundles["factory"], tmp_path / "factory.tar"))
    assert head(s.active_dir()) == head(bundles["factory"])
    cdir = s.install_candidate(pack_tar(bundles["r1"], tmp_path / "r1.tar"), allow_same_version=True)
    assert head(cdir) == head(bundles["r1"])
    read_bundle(cdir)

    class Corrupting(FileOps):  # the disk corrupts what we write: the copy must not be trusted
        def write(self, path, data):
            if path.name == "head.npz":
                data = data[:-1] + bytes([data[-1] ^ 1])
            super().write(path, data)

    bad = Store(s.root, ops=Corrupting())
    with pytest.raises(BundleError, match="failed verification"):
        bad.install_candidate(bundles["r2"], allow_same_version=True)
    st = check_consistent(s.root)
    assert head(s.candidate_dir()) == head(bundles["r1"]) and st["candidate"]["revision"] == 1


@pytest.mark.unit
def test_rotted_candidate_is_not_committed(tmp_path, bundles):
    s = Store.init(tmp_path / "store", bundles["factory"])
    cdir = s.install_candidate(bundles["r1"], allow_same_version=True)
    os.chmod(cdir / "head.npz", 0o644)
    (cdir / "head.npz").write_bytes(b"rot")
    with pytest.raises(BundleError, match="no longer verifies"):
        s.commit()
    assert head(s.active_dir()) == head(bundles["factory"])
    s.discard_candidate()
    check_consistent(s.root)


@pytest.mark.unit
def test_disk_full_during_install_leaves_nothing(tmp_path, bundles):
    s = Store.init(tmp_path / "store", bundles["factory"])

    class Full(FileOps):
        def write(self, path, data):
            if path.name == "holdout.npz":
                raise OSError(28, "No space left on device")
            super().write(path, data)

    with pytest.raises(OSError):
        Store(s.root, ops=Full()).install_candidate(bundles["r1"], allow_same_version=True)
    assert list((s.root / SLOTS_DIR).iterdir()) == []
    assert check_consistent(s.root)["state"] == CONFIRMED


# ---------------------------------------------------------------------------------------------
# crash injection, in process


class Crash(BaseException):
    """The process died here (a BaseException, so no `except Exception` in the store catches it)."""


class FaultOps(FileOps):
    """Counts operations and dies before operation ``crash_at``.

    ``mode``: "raise" (process death), "torn" (as "raise", but a write leaves half its bytes),
    "lose-data" (power cut: file contents not fsynced are lost), "lose-dirs" (power cut: also
    every directory change not followed by an fsync of that directory is undone).
    """

    def __init__(self, crash_at: int | None = None, mode: str = "raise", stash: Path | None = None):
        self.crash_at, self.mode, self.stash = crash_at, mode, stash
        self.n = 0
        self.trace: list[tuple[str, str]] = []
        self.unsynced: set[tuple[int, int]] = set()   # (dev, ino) of files written, not fsynced
        self.pending: list[tuple[str, object]] = []   # (directory, undo) not yet made durable
        self._k = 0

    def _hook(self, op, path, *extra):
        i, self.n = self.n, self.n + 1
        self.trace.append((op, str(path)))
        if i == self.crash_at:
            if self.mode == "torn" and op == "write":
                with open(path, "wb") as f:
                    f.write(extra[0][: len(extra[0]) // 2])
            raise Crash(op, str(path))

    # power-loss bookkeeping ---------------------------------------------------------------------
    def _save(self, path: Path):
        """A copy of what ``path`` is now, and a function that puts it back."""
        self._k += 1
        if os.path.islink(path):
            target = os.readlink(path)
            return lambda: (_rm(path), os.symlink(target, path))
        if os.path.isdir(path):
            copy = self.stash / f"{self._k}"
            shutil.copytree(path, copy, symlinks=True)
            return lambda: (_rm(path), shutil.copytree(copy, path, symlinks=True))
        data = Path(path).read_bytes()
        return lambda: (_rm(path), Path(path).write_bytes(data))

    def write(self, path, data):
        existed = os.path.lexists(path)
        super().write(path, data)
        st = os.stat(path)
        self.unsynced.add((st.st_dev, st.st_ino))
        if not existed:
            self.pending.append((str(Path(path).parent), lambda p=path: _rm(p)))

    def fsync(self, path):
        super().fsync(path)
        st = os.stat(path)
        self.unsynced.discard((st.st_dev, st.st_ino))

    def fsync_dir(self, path):
        super().fsync_dir(path)
        self.pending = [(d, u) for d, u in self.pending if d != str(path)]

    def mkdir(self, path):
        super().mkdir(path)
        self.pending.append((str(Path(path).parent), lambda p=path: _rm(p)))

    def rename(self, src, dst):
        assert Path(src).parent == Path(dst).parent
        super().rename(src, dst)
        self.pending.append((str(Path(dst).parent), lambda s=src, d=dst: os.rename(d, s)))

    def replace(self, src, dst):
        restore = self._save(dst) if os.path.lexists(dst) else (lambda d=dst: _rm(d))
        super().replace(src, dst)
        self.pending.append((str(Path(dst).parent), lambda s=src, d=dst, r=restore: (os.rename(d, s), r())))

    def remove(self, path):
        restore = self._save(path)
        super().remove(path)
        self.pending.append((str(Path(path).parent), restore))

    def rmtree(self, path):
        restore = self._save(path)
        super().rmtree(path)
        self.pending.append((str(Path(path).parent), restore))

    def power_cut(self, root: Path) -> None:
        """What the disk holds after power returns."""
        if self.mode == "lose-dirs":
            for _, undo in reversed(self.pending):
                undo()
        if self.mode in ("lose-data", "lose-dirs"):
            for dirpath, _, files in os.walk(root):
                for f in files:
                    p = Path(dirpath) / f
                    if os.path.islink(p):
                        continue
                    st = os.stat(p)
                    if (st.st_dev, st.st_ino) in self.unsynced:
                        os.chmod(p, 0o644)
                        p.write_bytes(b"")  # ext4 after a rename without fsync: zero length


def _rm(path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        for d, dirs, files in os.walk(path):
            os.chmod(d, 0o755)
        shutil.rmtree(path)


_TEMPLATES: dict = {}


def _setup(tmp: Path, action: str, bundles: dict) -> tuple[Path, list[bytes]]:
    """A store ready for ``action`` (built once, then copied); returns (root, [old head, new head])."""
    key = (action, str(bundles["factory"]))
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _build(bundles["factory"].parent / f"template-{action}", action, bundles)
    template, old_new = _TEMPLATES[key]
    root = tmp / "store"
    tmp.mkdir(parents=True, exist_ok=True)
    if template.exists():
        shutil.copytree(template, root, symlinks=True)
    return root, old_new


def _build(tmp: Path, action: str, bundles: dict) -> tuple[Path, list[bytes]]:
    root = tmp / "store"
    s = Store.init(root, bundles["factory"])
    f, r1, r2 = (head(bundles[k]) for k in ("factory", "r1", "r2"))
    if action == "init":
        shutil.rmtree(root)
        return root, [None, f]
    if action == "install":
        return root, [f, f]
    s.install_candidate(bundles["r1"], allow_same_version=True)
    if action in ("commit", "discard"):
        return root, [f, r1 if action == "commit" else f]
    s.commit()
    s.install_candidate(bundles["r2"], allow_same_version=True)
    s.commit()
    if action == "revert":
        return root, [r2, r1]
    assert action == "reset"
    s.install_candidate(bundles["r3"], allow_same_version=True)
    return root, [r2, f]


def _run(root: Path, action: str, bundles: dict, ops: FileOps) -> None:
    if action == "init":
        Store.init(root, bundles["factory"], ops=ops)
        return
    s = Store(root, ops=ops)
    if action == "install":
        s.install_candidate(bundles["r1"], allow_same_version=True)
    else:
        {"commit": s.commit, "discard": s.discard_candidate, "revert": s.revert, "reset": s.reset}[action]()


def _check_after_crash(root: Path, action: str, old_new: list, bundles: dict) -> str:
    if action == "init" and not (root / "state.json").exists():
        with pytest.raises(UserError):
            Store(root)
        Store.init(root, bundles["factory"])  # nothing was committed: init can simply run again
        return "old"
    st = check_consistent(root)
    h = head(Store(root).active_dir())
    assert h in old_new, "active weights are neither the old nor the new ones"
    outcome = "old" if h == old_new[0] else "new"
    if action == "install" and st["has_candidate"]:
        assert head(Store(root).candidate_dir()) == head(bundles["r1"])
    if action == "commit" and outcome == "old":
        assert head(Store(root).candidate_dir()) == old_new[1]  # still PENDING, intact
    if action == "commit" and outcome == "new":
        assert head(Store(root).previous_dir()) == old_new[0]
    return outcome


@pytest.fixture
def no_fsync(monkeypatch):
    """In-process crash tests model durability in FaultOps; real fsyncs would only cost time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


ACTIONS = ["init", "install", "commit", "discard", "revert", "reset"]
MODES = ["torn", "lose-data", "lose-dirs"]  # "torn" is a plain death at every op but a write


@pytest.mark.integration
@pytest.mark.parametrize("action", ACTIONS)
def test_crash_at_every_operation(tmp_path, bundles, action, no_fsync):
    """G4: interrupt at every operation index, in every crash mode; old or new, never a mix."""
    (tmp_path / "pstash").mkdir()
    probe = FaultOps(stash=tmp_path / "pstash")
    root, old_new = _setup(tmp_path / "probe", action, bundles)
    _run(root, action, bundles, probe)
    total = probe.n
    follow_up = make_bundle(tmp_path / "next", version=5, seed=11)
    assert total >= 4, probe.trace
    runs, outcomes = 0, set()
    for mode in MODES:
        for i in range(total):
            tmp = tmp_path / f"{mode}-{i}"
            root, old_new = _setup(tmp, action, bundles)
            ops = FaultOps(i, mode, stash=tmp / "stash")
            (tmp / "stash").mkdir()
            with pytest.raises(Crash):
                _run(root, action, bundles, ops)
            ops.power_cut(root)
            outcomes.add(_check_after_crash(root, action, old_new, bundles))
            if mode == "lose-dirs":  # the recovered store keeps working
                s = Store(root)
                s.install_candidate(follow_up)
                s.commit()
                check_consistent(root)
            runs += 1
    assert runs == total * len(MODES)
    if action in ("install", "discard"):
        assert outcomes == {"old"}
    else:
        assert outcomes == {"old", "new"}  # early crashes keep the old, late ones the new


@pytest.mark.integration
@pytest.mark.parametrize("action", ["install", "commit", "revert"])
def test_crash_during_recovery_after_crash(tmp_path, bundles, action, no_fsync):
    """Stacked faults: power cut during an operation, then another at every step of the
    recovery that the next open performs; the third open still finds old or new."""
    (tmp_path / "pstash").mkdir()
    probe = FaultOps(stash=tmp_path / "pstash")
    root, _ = _setup(tmp_path / "probe", action, bundles)
    _run(root, action, bundles, probe)
    checked = 0
    for i in range(probe.n):
        for j in range(8):
            tmp = tmp_path / f"{i}-{j}"
            root, old_new = _setup(tmp, action, bundles)
            (tmp / "stash").mkdir()
            ops = FaultOps(i, "lose-dirs", stash=tmp / "stash")
            with pytest.raises(Crash):
                _run(root, action, bundles, ops)
            ops.power_cut(root)
            ops2 = FaultOps(j, "lose-dirs", stash=tmp / "stash")
            try:
                Store(root, ops=ops2)
                recovered_cleanly = True
            except Crash:
                ops2.power_cut(root)
                recovered_cleanly = False
            _check_after_crash(root, action, old_new, bundles)
            checked += 1
            if recovered_cleanly:
                break
    if action == "commit":  # one state flip and nothing derived: no crash leaves recovery any work
        assert checked == probe.n
    else:
        assert checked > probe.n


@pytest.mark.unit
def test_commit_is_one_state_flip(tmp_path, bundles):
    """The commit's durable order: state.json.tmp written, fsynced, replaced, ROOT fsynced;
    an install's files are each fsynced before the rename, which is followed by a dir fsync."""
    root, _ = _setup(tmp_path, "commit", bundles)
    (tmp_path / "stash").mkdir()
    ops = FaultOps(stash=tmp_path / "stash")
    Store(root, ops=ops).commit()
    ops_only = [op for op, _ in ops.trace]
    assert ops_only[:4] == ["write", "fsync", "replace", "fsync_dir"]
    assert ops.trace[2][1] == str(root / "state.json.tmp") and ops.trace[3][1] == str(root)
    ops = FaultOps(stash=tmp_path / "stash")
    Store(root, ops=ops).install_candidate(bundles["r2"], allow_same_version=True)
    t = ops.trace
    ren = next(k for k, (op, _) in enumerate(t) if op == "rename")
    written = [p for op, p in t[:ren] if op == "write"]
    synced = [p for op, p in t[:ren] if op == "fsync"]
    assert written and written == synced
    assert t[ren + 1] == ("fsync_dir", str(root / SLOTS_DIR))
    assert t[ren - 1][0] == "fsync_dir"


# ---------------------------------------------------------------------------------------------
# crash injection, real process death


def _helper(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.integration
@pytest.mark.parametrize("action", ["install", "commit", "revert", "reset"])
def test_killed_process_at_every_operation(tmp_path, bundles, action):
    """SIGKILL (even indices) or os._exit (odd) of a real process before each operation (one
    forked child per index, so the imports are paid once)."""
    root, _ = _setup(tmp_path / "probe", action, bundles)
    extra = [bundles["r1"]] if action == "install" else []
    done = _helper(root, action, -1, "exit", *extra)
    assert done.returncode == 0, done.stderr
    total = int(done.stdout.split()[-1])
    roots, expect = [], []
    for i in range(total):
        root, old_new = _setup(tmp_path / f"k{i}", action, bundles)
        roots.append(str(root))
        expect.append(old_new)
    r = _helper("batch", action, extra[0] if extra else "-", *roots, timeout=120)
    assert r.returncode == 0, r.stderr
    outcomes = set()
    for i, (fate, old_new) in enumerate(zip(json.loads(r.stdout), expect)):
        if fate["mode"] == "sigkill":
            assert fate["signal"] == signal.SIGKILL, (i, fate, r.stderr)
        else:
            assert fate["exit"] == 137, (i, fate, r.stderr)
        outcomes.add(_check_after_crash(Path(fate["root"]), action, old_new, bundles))
    assert outcomes == ({"old"} if action == "install" else {"old", "new"})


@pytest.mark.integration
def test_sigkill_soak(tmp_path, bundles):
    """Kill a process that commits, reverts, discards and resets in a loop at random moments."""
    root = tmp_path / "store"
    Store.init(root, bundles["factory"])
    allowed = {head(bundles["factory"]), head(bundles["r2"])}
    rng = random.Random(1234)
    seqs = []
    for _ in range(8):
        p = subprocess.Popen([sys.executable, str(HELPER), str(root), "soak", "-1", "exit", str(bundles["r2"])],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + rng.random() * 0.3)
        p.kill()
        _, err = p.communicate(timeout=10)
        assert p.returncode == -signal.SIGKILL, err
        st = check_consistent(root)
        assert head(Store(root).active_dir()) in allowed
        seqs.append(st["seq"])
    assert seqs[-1] > 8  # the soak did real work between kills
