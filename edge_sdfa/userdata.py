"""The project's own user-data file (``npz:PATH``): what a device records and fine-tunes on.

A plain ``.npz`` (``np.savez``; read with ``allow_pickle=False``), one of two layouts:

spikes
    ``x``        uint8 [N, T, *input_shape]  spike counts per time step (0/1 for binary spikes)
    ``y``        int64 [N]                   labels, >= 0
    ``subject``  int64 [N]                   optional subject (user) id per sample
events
    ``events_t`` int64 [M] (µs), ``events_x``, ``events_y`` int16 [M], ``events_p`` int8 [M]
                 (or ``events_channel`` int16 [M] for channel data such as audio)
    ``offsets``  int64 [N + 1]               sample i is events[offsets[i]:offsets[i+1]]
    ``sensor``   int64 [2] (H, W) for camera events, [1] (channels) for channel events
    ``y``, ``subject`` as above
Both may carry ``format_version`` (int, currently 1; any other value is refused). Only numpy is
needed (Python 3.11, numpy 2 ok). Every problem raises ``DataError`` naming the file.

Reading is bounded: every array's dtype and shape are checked from its ``.npy`` header (and,
given the model's sample shape, against it) before anything is decompressed, and the arrays
together must fit ``edge_sdfa.npz.MAX_ARRAY_BYTES`` (``docs/limits.md``).
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from edge_sdfa import npz
from edge_sdfa.errors import DataError

FORMAT_VERSION = 1
EVENT_FIELDS = ("events_t", "events_x", "events_y", "events_p", "events_channel")
ARRAYS = ("x", "y", "subject", "format_version", "offsets", "sensor", *EVENT_FIELDS)


@dataclass
class UserData:
    """Arrays of a user-data file; ``x`` for the spikes layout, ``events``/``offsets`` otherwise."""

    y: np.ndarray
    x: np.ndarray | None = None
    subject: np.ndarray | None = None
    events: np.ndarray | None = None
    offsets: np.ndarray | None = None
    sensor: tuple[int, ...] | None = None

    @property
    def kind(self) -> str:
        return "spikes" if self.x is not None else "events"

    def __len__(self) -> int:
        return len(self.y)

    def sample_events(self, i: int) -> np.ndarray:
        return self.events[self.offsets[i]:self.offsets[i + 1]]


def save_user_data(path: str, y, x=None, subject=None, events=None, offsets=None, sensor=None,
                   compress: bool = False) -> None:
    """Write a user-data file atomically (tmp + rename). ``events`` is a structured array with
    fields t and x, y, p (camera) or channel."""
    y = np.asarray(y, np.int64)
    arrays: dict[str, np.ndarray] = {"y": y, "format_version": np.asarray(FORMAT_VERSION, np.int64)}
    if (x is None) == (events is None):
        raise DataError(f"{path}: give either spikes x or events, not both or neither")
    if x is not None:
        x = np.asarray(x)
        if x.ndim < 3 or len(x) != len(y):
            raise DataError(f"{path}: x must be [N, T, ...] with N = len(y) = {len(y)}, got {x.shape}")
        if x.dtype != np.uint8:
            if x.size and (x.min() < 0 or x.max() > 255):
                raise DataError(f"{path}: spike counts must be in 0..255")
            x = x.astype(np.uint8)
        arrays["x"] = x
    else:
        offsets = np.asarray(offsets, np.int64)
        if offsets.shape != (len(y) + 1,):
            raise DataError(f"{path}: offsets must have N + 1 = {len(y) + 1} entries")
        names = events.dtype.names or ()
        arrays["events_t"] = np.asarray(events["t"], np.int64)
        if "channel" in names:
            arrays["events_channel"] = np.asarray(events["channel"], np.int16)
        else:
            arrays["events_x"] = np.asarray(events["x"], np.int16)
            arrays["events_y"] = np.asarray(events["y"], np.int16)
            arrays["events_p"] = np.asarray(events["p"], np.int8)
        arrays["offsets"] = offsets
        if sensor is None:
            raise DataError(f"{path}: events need the sensor shape")
        arrays["sensor"] = np.asarray(sensor, np.int64)
    if subject is not None:
        arrays["subject"] = np.asarray(subject, np.int64)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _validate(load_user_data(path), path)


def _open(path: str):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"no such user-data file: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, PermissionError):
            raise
        raise DataError(f"{path}: not a readable .npz user-data file ({exc})") from None


def check_headers(path: str, sample_shape: tuple[int, ...] | None = None, *,
                  max_bytes: int = npz.MAX_ARRAY_BYTES) -> dict[str, npz.ArrayHeader]:
    """The file's layout from its array headers alone (nothing decompressed): dtypes, shapes,
    sample counts, ``sample_shape`` (``(T, *input_shape)``) for spikes, and the memory budget."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"no such user-data file: {path}")
    h = npz.read_headers(path, DataError, max_bytes=max_bytes)

    def integer(name: str, shape: tuple[int, ...] | None = None, ndim: int | None = None) -> npz.ArrayHeader:
        a = h[name]
        if a.dtype.kind not in "iu" or (shape is not None and a.shape != shape) \
                or (ndim is not None and len(a.shape) != ndim):
            want = f"shape {shape}" if shape is not None else f"{ndim}-D"
            raise DataError(f"{path}: {name} must be an integer array of {want}, got {a.dtype} {a.shape}")
        return a

    if "y" not in h:
        raise DataError(f"{path}: missing array 'y' (labels)")
    n = integer("y", ndim=1).shape[0]
    if "format_version" in h and h["format_version"].shape not in ((), (1,)):
        raise DataError(f"{path}: format_version must be one integer, got shape {h['format_version'].shape}")
    if "format_version" in h:
        integer("format_version")
    if "subject" in h:
        integer("subject", (n,))
    if "x" in h:
        x = h["x"]
        if x.dtype != np.uint8 or len(x.shape) < 3 or x.shape[0] != n:
            raise DataError(f"{path}: x must be uint8 spike counts [N, T, ...] with N = {n}, got {x.dtype} {x.shape}")
        if sample_shape is not None and x.shape[1:] != tuple(sample_shape):
            raise DataError(f"{path}: samples have shape {x.shape[1:]}, the model expects {tuple(sample_shape)}")
    elif "offsets" in h and "events_t" in h:
        m = integer("events_t", ndim=1).shape[0]
        fields = ("events_channel",) if "events_channel" in h else ("events_x", "events_y", "events_p")
        for name in fields:
            if name not in h:
                raise DataError(f"{path}: camera events need {', '.join(fields)}; {name} is missing")
            integer(name, (m,))
        integer("offsets", (n + 1,))
        if "sensor" in h and h["sensor"].shape not in ((1,), (2,)):
            raise DataError(f"{path}: sensor must be (H, W) or (channels,), got shape {h['sensor'].shape}")
        if "sensor" in h:
            integer("sensor")
        if sample_shape is not None:
            frames = n * math.prod(sample_shape)
            if frames > max_bytes:
                raise DataError(f"{path}: {n} samples bin to {frames} bytes of frames, more than the memory "
                                f"budget of {max_bytes} bytes")
    else:
        raise DataError(f"{path}: neither spikes ('x') nor events ('events_t' + 'offsets') inside "
                        f"(arrays: {', '.join(sorted(h)) or 'none'})")
    return h


