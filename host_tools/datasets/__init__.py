"""Data sets from local files (no download at run time), event binning, user splits and offline data.

Entry points (see docs/datasets.md for the spec strings):

- ``open_dataset(spec) -> Dataset``: lazy, ``len()``, iterates ``Sample`` (events and/or frames,
  label, subject, condition); ``.info()`` summarises it.
- ``load_arrays(spec, time_steps=None, limit=None) -> (x uint8 [N, T, *input_shape], y int64 [N],
  subject int64 [N] | None)``.
- ``iter_batches(spec, batch_size, time_steps=None)``: (x, y) batches; memory bounded by one batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from edge_sdfa.errors import DataError

from .base import Dataset, Entry, Sample
from .spec import DataSpec, parse_spec

__all__ = ["Dataset", "Sample", "Entry", "DataSpec", "parse_spec", "open_dataset", "load_arrays",
           "iter_batches", "describe"]


def reader_class(kind: str) -> type[Dataset]:
    """The Dataset class of a kind (``spec.KINDS``), imported on first use."""
    import importlib

    from .spec import KINDS

    module, _, name = KINDS[kind].reader.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def open_dataset(spec: str | DataSpec) -> Dataset:
    """Open a data set lazily from a spec string such as ``nmnist:/data/NMNIST?split=test``."""
    ds = parse_spec(spec) if isinstance(spec, str) else spec
    return reader_class(ds.kind)(ds)


def _open_with_T(spec, time_steps: int | None, limit: int | None) -> Dataset:
    ds = parse_spec(spec) if isinstance(spec, str) else spec
    if time_steps is not None:
        if int(time_steps) < 1:
            raise DataError(f"time_steps must be >= 1, got {time_steps}")
        ds = ds.with_options(frames=int(time_steps))
    if limit is not None:
        if int(limit) < 0:
            raise DataError(f"limit must be >= 0, got {limit}")
        current = ds.get_int("limit")
        ds = ds.with_options(limit=int(limit) if current is None else min(int(limit), current))
    return open_dataset(ds)


def load_arrays(spec: str | DataSpec, time_steps: int | None = None, limit: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Dense frames of the whole (filtered) set: x uint8 [N, T, *input_shape], y int64, subject or None.

    ``time_steps`` overrides the spec's ``frames``; the default is the reference's T for the data
    set (N-MNIST 10, SHD 100, DVS Gesture 30, N-Caltech101 20, digits 10, npz: as stored).
    """
    with _open_with_T(spec, time_steps, limit) as ds:
        T = ds.time_steps
        n = len(ds)
        dtype = np.float32 if getattr(ds, "encoding", None) == "analog" else np.uint8
        x = np.zeros((n, T) + tuple(ds.input_shape()), dtype)
        y = np.zeros(n, np.int64)
        subj = np.full(n, -1, np.int64)
        for i in range(n):
            x[i], y[i], s = ds.sample_frames(i, T)
            if s is not None:
                subj[i] = s
        has_subject = ds.subjects() is not None
        return x, y, (subj if has_subject else None)


def iter_batches(spec: str | DataSpec, batch_size: int, time_steps: int | None = None,
                 limit: int | None = None, with_subject: bool = False) -> Iterator[tuple]:
    """Yield (x, y) (or (x, y, subject)) batches in data set order; the last one may be smaller.

    Samples are read and binned one at a time into a fresh batch array, so memory stays bounded by
    one batch (plus whatever the caller keeps) whatever the size of the data set.
    """
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    ds = _open_with_T(spec, time_steps, limit)
    try:
        T = ds.time_steps
        n = len(ds)
        shape = (T,) + tuple(ds.input_shape())
        dtype = np.float32 if getattr(ds, "encoding", None) == "analog" else np.uint8
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            x = np.zeros((k,) + shape, dtype)
            y = np.zeros(k, np.int64)
            subj = np.full(k, -1, np.int64)
            for j in range(k):
                x[j], y[j], s = ds.sample_frames(start + j, T)
                if s is not None:
                    subj[j] = s
            yield (x, y, subj) if with_subject else (x, y)
    finally:
        ds.close()


def describe(spec: str | DataSpec) -> dict:
    """``open_dataset(spec).info()``, closing the files afterwards."""
    with open_dataset(spec) as ds:
        return ds.info()
