"""Bit-level readers (and writers, for tests and generated data) of the on-disk event formats.

N-MNIST / N-Caltech101 ``.bin`` (Orchard et al. 2015): 5 bytes (40 bits) per event, big-endian
fields ``x`` (8 bits), ``y`` (8 bits), ``p`` (1 bit), ``t`` (23 bits, µs). An event with ``y == 240``
is a timestamp-overflow marker: every later timestamp gets ``+2**13`` per marker, and the marker
itself is not an event (as in the authors' MATLAB reader and tonic).

AEDAT 3.1 (IBM DVS128 Gesture): ASCII header lines starting with ``#`` up to ``#!END-HEADER\\r\\n``,
then packets: a 28-byte little-endian header (``eventType`` u16, ``eventSource`` u16, ``eventSize``
u32, ``eventTSOffset`` u32, ``eventTSOverflow`` u32, ``eventCapacity`` u32, ``eventNumber`` u32,
``eventValid`` u32) and ``eventCapacity * eventSize`` bytes of events. Polarity events (type 1) are
8 bytes: ``data`` u32 (bit 0 valid, bit 1 polarity, bits 2..16 y, bits 17..31 x) and ``timestamp``
i32; the full time is ``timestamp | eventTSOverflow << 31`` µs. Other packet types are skipped.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from edge_sdfa.errors import DataError

from edge_sdfa.binning import EVENT_DTYPE, make_events

NMNIST_OVERFLOW_Y = 240
NMNIST_OVERFLOW_STEP = 1 << 13
AEDAT_HEADER_END = b"#!END-HEADER\r\n"
AEDAT_PACKET_HEADER = struct.Struct("<HHIIIIII")


# --- N-MNIST / N-Caltech101 .bin -----------------------------------------------------------------
def decode_nmnist_bin(raw: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode 40-bit events; raise DataError naming ``name`` if the length is not a multiple of 5."""
    buf = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw
    if buf.size % 5:
        raise DataError(f"{name}: truncated or corrupt N-MNIST .bin file "
                        f"({buf.size} bytes is not a multiple of 5)")
    rec = buf.reshape(-1, 5)
    x = rec[:, 0]
    y = rec[:, 1]
    b2 = rec[:, 2].astype(np.int64)
    p = (b2 >> 7).astype(np.int8)
    t = ((b2 & 0x7F) << 16) | (rec[:, 3].astype(np.int64) << 8) | rec[:, 4].astype(np.int64)
    overflow = y == NMNIST_OVERFLOW_Y
    if overflow.any():
        t = t + np.cumsum(overflow, dtype=np.int64) * NMNIST_OVERFLOW_STEP
        keep = ~overflow
        x, y, p, t = x[keep], y[keep], p[keep], t[keep]
    return make_events(t, x, y, p)


