"""Turn a bundle (a directory or a .tar of one) into what goes over the link.

A deploy sends the manifest first (signed with ``--sign``); the device answers with the files it
lacks (it skips those it holds, by sha256); the host then sends only those files, concatenated in
name order and compressed with the codec that makes them smallest (``choose_codec``). The host
checks its bundle (``read_bundle``) so that a user error is caught before minutes of upload.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_sdfa.errors import BundleError, UserError
from firmware_bridge.transfer import compress

MANIFEST = "manifest.json"


def files_of(path: Path) -> dict[str, bytes]:
    path = Path(path)
    if path.is_dir():
        out = {}
        for p in sorted(path.rglob("*")):
            if p.is_symlink():
                raise BundleError(f"bundle holds a link: {p}")
            if p.is_file():
                out[p.relative_to(path).as_posix()] = p.read_bytes()
        return out
    if path.is_file():
        from edge_sdfa.bundle import safe_extract_tar

        with tempfile.TemporaryDirectory() as tmp:
            return files_of(safe_extract_tar(path, Path(tmp)))
    raise UserError(f"no such bundle: {path}")


@dataclass
class PackedBundle:
    """A bundle ready to deploy: its (signed) manifest and the bytes of each listed file."""

    manifest: dict[str, Any]
    files: dict[str, bytes]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values()) + len(json.dumps(self.manifest))

    def payload(self, names: list[str]) -> bytes:
        return b"".join(self.files[n] for n in names)


def pack_bundle(path: str | os.PathLike, *, sign_key: str | os.PathLike | None = None,
                check: bool = True) -> PackedBundle:
    """Read (and check) a bundle; with ``sign_key`` its manifest gets an Ed25519 ``signature``."""
    path = Path(path)
    files = files_of(path)
    if MANIFEST not in files:
        raise BundleError(f"{path} has no {MANIFEST}")
    if check:
        from edge_sdfa.bundle import read_bundle

        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(data)
            read_bundle(Path(tmp))
    try:
        manifest = json.loads(files.pop(MANIFEST))
    except ValueError as exc:
        raise BundleError(f"{path}: {MANIFEST} is not JSON ({exc})") from None
    if sign_key is not None:
        from firmware_bridge.signing import load_private_key, sign_manifest

        manifest = sign_manifest(manifest, load_private_key(sign_key))
    listed = manifest.get("files", {})
    return PackedBundle(manifest, {n: files[n] for n in listed if n in files})


def choose_codec(data: bytes, codecs: tuple[str, ...] = ("zlib", "lzma")) -> tuple[str, bytes]:
    """The codec whose output is smallest ("none" unless one saves at least 2%)."""
    best, out = "none", data
    for codec in codecs:
        packed = compress(data, codec)
        if len(packed) < 0.98 * len(out):
            best, out = codec, packed
    return best, out
