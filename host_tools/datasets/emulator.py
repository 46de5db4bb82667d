"""A small, documented DVS emulator: a still image becomes N-MNIST-shaped events.

N-MNIST was recorded by moving an ATIS camera in three saccades in front of MNIST digits on a
monitor. This emulator does the same to any greyscale image, deterministically:

1. The image (values in [0, 1]) is resized (bilinear) to ``digit`` x ``digit`` pixels (28 for MNIST
   size) and centred on a ``canvas`` x ``canvas`` black canvas (34 x 34, the N-MNIST sensor).
2. The image moves along three straight saccades of ``saccade_ms`` each through the triangle
   ``SACCADE_VERTICES`` (pixels, sub-pixel bilinear sampling), sampled every ``dt_us``.
3. Every pixel keeps a reference log intensity ``log(I + eps)``; when the current log intensity is
   ``n >= 1`` contrast thresholds ``C`` above (below) it, the pixel emits n ON (OFF) events and the
   reference moves by ``n * C`` (an ideal DVS pixel without refractory period or noise; noise,
   hot pixels etc. come from the user shifts in ``shifts.py``).
4. Event times are spread uniformly within their sampling step by a generator seeded with ``seed``;
   events are sorted by time. Polarity 1 = ON (brighter), 0 = OFF.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edge_sdfa.binning import EVENT_DTYPE, make_events

SACCADE_VERTICES = ((-1.5, 1.0), (1.5, 1.0), (0.0, -1.5))  # (dx, dy) pixels, visited cyclically


@dataclass(frozen=True)
class EmulatorConfig:
    canvas: int = 34
    digit: int = 28
    saccade_ms: float = 100.0
    dt_us: int = 2000
    contrast: float = 0.25
    eps: float = 0.1

    @property
    def sensor_hw(self) -> tuple[int, int]:
        return (self.canvas, self.canvas)


DEFAULT = EmulatorConfig()


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with pixel centres aligned (as ``align_corners=False``)."""
    h, w = img.shape
    ys = (np.arange(out_h) + 0.5) * (h / out_h) - 0.5
    xs = (np.arange(out_w) + 0.5) * (w / out_w) - 0.5
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = img[np.ix_(y0, x0)] * (1 - fx) + img[np.ix_(y0, x1)] * fx
    b = img[np.ix_(y1, x0)] * (1 - fx) + img[np.ix_(y1, x1)] * fx
    return a * (1 - fy) + b * fy


def saccade_path(cfg: EmulatorConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times (µs, the end of each step) and (dx, dy) offsets of the three saccades."""
    steps_per = int(round(cfg.saccade_ms * 1000 / cfg.dt_us))
    v = np.asarray(SACCADE_VERTICES + (SACCADE_VERTICES[0],), np.float64)
    dx, dy = [], []
    for k in range(3):
        f = np.arange(steps_per + (1 if k == 2 else 0)) / steps_per
        dx.append(v[k, 0] + (v[k + 1, 0] - v[k, 0]) * f)
        dy.append(v[k, 1] + (v[k + 1, 1] - v[k, 1]) * f)
    dx = np.concatenate(dx)
    dy = np.concatenate(dy)
    t = np.arange(len(dx), dtype=np.int64) * cfg.dt_us
    return t, dx, dy


def _shift_matrices(n: int, d: np.ndarray) -> np.ndarray:
    """[S, n, n] bilinear resampling matrices: ``out[i] = in(i - d[s])``, zero outside."""
    S = len(d)
    pos = np.clip(np.arange(n)[None, :] - d[:, None], -1.0, float(n))
    j0 = np.floor(pos).astype(np.int64)
    f = pos - j0
    m = np.zeros((S, n, n + 3))
    si = np.arange(S)[:, None]
    ii = np.arange(n)[None, :]
    np.add.at(m, (si, ii, j0 + 1), 1.0 - f)
    np.add.at(m, (si, ii, j0 + 2), f)
    return m[:, :, 1:n + 1]


@functools.lru_cache(maxsize=4)
def _path_matrices(cfg: EmulatorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, dx, dy = saccade_path(cfg)
    my = _shift_matrices(cfg.canvas, dy)
    mxt = np.ascontiguousarray(_shift_matrices(cfg.canvas, dx).transpose(0, 2, 1))
    return t, my, mxt


def _shifted_frames(canvas_img: np.ndarray, cfg: EmulatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Step times and [S, H, W] bilinear samples of the image moved along the saccades."""
    t, my, mxt = _path_matrices(cfg)
    return t, np.matmul(np.matmul(my, canvas_img), mxt)


def emulate(image: np.ndarray, seed: int = 0, cfg: EmulatorConfig = DEFAULT) -> np.ndarray:
    """Events (structured t, x, y, p) of one greyscale image in [0, 1] moved along the saccades."""
    img = np.asarray(image, np.float64)
    if img.shape != (cfg.digit, cfg.digit):
        img = resize_bilinear(img, cfg.digit, cfg.digit)
    img = np.clip(img, 0.0, 1.0)
    canvas = np.zeros((cfg.canvas, cfg.canvas))
    o = (cfg.canvas - cfg.digit) // 2
    canvas[o:o + cfg.digit, o:o + cfg.digit] = img
    t, frames = _shifted_frames(canvas, cfg)
    logi = np.log(frames + cfg.eps)  # [S, H, W]
    # Ideal pixel: k_s = number of thresholds the reference has moved; it only moves when the
    # log intensity leaves [ref - C, ref + C], i.e. k_s = clip(k_{s-1}, floor(u_s), ceil(u_s)).
    u = (logi - logi[0]) / cfg.contrast
    lo = np.floor(u)
    hi = np.ceil(u)
    k = np.zeros_like(u[0])
    ks = np.empty_like(u)
    ks[0] = 0
    for s in range(1, len(t)):
        np.maximum(k, lo[s], out=k)
        np.minimum(k, hi[s], out=k)
        ks[s] = k
    if len(t) < 2:
        return np.zeros(0, EVENT_DTYPE)
    dk = np.diff(ks, axis=0).ravel()  # [S-1, H, W] flattened, integer-valued floats
    nz = np.flatnonzero(dk)
    n = np.abs(dk[nz]).astype(np.int64)
    cell = np.repeat(nz, n)
    p = np.repeat(dk[nz] > 0, n).astype(np.int8)
    HW = cfg.canvas * cfg.canvas
    step = cell // HW + 1
    pix = cell % HW
    rng = np.random.default_rng(seed)
    tt = t[step - 1] + (rng.random(len(cell)) * cfg.dt_us).astype(np.int64)
    order = np.argsort(tt, kind="stable")
    return make_events(tt[order], (pix % cfg.canvas)[order], (pix // cfg.canvas)[order], p[order])
