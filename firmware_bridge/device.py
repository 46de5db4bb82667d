"""What the agent's requests do on the device: the store, bundle verification, fine-tuning.

Everything here is the device runtime's public API (edge_sdfa.bundle, .store, .finetune); the
bridge adds signature checks and a workspace ``STORE/bridge/`` for uploads and the user's data.

Files are named, never addressed by path: user data is ``latest`` or the 64-hex id of an upload,
looked up in a listing of ``STORE/bridge/data``; anything else gets the same ``no_data`` error
as a name that does not exist.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from edge_sdfa.errors import BundleError, DataError, UserError
from firmware_bridge.messages import valid_name

WORKSPACE = "bridge"
LATEST_DATA = "latest"
MAX_PREDICT = 1024


class NamedError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def open_store(root: Path, log: Callable[[str], None] = lambda m: None):
    """Open the store at ``root``; an empty one is created from the embedded default bundle (a
    device always has a model; ``deploy --new-model`` replaces it)."""
    from edge_sdfa.store import Store

    if (root / "state.json").exists():
        return Store(root)
    from edge_sdfa.finetune import DEFAULT_BUNDLE

    log(f"no store at {root}: creating one from the embedded default bundle")
    return Store.init(root, DEFAULT_BUNDLE)


def _free_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class DeviceOps:
    def __init__(self, store, *, trust: str | os.PathLike | None = None):
        self.store = store
        self.root = Path(store.root)
        self.public_key = None
        self.key_id = None
        if trust is not None:
            from firmware_bridge.signing import key_id, load_public_key

            self.public_key = load_public_key(trust)
            self.key_id = key_id(self.public_key)
        self.workspace = self.root / WORKSPACE
        self.data_dir = self.workspace / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def staging_dir(self) -> Path:
        return self.workspace / "staging"

    # ---- queries (open: no user data in them)
    def hello(self) -> dict[str, Any]:
        from edge_sdfa import __version__
        from edge_sdfa.bundle import FORMAT_VERSION, RUNTIME_ABI

        st = self.store.status()
        return {"runtime_abi": RUNTIME_ABI, "bundle_format": FORMAT_VERSION, "runtime": __version__,
                "free_memory": _free_memory(), "free_disk": shutil.disk_usage(self.root).free,
                "active": {"model_id": st["model_id"], "version": st["version"], "revision": st["revision"]},
                "trusted_key": self.key_id}

    def status(self) -> dict[str, Any]:
        st = self.store.status()
        slot = lambda s: None if s is None else {k: s[k] for k in ("model_id", "version", "revision")}  # noqa: E731
        return {"state": st["state"], "model_id": st["model_id"], "version": st["version"],
                "revision": st["revision"], "active": slot(st["active"]), "candidate": slot(st["candidate"]),
                "previous": slot(st["previous"]), "factory": slot(st["factory"]),
                "has_candidate": st["has_candidate"], "has_previous": st["has_previous"],
                "active_is_factory": st["active_is_factory"]}

    def weights(self) -> tuple[bytes, str]:
        data = (Path(self.store.active_dir()) / "head.npz").read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    # ---- bundles: the manifest first
    def _held_files(self) -> dict[str, Path]:
        """sha256 -> a file the store already holds (any slot), to skip sending it again."""
        held: dict[str, Path] = {}
        st = self.store.status()
        for s in (st["active"], st["candidate"], st["previous"], st["factory"]):
            if s is None:
                continue
            folder = self.root / s["dir"]
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            for name, meta in manifest.get("files", {}).items():
                if isinstance(meta, dict) and valid_name(name) and (folder / name).is_file():
                    held.setdefault(str(meta.get("sha256")), folder / name)
        return held

    def check_manifest(self, manifest: Any, new_model: bool) -> dict:
        """Parse, authenticate and check a manifest before any byte of its bundle is accepted."""
        from edge_sdfa.bundle import MANIFEST, Manifest

        if not isinstance(manifest, dict):
            raise NamedError("bad_request", "PUT_BUNDLE of a bundle needs its manifest")
        meta = Manifest.from_dict(manifest)      # every field checked (BundleError otherwise)
        m = meta.raw
        if self.public_key is not None:
            from firmware_bridge.signing import verify_manifest

            verify_manifest(m, self.public_key)
        for name, entry in meta.files.items():
            if not valid_name(name) or name == MANIFEST:
                raise BundleError(f"manifest lists an invalid file name {name!r}")
        active = self.store.status()["active"]
        mid, ver, rev = str(m["model_id"]), int(m["version"]), int(m.get("revision", 0))
        if mid != active["model_id"]:
            if not new_model:
                raise BundleError(f"bundle is for model {mid!r}, the device holds {active['model_id']!r} "
                                  "(deploy --new-model to replace the model)")
        elif (ver, rev) < (active["version"], active["revision"]):
            raise BundleError(f"downgrade refused: bundle v{ver} r{rev} is older than the active "
                              f"v{active['version']} r{active['revision']}")
        return m

    def plan_bundle(self, manifest: Any, new_model: bool) -> dict[str, Any]:
        m = self.check_manifest(manifest, new_model)
        held = self._held_files()
        need = sorted(n for n, meta in m["files"].items() if meta["sha256"] not in held)
        return {"model_id": m["model_id"], "version": m["version"], "need": need,
                "need_bytes": sum(int(m["files"][n]["bytes"]) for n in need),
                "held": sorted(set(m["files"]) - set(need))}

    # ---- uploads
    def accept_upload(self, up) -> dict[str, Any]:
        if up.kind == "data":
            return self._accept_data(up)
        return self._accept_bundle(up)

    def _accept_data(self, up) -> dict[str, Any]:
        from edge_sdfa.userdata import describe
        from firmware_bridge.transfer import unpack

        dest = self.data_dir / f"{up.sha}.npz"
        tmp = self.data_dir / f".{up.sha}.tmp"
        tmp.write_bytes(unpack(up))
        try:
            info = describe(str(tmp))
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"uploaded user data is not readable: {exc}") from None
        os.replace(tmp, dest)
        latest = self.data_dir / f".{LATEST_DATA}.tmp"
        shutil.copyfile(dest, latest)
        os.replace(latest, self.data_dir / f"{LATEST_DATA}.npz")
        return {"data": up.sha, "samples": info.get("samples")}

    def _accept_bundle(self, up) -> dict[str, Any]:
        from edge_sdfa.bundle import MANIFEST, read_bundle
        from firmware_bridge.transfer import unpack

        info = up.info
        new_model = bool(info.get("new_model"))
        m = self.check_manifest(info.get("manifest"), new_model)  # again: the store may have moved on
        payload = unpack(up)
        held = self._held_files()
        verify = None
        if self.public_key is not None:
            from firmware_bridge.signing import verify_manifest

            verify = lambda manifest: verify_manifest(manifest, self.public_key)  # noqa: E731
        with tempfile.TemporaryDirectory(prefix="unpack-", dir=self.workspace) as tmp:
            bdir = Path(tmp) / "bundle"
            bdir.mkdir()
            pos = 0
            for name in info["files"]:
                size = int(m["files"][name]["bytes"])
                (bdir / name).write_bytes(payload[pos:pos + size])
                pos += size
            for name, meta in m["files"].items():
                if name not in info["files"]:
                    src = held.get(meta["sha256"])
                    if src is None:
                        raise BundleError(f"the device no longer holds {name}; deploy again")
                    shutil.copyfile(src, bdir / name)
            (bdir / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
            read_bundle(bdir, verify_signature=verify)   # every file's sha256, shapes, signature
            # same version, newer revision: a fine-tuned head re-deployed (the store checks the revision)
            self.store.install_candidate(bdir, allow_model_change=new_model, allow_same_version=True)
        return {"installed": "candidate", "model_id": m["model_id"], "version": m["version"],
                "revision": m.get("revision", 0), "signed": "signature" in m,
                "signature_checked": verify is not None, "new_model": new_model,
                "files_received": list(info["files"]), "files_reused": sorted(set(m["files"]) - set(info["files"]))}

    # ---- user data, by name
    def data_path(self, name: str | None) -> str | None:
        """``npz:PATH`` of the named user data (None: the latest upload, or the runtime default)."""
        if name is None:
            latest = self.data_dir / f"{LATEST_DATA}.npz"
            return f"npz:{latest}" if latest.exists() else None
        listing = {p.stem for p in self.data_dir.glob("*.npz")}
        if not valid_name(name) or name not in listing:
            raise NamedError("no_data", f"no user data named {str(name)[:80]!r} on the device")
        return f"npz:{self.data_dir / (name + '.npz')}"

    # ---- jobs
    def finetune(self, data: str | None, config: dict[str, Any],
                 on_event: Callable[[dict], None]) -> dict[str, Any]:
        from edge_sdfa.finetune import FinetuneConfig, finetune

        known = {f.name for f in fields(FinetuneConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"unknown fine-tune settings: {', '.join(unknown)}")
        return finetune(None, data, store=self.root, config=FinetuneConfig(**config),
                        on_event=lambda ev: on_event(ev) if ev.get("event") != "done" else None)

    def evaluate(self, data: str | None) -> dict[str, Any]:
        from edge_sdfa.finetune import evaluate

        report = dict(evaluate(None, data, store=self.root))
        report.pop("store", None)
        return report

    def predict(self, name: str | None, blob: bytes, limit: int) -> dict[str, Any]:
        """Labels and output spike rates of the active model on samples (an npz blob with ``x``,
        or named user data on the device)."""
        from firmware_bridge.inference import predict

        if blob:
            from edge_sdfa.bundle import load_npz

            try:
                with tempfile.NamedTemporaryFile(suffix=".npz", dir=self.workspace) as fh:
                    fh.write(blob)
                    fh.flush()
                    x = load_npz(Path(fh.name))["x"]
            except (KeyError, ValueError, OSError, BundleError) as exc:
                raise DataError(f"PREDICT blob is not an npz with an array 'x': {exc}") from None
            source: Any = x
        else:
            source = self.data_path(name)
            if source is None:
                raise NamedError("no_data", "no user data on the device; send samples with the request")
        return predict(self.root, source, min(limit, MAX_PREDICT))

    # ---- transitions
    def commit(self) -> dict[str, Any]:
        self.store.commit()
        return self._summary("commit")

    def revert(self) -> dict[str, Any]:
        """Drop a pending candidate; with none, go back to the last good weights (after a model
        change: the previous model)."""
        if self.store.status()["has_candidate"]:
            self.store.discard_candidate()
            return self._summary("discard")
        self.store.revert()
        return self._summary("revert")

    def reset(self) -> dict[str, Any]:
        """Back to the factory bundle the store was created with (whatever model is active); the
        user's data on the device is deleted with the fine-tuned weights."""
        self.store.reset()
        for p in self.data_dir.glob("*.npz"):
            p.unlink(missing_ok=True)
        return self._summary("reset")

    def _summary(self, action: str) -> dict[str, Any]:
        st = self.status()
        return {"action": action, "state": st["state"], "active": st["active"], "candidate": st["candidate"]}
