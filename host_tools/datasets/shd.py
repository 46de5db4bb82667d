"""Spiking Heidelberg Digits: ``shd_train.h5`` / ``shd_test.h5`` (in PATH, ``PATH/hdspikes`` or
``PATH/SHD``), or one ``.h5`` file given directly.

Each file holds ``spikes/times`` (variable-length, seconds), ``spikes/units`` (channel 0..699),
``labels`` (0..19) and ``extra/speaker``. Samples are read one at a time from the open file.
Events are (t µs, channel). Frames follow the reference: ``np.digitize(t, linspace(0, 1.4 s, T))``
with T = 100 (``binning=reference``), or T equal bins (``binning=uniform``).
"""
from __future__ import annotations

import os

import numpy as np

from edge_sdfa.errors import DataError, require

from .base import Dataset, Entry, Sample
from edge_sdfa.binning import CHANNEL_EVENT_DTYPE, channel_events_to_frames


class SHD(Dataset):
    kind = "shd"
    data_type = "channels"
    num_channels = 700
    num_classes = 20
    default_T = 100
    flatten_default = True

    def _files(self) -> list[str]:
        path = self.spec.path
        if os.path.isfile(path):
            return [path]
        if not os.path.isdir(path):
            raise DataError(f"no such SHD file or directory: {path}")
        names = {"train": ["shd_train.h5"], "test": ["shd_test.h5"], "all": ["shd_train.h5", "shd_test.h5"]}
        for sub in ("", "hdspikes", "SHD"):
            d = os.path.join(path, sub)
            files = [os.path.join(d, n) for n in names[self.split]]
            if all(os.path.isfile(f) for f in files):
                return files
        raise DataError(f"{path}: no {' and '.join(names[self.split])} (also looked in hdspikes/ and SHD/)")

    def _index(self) -> list[Entry]:
        h5py = require("h5py", "reading SHD files", extra="host")
        self._handles = []
        entries = []
        for fi, fname in enumerate(self._files()):
            try:
                h = h5py.File(fname, "r")
            except OSError as exc:
                raise DataError(f"{fname}: not a readable HDF5 file ({exc})") from None
            self._handles.append(h)
            try:
                labels = np.asarray(h["labels"][()], np.int64)
                n_times = h["spikes/times"].shape[0]
                n_units = h["spikes/units"].shape[0]
                speakers = np.asarray(h["extra/speaker"][()], np.int64) if "extra/speaker" in h else None
            except (KeyError, OSError, ValueError) as exc:
                raise DataError(f"{fname}: not an SHD file (needs spikes/times, spikes/units, labels): {exc}") from None
            if not (len(labels) == n_times == n_units) or (speakers is not None and len(speakers) != len(labels)):
                raise DataError(f"{fname}: corrupt SHD file (labels, times, units and speakers differ in length)")
            for i, lab in enumerate(labels):
                subj = None if speakers is None else int(speakers[i])
                entries.append(Entry(int(lab), subject=subj, source=f"{fname}[{i}]", ref=(fi, i)))
        if entries:
            self.num_classes = max(20, max(e.label for e in entries) + 1)
        return entries

    def _load(self, entry: Entry) -> Sample:
        fi, i = entry.ref
        h = self._handles[fi]
        try:
            times = np.asarray(h["spikes/times"][i], np.float64)
            units = np.asarray(h["spikes/units"][i])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{h.filename}: cannot read sample {i} ({exc})") from None
        if len(times) != len(units):
            raise DataError(f"{h.filename}: sample {i} has {len(times)} times but {len(units)} units")
        ev = np.empty(len(times), CHANNEL_EVENT_DTYPE)
        ev["t"] = np.rint(times * 1e6).astype(np.int64)
        ev["channel"] = units
        return Sample(entry.label, events=ev, source=entry.source)

    def _event_count(self, entry: Entry) -> int:
        fi, i = entry.ref
        return int(self._handles[fi]["spikes/units"][i].shape[0])

    def _channel_frames(self, events: np.ndarray, T: int) -> np.ndarray:
        max_time = self.spec.get_float("max_time", 1.4)
        binning = self.spec.get("binning", "reference")
        if binning not in ("reference", "uniform"):
            raise DataError(f"binning={binning!r} in {self.spec.text!r} must be reference or uniform")
        return channel_events_to_frames(events["t"], events["channel"], self.num_channels, T,
                                        binning=binning, max_time_us=max_time * 1e6, mode=self.mode,
                                        split_by=self.spec.get("split_by"), bin_us=self.bin_us)

    def close(self) -> None:
        for h in getattr(self, "_handles", []):
            try:
                h.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not mask the real error
                pass
        self._handles = []

    def __del__(self):
        self.close()
