"""Device side of the resumable upload: a staging area keyed by the upload's SHA-256.

The device is the source of truth for the offset: ``begin`` and every ``write`` return the
number of contiguous bytes it holds. Writes are positional, so the same chunk written twice (a
duplicate or a retransmission) changes nothing. ``finish`` checks size and SHA-256 before the
upload is handed on; nothing outside the staging area is touched until then.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("bundle", "data")


class TransferError(Exception):
    """An upload request that cannot be honoured; ``code`` is sent back in the ERROR reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Upload:
    sha: str
    size: int
    kind: str
    path: Path

    @property
    def offset(self) -> int:
        try:
            return min(self.path.stat().st_size, self.size)
        except FileNotFoundError:
            return 0


class Staging:
    """Partial uploads under ``root``: ``<sha>.part`` plus ``<sha>.json`` (size and kind)."""

    def __init__(self, root: Path, *, max_size: int = 512 * 1024 * 1024):
        self.root = Path(root)
        self.max_size = max_size
        self.root.mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, Upload] = {}

    def begin(self, sha: str, size: int, kind: str) -> Upload:
        if not _SHA.match(sha):
            raise TransferError("bad_request", "sha must be 64 lower-case hex digits")
        if kind not in _KINDS:
            raise TransferError("bad_request", f"kind must be one of {_KINDS}")
        if not 0 < size <= self.max_size:
            raise TransferError("too_large", f"upload size {size} not in 1..{self.max_size}")
        free = shutil.disk_usage(self.root).free
        if size > free:
            raise TransferError("no_space", f"upload of {size} bytes exceeds free disk ({free})")
        up = Upload(sha, size, kind, self.root / f"{sha}.part")
        meta = self.root / f"{sha}.json"
        try:
            saved = json.loads(meta.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("size") != size or saved.get("kind") != kind:
            up.path.unlink(missing_ok=True)  # a stale or foreign partial file: start over
            meta.write_text(json.dumps({"size": size, "kind": kind}))
        self._uploads[sha] = up
        self._prune(keep=sha)
        return up

    def held(self, sha_prefix: str) -> int:
        """Contiguous bytes held for the upload whose SHA-256 starts with ``sha_prefix``."""
        return self._find(sha_prefix).offset

    def sessions(self) -> list[Upload]:
        return list(self._uploads.values())

    def _prune(self, keep: str, max_partial: int = 4) -> None:
        """Abandoned uploads do not pile up: only the newest ``max_partial`` are kept."""
        parts = sorted(self.root.glob("*.part"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in parts[max_partial:]:
            if p.stem != keep:
                self.discard(p.stem)

    def write(self, sha_prefix: str, offset: int, data: bytes) -> Upload:
        up = self._find(sha_prefix)
        held = up.offset
        if offset > held:
            # A gap: refuse, and say where to resume (the reply carries the offset held).
            raise TransferError("gap", f"chunk at {offset} but the device holds {held} bytes")
        if offset + len(data) > up.size:
            raise TransferError("bad_request", "chunk runs past the announced size")
        if offset + len(data) > held:
            with open(up.path, "r+b" if up.path.exists() else "wb") as fh:
                fh.seek(offset)
                fh.write(data)
        return up

    def finish(self, sha: str) -> Upload:
        up = self._find(sha[:16])
        if up.sha != sha:
            raise TransferError("no_upload", "no upload with that sha")
        if up.offset != up.size:
            raise TransferError("incomplete", f"upload holds {up.offset} of {up.size} bytes")
        digest = hashlib.sha256()
        with open(up.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            os.fsync(fh.fileno())
        if digest.hexdigest() != up.sha:
            self.discard(up.sha)
            raise TransferError("checksum", "SHA-256 of the upload does not match; upload discarded")
        return up

    def discard(self, sha: str) -> None:
        self._uploads.pop(sha, None)
        (self.root / f"{sha}.part").unlink(missing_ok=True)
        (self.root / f"{sha}.json").unlink(missing_ok=True)

    def _find(self, sha_prefix: str) -> Upload:
        for sha, up in self._uploads.items():
            if sha.startswith(sha_prefix):
                return up
        raise TransferError("no_upload", "no upload in progress for that sha (send PUT_BUNDLE first)")
