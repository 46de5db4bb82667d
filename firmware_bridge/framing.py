"""Frames on the wire: ``COBS(header | payload | CRC32) 0x00``.

The header is ``>BBII``: protocol version, message type, sequence number, payload length.
The CRC32 (zlib polynomial) covers header and payload. A decoder never holds more than
``max_wire_frame(max_payload)`` bytes: a longer run without a delimiter is dropped up to the
next 0x00 and reported once as a ProtocolError.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from firmware_bridge import cobs

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct(">BBII")
CRC = struct.Struct(">I")
DELIMITER = b"\x00"
DEFAULT_MAX_PAYLOAD = 64 * 1024


class ProtocolError(Exception):
    """A frame or message that cannot be accepted. ``seq`` is set when the header could be trusted."""

    def __init__(self, message: str, *, seq: int | None = None, version: int | None = None):
        super().__init__(message)
        self.seq = seq
        self.version = version


@dataclass(frozen=True)
class Frame:
    """One decoded frame: a CRC-checked header and payload."""

    version: int
    type: int
    seq: int
    payload: bytes


def max_wire_frame(max_payload: int = DEFAULT_MAX_PAYLOAD) -> int:
    """Largest number of bytes a valid frame occupies on the wire, without its delimiter."""
    return cobs.max_encoded_len(HEADER.size + max_payload + CRC.size)


def encode_frame(type_: int, seq: int, payload: bytes = b"", *, version: int = PROTOCOL_VERSION,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    """The wire bytes of one frame, delimiter included."""
    if len(payload) > max_payload:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the maximum of {max_payload}")
    if not (0 <= type_ <= 0xFF and 0 <= seq <= 0xFFFFFFFF and 0 <= version <= 0xFF):
        raise ValueError("type, seq or version out of range")
    body = HEADER.pack(version, type_, seq, len(payload)) + payload
    return cobs.encode(body + CRC.pack(zlib.crc32(body))) + DELIMITER


def parse_frame(block: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """Decode one COBS block (no delimiter) into a Frame, or raise ProtocolError."""
    try:
        raw = cobs.decode(block)
    except cobs.CobsError as exc:
        raise ProtocolError(f"bad COBS: {exc}") from None
    if len(raw) < HEADER.size + CRC.size:
        raise ProtocolError(f"frame of {len(raw)} bytes is shorter than header and CRC")
    body, (crc,) = raw[:-CRC.size], CRC.unpack(raw[-CRC.size:])
    if zlib.crc32(body) != crc:
        raise ProtocolError("CRC mismatch")
    version, type_, seq, length = HEADER.unpack_from(body)
    payload = body[HEADER.size:]
    if length != len(payload):
        raise ProtocolError(f"length field {length} != payload {len(payload)}", seq=seq, version=version)
    if length > max_payload:
        raise ProtocolError(f"payload of {length} bytes exceeds the maximum of {max_payload}",
                            seq=seq, version=version)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"unsupported protocol version {version}", seq=seq, version=version)
    return Frame(version, type_, seq, payload)


class FrameDecoder:
    """Incremental decoder: feed it any bytes, get frames and ProtocolErrors back, in order.

    Memory is bounded by ``max_wire_frame(max_payload)`` whatever the input.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.max_payload = max_payload
        self.limit = max_wire_frame(max_payload)
        self._buf = bytearray()
        self._overflow = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        out: list[Frame | ProtocolError] = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(DELIMITER, start)
            piece_end = n if end < 0 else end
            if not self._overflow:
                if len(self._buf) + piece_end - start > self.limit:
                    self._overflow = True
                    self._buf.clear()
                    out.append(ProtocolError(f"frame longer than {self.limit} bytes dropped"))
                else:
                    self._buf += data[start:piece_end]
            if end < 0:
                break
            if self._overflow:
                self._overflow = False
            elif self._buf:
                block = bytes(self._buf)
                self._buf.clear()
                try:
                    out.append(parse_frame(block, self.max_payload))
                except ProtocolError as exc:
                    out.append(exc)
            start = end + 1
        return out

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = False
