"""The ``Dataset`` base: a lazy, indexable list of samples with subject filters, user shifts and
conversion to dense frames. Loaders subclass it and implement ``_index`` and ``_load``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from edge_sdfa.errors import DataError

from edge_sdfa import binning
from .spec import DataSpec


@dataclass
class Sample:
    """One recording: events (structured: t µs, x, y, p — or t, channel) and/or dense frames."""

    label: int
    events: np.ndarray | None = None
    frames: np.ndarray | None = None
    subject: int | None = None
    condition: str | None = None
    source: str = ""


@dataclass(slots=True)
class Entry:
    """Index record of a sample: everything known without reading its events."""

    label: int
    subject: int | None = None
    condition: str | None = None
    source: str = ""
    ref: Any = None


class Dataset:
    """Base class. ``data_type`` is ``camera`` (x, y, p events), ``channels`` (t, channel events)
    or ``frames`` (dense frames only)."""

    kind: str = ""
    data_type: str = "camera"
    sensor_hw: tuple[int, int] = (0, 0)   # camera: (H, W)
    num_channels: int = 0                 # channels / frames: features per step
    num_classes: int = 0
    default_T: int = 10
    flatten_default: bool = True
    class_names: list[str] | None = None
    cheap_event_counts: bool = False

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.split = spec.get("split", "train")
        self.split_by = spec.get("split_by", "number")
        self.mode = spec.get("mode", "count")
        self.downsample = spec.get_int("downsample", 1)
        if self.downsample < 1:
            raise DataError(f"downsample must be >= 1 in {spec.text!r}")
        flat = spec.get("flatten")
        if flat not in (None, "0", "1", "true", "false"):
            raise DataError(f"option flatten={flat!r} in {spec.text!r} must be 0 or 1")
        self.flatten = self.flatten_default if flat is None else flat in ("1", "true")
        self.seed = spec.get_int("seed", 0)
        self.bin_us = spec.get_int("bin_us", 1000)
        if self.bin_us < 1:
            raise DataError(f"bin_us must be >= 1 in {spec.text!r}")
        entries = self._index()
        entries = self._filter(entries)
        limit = spec.get_int("limit")
        if limit is not None:
            if limit < 0:
                raise DataError(f"limit must be >= 0 in {spec.text!r}")
            entries = entries[:limit]
        self.entries: list[Entry] = entries
        self.user_shift = None
        user = spec.get_int("user")
        if user is not None:
            from .shifts import UserShift

            self.user_shift = UserShift.for_user(user, spec.get_list("shift"), self)
            for e in self.entries:
                if e.subject is None:
                    e.subject = user

    # -- to implement ---------------------------------------------------------------------------
    def _index(self) -> list[Entry]:
        raise NotImplementedError

    def _load(self, entry: Entry) -> Sample:
        raise NotImplementedError

    def _event_count(self, entry: Entry) -> int:
        s = self._load(entry)
        if s.events is not None:
            return len(s.events)
        return int(s.frames.sum(dtype=np.int64)) if s.frames is not None else 0

    # -- filtering ------------------------------------------------------------------------------
    def _filter(self, entries: list[Entry]) -> list[Entry]:
        spec = self.spec
        keep_subj = spec.get_list("subject")
        drop_subj = spec.get_list("exclude_subject")
        if keep_subj is not None or drop_subj is not None:
            if not any(e.subject is not None for e in entries):
                raise DataError(f"{self.where()}: this data has no subject ids, so subject= cannot select "
                                f"any (use user=K for a synthetic user shift)")
            if keep_subj is not None:
                wanted = set(keep_subj)
                entries = [e for e in entries if str(e.subject) in wanted]
            if drop_subj is not None:
                unwanted = set(drop_subj)
                entries = [e for e in entries if str(e.subject) not in unwanted]
        conds = spec.get_list("condition")
        if conds is not None:
            entries = [e for e in entries if e.condition in set(conds)]
        return entries

    # -- access ---------------------------------------------------------------------------------
    def where(self) -> str:
        return self.spec.path or self.spec.text or self.kind

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        entry = self.entries[i]
        sample = self._load(entry)
        sample.label = entry.label
        sample.subject = entry.subject
        sample.condition = entry.condition
        if self.user_shift is not None and sample.events is not None:
            sample.events = self.user_shift.apply_events(sample.events, i % len(self))
        return sample

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def labels(self) -> np.ndarray:
        return np.fromiter((e.label for e in self.entries), np.int64, len(self.entries))

    def subjects(self) -> np.ndarray | None:
        if not self.entries or all(e.subject is None for e in self.entries):
            return None
        return np.array([-1 if e.subject is None else e.subject for e in self.entries], np.int64)

    # -- frames ---------------------------------------------------------------------------------
    @property
    def time_steps(self) -> int:
        T = self.spec.get_int("frames", self.default_T)
        if T < 1:
            raise DataError(f"frames must be >= 1 in {self.spec.text!r}")
        return T

    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one unflattened frame."""
        if self.data_type == "camera":
            f = self.downsample
            return (2, -(-self.sensor_hw[0] // f), -(-self.sensor_hw[1] // f))
        return (self.num_channels,)

    def input_shape(self) -> tuple[int, ...]:
        shape = self.frame_shape()
        return (int(math.prod(shape)),) if self.flatten else shape

    def sensor(self) -> list[int]:
        """Sensor shape as tonic writes it: (W, H, polarities) for cameras, (channels,) otherwise."""
        if self.data_type == "camera":
            return [self.sensor_hw[1], self.sensor_hw[0], 2]
        return [self.num_channels]

    def to_frames(self, sample: Sample, T: int) -> np.ndarray:
        """uint8 [T, *input_shape]."""
        if self.data_type == "camera":
            fr = binning.events_to_frames(sample.events, self.sensor_hw, T, self.split_by, self.mode,
                                          self.downsample, bin_us=self.bin_us)
        elif self.data_type == "channels":
            fr = self._channel_frames(sample.events, T)
        else:
            fr = binning.rebin_frames(sample.frames, T, self.mode)
        return fr.reshape((T,) + self.input_shape())

    def _channel_frames(self, events: np.ndarray, T: int) -> np.ndarray:
        split_by = self.spec.get("split_by")
        return binning.channel_events_to_frames(events["t"], events["channel"], self.num_channels, T,
                                                mode=self.mode, split_by=split_by, bin_us=self.bin_us)

    def sample_frames(self, i: int, T: int) -> tuple[np.ndarray, int, int | None]:
        """(frames uint8 [T, *input_shape], label, subject) of sample i."""
        s = self[i]
        fr = self.to_frames(s, T)
        if self.user_shift is not None and s.events is None:
            fr = self.user_shift.apply_frames(fr, i)
        return fr, s.label, s.subject

    # -- info -----------------------------------------------------------------------------------
    def info(self, max_count_samples: int = 200) -> dict:
        n = len(self)
        subj = self.subjects()
        labels = self.labels()
        if n and (self.cheap_event_counts or n <= max_count_samples):
            picks = range(n)
            exact = True
        else:
            picks = np.unique(np.linspace(0, n - 1, max_count_samples).round().astype(int)) if n else []
            exact = False
        counts = [self._event_count(self.entries[i]) for i in picks] if n else []
        if self.user_shift is not None and n and self.data_type != "frames":
            counts = [len(self[i].events) for i in picks]
        conditions = sorted({e.condition for e in self.entries if e.condition is not None})
        T = self.time_steps
        report = {
            "spec": self.spec.text,
            "kind": self.kind,
            "data_type": self.data_type,
            "split": self.split,
            "samples": n,
            "classes": int(self.num_classes),
            "class_counts": np.bincount(labels, minlength=self.num_classes).tolist() if n else [],
            "subjects": None if subj is None else int(len(np.unique(subj))),
            "subject_ids": None if subj is None else np.unique(subj).tolist(),
            "conditions": conditions or None,
            "sensor": self.sensor(),
            "frame_shape": list(self.frame_shape()),
            "time_steps": T,
            "input_shape": list(self.input_shape()),
            "events_per_sample_mean": float(np.mean(counts)) if len(counts) else None,
            "events_counted_samples": len(counts),
            "events_exact": exact,
            "user_shift": None if self.user_shift is None else self.user_shift.describe(),
        }
        if self.data_type == "frames":
            report["events_note"] = "dense data: events_per_sample_mean is the number of spikes (sum of the frames at the native length)"
        if self.class_names is not None:
            report["class_names"] = list(self.class_names)
        return report

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stratified_split(labels: np.ndarray, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded stratified split (same construction as digits.split_indices, any fraction)."""
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_mask[idx[: int(round(len(idx) * test_fraction))]] = True
    if split == "train":
        return np.flatnonzero(~test_mask)
    if split == "test":
        return np.flatnonzero(test_mask)
    return np.arange(len(labels))
