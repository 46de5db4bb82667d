"""Live event streams for ``edge-sdfa predict --stream``: the binary record format, decision
windows, and the loop that emits one decision per window.

Record format (``docs/runtime.md``), little-endian, 16 bytes per record, no header::

    offset  type    field
    0       int64   t      time stamp, µs (non-decreasing within a window)
    8       int16   x      camera column, or the channel of channel (audio) events
    10      int16   y      camera row (0 for channel events)
    12      int8    p      polarity 0/1 (0 for channel events)
    13      uint8   flags  bit 0: this record ends its window; bit 1: marker only (no event)
    14      uint16  sync   0xA55A (bytes 5A A5): the reader realigns on it when it joins a stream
                           mid-record or bytes are lost; records without it are dropped

A window ends at a record with flag bit 0, after ``window_events`` events, when an event at or
after ``t_first + window_us`` arrives (that event opens the next window), or at the end of the
input. The decision latency of a window runs from the moment the input that closed it was read
to the moment its decision is ready (binning and inference included).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from edge_sdfa.errors import DataError, UserError

RECORD_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1"), ("flags", "u1"), ("sync", "<u2")])
assert RECORD_DTYPE.itemsize == 16
SYNC = 0xA55A
_SYNC_BYTES = SYNC.to_bytes(2, "little")
_SYNC_AT = 14
END_OF_WINDOW, MARKER_ONLY = 1, 2
NPZ_MAGIC = b"PK\x03\x04"


def encode_records(t, x, y=None, p=None, flags=None) -> bytes:
    """Records for the given fields (the sender's side; tests and tools use it)."""
    n = len(t)
    rec = np.zeros(n, RECORD_DTYPE)
    rec["t"], rec["x"], rec["sync"] = t, x, SYNC
    if y is not None:
        rec["y"] = y
    if p is not None:
        rec["p"] = p
    if flags is not None:
        rec["flags"] = flags
    return rec.tobytes()


@dataclass
class Window:
    records: np.ndarray      # RECORD_DTYPE, events only (markers dropped)
    closed_at: float         # perf_counter when the input that closed it was read
    label: int | None = None


def aligned_records(buf: bytes) -> tuple[np.ndarray, bytes, int]:
    """The whole records at the start of ``buf`` that carry the sync word, realigning past bytes
    that do not (a reader joining mid-stream, lost or corrupted bytes). Returns (records, the
    unparsed tail to prepend to the next read, bytes dropped)."""
    size = RECORD_DTYPE.itemsize
    parts, pos, dropped, n = [], 0, 0, len(buf)
    while n - pos >= size:
        rec = np.frombuffer(buf, RECORD_DTYPE, count=(n - pos) // size, offset=pos)
        bad = np.flatnonzero(rec["sync"] != SYNC)
        if bad.size == 0:
            parts.append(rec)
            pos += len(rec) * size
            break
        k = int(bad[0])
        if k:
            parts.append(rec[:k])
            pos += k * size
        j = buf.find(_SYNC_BYTES, pos + _SYNC_AT + 1)   # the next record start after pos
        if j < 0:
            keep = max(pos, n - (_SYNC_AT + 1))           # a sync word may still be arriving
            dropped += keep - pos
            pos = keep
            break
        dropped += j - _SYNC_AT - pos
        pos = j - _SYNC_AT
    rec = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, RECORD_DTYPE))
    return rec, buf[pos:], dropped


