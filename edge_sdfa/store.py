"""The device store: factory, active, candidate and last-good weights that survive power cuts.

On-disk layout (``docs/store.md`` has the full story)::

    ROOT/
      state.json        the only mutable record and the single commit point: which directory
                        each slot is, the state (PENDING/CONFIRMED/REVERTED) and an event log.
                        Replaced atomically: write state.json.tmp, fsync, os.replace, fsync ROOT.
      factory/          the factory bundle, read-only (a-w), written once by Store.init
      slots/gNNNNNN/    immutable bundle copies ("generations"), read-only once written
      .lock             advisory lock (fcntl.flock) serialising processes that share the store

Which generation is active, candidate or last good is recorded in ``state.json`` only (nothing on
disk is derived from it): ``edge-sdfa store status`` and ``Store.active_dir()`` read it there.

Every change is: write new files into a temporary generation directory, fsync each file and the
directory, rename it into ``slots/`` and fsync ``slots/``, then flip ``state.json``. A crash before
the flip leaves the old state (plus an unreferenced directory that the next open deletes); a crash
after it leaves the new one. Nothing referenced by ``state.json`` is ever modified or deleted, so
the active weights are always exactly the old or exactly the new ones.

State machine: a candidate that is installed is ``PENDING``; ``commit`` makes it active
(``CONFIRMED``); ``discard_candidate`` or ``revert`` end in ``REVERTED``; ``reset`` goes back to
the factory weights (``CONFIRMED``). A PENDING candidate never becomes active by itself: a crash
leaves it PENDING, the active weights untouched.

Every file-system operation that changes the store goes through a :class:`FileOps` object, so
tests can crash the store (raise, ``os._exit``, SIGKILL) at any single operation.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from edge_sdfa.errors import BundleError, UserError, naming

STATE_FILE = "state.json"
STATE_FORMAT = "edge-sdfa-store"
STATE_FORMAT_VERSION = 1
SLOTS_DIR = "slots"
FACTORY = "factory"
# symlink views (derived from state.json) that earlier versions made in ROOT; removed on open
LEGACY_VIEWS = ("active", "candidate", "previous")
MAX_EVENTS = 64

PENDING, CONFIRMED, REVERTED = "PENDING", "CONFIRMED", "REVERTED"

_RO_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH                      # 0o444
_RO_DIR = _RO_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH            # 0o555


# ---------------------------------------------------------------------------------------------
# the fault-injection seam


class FileOps:
    """Every file-system operation that changes a store. Replace it (or override ``_hook``) to
    inject faults: a subclass can raise or ``os._exit`` before operation *i*.

    Reads (``open(..., "rb")``, ``listdir``) are not routed through here: they
    change nothing, so a crash during one is the same as a crash before the next write.
    """

    def _hook(self, op: str, path: Path, *extra) -> None:
        """Called before every operation; the default does nothing."""

    def write(self, path: Path, data: bytes) -> None:
        """Create or truncate ``path`` and write ``data`` (not yet durable: see ``fsync``)."""
        self._hook("write", path, data)
        with naming(path), open(path, "wb") as f:
            f.write(data)

    def fsync(self, path: Path) -> None:
        self._hook("fsync", path)
        fd = os.open(path, os.O_RDONLY)
        try:
            with naming(path):
                os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: Path) -> None:
        self._hook("fsync_dir", path)
        if not hasattr(os, "O_DIRECTORY"):  # Windows: directories cannot be fsynced
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mkdir(self, path: Path) -> None:
        self._hook("mkdir", path)
        os.mkdir(path)

    def rename(self, src: Path, dst: Path) -> None:
        """Rename a directory into a name that does not exist yet."""
        self._hook("rename", src, dst)
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} exists")
        os.rename(src, dst)

    def replace(self, src: Path, dst: Path) -> None:
        """Atomically replace the file ``dst`` with ``src``."""
        self._hook("replace", src, dst)
        os.replace(src, dst)

    def chmod(self, path: Path, mode: int) -> None:
        self._hook("chmod", path, mode)
        os.chmod(path, mode)

    def remove(self, path: Path) -> None:
        """Remove a file or a symlink."""
        self._hook("remove", path)
        os.unlink(path)

    def rmtree(self, path: Path) -> None:
        """Remove a directory tree, read-only parts included."""
        self._hook("rmtree", path)

        def _writable(func, p, _exc):
            os.chmod(os.path.dirname(p), 0o755)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(p, 0o755)
            func(p)

        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o755)
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_writable)
        else:
            shutil.rmtree(path, onerror=_writable)


# ---------------------------------------------------------------------------------------------
# helpers


def _bundle_module():
    from edge_sdfa import bundle  # numpy-only, device side; imported lazily to keep status() light

    return bundle


def _summary(manifest: dict, rel: str) -> dict:
    return {
        "dir": rel,
        "model_id": str(manifest.get("model_id")),
        "version": int(manifest.get("version", 0)),
        "revision": int(manifest.get("revision", 0)),
        "runtime_abi": manifest.get("runtime_abi"),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_store(root: Path) -> bool:
    return (root / STATE_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# the store


class Store:
    """A crash-safe A/B weight store on the device. See the module docstring for the layout."""

    def __init__(self, root: str | Path, *, ops: FileOps | None = None):
        self.root = Path(os.path.abspath(os.path.expanduser(str(root))))
        self.ops = ops or FileOps()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        if not _is_store(self.root):
            raise UserError(f"{self.root} is not an edge-sdfa store (no {STATE_FILE}); "
                            "create one from a factory bundle first")
        with self._locked():
            self._recover()

    # ---- creation -----------------------------------------------------------------------------

    @classmethod
    def init(cls, root: str | Path, factory_bundle: str | Path, exist_ok: bool = True, *,
             ops: FileOps | None = None) -> "Store":
        """Create a store whose factory (and active) weights are ``factory_bundle`` (a bundle
        directory or .tar). If ``root`` already is a store, open it (or raise unless ``exist_ok``)."""
        root = Path(os.path.abspath(os.path.expanduser(str(root))))
        ops = ops or FileOps()
        if _is_store(root):
            if not exist_ok:
                raise UserError(f"{root} is already an edge-sdfa store")
            return cls(root, ops=ops)
        if root.exists() and not root.is_dir():
            raise UserError(f"{root} exists and is not a directory")
        ours = {FACTORY, SLOTS_DIR, ".factory.tmp", STATE_FILE + ".tmp", ".lock"}
        if root.is_dir():
            foreign = sorted(p.name for p in root.iterdir() if p.name not in ours)
            if foreign:
                raise UserError(f"{root} is not empty and not an edge-sdfa store "
                                f"(found {', '.join(foreign[:3])}); choose an empty directory")
        bmod = _bundle_module()
        with tempfile.TemporaryDirectory(prefix="edge-sdfa-store-") as work:
            bundle = bmod.read_bundle(factory_bundle, workdir=Path(work))
            root.mkdir(parents=True, exist_ok=True)
            self = cls.__new__(cls)
            self.root, self.ops, self._lock_depth, self._lock_fd = root, ops, 0, None
            with self._locked():
                if _is_store(root):  # another process finished init while we waited
                    pass
                else:
                    # leftovers of an init that crashed: no state.json means nothing was committed
                    for name in (".factory.tmp", FACTORY, SLOTS_DIR):
                        if os.path.lexists(root / name):
                            ops.rmtree(root / name)
                    if os.path.lexists(root / (STATE_FILE + ".tmp")):
                        ops.remove(root / (STATE_FILE + ".tmp"))
                    tmp = root / ".factory.tmp"
                    self._copy_bundle(bundle, tmp)
                    ops.rename(tmp, root / FACTORY)
                    ops.mkdir(root / SLOTS_DIR)
                    ops.fsync_dir(root)
                    factory = _summary(bundle.manifest, FACTORY)
                    state = {
                        "format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION,
                        "state": CONFIRMED, "seq": 0, "next_gen": 1,
                        "slots": {"factory": factory, "active": dict(factory), "candidate": None,
                                  "previous": None},
                        "events": [],
                    }
                    self._commit_state(state, "init")
                self._recover()
        return self

    # ---- queries ------------------------------------------------------------------------------

    def status(self) -> dict:
        """JSON-able summary: root, state, each slot's model_id/version/revision, last events."""
        st = self._load()
        slots = st["slots"]
        active = slots["active"]
        return {
            "root": str(self.root),
            "state": st["state"],
            "seq": st["seq"],
            "model_id": active["model_id"],
            "version": active["version"],
            "revision": active["revision"],
            "active": dict(active),
            "active_is_factory": active["dir"] == FACTORY,
            "has_candidate": slots["candidate"] is not None,
            "candidate": slots["candidate"],
            "has_previous": slots["previous"] is not None,
            "previous": slots["previous"],
            "factory": slots["factory"],
            "slots": {name: (None if s is None else s["dir"]) for name, s in slots.items()},
            "events": st["events"][-10:],
        }

    def active_dir(self) -> Path:
        """Directory of the active bundle. It stays valid (unchanged) after a commit; it is
        deleted only once it is neither active nor the last good weights."""
        return self.root / self._load()["slots"]["active"]["dir"]

    def factory_dir(self) -> Path:
        return self.root / FACTORY

    def candidate_dir(self) -> Path | None:
        c = self._load()["slots"]["candidate"]
        return None if c is None else self.root / c["dir"]

    def previous_dir(self) -> Path | None:
        p = self._load()["slots"]["previous"]
        return None if p is None else self.root / p["dir"]

    def events(self) -> list[dict]:
        return list(self._load()["events"])

    def verify(self) -> dict:
        """Re-check every slot's checksums: {slot: "ok" | error message | None}."""
        bmod = _bundle_module()
        out: dict = {}
        for name, s in self._load()["slots"].items():
            if s is None:
                out[name] = None
                continue
            try:
                bmod.read_bundle(self.root / s["dir"])
                out[name] = "ok"
            except BundleError as exc:
                out[name] = str(exc)
        return out

    # ---- transitions --------------------------------------------------------------------------

    def install_candidate(self, bundle_dir: str | Path, *, allow_same_version: bool = False,
                          allow_model_change: bool = False, activate: bool = False) -> Path:
        """Copy a verified bundle (directory or .tar) into the candidate slot, crash-safely.

        Rejected with BundleError, nothing changed: a bundle that fails verification or needs
        another runtime ABI, a different ``model_id`` (unless ``allow_model_change``), a lower
        ``version`` than the active one (downgrade), the same version unless ``allow_same_version``
        (fine-tuned weights of one model share a version and have an increasing ``revision``).
        Replaces an existing candidate. Returns the candidate's directory. ``activate=True``
        installs and commits in one state change (a fine-tune that passed its gate): on any error
        the store is exactly as before, never left with a PENDING candidate.
        """
        bmod = _bundle_module()
        src = Path(bundle_dir)
        with tempfile.TemporaryDirectory(prefix="edge-sdfa-store-") as work:
            bundle = bmod.read_bundle(src, workdir=Path(work))
            with self._locked():
                st = self._load()
                self._check_compatible(bundle.manifest, st["slots"]["active"], bmod.RUNTIME_ABI,
                                       allow_same_version, allow_model_change)
                slots = self.root / SLOTS_DIR
                gen = self._next_gen(st)
                name = f"g{gen:06d}"
                tmp = slots / f".tmp-{name}"
                if os.path.lexists(tmp):
                    self.ops.rmtree(tmp)
                try:
                    self._copy_bundle(bundle, tmp)
                    self.ops.rename(tmp, slots / name)
                    self.ops.fsync_dir(slots)
                except Exception:  # e.g. disk full: leave nothing behind (the next open would, too)
                    for leftover in (tmp, slots / name):
                        if os.path.lexists(leftover):
                            with contextlib.suppress(Exception):
                                self.ops.rmtree(leftover)
                    raise
                try:  # trust the copy only once it verifies (the source may change under us)
                    bmod.read_bundle(slots / name)
                except BundleError as exc:
                    self.ops.rmtree(slots / name)
                    raise BundleError(f"the copied candidate failed verification: {exc}") from None
                st["next_gen"] = gen + 1
                replaced = st["slots"]["candidate"]
                installed = _summary(bundle.manifest, f"{SLOTS_DIR}/{name}")
                if activate:
                    st["slots"]["previous"] = st["slots"]["active"]
                    st["slots"]["active"] = installed
                    st["slots"]["candidate"] = None
                    st["state"] = CONFIRMED
                else:
                    st["slots"]["candidate"] = installed
                    st["state"] = PENDING
                try:
                    self._commit_state(st, "install+commit" if activate else "install",
                                       replaced=None if replaced is None else replaced["dir"])
                except OSError:  # state.json unchanged: drop the unreferenced copy now, not at next open
                    with contextlib.suppress(Exception):
                        self.ops.rmtree(slots / name)
                    raise
                return slots / name

    def commit(self) -> None:
        """Make the candidate active; the old active becomes the last good (``previous``)."""
        bmod = _bundle_module()
        with self._locked():
            st = self._load()
            cand = st["slots"]["candidate"]
            if cand is None:
                raise UserError("no candidate to commit")
            try:  # a candidate that rotted since install is never made active
                bmod.read_bundle(self.root / cand["dir"])
            except BundleError as exc:
                raise BundleError(f"candidate {cand['dir']} no longer verifies ({exc}); discard it") from None
            st["slots"]["previous"] = st["slots"]["active"]
            st["slots"]["active"] = cand
            st["slots"]["candidate"] = None
            st["state"] = CONFIRMED
            self._commit_state(st, "commit")

    def discard_candidate(self) -> None:
        """Drop the candidate (the active weights are untouched). No-op if there is none."""
        with self._locked():
            st = self._load()
            if st["slots"]["candidate"] is None:
                return
            st["slots"]["candidate"] = None
            st["state"] = REVERTED
            self._commit_state(st, "discard")

    def revert(self) -> None:
        """Go back to the last good weights (dropping any candidate). UserError if there are none."""
        with self._locked():
            st = self._load()
            prev = st["slots"]["previous"]
            if prev is None:
                raise UserError("no last good weights to revert to")
            dropped = st["slots"]["active"]
            st["slots"]["active"] = prev
            st["slots"]["previous"] = None
            st["slots"]["candidate"] = None
            st["state"] = REVERTED
            self._commit_state(st, "revert", dropped=dropped["dir"])

    def reset(self) -> None:
        """Back to the factory weights. Fine-tuned weights (active, last good, candidate) are
        deleted: they encode the user's data."""
        with self._locked():
            st = self._load()
            st["slots"]["active"] = dict(st["slots"]["factory"])
            st["slots"]["previous"] = None
            st["slots"]["candidate"] = None
            st["state"] = CONFIRMED
            self._commit_state(st, "reset")

    def rounding_counter(self) -> int:
        """Updates run by earlier fine-tunes in this store: the next one's stochastic-rounding
        stream starts here, so no two fine-tunes draw the same stream."""
        return int(self._load().get("rounding_counter", 0))

    def advance_rounding_counter(self, updates: int) -> None:
        with self._locked():
            st = self._load()
            st["rounding_counter"] = int(st.get("rounding_counter", 0)) + int(updates)
            self._commit_state(st, "rounding", updates=int(updates))

    # ---- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive advisory lock on ROOT/.lock, re-entrant within this object."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = None
        try:
            import fcntl
        except ImportError:  # not POSIX: single-process use only
            fcntl = None
        if fcntl is not None:
            try:
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # read-only file system: nobody can change the store anyway
                if fd is not None:
                    os.close(fd)
                fd = None
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            if fd is not None:
                os.close(fd)  # releases the flock

    def _load(self) -> dict:
        path = self.root / STATE_FILE
        try:
            st = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.root} is not an edge-sdfa store (no {STATE_FILE})") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is corrupt ({exc})") from None
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
            raise UserError(f"{path} is not an edge-sdfa store state file")
        if st.get("format_version") != STATE_FORMAT_VERSION:
            raise UserError(f"{path}: unknown store format version {st.get('format_version')!r}")
        slots = st.get("slots")
        if not isinstance(slots, dict) or not isinstance(slots.get("active"), dict) \
                or not isinstance(slots.get("factory"), dict):
            raise UserError(f"{path} has no active or factory slot")
        return st

    def _commit_state(self, st: dict, event: str, **detail) -> None:
        """The commit point: state.json.tmp, fsync, os.replace, fsync ROOT. Then gc."""
        st["seq"] = int(st.get("seq", 0)) + 1
        active = st["slots"]["active"]
        entry = {"seq": st["seq"], "time": _now(), "event": event, "state": st["state"],
                 "active": active["dir"], "version": active["version"], "revision": active["revision"]}
        entry.update({k: v for k, v in detail.items() if v is not None})
        st["events"] = (list(st.get("events", [])) + [entry])[-MAX_EVENTS:]
        data = (json.dumps(st, indent=1, sort_keys=True) + "\n").encode()
        tmp = self.root / (STATE_FILE + ".tmp")
        try:
            self.ops.write(tmp, data)
            self.ops.fsync(tmp)
            self.ops.replace(tmp, self.root / STATE_FILE)
        except OSError:  # e.g. disk full or read-only: the old state.json stands; leave no temp file
            if os.path.lexists(tmp):
                with contextlib.suppress(Exception):
                    self.ops.remove(tmp)
            raise
        try:  # the new state is in place: a failed directory fsync or clean-up is redone by the next open
            self.ops.fsync_dir(self.root)
            self._collect(st)
        except OSError:
            pass

    def _copy_bundle(self, bundle, dst: Path) -> None:
        """Copy a verified bundle's manifest and listed files into a new directory ``dst``, each
        file fsynced, read-only, and the directory fsynced."""
        self.ops.mkdir(dst)
        names = ["manifest.json", *sorted(bundle.manifest["files"])]
        for name in names:
            data = (Path(bundle.path) / name).read_bytes()
            self.ops.write(dst / name, data)
            self.ops.fsync(dst / name)
            self.ops.chmod(dst / name, _RO_FILE)
        self.ops.chmod(dst, _RO_DIR)
        self.ops.fsync_dir(dst)

    def _next_gen(self, st: dict) -> int:
        gen = int(st.get("next_gen", 1))
        for p in (self.root / SLOTS_DIR).iterdir():
            n = p.name.rsplit("g", 1)[-1]
            if n.isdigit():
                gen = max(gen, int(n) + 1)
        return gen

    @staticmethod
    def _check_compatible(m: dict, active: dict, abi: int, same_ok: bool, model_change_ok: bool) -> None:
        if m.get("runtime_abi") != abi:
            raise BundleError(f"bundle needs runtime ABI {m.get('runtime_abi')!r}, this runtime has {abi}")
        mid, ver, rev = str(m.get("model_id")), int(m.get("version", 0)), int(m.get("revision", 0))
        if mid != active["model_id"]:
            if model_change_ok:
                return
            raise BundleError(f"bundle is for model {mid!r}, the store holds {active['model_id']!r}")
        if ver < active["version"]:
            raise BundleError(f"downgrade refused: bundle version {ver} is lower than the active {active['version']}")
        if ver == active["version"]:
            if not same_ok:
                raise BundleError(f"bundle version {ver} equals the active one; a fine-tuned candidate "
                                  "must be installed with allow_same_version")
            if rev <= active["revision"]:
                raise BundleError(f"bundle revision {rev} is not newer than the active revision "
                                  f"{active['revision']} of version {ver}")

    def _referenced(self, st: dict) -> set[str]:
        return {s["dir"] for s in st["slots"].values() if s is not None}

    def _collect(self, st: dict) -> None:
        """Delete every directory in slots/ that state.json does not reference (temporary copies
        of a crashed install, replaced candidates, weights two commits old)."""
        keep = self._referenced(st)
        slots = self.root / SLOTS_DIR
        removed = False
        for p in sorted(slots.iterdir()):
            if f"{SLOTS_DIR}/{p.name}" in keep:
                continue
            if p.is_dir() and not p.is_symlink():
                self.ops.rmtree(p)
            else:
                self.ops.remove(p)
            removed = True
        if removed:
            self.ops.fsync_dir(slots)

    def _recover(self) -> None:
        """Make the directory match state.json again after a crash: drop temporary files and
        unreferenced generations. Idempotent; writes nothing if all is well."""
        st = self._load()
        if not (self.root / FACTORY).is_dir():
            raise UserError(f"{self.root}: the factory slot is missing; the store is damaged")
        slots = self.root / SLOTS_DIR
        if not slots.is_dir():
            self.ops.mkdir(slots)
            self.ops.fsync_dir(self.root)
        if os.path.lexists(self.root / (STATE_FILE + ".tmp")):
            self.ops.remove(self.root / (STATE_FILE + ".tmp"))
        legacy = [self.root / n for n in (*LEGACY_VIEWS, *(f".{v}.tmp" for v in LEGACY_VIEWS))]
        for link in legacy:
            if os.path.islink(link):
                self.ops.remove(link)
        if os.path.lexists(self.root / ".factory.tmp"):
            self.ops.rmtree(self.root / ".factory.tmp")
        missing = [name for name, s in st["slots"].items()
                   if s is not None and not (self.root / s["dir"]).is_dir()]
        if missing:  # only if the disk lost a directory behind our back: fall back, never to nothing
            for name in missing:
                if name == "active":
                    prev = st["slots"]["previous"]
                    ok = prev is not None and (self.root / prev["dir"]).is_dir()
                    st["slots"]["active"] = prev if ok else dict(st["slots"]["factory"])
                    st["slots"]["previous"] = None
                    st["state"] = REVERTED
                elif name != "factory":
                    st["slots"][name] = None
            if st["slots"]["candidate"] is None and st["state"] == PENDING:
                st["state"] = REVERTED
            self._commit_state(st, "recover", missing=",".join(missing))
            return
        self._collect(st)
