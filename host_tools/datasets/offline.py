"""Real data that works offline: scikit-learn's digits and any local IDX set (MNIST, Fashion-MNIST).

- ``digits``: 1,797 real 8x8 handwritten digits, rate-coded exactly as ``digits.digits_spikes``
  (x uint8 [N, T, 64]); the same seeded stratified 70/30 split.
- ``digits-events`` (= ``digits?encoding=events``): the same images through the DVS emulator
  (``emulator.py``): N-MNIST-shaped events, 34 x 34 x 2, flattened to 2312 like N-MNIST.
  The emulator seed of sample i is ``seed * 1_000_003 + i`` (i = index in the full set).
- ``idx:PATH``: PATH is a directory with ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-...`` (split=train/test), or one ``*-images-idx3-ubyte[.gz]`` file (its labels file is
  found by name). ``encoding=events`` (default) uses the emulator, ``encoding=rate`` rate-codes the
  28x28 pixels (x uint8 [N, T, 784], P(spike) = pixel/255, seed per sample).
Images are read one at a time (memory-mapped, or streamed from the .gz).
"""
from __future__ import annotations

import os

import numpy as np

from edge_sdfa.errors import DataError

from . import digits as digits_mod
from . import emulator, formats
from .base import Dataset, Entry, Sample


class Digits(Dataset):
    kind = "digits"
    num_classes = 10
    default_T = 10

    def __init__(self, spec):
        enc = spec.get("encoding", "events" if spec.kind == "digits-events" else "rate")
        if enc not in ("rate", "events"):
            raise DataError(f"encoding={enc!r} in {spec.text!r} must be rate or events")
        self.encoding = enc
        if enc == "events":
            self.data_type = "camera"
            self.sensor_hw = emulator.DEFAULT.sensor_hw
        else:
            self.data_type = "frames"
            self.num_channels = 64
        self._spikes_cache: dict[int, np.ndarray] = {}
        self.kind = spec.kind
        self.cheap_event_counts = enc == "rate"
        super().__init__(spec)

    def _index(self) -> list[Entry]:
        self.images, labels = digits_mod.load_digit_images()
        self.split_idx = digits_mod.split_indices(labels, self.split)
        return [Entry(int(labels[i]), source=f"digits[{i}]", ref=(pos, int(i)))
                for pos, i in enumerate(self.split_idx)]

    def _rate(self, T: int) -> np.ndarray:
        if T not in self._spikes_cache:
            # bit-identical to digits_spikes(split, T, seed): rate_code over the whole split
            self._spikes_cache = {T: digits_mod.rate_code(self.images[self.split_idx], T, seed=self.seed)}
        return self._spikes_cache[T]

    def _load(self, entry: Entry) -> Sample:
        pos, i = entry.ref
        if self.encoding == "events":
            ev = emulator.emulate(self.images[i] / 16.0, seed=self.seed * 1_000_003 + i)
            return Sample(entry.label, events=ev, source=entry.source)
        return Sample(entry.label, frames=self._rate(self.time_steps)[pos], source=entry.source)

    def _event_count(self, entry: Entry) -> int:
        if self.encoding == "events":
            return len(self._load(entry).events)
        return int(self._rate(self.time_steps)[entry.ref[0]].sum(dtype=np.int64))

    def sample_frames(self, i: int, T: int):
        if self.encoding == "events":
            return super().sample_frames(i, T)
        entry = self.entries[i]
        fr = self._rate(T)[entry.ref[0]].reshape((T,) + self.input_shape())
        if self.user_shift is not None:
            fr = self.user_shift.apply_frames(fr, i)
        return fr, entry.label, entry.subject


