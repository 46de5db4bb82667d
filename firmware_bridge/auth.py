"""Authenticated requests: each state-changing or revealing request is single-use.

The device picks a fresh random nonce for every HELLO and remembers the highest request counter
it accepted under it. The host signs ``nonce | counter | type | request id | fields | sha256(blob)``
with the private half of the device's trusted key (Ed25519) and puts ``auth: {ctr, sig}`` in the
fields. The device refuses a request whose counter is not above the last one accepted (a replay
or a reordering), whose nonce is stale (a capture from another session) or whose signature is
wrong, all with the same ``unauthorized`` error. See docs/bridge.md for the threat table.
"""
from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Any

from firmware_bridge.messages import Message, canonical

_TAG = b"edge-sdfa request v2\x00"


def signed_bytes(nonce: bytes, ctr: int, msg: Message) -> bytes:
    fields = {k: v for k, v in msg.meta.items() if k != "auth"}
    return b"".join((_TAG, nonce, struct.pack(">QBI", ctr, int(msg.type), msg.seq & 0xFFFFFFFF),
                     hashlib.sha256(canonical(fields)).digest(), hashlib.sha256(msg.blob).digest()))


def sign_request(msg: Message, private_key, nonce: bytes, ctr: int) -> Message:
    sig = private_key.sign(signed_bytes(nonce, ctr, msg))
    meta = {**msg.meta, "auth": {"ctr": ctr, "sig": base64.b64encode(sig).decode()}}
    return Message(msg.type, msg.seq, meta, msg.blob)


class Unauthorized(Exception):
    code = "unauthorized"


class RequestGuard:
    """Device side: the session nonce and the counter high-water mark."""

    def __init__(self, public_key) -> None:
        self.public_key = public_key
        self.nonce = b""
        self.last_ctr = -1

    def new_session(self) -> bytes:
        self.nonce = os.urandom(16)
        self.last_ctr = -1
        return self.nonce

    def check(self, msg: Message) -> None:
        from cryptography.exceptions import InvalidSignature

        auth: Any = msg.meta.get("auth")
        refuse = Unauthorized(f"{msg.type.name} needs a fresh request signed by the trusted key "
                              "(remote --sign NAME.key)")
        if not self.nonce or not isinstance(auth, dict) or auth.get("ctr", -1) <= self.last_ctr:
            raise refuse
        try:
            sig = base64.b64decode(auth["sig"], validate=True)
            self.public_key.verify(sig, signed_bytes(self.nonce, int(auth["ctr"]), msg))
        except (InvalidSignature, ValueError, KeyError, TypeError):
            raise refuse from None
        self.last_ctr = int(auth["ctr"])