class WindowSplitter:
    """Feeds bytes, yields closed windows. Buffers a partial record across reads."""

    def __init__(self, window_us: int | None = None, window_events: int | None = None):
        if window_us is not None and window_us < 1:
            raise UserError("--window-us must be >= 1")
        if window_events is not None and window_events < 1:
            raise UserError("--window-events must be >= 1")
        self.window_us, self.window_events = window_us, window_events
        self._tail = b""
        self.dropped_bytes = 0
        self._pending: list[np.ndarray] = []
        self._count = 0
        self._t0: int | None = None

    def feed(self, data: bytes, now: float) -> list[Window]:
        rec, self._tail, dropped = aligned_records(self._tail + data)
        self.dropped_bytes += dropped
        return self._split(rec, now) if len(rec) else []

    def _split(self, rec: np.ndarray, now: float) -> list[Window]:
        out = []
        i, n = 0, len(rec)
        while i < n:
            seg = rec[i:]
            is_event = (seg["flags"] & MARKER_ONLY) == 0
            cut, close = n - i, False          # records [0, cut) of seg belong to the open window
            ends = np.flatnonzero(seg["flags"] & END_OF_WINDOW)
            if ends.size:
                cut, close = int(ends[0]) + 1, True
            if self.window_events is not None:
                idx = np.flatnonzero(is_event[:cut])
                need = self.window_events - self._count
                if idx.size >= need:
                    cut, close = int(idx[need - 1]) + 1, True
            if self.window_us is not None:
                t0 = self._t0
                if t0 is None:
                    idx = np.flatnonzero(is_event[:cut])
                    t0 = int(seg["t"][idx[0]]) if idx.size else None
                if t0 is not None:
                    late = np.flatnonzero(is_event[:cut] & (seg["t"][:cut] >= t0 + self.window_us))
                    if late.size:  # the late event opens the next window
                        cut, close = int(late[0]), True
            self._take(seg[:cut])
            if close:
                w = self._close(now)
                if w is not None:
                    out.append(w)
            i += cut
        return out

    def _take(self, part: np.ndarray) -> None:
        ev = part[(part["flags"] & MARKER_ONLY) == 0]
        if ev.size:
            if self._t0 is None:
                self._t0 = int(ev["t"][0])
            self._pending.append(ev)
            self._count += len(ev)

    def _close(self, now: float) -> Window | None:
        """The open window, or None if it holds no events (markers only)."""
        rec = np.concatenate(self._pending) if self._pending else None
        self._pending, self._count, self._t0 = [], 0, None
        return None if rec is None else Window(rec, now)

    def finish(self, now: float) -> list[Window]:
        """End of input: the last, partial window (if it holds events)."""
        if self._tail:
            self.dropped_bytes += len(self._tail)
            self._tail = b""
        if self.dropped_bytes:
            print(f"warning: {self.dropped_bytes} bytes outside whole records (no sync word) ignored", file=sys.stderr)
        w = self._close(now)
        return [] if w is None else [w]


def record_events(rec: np.ndarray, camera: bool) -> np.ndarray:
    """Records -> the binning's structured events (camera t, x, y, p; or t, channel)."""
    from edge_sdfa.binning import CHANNEL_EVENT_DTYPE, EVENT_DTYPE

    if camera:
        ev = np.empty(len(rec), EVENT_DTYPE)
        ev["x"], ev["y"], ev["p"] = rec["x"], rec["y"], rec["p"]
    else:
        ev = np.empty(len(rec), CHANNEL_EVENT_DTYPE)
        ev["channel"] = rec["x"]
    ev["t"] = rec["t"]
    return ev


# ---------------------------------------------------------------------------------------------
# inputs