def read_nmnist_bin(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_nmnist_bin(raw, path)


def encode_nmnist_bin(events: np.ndarray) -> bytes:
    """Encode events (t must be sorted); inserts overflow markers for t >= 2**23 as the sensor does."""
    t = np.asarray(events["t"], np.int64)
    x = np.asarray(events["x"], np.int64)
    y = np.asarray(events["y"], np.int64)
    p = np.asarray(events["p"], np.int64)
    if len(t) and (t.min() < 0 or np.any(np.diff(t) < 0)):
        raise ValueError("timestamps must be non-negative and sorted")
    if len(t) and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255 or np.any(y == 240)
                   or p.min() < 0 or p.max() > 1):
        raise ValueError("x, y must be in 0..255, y != 240, p in 0..1")
    # Markers needed before event i so that its 23-bit field does not wrap (t sorted => monotone).
    need = np.zeros(len(t), np.int64)
    wrap = t >= (1 << 23)
    need[wrap] = -(-(t[wrap] - ((1 << 23) - 1)) // NMNIST_OVERFLOW_STEP)
    out = bytearray()
    emitted = 0
    for i in range(len(t)):
        while emitted < need[i]:
            out += bytes((0, NMNIST_OVERFLOW_Y, 0, 0, 0))
            emitted += 1
        ti = int(t[i] - emitted * NMNIST_OVERFLOW_STEP)
        out += bytes((int(x[i]), int(y[i]), (int(p[i]) << 7) | (ti >> 16), (ti >> 8) & 0xFF, ti & 0xFF))
    return bytes(out)


def encode_nmnist_bin_fast(events: np.ndarray) -> bytes:
    """Vectorised encoder for t < 2**23 (no overflow markers): for generating large test data."""
    t = np.asarray(events["t"], np.int64)
    if len(t) and t.max() >= (1 << 23):
        return encode_nmnist_bin(events)
    rec = np.empty((len(t), 5), np.uint8)
    rec[:, 0] = events["x"]
    rec[:, 1] = events["y"]
    rec[:, 2] = (np.asarray(events["p"], np.int64) << 7) | (t >> 16)
    rec[:, 3] = (t >> 8) & 0xFF
    rec[:, 4] = t & 0xFF
    return rec.tobytes()


def nmnist_event_count(path: str) -> int:
    """Number of 40-bit records (an upper bound on events: overflow markers are counted too)."""
    return os.path.getsize(path) // 5


# --- AEDAT 3.1 ------------------------------------------------------------------------------------
def decode_aedat3(raw: bytes, name: str = "<bytes>", valid_only: bool = True) -> np.ndarray:
    """Polarity events of an AEDAT 3.1 file, sorted by time as stored."""
    pos = 0
    if raw.startswith(b"#"):
        end = raw.find(AEDAT_HEADER_END)
        if end < 0:
            raise DataError(f"{name}: AEDAT header has no '#!END-HEADER' line")
        pos = end + len(AEDAT_HEADER_END)
    chunks = []
    n = len(raw)
    mv = memoryview(raw)
    while pos < n:
        if pos + 28 > n:
            raise DataError(f"{name}: truncated AEDAT packet header at byte {pos}")
        etype, _src, esize, _off, overflow, capacity, number, _valid = AEDAT_PACKET_HEADER.unpack_from(raw, pos)
        pos += 28
        length = capacity * esize
        if pos + length > n:
            raise DataError(f"{name}: truncated AEDAT packet at byte {pos - 28} "
                            f"(needs {length} bytes, {n - pos} left)")
        if etype == 1:
            if esize < 8:
                raise DataError(f"{name}: corrupt AEDAT polarity packet (event size {esize} < 8)")
            count = min(number, capacity)
            rec = np.frombuffer(mv[pos:pos + count * esize], dtype=np.uint8).reshape(count, esize)
            data = rec[:, 0:4].copy().view("<u4").ravel()
            ts = rec[:, 4:8].copy().view("<i4").ravel().astype(np.int64) | (np.int64(overflow) << 31)
            if valid_only:
                keep = (data & 1).astype(bool)
                data, ts = data[keep], ts[keep]
            chunks.append(make_events(ts, (data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, (data >> 1) & 1))
        pos += length
    if not chunks:
        return np.zeros(0, EVENT_DTYPE)
    return np.concatenate(chunks)


def read_aedat3(path: str, valid_only: bool = True) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_aedat3(raw, path, valid_only)


def encode_aedat3(events: np.ndarray, packet_size: int = 4096, header: bytes | None = None,
                  overflow: int = 0) -> bytes:
    """Write events as AEDAT 3.1 polarity packets (all valid) after a minimal header."""
    header = header if header is not None else (b"#!AER-DAT3.1\r\n#Format: RAW\r\n"
                                                b"#Source 1: DVS128\r\n" + AEDAT_HEADER_END)
    out = bytearray(header)
    n = len(events)
    for start in range(0, n, packet_size):
        ev = events[start:start + packet_size]
        k = len(ev)
        data = ((ev["x"].astype(np.uint32) << 17) | (ev["y"].astype(np.uint32) << 2)
                | (ev["p"].astype(np.uint32) << 1) | np.uint32(1))
        ts = (ev["t"].astype(np.int64) & 0x7FFFFFFF).astype("<i4")
        rec = np.empty((k, 2), "<u4")
        rec[:, 0] = data
        rec[:, 1] = ts.view("<u4")
        out += AEDAT_PACKET_HEADER.pack(1, 1, 8, 4, overflow, k, k, k)
        out += rec.tobytes()
    return bytes(out)


def read_gesture_labels_csv(path: str) -> np.ndarray:
    """``class,startTime_usec,endTime_usec`` rows -> int64 [K, 3] with class 1..11 as in the file."""
    rows = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or (lineno == 1 and not line[0].isdigit()):
            continue
        parts = line.split(",")
        try:
            rows.append([int(parts[0]), int(parts[1]), int(parts[2])])
        except (ValueError, IndexError):
            raise DataError(f"{path}:{lineno}: expected 'class,startTime_usec,endTime_usec', got {line!r}") from None
    return np.asarray(rows, np.int64).reshape(-1, 3)


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def open_maybe_gzip(path: str):
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def read_idx_header(f, path: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, header length) from an open IDX file positioned at 0."""
    try:
        head = f.read(4)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: corrupt IDX file ({exc})") from None
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES or head[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic {head.hex()})")
    ndim = head[3]
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    return np.dtype(IDX_TYPES[head[2]]), tuple(int(s) for s in shape), 4 + 4 * ndim


def read_idx(path: str) -> np.ndarray:
    """Read a whole IDX file (optionally .gz) into an array."""
    with open_maybe_gzip(path) as f:
        dtype, shape, _ = read_idx_header(f, path)
        try:
            raw = f.read()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"{path}: corrupt IDX file ({exc})") from None
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) < need:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} of {need} data bytes)")
    return np.frombuffer(raw[:need], dtype=dtype).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    a = np.ascontiguousarray(array)
    header = bytes((0, 0, codes[a.dtype], a.ndim)) + struct.pack(f">{a.ndim}I", *a.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + a.tobytes())
