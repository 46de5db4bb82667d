"""scikit-learn's bundled 8x8 digits (1,797 real handwritten digits, UCI optdigits) as spikes.

Rate coding: each pixel (0..16) fires at every time step with probability ``pixel / 16``,
drawn from a seeded generator, so the encoding of a given sample is reproducible.
The train/test split is a fixed, seeded, stratified 70/30 split.
"""
from __future__ import annotations

import numpy as np

SPLIT_SEED = 20251
TEST_FRACTION = 0.3


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, 8, 8] in 0..16 and labels int64 [N]."""
    from edge_sdfa.errors import require

    datasets = require("sklearn.datasets", "the 'digits' data set", extra="host", package="scikit-learn")
    bunch = datasets.load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Stratified, seeded split: ``train`` or ``test`` indices, sorted."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = rng.permutation(idx)
        test.extend(idx[: int(round(len(idx) * TEST_FRACTION))])
    test_mask = np.zeros(len(labels), bool)
    test_mask[np.asarray(test, dtype=np.int64)] = True
    if split == "train":
        return np.flatnonzero(~test_mask)
    if split == "test":
        return np.flatnonzero(test_mask)
    if split == "all":
        return np.arange(len(labels))
    raise ValueError(f"unknown split {split!r}")


def rate_code(images: np.ndarray, time_steps: int, seed: int = 0, max_value: float = 16.0) -> np.ndarray:
    """Bernoulli rate coding: uint8 spikes [N, T, H*W] with P(spike) = pixel / max_value."""
    rng = np.random.default_rng(seed)
    p = np.clip(images.reshape(len(images), -1) / max_value, 0.0, 1.0).astype(np.float32)
    u = rng.random((len(images), time_steps, p.shape[1]), dtype=np.float32)
    return (u < p[:, None, :]).astype(np.uint8)


def digits_spikes(split: str = "train", time_steps: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rate-coded digits of one split: x uint8 [N, T, 64], y int64 [N]."""
    images, labels = load_digit_images()
    idx = split_indices(labels, split)
    return rate_code(images[idx], time_steps, seed=seed), labels[idx]
