"""Folder-of-``.bin`` data sets recorded with the ATIS camera: N-MNIST and N-Caltech101.

N-MNIST: ``PATH/Train/<digit>/*.bin`` and ``PATH/Test/<digit>/*.bin`` (``PATH/NMNIST/...`` also
works), 34 x 34 x 2, label = the digit folder. N-Caltech101: ``PATH/Caltech101/<class>/*.bin`` (or
``PATH/<class>/*.bin``), label = index of the class folder in sorted order; there is no official
split, so ``split=train|test`` is a seeded, stratified split (``test_fraction``, default 0.2). The
reference uses an unseeded 80/20 ``random_split`` and frames of 180 x 240.
"""
from __future__ import annotations

import os

import numpy as np

from edge_sdfa.errors import DataError

from . import formats
from .base import Dataset, Entry, Sample, stratified_split

NCALTECH_SPLIT_SEED = 101


def _bins(folder: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(folder) if f.endswith(".bin"))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}") from None


class NMNIST(Dataset):
    kind = "nmnist"
    data_type = "camera"
    sensor_hw = (34, 34)
    num_classes = 10
    default_T = 10
    flatten_default = True
    cheap_event_counts = True

    def _root(self) -> str:
        path = self.spec.path
        if not os.path.isdir(path):
            raise DataError(f"no such N-MNIST directory: {path}")
        for cand in (path, os.path.join(path, "NMNIST")):
            if os.path.isdir(os.path.join(cand, "Train")) or os.path.isdir(os.path.join(cand, "Test")):
                return cand
        raise DataError(f"{path}: no N-MNIST 'Train' or 'Test' folder (expected PATH/Train/<digit>/*.bin)")

    def _index(self) -> list[Entry]:
        root = self._root()
        parts = {"train": ["Train"], "test": ["Test"], "all": ["Train", "Test"]}[self.split]
        entries = []
        for part in parts:
            folder = os.path.join(root, part)
            if not os.path.isdir(folder):
                raise DataError(f"{root}: no '{part}' folder for split={self.split}")
            for digit in sorted(os.listdir(folder)):
                sub = os.path.join(folder, digit)
                if not os.path.isdir(sub):
                    continue
                try:
                    label = int(digit[-1])
                except ValueError:
                    raise DataError(f"{sub}: N-MNIST class folders must be named by their digit") from None
                entries += [Entry(label, source=os.path.join(sub, f)) for f in _bins(sub)]
        if not entries:
            raise DataError(f"{root}: no .bin files for split={self.split}")
        return entries

    def _load(self, entry: Entry) -> Sample:
        ev = formats.read_nmnist_bin(entry.source)
        if self.spec.get("first_saccade_only") in ("1", "true"):
            ev = ev[ev["t"] < 100_000]
        return Sample(entry.label, events=ev, source=entry.source)

    def _event_count(self, entry: Entry) -> int:
        return formats.nmnist_event_count(entry.source)


class NCaltech101(NMNIST):
    kind = "ncaltech101"
    sensor_hw = (180, 240)
    num_classes = 101
    default_T = 20
    flatten_default = False

    def _index(self) -> list[Entry]:
        path = self.spec.path
        if not os.path.isdir(path):
            raise DataError(f"no such N-Caltech101 directory: {path}")
        root = os.path.join(path, "Caltech101") if os.path.isdir(os.path.join(path, "Caltech101")) else path
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise DataError(f"{path}: no class folders (expected PATH/Caltech101/<class>/*.bin)")
        self.class_names = classes
        self.num_classes = len(classes)
        entries = []
        for label, name in enumerate(classes):
            sub = os.path.join(root, name)
            entries += [Entry(label, source=os.path.join(sub, f)) for f in _bins(sub)]
        if not entries:
            raise DataError(f"{root}: no .bin files")
        frac = self.spec.get_float("test_fraction", 0.2)
        if not 0 <= frac <= 1:
            raise DataError(f"test_fraction must be in [0, 1] in {self.spec.text!r}")
        labels = np.array([e.label for e in entries])
        keep = stratified_split(labels, self.split, frac, NCALTECH_SPLIT_SEED)
        return [entries[i] for i in keep]
