"""The fine-tune's on-device extras around the int8 rule: pure numpy, integer, seeded.

- ``shift_samples``: random shifts of the user's own samples by up to ``max_shift`` pixels (zero
  fill), for a bundle whose input is an image (``finetune.image_shape`` in the manifest). A few
  samples of a user whose strokes sit elsewhere (another writer, a moved camera) become many.
- ``pull_towards``: an L2-SP step on the int16 masters, ``master <- master - pull * (master -
  master0)`` in fixed point with symmetric rounding: keeps a fine-tune near the pre-trained
  weights, against forgetting of the original task.

Neither touches the int8 kernels: they act on the samples before an update and on the weights
between epochs, so every kernel set and backend sees the same integers.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_sdfa.int8 import arith

PULL_BITS = 16   # the pull as an integer fraction m / 2**16


def shift_samples(x: np.ndarray, image_shape: tuple[int, ...], max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Each sample of ``x[N, T, ...]`` (``prod(...) == prod(image_shape)``) shifted by its own
    ``(dy, dx)``, drawn uniformly from ``[-max_shift, max_shift]^2``; pixels moved in are 0.
    ``image_shape`` is ``(H, W)`` or ``(C, H, W)``: the shift moves the last two axes."""
    n, steps = x.shape[:2]
    if max_shift <= 0 or n == 0:
        return x.copy()
    img = x.reshape(n, steps, *image_shape)
    h, w = image_shape[-2:]
    s = int(max_shift)
    pad = [(0, 0)] * (img.ndim - 2) + [(s, s), (s, s)]
    padded = np.pad(img, pad)
    d = rng.integers(-s, s + 1, size=(n, 2))
    out = np.empty_like(img)
    for i, (dy, dx) in enumerate(d):
        # output pixel (r, c) takes input pixel (r - dy, c - dx): the content moves by (dy, dx)
        out[i] = padded[i, ..., s - dy:s - dy + h, s - dx:s - dx + w]
    return out.reshape(x.shape)


def pull_fraction(pull: float) -> int:
    """``pull`` in [0, 1] as the integer numerator over 2**PULL_BITS (0 = off)."""
    return int(round(float(pull) * (1 << PULL_BITS)))


def pull_master(master: np.ndarray, master0: np.ndarray, m: int) -> np.ndarray:
    """``master - round(m * (master - master0) / 2**PULL_BITS)``, rounding half away from zero;
    the result lies between ``master0`` and ``master`` (so in int16)."""
    delta = master.astype(np.int64) - master0.astype(np.int64)
    step = (np.abs(delta) * m + (1 << (PULL_BITS - 1))) >> PULL_BITS
    return (master.astype(np.int64) - np.sign(delta) * step).astype(np.int16)


def pull_towards(layers, anchor, m: int):
    """The trainable layers of ``layers`` pulled towards ``anchor``'s masters (same structure);
    ``w8`` follows the master as the int8 rule derives it. ``m = 0`` returns ``layers``."""
    if m <= 0:
        return list(layers)
    out = []
    for q, q0 in zip(layers, anchor):
        if q.master is None or q0.master is None:
            out.append(q)
            continue
        master = pull_master(q.master, q0.master, m)
        out.append(replace(q, master=master, w8=arith.w8_from_master(master)))
    return out
