"""Messages carried in frames: a type, a JSON object of fields (``meta``) and an optional binary blob.

Payload layout: ``u16 len(meta) | meta (UTF-8 JSON object) | blob``. A PUT_CHUNK blob starts with a
binary chunk header (8-byte SHA-256 prefix of the upload, u64 offset) so a 4 KiB chunk costs
about 2% on the wire. ``parse_message`` is total: any frame gives a Message or a ProtocolError.
"""
from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.framing import (DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION, Frame, ProtocolError,
                                     encode_frame)

META_LEN = struct.Struct(">H")
CHUNK_HEADER = struct.Struct(">8sQ")


class MsgType(enum.IntEnum):
    HELLO = 0x01
    PUT_BUNDLE = 0x10     # begin (or resume) an upload: sha, size, kind -> offset held by the device
    PUT_CHUNK = 0x11      # blob: chunk header + bytes -> offset held by the device
    PUT_END = 0x12        # verify the upload, install it -> result
    FINETUNE = 0x20
    EVAL = 0x21
    STATUS = 0x22
    GET_WEIGHTS = 0x23
    COMMIT = 0x24
    REVERT = 0x25
    TELEMETRY = 0x30      # request: events since an index; reply: the events
    NACK = 0x7D           # frame not accepted (unsupported version, bad frame); no seq to trust
    OK = 0x7E             # reply to a request, same seq
    ERROR = 0x7F          # request refused or failed, same seq: code + message


# Required fields and their types, per message type (requests only; replies are free-form).
_SCHEMA: dict[MsgType, dict[str, type | tuple[type, ...]]] = {
    MsgType.PUT_BUNDLE: {"sha": str, "size": int, "kind": str},
    MsgType.PUT_END: {"sha": str},
    MsgType.GET_WEIGHTS: {"offset": int},
    MsgType.TELEMETRY: {"since": int},
    MsgType.ERROR: {"code": str, "message": str},
    MsgType.NACK: {"reason": str, "versions": list},
}


@dataclass(frozen=True)
class Message:
    type: MsgType
    seq: int
    meta: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""


def encode_payload(meta: dict[str, Any] | None = None, blob: bytes = b"") -> bytes:
    raw = json.dumps(meta or {}, separators=(",", ":"), sort_keys=True).encode()
    if len(raw) > 0xFFFF:
        raise ValueError("message fields too large")
    return META_LEN.pack(len(raw)) + raw + blob


def encode_message(msg: Message, *, version: int = PROTOCOL_VERSION,
                   max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """Wire bytes (one frame) of a message."""
    return encode_frame(int(msg.type), msg.seq, encode_payload(msg.meta, msg.blob),
                        version=version, max_payload=max_payload)


def parse_message(frame: Frame) -> Message:
    """Turn a CRC-checked frame into a Message, or raise ProtocolError (with the frame's seq)."""
    seq = frame.seq
    try:
        mtype = MsgType(frame.type)
    except ValueError:
        raise ProtocolError(f"unknown message type 0x{frame.type:02x}", seq=seq) from None
    p = frame.payload
    if len(p) < META_LEN.size:
        raise ProtocolError("payload shorter than its field header", seq=seq)
    (n,) = META_LEN.unpack_from(p)
    if META_LEN.size + n > len(p):
        raise ProtocolError(f"field block of {n} bytes runs past the payload", seq=seq)
    try:
        meta = json.loads(p[META_LEN.size:META_LEN.size + n].decode("utf-8")) if n else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"bad message fields: {type(exc).__name__}", seq=seq) from None
    if not isinstance(meta, dict):
        raise ProtocolError("message fields are not a JSON object", seq=seq)
    for name, kind in _SCHEMA.get(mtype, {}).items():
        value = meta.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise ProtocolError(f"{mtype.name} needs field '{name}'", seq=seq)
    blob = p[META_LEN.size + n:]
    if mtype == MsgType.PUT_CHUNK and len(blob) < CHUNK_HEADER.size:
        raise ProtocolError("PUT_CHUNK shorter than its chunk header", seq=seq)
    return Message(mtype, seq, meta, blob)


def chunk_blob(sha_hex: str, offset: int, data: bytes) -> bytes:
    return CHUNK_HEADER.pack(bytes.fromhex(sha_hex[:16]), offset) + data


def split_chunk(blob: bytes) -> tuple[str, int, bytes]:
    """(sha prefix as 16 hex digits, offset, data) of a PUT_CHUNK blob."""
    prefix, offset = CHUNK_HEADER.unpack_from(blob)
    return prefix.hex(), offset, blob[CHUNK_HEADER.size:]
