"""Ed25519 keys and manifest signatures (the ``cryptography`` package, imported on use).

``keys new NAME`` writes ``NAME.key`` (PKCS#8 PEM, mode 0600, stays on the host) and ``NAME.pub``
(SubjectPublicKeyInfo PEM, goes to the device). A signature is stored in the manifest as
``{"alg": "ed25519", "key_id": ..., "value": base64}`` over ``edge_sdfa.bundle.signing_payload``.
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from edge_sdfa.errors import BundleError, UserError, require


def _crypto():
    require("cryptography", "bundle signing", extra="bridge")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def _payload(manifest: dict[str, Any]) -> bytes:
    from edge_sdfa.bundle import signing_payload

    return signing_payload(manifest)


def new_keypair(name: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.pub``; refuse to overwrite either."""
    serialization, ed25519 = _crypto()
    base = Path(name)
    key_path, pub_path = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise UserError(f"{p} exists; not overwriting a key")
    if not key_path.parent.is_dir():
        raise UserError(f"no such directory: {key_path.parent}")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path


def load_private_key(path: str | os.PathLike):
    serialization, ed25519 = _crypto()
    if not Path(path).is_file():
        raise UserError(f"no such key file: {path}")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike):
    serialization, ed25519 = _crypto()
    if not Path(path).is_file():
        raise UserError(f"no such key file: {path}")
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(manifest: dict[str, Any], private_key) -> dict[str, Any]:
    """A copy of ``manifest`` with its ``signature`` field set."""
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    sig = private_key.sign(_payload(unsigned))
    return {**unsigned, "signature": {"alg": "ed25519", "key_id": key_id(private_key.public_key()),
                                      "value": base64.b64encode(sig).decode()}}


def verify_manifest(manifest: dict[str, Any], public_key) -> None:
    """Raise BundleError unless ``manifest`` carries a valid signature by ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    sig = manifest.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519" or not isinstance(sig.get("value"), str):
        raise BundleError("bundle is not signed (the device trusts only signed bundles)")
    if sig.get("key_id") != key_id(public_key):
        raise BundleError(f"bundle signed by key {sig.get('key_id')!s}, not by the trusted key")
    try:
        value = base64.b64decode(sig["value"], validate=True)
        public_key.verify(value, _payload(manifest))
    except (InvalidSignature, ValueError):
        raise BundleError("bad bundle signature") from None