def open_input(path: str | None, port: str | None, baud: int):
    """A byte reader: ``read(n) -> bytes`` returning b'' at the end. ``port`` is a serial device
    or any pyserial URL (``socket://``, ``loop://``); ``path`` a file or ``-`` for stdin."""
    if port is not None:
        try:
            import serial
        except ImportError:
            raise UserError("reading a serial port needs pyserial (pip install pyserial)") from None
        try:
            ser = serial.serial_for_url(port, baudrate=baud, timeout=0.05)
        except (serial.SerialException, ValueError) as exc:
            raise UserError(f"cannot open {port}: {exc}") from None
        return _SerialReader(ser)
    if path in (None, "-"):
        return _FileReader(sys.stdin.buffer)
    try:
        return _FileReader(open(path, "rb"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


class _FileReader:
    def __init__(self, f):
        self.f = f

    def read(self, n: int) -> bytes:
        read1 = getattr(self.f, "read1", None)
        return read1(n) if read1 else self.f.read(n)

    def close(self):
        if self.f is not sys.stdin.buffer:
            self.f.close()


class _SerialReader:
    """A serial port never ends by itself: it ends when the other side closes (an error) or on
    an interrupt. Idle reads return nothing and the loop keeps waiting."""

    def __init__(self, ser):
        self.ser = ser

    def read(self, n: int) -> bytes:
        while True:
            try:
                data = self.ser.read(n)
            except Exception:  # the port went away
                return b""
            if data:
                return data

    def close(self):
        self.ser.close()


# ---------------------------------------------------------------------------------------------
# the loop


def windows_from_npz(data: bytes) -> Iterator[tuple[object, int | None, str]]:
    """(sample, label, kind) for each sample of a user-data npz (``spikes`` frames or ``events``)."""
    from edge_sdfa.userdata import load_user_data

    fd, tmp = tempfile.mkstemp(suffix=".npz", prefix="edge-sdfa-stream-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ud = load_user_data(tmp)
    except DataError as exc:  # name the stream, not the temporary file
        raise DataError(str(exc).replace(tmp, "the npz stream")) from None
    finally:
        os.unlink(tmp)
    for i in range(len(ud)):
        label = int(ud.y[i]) if ud.y is not None and len(ud.y) else None
        if ud.x is not None:
            yield ud.x[i], label, "spikes"
        else:
            yield (ud.sample_events(i), ud.sensor), label, "events"


def stream(runtime, reader, emit: Callable[[dict], None], *, fmt: str = "auto", window_us: int | None = None,
           window_events: int | None = None, sensor: tuple[int, int] | None = None, chunk: int = 1 << 16) -> dict:
    """Decide each window of ``reader`` with ``runtime``; ``emit`` gets one dict per window.
    Returns the summary: windows, accuracy (npz with labels), decision latency percentiles."""
    from edge_sdfa.runtime import percentiles_ms, sensor_for

    latencies, correct, labelled = [], 0, 0
    index = 0

    def decide(pred, t_closed, extra):
        nonlocal index, correct, labelled
        latency = time.perf_counter() - t_closed
        latencies.append(latency)
        line = {"window": index, "label": int(pred.labels[0]),
                "rates": [round(float(r), 4) for r in pred.rates[0]],
                "latency_ms": round(latency * 1e3, 4), "revision": pred.model.revision,
                "generation": pred.model.generation}
        line.update(extra)
        if extra.get("true") is not None:
            labelled += 1
            correct += int(extra["true"] == line["label"])
        emit(line)
        index += 1

    first = reader.read(chunk)
    if fmt == "auto":
        fmt = "npz" if first.startswith(NPZ_MAGIC) else "records"
    if fmt == "npz":
        parts = [first]
        while True:
            data = reader.read(chunk)
            if not data:
                break
            parts.append(data)
        for sample, label, kind in windows_from_npz(b"".join(parts)):
            t = time.perf_counter()
            if kind == "spikes":
                pred = runtime.predict(sample)
                n_ev = None
            else:
                ev, file_sensor = sample
                pred = runtime.predict_events(ev, sensor or file_sensor)
                n_ev = int(len(ev))
            decide(pred, t, {"events": n_ev, "true": label})
    elif fmt == "records":
        camera = sensor is not None or sensor_for(runtime.input_shape) is not None
        splitter = WindowSplitter(window_us, window_events)
        data = first
        while True:
            now = time.perf_counter()
            windows = splitter.feed(data, now) if data else splitter.finish(now)
            for w in windows:
                pred = runtime.predict_events(record_events(w.records, camera), sensor)
                decide(pred, w.closed_at, {"events": int(len(w.records)), "t_start_us": int(w.records["t"][0]) if len(w.records) else None,
                                           "t_end_us": int(w.records["t"][-1]) if len(w.records) else None})
            if not data:
                break
            data = reader.read(chunk)
    else:
        raise UserError(f"unknown stream format {fmt!r} (expected auto, npz or records)")
    summary = {"windows": index, "decision_latency_ms": percentiles_ms(latencies)}
    if labelled:
        summary["accuracy"] = correct / labelled
    return summary
