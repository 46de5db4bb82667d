"""Consistent Overhead Byte Stuffing (COBS): a byte string without any 0x00, so 0x00 can end a frame.

Own implementation (the PyPI ``cobs`` package is a C extension with no wheels for some Pi
images). Overhead is at most one byte per 254 bytes, plus one.
"""
from __future__ import annotations


class CobsError(ValueError):
    """The input is not a valid COBS encoding."""


def encode(data: bytes) -> bytes:
    """Encode ``data`` so that the result holds no zero byte."""
    out = bytearray()
    view = memoryview(data)
    start = 0
    n = len(data)
    while True:
        zero = data.find(b"\x00", start, min(start + 254, n))
        if zero < 0:
            end = min(start + 254, n)
            block = view[start:end]
            out.append(len(block) + 1)
            out += block
            if end == n and len(block) < 254:
                break
            start = end
            if start == n:  # a full 254-byte block ended the data: one empty block closes it
                out.append(1)
                break
        else:
            block = view[start:zero]
            out.append(len(block) + 1)
            out += block
            start = zero + 1
            if start == n:
                out.append(1)
                break
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Decode a COBS block (without the trailing 0x00). Raises CobsError on malformed input."""
    out = bytearray()
    i = 0
    n = len(data)
    if n == 0:
        raise CobsError("empty COBS block")
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte inside COBS block at {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block truncated: code {code} at {i} runs past the end ({n})")
        block = data[i + 1:end]
        if 0 in block:
            raise CobsError("zero byte inside COBS block")
        out += block
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_len(n: int) -> int:
    """Upper bound of ``len(encode(x))`` for ``len(x) == n``."""
    return n + n // 254 + 1
