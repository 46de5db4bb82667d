"""What the agent's requests do on the device: the store, bundle verification, fine-tuning.

Everything here is the device runtime's public API (edge_sdfa.bundle, .store, .finetune); the
bridge adds signature checks and a workspace ``STORE/bridge/`` for uploads and the user's data.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from edge_sdfa.errors import BundleError, DataError, UserError

WORKSPACE = "bridge"
LATEST_DATA = "latest.npz"


def open_store(root: Path, log: Callable[[str], None] = lambda m: None):
    """Open the store at ``root``, creating it from the embedded default bundle if there is none."""
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

    # ---- queries
    def hello(self) -> dict[str, Any]:
        from edge_sdfa import __version__
        from edge_sdfa.bundle import FORMAT_VERSION, RUNTIME_ABI

        st = self.store.status()
        return {"runtime_abi": RUNTIME_ABI, "bundle_format": FORMAT_VERSION, "runtime": __version__,
                "free_memory": _free_memory(), "free_disk": shutil.disk_usage(self.root).free,
                "active": {"model_id": st["model_id"], "version": st["version"], "revision": st["revision"]},
                "trusted_key": self.key_id, "user_data": (self.data_dir / LATEST_DATA).exists()}

    def status(self) -> dict[str, Any]:
        st = dict(self.store.status())
        st["user_data"] = (self.data_dir / LATEST_DATA).exists()
        return st

    def weights(self) -> tuple[bytes, str]:
        data = (Path(self.store.active_dir()) / "head.npz").read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    # ---- uploads
    def accept_upload(self, up) -> dict[str, Any]:
        if up.kind == "data":
            return self._accept_data(up)
        return self._accept_bundle(up)

    def _accept_data(self, up) -> dict[str, Any]:
        from edge_sdfa.userdata import describe

        dest = self.data_dir / f"{up.sha}.npz"
        shutil.copyfile(up.path, dest)
        try:
            info = describe(str(dest))
        except Exception as exc:
            dest.unlink(missing_ok=True)
            raise DataError(f"uploaded user data is not readable: {exc}") from None
        tmp = self.data_dir / (LATEST_DATA + ".tmp")
        shutil.copyfile(dest, tmp)
        os.replace(tmp, self.data_dir / LATEST_DATA)
        return {"data": up.sha, "samples": info.get("samples")}

    def _accept_bundle(self, up) -> dict[str, Any]:
        from edge_sdfa.bundle import read_bundle, safe_extract_tar
        from firmware_bridge.packing import files_of, tar_bytes

        verify = None
        if self.public_key is not None:
            from firmware_bridge.signing import verify_manifest

            verify = lambda manifest: verify_manifest(manifest, self.public_key)  # noqa: E731
        with tempfile.TemporaryDirectory(prefix="unpack-", dir=self.workspace) as tmp:
            bundle_dir = safe_extract_tar(up.path, Path(tmp) / "bundle")
            # The host sends the canonical archive of its files (firmware_bridge.packing), so any
            # change to the archive, even in padding or tar headers, is refused, not just content.
            if tar_bytes(files_of(bundle_dir)) != up.path.read_bytes():
                raise BundleError("the archive is not the canonical packing of its files (damaged?)")
            bundle = read_bundle(bundle_dir, verify_signature=verify)
            self.store.install_candidate(bundle_dir)
        m = bundle.manifest
        return {"installed": "candidate", "model_id": m["model_id"], "version": m["version"],
                "revision": m.get("revision", 0), "signed": "signature" in m,
                "signature_checked": verify is not None}

    # ---- jobs
    def _data(self, sha: str | None) -> str | None:
        if sha is not None:
            path = self.data_dir / f"{sha}.npz"
            if not path.exists():
                raise DataError(f"no user data {sha[:16]} on the device; send it with --data")
            return f"npz:{path}"
        latest = self.data_dir / LATEST_DATA
        return f"npz:{latest}" if latest.exists() else None

    def finetune(self, data_sha: str | None, config: dict[str, Any],
                 on_event: Callable[[dict], None]) -> dict[str, Any]:
        from edge_sdfa.finetune import FinetuneConfig, finetune

        known = {f.name for f in fields(FinetuneConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"unknown fine-tune settings: {', '.join(unknown)}")
        report = finetune(None, self._data(data_sha), store=self.root, config=FinetuneConfig(**config),
                          on_event=lambda ev: on_event(ev) if ev.get("event") != "done" else None)
        return report

    def evaluate(self, data_sha: str | None) -> dict[str, Any]:
        from edge_sdfa.finetune import evaluate

        return evaluate(None, self._data(data_sha), store=self.root)

    # ---- transitions
    def commit(self) -> dict[str, Any]:
        self.store.commit()
        return self._summary("commit")

    def revert(self) -> dict[str, Any]:
        """Drop a pending candidate; with none, go back to the last good weights."""
        if self.store.status()["has_candidate"]:
            self.store.discard_candidate()
            return self._summary("discard")
        self.store.revert()
        return self._summary("revert")

    def _summary(self, action: str) -> dict[str, Any]:
        st = self.store.status()
        return {"action": action, "state": st["state"], "active": st["active"], "candidate": st["candidate"]}