def load_user_data(path: str, sample_shape: tuple[int, ...] | None = None) -> UserData:
    """Read and validate the whole file; ``sample_shape`` (``(T, *input_shape)``) is checked
    against the spikes' header before anything is decompressed."""
    path = os.fspath(path)
    headers = check_headers(path, sample_shape)
    z = npz.load_arrays(path, DataError, [n for n in ARRAYS if n in headers])
    names = set(z)
    if "format_version" in names:
        version = int(z["format_version"].reshape(-1)[0])
        if version != FORMAT_VERSION:
            raise DataError(f"{path}: user-data format_version {version} is not supported (this runtime reads "
                            f"version {FORMAT_VERSION})")
    y = z["y"]
    subject = z.get("subject")
    if "x" in names:
        data = UserData(y=y, x=z["x"], subject=subject)
    else:
        if "events_channel" in names:
            ev = np.empty(len(z["events_t"]), [("t", "<i8"), ("channel", "<i2")])
            ev["channel"] = z["events_channel"]
        else:
            ev = np.empty(len(z["events_t"]), [("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")])
            ev["x"] = z["events_x"]
            ev["y"] = z["events_y"]
            ev["p"] = z["events_p"]
        ev["t"] = z["events_t"]
        sensor = tuple(int(v) for v in z["sensor"]) if "sensor" in names else None
        data = UserData(y=y, subject=subject, events=ev, offsets=z["offsets"], sensor=sensor)
    _validate(data, path)
    return data


