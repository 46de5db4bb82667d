"""Deterministic synthetic "users" for data without subject ids.

``user=K`` (K >= 1) draws one fixed set of shift parameters from ``default_rng([SHIFT_SEED, K])``;
``user=0`` is the identity. Per sample, the random parts (which events flip, where noise falls)
come from ``default_rng([SHIFT_SEED, K, sample_index])``, so the same spec always gives the same data.

Event shifts (camera data), applied in this order:
- ``rotation``: rotate by ``rotation_deg`` in [-15, 15] about the sensor centre, then
- ``jitter``: translate by (dx, dy), integers in [-2, 2] (events leaving the sensor are dropped);
- ``time``: stretch time about the first event by ``time_scale`` in [0.8, 1.25];
- ``polarity``: flip each OFF event to ON with probability ``polarity_bias`` in [0, 0.3];
- ``noise``: add background-activity noise, ``noise_hz`` in [0.2, 2] Hz per pixel and polarity;
- ``hot``: 2..6 hot pixels, each firing at ``hot_rate_hz`` in [100, 500] Hz.
Channel (SHD-like) events: ``jitter`` shifts channels by dx*4, ``time``, ``noise``, ``hot`` as above.
Dense frames (rate-coded digits, Braille, npz spikes): ``jitter`` (roll of 2-D images, zero fill),
``noise`` (each 0 becomes 1 with probability noise_hz/100), ``hot`` (hot inputs fire w.p. 0.5 per step).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edge_sdfa.errors import DataError

from edge_sdfa.binning import CHANNEL_EVENT_DTYPE, EVENT_DTYPE

SHIFT_SEED = 77001
EVENT_KINDS = ("rotation", "jitter", "time", "polarity", "noise", "hot")
CHANNEL_KINDS = ("jitter", "time", "noise", "hot")
FRAME_KINDS = ("jitter", "noise", "hot")


@dataclass
class UserShift:
    user: int
    kinds: tuple[str, ...]
    data_type: str
    shape: tuple[int, ...]            # camera (H, W); channels (C,); frames: frame shape
    rotation_deg: float = 0.0
    dx: int = 0
    dy: int = 0
    time_scale: float = 1.0
    polarity_bias: float = 0.0
    noise_hz: float = 0.0
    hot_rate_hz: float = 0.0
    hot: list = field(default_factory=list)  # [(x, y, p)] / [(channel,)] / [flat index]

    @classmethod
    def for_user(cls, user: int, kinds: list[str] | None, ds) -> "UserShift":
        if user < 0:
            raise DataError(f"user must be >= 0, got {user}")
        allowed = {"camera": EVENT_KINDS, "channels": CHANNEL_KINDS, "frames": FRAME_KINDS}[ds.data_type]
        if kinds is None:
            kinds = list(allowed)
        bad = [k for k in kinds if k not in allowed]
        if bad:
            raise DataError(f"shift kind(s) {', '.join(bad)} do not apply to {ds.data_type} data "
                            f"(choose from {', '.join(allowed)})")
        if ds.data_type == "camera":
            shape = tuple(ds.sensor_hw)
        elif ds.data_type == "channels":
            shape = (ds.num_channels,)
        else:
            shape = tuple(ds.input_shape())
        s = cls(user, tuple(kinds) if user else (), ds.data_type, shape)
        if user == 0:
            return s
        rng = np.random.default_rng([SHIFT_SEED, user])
        s.rotation_deg = float(rng.uniform(-15, 15))
        s.dx, s.dy = (int(v) for v in rng.integers(-2, 3, size=2))
        s.time_scale = float(math.exp(rng.uniform(math.log(0.8), math.log(1.25))))
        s.polarity_bias = float(rng.uniform(0, 0.3))
        s.noise_hz = float(rng.uniform(0.2, 2.0))
        s.hot_rate_hz = float(rng.uniform(100, 500))
        n_hot = int(rng.integers(2, 7))
        if ds.data_type == "camera":
            H, W = shape
            s.hot = [(int(rng.integers(W)), int(rng.integers(H)), int(rng.integers(2))) for _ in range(n_hot)]
        elif ds.data_type == "channels":
            s.hot = [(int(rng.integers(shape[0])),) for _ in range(n_hot)]
        else:
            size = int(np.prod(shape))
            s.hot = [(int(rng.integers(size)),) for _ in range(n_hot)]
        return s

    def describe(self) -> dict:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        d["shape"] = list(self.shape)
        d["hot"] = [list(h) for h in self.hot]
        return d

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([SHIFT_SEED, self.user, int(index)])

    # -- events ---------------------------------------------------------------------------------
    def apply_events(self, events: np.ndarray, index: int) -> np.ndarray:
        if not self.kinds or len(events) == 0:
            return events
        if self.data_type == "channels":
            return self._apply_channels(events, index)
        rng = self._rng(index)
        H, W = self.shape
        t = events["t"].astype(np.int64)
        x = events["x"].astype(np.float64)
        y = events["y"].astype(np.float64)
        p = events["p"].astype(np.int8)
        if "rotation" in self.kinds and self.rotation_deg:
            a = math.radians(self.rotation_deg)
            cx, cy = (W - 1) / 2, (H - 1) / 2
            xr = math.cos(a) * (x - cx) - math.sin(a) * (y - cy) + cx
            yr = math.sin(a) * (x - cx) + math.cos(a) * (y - cy) + cy
            x, y = xr, yr
        if "jitter" in self.kinds:
            x = x + self.dx
            y = y + self.dy
        x = np.rint(x).astype(np.int64)
        y = np.rint(y).astype(np.int64)
        keep = (x >= 0) & (x < W) & (y >= 0) & (y < H)
        t, x, y, p = t[keep], x[keep], y[keep], p[keep]
        if len(t) == 0:
            return np.zeros(0, EVENT_DTYPE)
        t0 = int(t.min())
        if "time" in self.kinds:
            t = t0 + np.rint((t - t0) * self.time_scale).astype(np.int64)
        if "polarity" in self.kinds:
            flip = (p == 0) & (rng.random(len(p)) < self.polarity_bias)
            p = np.where(flip, 1, p).astype(np.int8)
        t1 = int(t.max()) + 1
        dur_s = (t1 - t0) / 1e6
        extra = []
        if "noise" in self.kinds:
            n = rng.poisson(self.noise_hz * dur_s * H * W * 2)
            extra.append((rng.integers(t0, t1, n), rng.integers(0, W, n), rng.integers(0, H, n),
                          rng.integers(0, 2, n)))
        if "hot" in self.kinds:
            for hx, hy, hp in self.hot:
                n = rng.poisson(self.hot_rate_hz * dur_s)
                extra.append((rng.integers(t0, t1, n), np.full(n, hx), np.full(n, hy), np.full(n, hp)))
        out = _concat_events(EVENT_DTYPE, [(t, x, y, p)] + extra, ("t", "x", "y", "p"))
        return out[np.argsort(out["t"], kind="stable")]

    def _apply_channels(self, events: np.ndarray, index: int) -> np.ndarray:
        rng = self._rng(index)
        C = self.shape[0]
        t = events["t"].astype(np.int64)
        c = events["channel"].astype(np.int64)
        if "jitter" in self.kinds:
            c = c + 4 * self.dx
            keep = (c >= 0) & (c < C)
            t, c = t[keep], c[keep]
        if len(t) == 0:
            return np.zeros(0, CHANNEL_EVENT_DTYPE)
        t0 = int(t.min())
        if "time" in self.kinds:
            t = t0 + np.rint((t - t0) * self.time_scale).astype(np.int64)
        t1 = int(t.max()) + 1
        dur_s = (t1 - t0) / 1e6
        extra = []
        if "noise" in self.kinds:
            n = rng.poisson(self.noise_hz * dur_s * C)
            extra.append((rng.integers(t0, t1, n), rng.integers(0, C, n)))
        if "hot" in self.kinds:
            for (hc,) in self.hot:
                n = rng.poisson(self.hot_rate_hz * dur_s)
                extra.append((rng.integers(t0, t1, n), np.full(n, hc)))
        out = _concat_events(CHANNEL_EVENT_DTYPE, [(t, c)] + extra, ("t", "channel"))
        return out[np.argsort(out["t"], kind="stable")]

    # -- frames ---------------------------------------------------------------------------------
    def apply_frames(self, frames: np.ndarray, index: int) -> np.ndarray:
        """frames uint8 [T, *shape] (flattened or not); returns a shifted copy."""
        if not self.kinds:
            return frames
        rng = self._rng(index)
        T = frames.shape[0]
        out = frames.reshape(T, -1).copy()
        side = int(round(math.sqrt(out.shape[1])))
        if "jitter" in self.kinds and side * side == out.shape[1] and (self.dx or self.dy):
            img = out.reshape(T, side, side)
            img = np.roll(img, (self.dy, self.dx), axis=(1, 2))
            if self.dy > 0:
                img[:, :self.dy] = 0
            elif self.dy < 0:
                img[:, self.dy:] = 0
            if self.dx > 0:
                img[:, :, :self.dx] = 0
            elif self.dx < 0:
                img[:, :, self.dx:] = 0
            out = img.reshape(T, -1)
        if "noise" in self.kinds:
            add = (rng.random(out.shape) < self.noise_hz / 100.0) & (out == 0)
            out[add] = 1
        if "hot" in self.kinds:
            for (h,) in self.hot:
                fire = rng.random(T) < 0.5
                out[fire, h] = np.maximum(out[fire, h], 1)
        return out.reshape(frames.shape)


def _concat_events(dtype, parts, names) -> np.ndarray:
    n = sum(len(part[0]) for part in parts)
    out = np.empty(n, dtype)
    pos = 0
    for part in parts:
        k = len(part[0])
        for name, values in zip(names, part):
            out[name][pos:pos + k] = values
        pos += k
    return out
