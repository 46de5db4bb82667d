"""Frames on the wire: ``COBS(kind | body | CRC32) 0x00``.

COBS is the ``cobs`` package (a C extension: 13x faster than a pure-Python encoder on 16-byte
frames, 3x on 4 KiB, measured in tests/test_bridge_framing.py's sibling benchmark). The CRC32
(zlib polynomial) covers kind and body. A frame costs 1 + 4 + 2 bytes plus COBS's one byte per
254. A decoder never holds more than ``max_wire_frame()`` bytes: a longer run without a
delimiter is dropped up to the next 0x00 and reported once as a ProtocolError.

Frame kinds (the reliable stream in ``firmware_bridge.link`` is built from them):

* ``SYN``    host -> device: ``u32 session | u8 version``; opens (or re-opens) a session.
* ``SYNACK`` device -> host: ``u32 session | u8 version``.
* ``REFUSE`` device -> host: ``u32 session | versions...``: the host's version is not spoken.
* ``DATA``   ``u8 session | u32 offset | bytes``: a segment of the sender's byte stream.
* ``ACK``    ``u8 session | u32 cumulative | u32 echo | u16 starts...``: all bytes below
  ``cumulative`` and the segments starting at ``cumulative + start`` (selective acknowledgement);
  ``echo`` is the offset of the DATA frame that triggered it (0xFFFFFFFF: a PING), for round-trip
  samples (v3; v2 had no echo).
* ``PING``   ``u8 session``: "are you there"; answered with an ACK.
"""
from __future__ import annotations

import collections
import struct
import zlib
from dataclasses import dataclass

from cobs import cobs

PROTOCOL_VERSION = 3
SUPPORTED_VERSIONS = (3,)
CRC = struct.Struct(">I")
DELIMITER = b"\x00"
MAX_BODY = 8 * 1024

SYN, SYNACK, REFUSE, DATA, ACK, PING = 0x01, 0x02, 0x03, 0x10, 0x11, 0x12
KINDS = (SYN, SYNACK, REFUSE, DATA, ACK, PING)
OVERHEAD = 1 + CRC.size + 2      # kind, CRC, COBS code byte and delimiter (small frames)


class ProtocolError(Exception):
    """A frame or message that cannot be accepted."""


@dataclass(frozen=True)
class Frame:
    kind: int
    body: bytes


def max_wire_frame(max_body: int = MAX_BODY) -> int:
    """Largest number of bytes a valid frame occupies on the wire, without its delimiter."""
    n = 1 + max_body + CRC.size
    return n + n // 254 + 1


def encode_frame(kind: int, body: bytes = b"") -> bytes:
    """The wire bytes of one frame, delimiter included."""
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the maximum of {MAX_BODY}")
    if not 0 <= kind <= 0xFF:
        raise ValueError("frame kind out of range")
    raw = bytes((kind,)) + body
    return cobs.encode(raw + CRC.pack(zlib.crc32(raw))) + DELIMITER


def parse_frame(block: bytes) -> Frame:
    """Decode one COBS block (no delimiter) into a Frame, or raise ProtocolError."""
    item = _decode(block)
    if isinstance(item, ProtocolError):
        raise item
    return item


_CRC_MISMATCH = "CRC mismatch"


def _decode(block: bytes) -> Frame | ProtocolError:
    """parse_frame without raising: a noisy line damages most frames, and building and catching
    an exception per damaged frame was a third of the decoder's time."""
    try:
        raw = cobs.decode(block)
    except cobs.DecodeError as exc:
        return ProtocolError(f"bad COBS: {exc}")
    n = len(raw) - CRC.size
    if n < 1:
        return ProtocolError(f"frame of {len(raw)} bytes is shorter than kind and CRC")
    if zlib.crc32(raw[:n]) != CRC.unpack_from(raw, n)[0]:
        return ProtocolError(_CRC_MISMATCH)
    if raw[0] not in KINDS:
        return ProtocolError(f"unknown frame kind 0x{raw[0]:02x}")
    if n - 1 > MAX_BODY:
        return ProtocolError("frame body too long")
    return Frame(raw[0], raw[1:n])


class FrameDecoder:
    """Incremental decoder: feed it any bytes, get frames and ProtocolErrors back, in order.

    Memory is bounded by ``max_wire_frame()`` whatever the input.
    """

    def __init__(self, max_body: int = MAX_BODY):
        self.limit = max_wire_frame(max_body)
        self._buf = bytearray()
        self._overflow = False
        # (wire bytes, intact?) of the last blocks received: what the line did to them
        self.received: collections.deque[tuple[int, bool]] = collections.deque(maxlen=128)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        out: list[Frame | ProtocolError] = []
        start, n = 0, len(data)
        while start < n:
            end = data.find(DELIMITER, start)
            if 0 < end - start <= self.limit and not self._buf and not self._overflow:
                block = data[start:end]          # a whole block in this read: no copy through _buf
                item = _decode(block)
                out.append(item)
                self.received.append((len(block) + 1, isinstance(item, Frame)))
                start = end + 1
                continue
            piece_end = n if end < 0 else end
            if not self._overflow:
                if len(self._buf) + piece_end - start > self.limit:
                    self._overflow = True
                    self._buf.clear()
                    out.append(ProtocolError(f"frame longer than {self.limit} bytes dropped"))
                    self.received.append((self.limit, False))
                else:
                    self._buf += data[start:piece_end]
            if end < 0:
                break
            if self._overflow:
                self._overflow = False
            elif self._buf:
                block = bytes(self._buf)
                self._buf.clear()
                item = _decode(block)
                out.append(item)
                self.received.append((len(block) + 1, isinstance(item, Frame)))
            start = end + 1
        return out

    def reset(self) -> None:
        self._buf.clear()
        self._overflow = False
