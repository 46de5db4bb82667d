"""Braille letters (Müller-Cleve et al.): the reference's ``tutorial5_braille_spiking_data.pkl.gz``.

The file is a (gzipped) pickle of a list (or int-keyed dict) of records, each a dict with a
``taxel_data`` array [L_i, 12] (0..255); record ``i*50 + r`` is repetition r of letter i in
``LETTERS`` (27 classes: Space, A..Z). It is read with a restricted unpickler that only accepts
numpy arrays/dtypes/scalars and builtin containers, never arbitrary objects.

Preprocessing as the reference: ``x = 1 - taxel/255``, crop every record to the shortest length L,
keep taxels [1, 2, 6, 10], z-score per taxel over the whole set (unbiased std + 1e-6), repeat each
step twice (2L steps). ``encoding=analog`` returns those float32 values (``load_arrays`` then gives
float32, as the reference feeds currents, not spikes). ``encoding=delta`` (default) turns the
z-scored signal into spikes with a sigma-delta modulator (``threshold`` std units, default 0.1):
frames [2L, 2*taxels], OFF channels first, then ON. Split: ``np.random.seed(0); shuffle``, first 80 %
train (the spytorch-braille code; the SDFA reference shuffles unseeded).
"""
from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle

import numpy as np

from edge_sdfa.errors import DataError

from .base import Dataset, Entry, Sample

LETTERS = ["Space"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
DEFAULT_TAXELS = (1, 2, 6, 10)
UPSAMPLE = 2

_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
                  "bytes", "bytearray", "bool", "slice", "range"}
_SAFE_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/scalar reconstruction and builtin containers."""

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(importlib.import_module("builtins"), name)
        if module == "collections" and name == "OrderedDict":
            from collections import OrderedDict

            return OrderedDict
        norm = module.replace("numpy._core", "numpy.core")
        if (norm, name) in _SAFE_NUMPY or (norm == "numpy" and name in ("ndarray", "dtype")) \
                or (norm == "numpy.dtypes" and name.endswith("DType")):
            for candidate in (module, norm, norm.replace("numpy.core", "numpy._core")):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        raise RefusedGlobal(f"global '{module}.{name}' is not allowed")


def safe_load_pickle(path: str):
    """Load a (gzipped) pickle holding only numpy/builtin types; DataError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return RestrictedUnpickler(io.BytesIO(raw)).load()
    except RefusedGlobal as exc:
        raise DataError(f"{path}: refused to unpickle ({exc}); only numpy arrays and builtin types are allowed") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None


class Braille(Dataset):
    kind = "braille"
    data_type = "frames"
    num_classes = 27
    flatten_default = True
    class_names = LETTERS

    def _index(self) -> list[Entry]:
        path = self.spec.path
        if os.path.isdir(path):
            for cand in ("tutorial5_braille_spiking_data.pkl.gz", "braille/tutorial5_braille_spiking_data.pkl.gz"):
                if os.path.isfile(os.path.join(path, cand)):
                    path = os.path.join(path, cand)
                    break
            else:
                raise DataError(f"{path}: no tutorial5_braille_spiking_data.pkl.gz")
        elif not os.path.isfile(path):
            raise DataError(f"no such Braille file: {path}")
        self.file = path
        data = safe_load_pickle(path)
        records = [data[k] for k in sorted(data)] if isinstance(data, dict) else data
        if not isinstance(records, (list, tuple)) or not records:
            raise DataError(f"{path}: expected a list of records with 'taxel_data'")
        if len(records) % len(LETTERS):
            raise DataError(f"{path}: {len(records)} records is not a multiple of {len(LETTERS)} letters")
        reps = len(records) // len(LETTERS)
        raw = []
        for i, rec in enumerate(records):
            try:
                a = np.asarray(rec["taxel_data"], np.float64)
            except (KeyError, TypeError, IndexError):
                raise DataError(f"{path}: record {i} has no 'taxel_data'") from None
            if a.ndim != 2:
                raise DataError(f"{path}: record {i} taxel_data must be [time, taxels], got {a.shape}")
            raw.append(1.0 - a / 255.0)
        taxels = self.spec.get_list("taxels")
        n_tax = raw[0].shape[1]
        if taxels is None:
            sel = list(DEFAULT_TAXELS)
        elif taxels == ["all"]:
            sel = list(range(n_tax))
        else:
            try:
                sel = [int(v) for v in taxels]
            except ValueError:
                raise DataError(f"taxels= must be integers or 'all' in {self.spec.text!r}") from None
        if any(not 0 <= s < n_tax for s in sel) or any(r.shape[1] != n_tax for r in raw):
            raise DataError(f"{path}: taxel index out of range or records with different taxel counts")
        L = min(len(r) for r in raw)
        if L < 1:
            raise DataError(f"{path}: a record has no time steps")
        data = np.stack([r[:L, sel] for r in raw]).astype(np.float32)  # [N, L, C]
        flat = data.reshape(-1, data.shape[2]).astype(np.float64)
        z = (data - flat.mean(0)) / (flat.std(0, ddof=1) + 1e-6)
        self.analog = np.repeat(z.astype(np.float32), UPSAMPLE, axis=1)  # [N, 2L, C]
        self.encoding = self.spec.get("encoding", "delta")
        if self.encoding not in ("delta", "analog"):
            raise DataError(f"encoding={self.encoding!r} in {self.spec.text!r} must be delta or analog")
        self.num_channels = len(sel) * (2 if self.encoding == "delta" else 1)
        self.default_T = 2 * L
        labels = np.arange(len(records)) // reps
        order = np.arange(len(records))
        np.random.RandomState(0).shuffle(order)
        a = int(0.8 * len(order))
        idx = {"train": order[:a], "test": order[a:], "all": np.arange(len(records))}[self.split]
        return [Entry(int(labels[i]), source=f"{path}[{i}]", ref=int(i)) for i in idx]

    def _load(self, entry: Entry) -> Sample:
        z = self.analog[entry.ref]
        if self.encoding == "analog":
            return Sample(entry.label, frames=z, source=entry.source)
        return Sample(entry.label, frames=sigma_delta(z, self.spec.get_float("threshold", 0.1)),
                      source=entry.source)

    def to_frames(self, sample: Sample, T: int) -> np.ndarray:
        if self.encoding == "analog":
            fr = sample.frames
            if T != fr.shape[0]:
                cuts = np.linspace(0, fr.shape[0], T + 1).round().astype(int)
                fr = np.stack([fr[cuts[i]:max(cuts[i + 1], cuts[i] + 1)].mean(0) for i in range(T)])
            return fr.astype(np.float32).reshape((T,) + self.input_shape())
        return super().to_frames(sample, T)


def sigma_delta(z: np.ndarray, threshold: float) -> np.ndarray:
    """[S, C] signal -> uint8 [S, 2C] event counts: OFF (falls) channels, then ON (rises)."""
    if threshold <= 0:
        raise DataError("threshold must be > 0")
    S, C = z.shape
    ref = z[0].astype(np.float64).copy()
    out = np.zeros((S, 2, C), np.int64)
    for s in range(1, S):
        d = z[s] - ref
        n_on = np.floor(np.maximum(d, 0) / threshold)
        n_off = np.floor(np.maximum(-d, 0) / threshold)
        ref += (n_on - n_off) * threshold
        out[s, 0] = n_off
        out[s, 1] = n_on
    return np.minimum(out, 255).astype(np.uint8).reshape(S, 2 * C)
