"""Device side of the resumable upload: a bounded staging area.

An upload is announced before any byte of it is accepted: its id (SHA-256 of the bytes sent),
its size on the wire, its size once decompressed and, for a bundle, the signed manifest (checked
by the caller first). Every bound is enforced here:

* ``too_large``: the declared size is above the limit for its kind, the wire size is more than a
  codec can need for the declared raw size, or a chunk runs past the declared size;
* ``no_space``: the upload and its unpacked copy would not fit the free disk (with a reserve);
* one partial upload per *key* (per model for bundles, one for user data): a new announcement
  under the same key replaces the old partial file.

The device holds the true offset: ``begin`` and every ``write`` return the number of contiguous
bytes held. Writes are positional, so a duplicated chunk changes nothing. ``finish`` checks size
and SHA-256; ``unpack`` decompresses with the declared raw size as a hard bound.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SHA = re.compile(r"^[0-9a-f]{64}$")
KINDS = ("bundle", "data")
CODECS = ("none", "zlib", "lzma")
LIMITS = {"bundle": 256 * 1024 * 1024, "data": 64 * 1024 * 1024}
RESERVE = 16 * 1024 * 1024      # free disk the device keeps for its store and logs


class TransferError(Exception):
    """An upload request that cannot be honoured; ``code`` is sent back in the ERROR reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def codec_bound(raw_size: int) -> int:
    """The most bytes any accepted codec may need for ``raw_size`` bytes (zlib/lzma worst case)."""
    return raw_size + raw_size // 64 + 4096


@dataclass
class Upload:
    sha: str
    size: int
    kind: str
    path: Path
    key: str = ""
    raw_size: int = 0
    codec: str = "none"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        try:
            return min(self.path.stat().st_size, self.size)
        except FileNotFoundError:
            return 0


class Staging:
    """Partial uploads under ``root``: ``<sha>.part`` plus ``<sha>.json`` (what was announced)."""

    def __init__(self, root: Path, *, limits: dict[str, int] | None = None, reserve: int = RESERVE):
        self.root = Path(root)
        self.limits = dict(LIMITS, **(limits or {}))
        self.reserve = reserve
        self.root.mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, Upload] = {}

    def begin(self, sha: str, size: int, kind: str, *, key: str | None = None, raw_size: int | None = None,
              codec: str = "none", info: dict[str, Any] | None = None) -> Upload:
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise TransferError("bad_request", "sha must be 64 lower-case hex digits")
        if kind not in KINDS:
            raise TransferError("bad_request", f"kind must be one of {KINDS}")
        if codec not in CODECS:
            raise TransferError("bad_request", f"codec must be one of {CODECS}")
        raw = size if raw_size is None else raw_size
        limit = self.limits[kind]
        if not isinstance(size, int) or not isinstance(raw, int) or not (0 < raw or kind == "bundle" and raw == 0) \
                or raw > limit:
            raise TransferError("too_large", f"{kind} of {raw} bytes is above the device's limit of {limit}")
        if not (0 < size or raw == 0) or size > (raw if codec == "none" else codec_bound(raw)):
            raise TransferError("too_large", f"{size} bytes on the wire for {raw} bytes with codec {codec}")
        key = key or kind
        meta = self.root / f"{sha}.json"
        announced = {"size": size, "kind": kind, "key": key, "raw_size": raw, "codec": codec, "info": info or {}}
        try:
            saved = json.loads(meta.read_text())
        except (OSError, ValueError):
            saved = {}
        up = Upload(sha, size, kind, self.root / f"{sha}.part", key, raw, codec, info or {})
        need = size - up.offset + raw
        free = shutil.disk_usage(self.root).free
        if need + self.reserve > free:
            raise TransferError("no_space", f"upload needs {need} bytes, the device has {free} free "
                                f"(keeping {self.reserve} in reserve)")
        for other in self._on_disk():    # one partial upload per key
            if other.get("key") == key and other["sha"] != sha:
                self.discard(other["sha"])
        if saved != announced:
            up.path.unlink(missing_ok=True)  # a stale or foreign partial file: start over
            meta.write_text(json.dumps(announced))
        if size == 0:
            up.path.touch()
        self._uploads[sha] = up
        return up

    def _on_disk(self) -> list[dict[str, Any]]:
        out = []
        for p in self.root.glob("*.json"):
            try:
                out.append({"sha": p.stem, **json.loads(p.read_text())})
            except (OSError, ValueError):
                p.unlink(missing_ok=True)
        return out

    def held(self, prefix: str) -> int:
        return self._find(prefix).offset

    def sessions(self) -> list[Upload]:
        return list(self._uploads.values())

    def write(self, prefix: str, offset: int, data: bytes) -> Upload:
        up = self._find(prefix)
        held = up.offset
        if offset > held:
            raise TransferError("gap", f"chunk at {offset} but the device holds {held} bytes")
        if offset + len(data) > up.size:
            raise TransferError("too_large", f"chunk runs past the declared size of {up.size} bytes")
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

    def _find(self, prefix: str) -> Upload:
        for sha, up in self._uploads.items():
            if sha.startswith(prefix):
                return up
        raise TransferError("no_upload", "no upload in progress for that id (send PUT_BUNDLE first)")


def unpack(up: Upload) -> bytes:
    """The upload's bytes, decompressed; never more than the declared raw size."""
    data = up.path.read_bytes()
    if up.codec == "none":
        out, done = data, True
    else:
        dec = zlib.decompressobj() if up.codec == "zlib" else lzma.LZMADecompressor()
        try:
            out = dec.decompress(data, up.raw_size + 1)
        except (zlib.error, lzma.LZMAError) as exc:
            raise TransferError("bad_payload", f"{up.codec} stream is damaged: {exc}") from None
        done = dec.eof and not getattr(dec, "unused_data", b"")
    if len(out) != up.raw_size or not done:
        raise TransferError("too_large" if len(out) > up.raw_size else "bad_payload",
                            f"payload unpacks to a size other than the declared {up.raw_size} bytes")
    return out


def compress(data: bytes, codec: str) -> bytes:
    if codec == "zlib":
        return zlib.compress(data, 6)
    if codec == "lzma":
        return lzma.compress(data, preset=6)
    return data
