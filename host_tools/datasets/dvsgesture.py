"""DVS128 Gesture: 128 x 128 x 2, 11 classes, 29 users, lighting condition per recording.

Two layouts under PATH (or ``PATH/DVSGesture``):

- preprocessed (tonic's): ``ibmGestureTrain/userNN_<lighting>/<label>.npy`` and ``ibmGestureTest/...``;
  each ``.npy`` is [n, 4] with columns x, y, p, t (t in ms).
- IBM's original: ``userNN_<lighting>.aedat`` (AEDAT 3.1) + ``userNN_<lighting>_labels.csv``
  (``class,startTime_usec,endTime_usec``, class 1..11) and optionally ``trials_to_train.txt`` /
  ``trials_to_test.txt`` (else users 1-23 train, 24-29 test, the official split). A gesture is the
  events with ``start <= t < end`` (as SpikingJelly cuts them); the last parsed recording is cached.

subject = user number, condition = lighting (e.g. ``fluorescent_led``).
"""
from __future__ import annotations

import os
import re

import numpy as np

from edge_sdfa.errors import DataError

from . import formats
from .base import Dataset, Entry, Sample
from edge_sdfa.binning import make_events

USER_RE = re.compile(r"^user(\d+)_(.+?)$")
TEST_USERS = range(24, 30)


def _user_cond(name: str, where: str) -> tuple[int, str]:
    m = USER_RE.match(name)
    if not m:
        raise DataError(f"{where}: expected a 'userNN_<lighting>' name, got {name!r}")
    return int(m.group(1)), m.group(2)


class DVSGesture(Dataset):
    kind = "dvsgesture"
    data_type = "camera"
    sensor_hw = (128, 128)
    num_classes = 11
    default_T = 30
    flatten_default = False
    class_names = ["hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                   "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
                   "arm_roll", "air_drums", "air_guitar", "other_gestures"]

    def _index(self) -> list[Entry]:
        path = self.spec.path
        if not os.path.isdir(path):
            raise DataError(f"no such DVS128 Gesture directory: {path}")
        for root in (path, os.path.join(path, "DVSGesture"), os.path.join(path, "DvsGesture")):
            if os.path.isdir(os.path.join(root, "ibmGestureTrain")) or os.path.isdir(os.path.join(root, "ibmGestureTest")):
                self.layout = "npy"
                self.cheap_event_counts = True
                return self._index_npy(root)
            if os.path.isdir(root) and any(f.endswith(".aedat") for f in os.listdir(root)):
                self.layout = "aedat"
                self._cache = (None, None)
                return self._index_aedat(root)
        raise DataError(f"{path}: neither ibmGestureTrain/ibmGestureTest folders nor .aedat recordings")

    # -- preprocessed .npy ----------------------------------------------------------------------
    def _index_npy(self, root: str) -> list[Entry]:
        parts = {"train": ["ibmGestureTrain"], "test": ["ibmGestureTest"],
                 "all": ["ibmGestureTrain", "ibmGestureTest"]}[self.split]
        entries = []
        for part in parts:
            folder = os.path.join(root, part)
            if not os.path.isdir(folder):
                raise DataError(f"{root}: no '{part}' folder for split={self.split}")
            for rec in sorted(os.listdir(folder)):
                sub = os.path.join(folder, rec)
                if not os.path.isdir(sub):
                    continue
                user, cond = _user_cond(rec, sub)
                files = [f for f in os.listdir(sub) if f.endswith(".npy")]
                for f in sorted(files, key=lambda s: (len(s), s)):
                    try:
                        label = int(f[:-4])
                    except ValueError:
                        raise DataError(f"{os.path.join(sub, f)}: gesture files must be named <label>.npy") from None
                    entries.append(Entry(label, subject=user, condition=cond, source=os.path.join(sub, f)))
        if not entries:
            raise DataError(f"{root}: no .npy gesture files for split={self.split}")
        return entries

    def _read_npy(self, fname: str, mmap: bool = False) -> np.ndarray:
        try:
            arr = np.load(fname, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{fname}: truncated or corrupt .npy file ({exc})") from None
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise DataError(f"{fname}: expected an [n, 4] (x, y, p, t) array, got shape {arr.shape}")
        return arr

    # -- original .aedat ------------------------------------------------------------------------
    def _index_aedat(self, root: str) -> list[Entry]:
        recs = sorted(f[:-6] for f in os.listdir(root) if f.endswith(".aedat"))
        lists = {}
        for part in ("train", "test"):
            fname = os.path.join(root, f"trials_to_{part}.txt")
            if os.path.isfile(fname):
                with open(fname, encoding="utf-8") as f:
                    lists[part] = {os.path.basename(line.strip())[:-6] for line in f if line.strip().endswith(".aedat")}
        entries = []
        for rec in recs:
            user, cond = _user_cond(rec, os.path.join(root, rec + ".aedat"))
            if lists:
                part = "train" if rec in lists.get("train", set()) else "test" if rec in lists.get("test", set()) else None
            else:
                part = "test" if user in TEST_USERS else "train"
            if part is None or (self.split != "all" and part != self.split):
                continue
            csv = os.path.join(root, rec + "_labels.csv")
            if not os.path.isfile(csv):
                raise DataError(f"{os.path.join(root, rec + '.aedat')}: no labels file {csv}")
            for cls, start, end in formats.read_gesture_labels_csv(csv):
                if not 1 <= cls <= 11:
                    raise DataError(f"{csv}: class {cls} outside 1..11")
                entries.append(Entry(int(cls) - 1, subject=user, condition=cond,
                                     source=f"{os.path.join(root, rec)}.aedat[{start}:{end}]",
                                     ref=(os.path.join(root, rec + ".aedat"), int(start), int(end))))
        if not entries:
            raise DataError(f"{root}: no labelled gestures for split={self.split}")
        return entries

    def _recording(self, fname: str) -> np.ndarray:
        if self._cache[0] != fname:
            self._cache = (fname, formats.read_aedat3(fname))
        return self._cache[1]

    # -- samples --------------------------------------------------------------------------------
    def _load(self, entry: Entry) -> Sample:
        if self.layout == "npy":
            arr = self._read_npy(entry.source)
            t = np.rint(arr[:, 3].astype(np.float64) * 1000.0).astype(np.int64)
            ev = make_events(t, arr[:, 0], arr[:, 1], arr[:, 2])
            if len(t) > 1 and np.any(np.diff(t) < 0):
                ev = ev[np.argsort(ev["t"], kind="stable")]
        else:
            fname, start, end = entry.ref
            rec = self._recording(fname)
            ev = rec[(rec["t"] >= start) & (rec["t"] < end)]
        return Sample(entry.label, events=ev, source=entry.source)

    def _event_count(self, entry: Entry) -> int:
        if self.layout == "npy":
            return int(self._read_npy(entry.source, mmap=True).shape[0])
        return len(self._load(entry).events)