def _find(d: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


class IdxImages:
    """Random and sequential access to the images of one IDX file without loading it whole."""

    def __init__(self, path: str):
        self.path = path
        with formats.open_maybe_gzip(path) as f:
            self.dtype, self.shape, self.offset = formats.read_idx_header(f, path)
        if len(self.shape) != 3 or self.dtype != np.uint8:
            raise DataError(f"{path}: expected uint8 images [N, H, W], got {self.dtype} {self.shape}")
        self.item = self.shape[1] * self.shape[2]
        self.gz = path.endswith(".gz")
        if not self.gz:
            size = os.path.getsize(path)
            if size < self.offset + self.item * self.shape[0]:
                raise DataError(f"{path}: truncated IDX file ({size} bytes, header says "
                                f"{self.offset + self.item * self.shape[0]})")
            self.mm = np.memmap(path, np.uint8, "r", self.offset, (self.shape[0], self.shape[1], self.shape[2]))
        else:
            self._f = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        if not self.gz:
            return np.array(self.mm[i])
        if self._f is None:
            self._f = formats.open_maybe_gzip(self.path)
        try:
            self._f.seek(self.offset + i * self.item)  # cheap when reading forward
            raw = self._f.read(self.item)
        except (OSError, EOFError) as exc:
            raise DataError(f"{self.path}: truncated or corrupt gzip data ({exc})") from None
        if len(raw) != self.item:
            raise DataError(f"{self.path}: truncated IDX file (image {i} incomplete)")
        return np.frombuffer(raw, np.uint8).reshape(self.shape[1:])


class Idx(Dataset):
    kind = "idx"
    num_classes = 10
    default_T = 10

    def __init__(self, spec):
        enc = spec.get("encoding", "events")
        if enc not in ("rate", "events"):
            raise DataError(f"encoding={enc!r} in {spec.text!r} must be rate or events")
        self.encoding = enc
        if enc == "events":
            self.data_type = "camera"
            self.sensor_hw = emulator.DEFAULT.sensor_hw
        else:
            self.data_type = "frames"
        super().__init__(spec)

    def _pairs(self) -> list[tuple[str, str]]:
        path = self.spec.path
        if os.path.isfile(path):
            base = os.path.basename(path)
            if "images-idx3" not in base:
                raise DataError(f"{path}: give the images file (*-images-idx3-ubyte[.gz]) or its directory")
            lab = os.path.join(os.path.dirname(path), base.replace("images-idx3", "labels-idx1"))
            lab = _find(os.path.dirname(lab), os.path.basename(lab).removesuffix(".gz"))
            if lab is None:
                raise DataError(f"{path}: no matching labels-idx1 file next to it")
            return [(path, lab)]
        if not os.path.isdir(path):
            raise DataError(f"no such IDX file or directory: {path}")
        prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[self.split]
        pairs = []
        for pre in prefixes:
            img = _find(path, f"{pre}-images-idx3-ubyte")
            lab = _find(path, f"{pre}-labels-idx1-ubyte")
            if img is None or lab is None:
                raise DataError(f"{path}: no {pre}-images-idx3-ubyte[.gz] / {pre}-labels-idx1-ubyte[.gz] pair")
            pairs.append((img, lab))
        return pairs

    def _index(self) -> list[Entry]:
        self.files = []
        entries = []
        for fi, (img, lab) in enumerate(self._pairs()):
            images = IdxImages(img)
            labels = formats.read_idx(lab)
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(f"{lab}: {len(labels)} labels for {len(images)} images in {img}")
            self.files.append(images)
            entries += [Entry(int(v), source=f"{img}[{i}]", ref=(fi, i)) for i, v in enumerate(labels)]
        self.image_hw = self.files[0].shape[1:]
        if self.encoding == "rate":
            self.num_channels = int(np.prod(self.image_hw))
        self.num_classes = max(10, max((e.label for e in entries), default=-1) + 1)
        return entries

    def _image(self, entry: Entry) -> np.ndarray:
        fi, i = entry.ref
        return self.files[fi][i]

    def _load(self, entry: Entry) -> Sample:
        img = self._image(entry).astype(np.float64) / 255.0
        fi, i = entry.ref
        if self.encoding == "events":
            ev = emulator.emulate(img, seed=self.seed * 1_000_003 + fi * 10_000_000 + i)
            return Sample(entry.label, events=ev, source=entry.source)
        fr = digits_mod.rate_code(img[None], self.time_steps, seed=self.seed * 1_000_003 + fi * 10_000_000 + i,
                                  max_value=1.0)[0]
        return Sample(entry.label, frames=fr, source=entry.source)

    def sample_frames(self, i: int, T: int):
        if self.encoding == "events":
            return super().sample_frames(i, T)
        entry = self.entries[i]
        img = self._image(entry).astype(np.float64) / 255.0
        fi, j = entry.ref
        fr = digits_mod.rate_code(img[None], T, seed=self.seed * 1_000_003 + fi * 10_000_000 + j, max_value=1.0)[0]
        if self.user_shift is not None:
            fr = self.user_shift.apply_frames(fr, i)
        return fr, entry.label, entry.subject
