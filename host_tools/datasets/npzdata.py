"""``npz:PATH``: the project's own user-data file (see ``edge_sdfa.userdata``) as a Dataset."""
from __future__ import annotations

import numpy as np

from edge_sdfa import userdata
from edge_sdfa.errors import DataError

from .base import Dataset, Entry, Sample


class NpzUserData(Dataset):
    kind = "npz"

    def __init__(self, spec):
        self.data = userdata.load_user_data(spec.path)
        d = self.data
        if d.kind == "spikes":
            self.data_type = "frames"
            self.frame_dims = tuple(int(s) for s in d.x.shape[2:])
            self.num_channels = int(np.prod(self.frame_dims))
            self.default_T = int(d.x.shape[1])
            self.flatten_default = False
        elif len(d.sensor) == 2:
            self.data_type = "camera"
            self.sensor_hw = (int(d.sensor[0]), int(d.sensor[1]))
            self.flatten_default = True
        else:
            self.data_type = "channels"
            self.num_channels = int(d.sensor[0])
        self.num_classes = int(d.y.max()) + 1 if len(d.y) else 0
        self.cheap_event_counts = True
        if spec.get("split") not in (None, "all"):
            raise DataError(f"{spec.path}: a user-data file has no train/test split (use limit= or subject=)")
        super().__init__(spec.with_options(split="all"))

    def frame_shape(self):
        if self.data_type == "frames":
            return self.frame_dims
        return super().frame_shape()

    def _index(self) -> list[Entry]:
        d = self.data
        subj = d.subject
        return [Entry(int(d.y[i]), subject=None if subj is None else int(subj[i]),
                      source=f"{self.spec.path}[{i}]", ref=i) for i in range(len(d.y))]

    def _load(self, entry: Entry) -> Sample:
        d = self.data
        if d.kind == "spikes":
            return Sample(entry.label, frames=d.x[entry.ref], source=entry.source)
        return Sample(entry.label, events=d.sample_events(entry.ref), source=entry.source)

    def _event_count(self, entry: Entry) -> int:
        d = self.data
        if d.kind == "spikes":
            return int(d.x[entry.ref].sum(dtype=np.int64))
        return int(d.offsets[entry.ref + 1] - d.offsets[entry.ref])

    def to_frames(self, sample: Sample, T: int) -> np.ndarray:
        if self.data_type == "frames" and T != sample.frames.shape[0]:
            raise DataError(f"{self.spec.path}: stored spikes have T={sample.frames.shape[0]}, "
                            f"asked for T={T} (rebinning stored spikes is not done silently)")
        return super().to_frames(sample, T)
