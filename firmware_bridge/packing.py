"""Turn a bundle (a directory or a .tar of one) into the exact bytes that go over the link.

The host does not need to trust its own bundle, but it checks it (``read_bundle``) so a user
error is caught before minutes of upload. With a signing key the manifest gets a ``signature``.
The archive is deterministic: sorted names, regular files only, mtime 0, uid/gid 0.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from edge_sdfa.errors import BundleError, UserError

MANIFEST = "manifest.json"


def files_of(path: Path) -> dict[str, bytes]:
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


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def pack_bundle(path: Path, *, sign_key: str | os.PathLike | None = None, check: bool = True) -> bytes:
    """Bytes of the bundle's archive, signed if ``sign_key`` is given."""
    path = Path(path)
    files = files_of(path)
    if check:
        from edge_sdfa.bundle import read_bundle

        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(data)
            read_bundle(Path(tmp))
    if MANIFEST not in files:
        raise BundleError(f"{path} has no {MANIFEST}")
    if sign_key is not None:
        from firmware_bridge.signing import load_private_key, sign_manifest

        manifest = json.loads(files[MANIFEST])
        signed = sign_manifest(manifest, load_private_key(sign_key))
        files[MANIFEST] = (json.dumps(signed, indent=2, sort_keys=True) + "\n").encode()
    return tar_bytes(files)