def _validate(d: UserData, path: str) -> None:
    n = len(d.y)
    if d.y.ndim != 1 or not np.issubdtype(d.y.dtype, np.integer):
        raise DataError(f"{path}: y must be a 1-D integer array, got {d.y.dtype} {d.y.shape}")
    if n and d.y.min() < 0:
        raise DataError(f"{path}: labels must be >= 0")
    if d.subject is not None and (d.subject.shape != (n,) or not np.issubdtype(d.subject.dtype, np.integer)):
        raise DataError(f"{path}: subject must be an integer array of length {n}")
    if d.x is not None:
        if d.x.ndim < 3 or len(d.x) != n:
            raise DataError(f"{path}: x must be [N, T, ...] with N = {n}, got shape {d.x.shape}")
        if d.x.dtype != np.uint8:
            raise DataError(f"{path}: x must be uint8 spike counts, got {d.x.dtype}")
    else:
        off = d.offsets
        m = len(d.events)
        if off.shape != (n + 1,) or off[0] != 0 or off[-1] != m or np.any(np.diff(off) < 0):
            raise DataError(f"{path}: offsets must be N + 1 = {n + 1} non-decreasing entries from 0 to {m}")
        if d.sensor is None:
            raise DataError(f"{path}: events need 'sensor'")


def describe(path: str) -> dict:
    """Header-level summary (reads labels/offsets, not the spikes)."""
    path = os.fspath(path)
    headers = check_headers(path)
    shape = headers["x"].shape if "x" in headers else None
    with _open(path) as z:
        try:
            y = z["y"]
            subject = z["subject"] if "subject" in z.files else None
            offsets = z["offsets"] if "offsets" in z.files else None
            sensor = [int(v) for v in z["sensor"]] if "sensor" in z.files else None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise DataError(f"{path}: truncated or corrupt user-data file ({exc})") from None
    n = len(y)
    if shape is not None:
        kind, T, input_shape = "spikes", int(shape[1]), [int(s) for s in shape[2:]]
        ev_mean = None
    elif offsets is not None:
        kind, T, input_shape = "events", None, None
        ev_mean = float(np.diff(offsets).mean()) if n else None
    else:
        raise DataError(f"{path}: neither spikes nor events inside")
    return {
        "samples": n,
        "classes": int(y.max()) + 1 if n else 0,
        "subjects": None if subject is None else int(len(np.unique(subject))),
        "subject_ids": None if subject is None else np.unique(subject).tolist(),
        "data_type": kind,
        "time_steps": T,
        "input_shape": input_shape,
        "sensor": sensor if sensor is not None else input_shape,
        "events_per_sample_mean": ev_mean,
    }


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def iter_user_batches(path: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(x, y, subject) batches of a spikes-layout file, streaming ``x`` from the archive so memory
    stays bounded by one batch (works for stored and deflated members)."""
    path = os.fspath(path)
    if batch_size < 1:
        raise DataError("batch_size must be >= 1")
    check_headers(path)
    with _open(path) as z:
        try:
            y = z["y"]
            subject = z["subject"] if "subject" in z.files else None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise DataError(f"{path}: truncated or corrupt user-data file ({exc})") from None
    try:
        with zipfile.ZipFile(path) as zf, zf.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = _read_header(f, version)
            if fortran or dtype != np.uint8 or len(shape) < 3 or shape[0] != len(y):
                raise DataError(f"{path}: x must be a C-ordered uint8 [N, T, ...] array with N = {len(y)}")
            row = int(np.prod(shape[1:]))
            for start in range(0, shape[0], batch_size):
                k = min(batch_size, shape[0] - start)
                raw = f.read(row * k)
                if len(raw) != row * k:
                    raise DataError(f"{path}: truncated user-data file (x ends at sample {start})")
                xb = np.frombuffer(raw, np.uint8).reshape((k,) + tuple(shape[1:]))
                yield xb, y[start:start + k], None if subject is None else subject[start:start + k]
    except KeyError:
        raise DataError(f"{path}: no spikes array 'x' (events files are read per sample)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: truncated or corrupt user-data file ({exc})") from None
