"""Shared pieces of the personalisation benchmark: the digit users, the pretrained models (cached),
the three-way split and the float baselines (plain BPTT + Adam with the device's rehearsal and gate).

Used by ``benchmarks/personalise.py``; kept apart so experiments can import it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.spec import mlp
from edge_sdfa.train import TrainConfig, train

CACHE = Path(os.environ.get("EDGE_SDFA_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
T = 10
DIGIT_SIZES = (64, 128, 128, 10)
EVENT_SIZES = (2312, 1000, 10)
HOLDOUT = 200
REHEARSAL = 300
TRAIN_PER_CLASS = 10
VAL_PER_CLASS = 4


# ---------------------------------------------------------------------------------------------
# users of the 8x8 digits (rate-coded): fixed, documented shifts of the images


def _default_user(images):
    from host_tools.make_embedded import SHIFT, shift_user

    return shift_user(images, **SHIFT)


def _translate_blur(images):
    """Another writer/camera: shifted 1 px right and down, then blurred (sigma 0.7 px)."""
    from scipy import ndimage

    out = np.empty_like(images, dtype=np.float32)
    for i, img in enumerate(images):
        b = ndimage.shift(img, (1.0, 1.0), order=1, mode="constant")
        out[i] = np.clip(ndimage.gaussian_filter(b, 0.7) * 1.3, 0, 16)
    return out


def _thin_faint(images):
    """Thinner strokes with lower contrast: grey erosion (1x2) where it keeps ink, contrast 0.6."""
    from scipy import ndimage

    out = np.empty_like(images, dtype=np.float32)
    for i, img in enumerate(images):
        e = ndimage.grey_erosion(img, size=(1, 2))
        e = np.where(e.sum() > 0.3 * img.sum(), e, img)
        out[i] = np.clip(0.6 * e, 0, 16)
    return out


def _hot_noise(images, seed=9):
    """A faulty sensor: 4 hot pixels always at full intensity and background noise on 20% of pixels
    (intensity uniform in 3..8), seeded."""
    rng = np.random.default_rng(seed)
    hot = [(0, 3), (2, 6), (5, 1), (7, 4)]
    out = np.array(images, dtype=np.float32, copy=True)
    for i in range(len(out)):
        noisy = rng.random((8, 8)) < 0.2
        out[i] = np.where(noisy, np.maximum(out[i], rng.uniform(3, 8, size=(8, 8))), out[i])
        for r, c in hot:
            out[i, r, c] = 16.0
    return out


DIGIT_USERS = {
    "digits_default": ("the embedded default's user: rotation 25 deg, thicker strokes (2-px grey dilation), "
                       "10% sensor noise in 4..12", _default_user),
    "digits_translate_blur": ("translated 1 px right/down, Gaussian blur sigma 0.7, gain 1.3", _translate_blur),
    "digits_thin_faint": ("thinner strokes (1x2 grey erosion), contrast x0.6", _thin_faint),
    "digits_hot_noise": ("4 hot pixels at full intensity, background noise on 20% of pixels (3..8)", _hot_noise),
}

EVENT_USERS = {
    "events_rotation_jitter": ("digits-events?split=test&user=6&shift=rotation,jitter",
                               "DVS emulator; user 6: rotation -13.6 deg, jitter (-1, +1) px"),
    "events_hot_polarity_noise": ("digits-events?split=test&user=1&shift=hot,polarity,noise",
                                  "DVS emulator; user 1: 6 hot pixels ~345 Hz, OFF->ON bias 0.21, noise 1.79 Hz"),
}


# ---------------------------------------------------------------------------------------------
# the three-way split


@dataclass
class UserData:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source_train: np.ndarray     # indices of the source images (for the leak test)
    source_val: np.ndarray
    source_test: np.ndarray


def three_way_split(y: np.ndarray, seed: int, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS):
    """Disjoint, stratified train / validation / test indices; the split has its own seed."""
    rng = np.random.default_rng([seed, 31337])
    tr, va, te = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        tr.extend(idx[:train_per_class])
        va.extend(idx[train_per_class:train_per_class + val_per_class])
        te.extend(idx[train_per_class + val_per_class:])
    return (np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(va, np.int64)),
            np.sort(np.asarray(te, np.int64)))


def holdout_and_user_pool(labels_test_split: np.ndarray, n_holdout: int = HOLDOUT, seed: int = 0):
    """Positions (in the test split) of the original-task holdout and of the users' pool: disjoint."""
    perm = np.random.default_rng(seed).permutation(len(labels_test_split))
    return np.sort(perm[:n_holdout]), np.sort(perm[n_holdout:])


# ---------------------------------------------------------------------------------------------
# pretrained models (cached)


def cached_params(name: str, spec, make) -> fn.Params:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.npz"
    if path.exists():
        z = np.load(path)
        return [{k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{i}/")} for i in range(len(spec.layers))]
    params = make()
    np.savez(path, **{f"{i}/{k}": v for i, p in enumerate(params) for k, v in p.items()})
    return params


# ---------------------------------------------------------------------------------------------
# float baselines: plain BPTT with Adam, same rehearsal, same gate, early stopping on validation


def float_finetune(spec, params, user: UserData, rehearsal, holdout, trainable, *, seed: int, epochs: int,
                   lr: float, batch_size: int = 16, rehearsal_ratio: float = 1.0, margin: float = 0.02) -> dict:
    from edge_sdfa.train import accuracy

    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 11])
    state = fn.optimizer_init("adam", params)
    acc = lambda p, x, y: accuracy(spec, p, x, y)
    before = {"val": acc(params, user.x_val, user.y_val), "holdout": acc(params, *holdout),
              "test": acc(params, user.x_test, user.y_test)}
    best, best_params, best_epoch = dict(before), params, 0
    n_reh = min(len(rehearsal[1]), int(round(rehearsal_ratio * len(user.y_train))))
    p = params
    for epoch in range(1, epochs + 1):
        pick = rng.choice(len(rehearsal[1]), n_reh, replace=False)
        xs = np.concatenate([user.x_train, rehearsal[0][pick]])
        ys = np.concatenate([user.y_train, rehearsal[1][pick]])
        order = rng.permutation(len(ys))
        lr_e = 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            _, grads, _ = fn.bptt_grads(spec, p, np.swapaxes(xs[idx], 0, 1), ys[idx], trainable)
            p, state = fn.optimizer_step(p, grads, state, lr_e)
        now = {"val": acc(p, user.x_val, user.y_val), "holdout": acc(p, *holdout)}
        if now["val"] > before["val"] and now["val"] >= best["val"] and now["holdout"] >= before["holdout"] - margin:
            best, best_params, best_epoch = now, p, epoch
    committed = best_epoch > 0
    after_test = acc(best_params, user.x_test, user.y_test) if committed else before["test"]
    return {"before": before["test"], "after": after_test, "holdout_before": before["holdout"],
            "holdout_after": best["holdout"] if committed else before["holdout"],
            "validation_before": before["val"], "validation_after": best["val"], "committed": committed,
            "best_epoch": best_epoch, "seconds": time.perf_counter() - t0}


def pretrain_float(sizes, x, y, seed: int, epochs: int, lr: float = 3e-3, batch_size: int = 32):
    spec = mlp(list(sizes), time_steps=T)
    params = fn.init_params(spec, seed)
    params, _ = train(spec, params, x, y, TrainConfig(method="bptt", epochs=epochs, batch_size=batch_size, lr=lr,
                                                      seed=seed), progress=True)
    return params


# ---------------------------------------------------------------------------------------------
# the event model: MLP 2312-1000-10 on the digits through the DVS emulator (N-MNIST layout)

EVENT_PRETRAIN = {"method": "sdfa_online", "epochs": 15, "batch_size": 32, "lr": 2e-3}
# The event bundle's fine-tuning defaults, chosen on the event users' validation parts only
# (benchmarks/tune_personalise.py; docs/personalisation.md "The N-MNIST-format shape"). The digits'
# recipe (make_embedded.FINETUNE_DEFAULTS, lr 0.6) was tuned on the 64-128-128-10 network; the
# 2312-1000-10 network (hidden layer over 2312 inputs) gets the best validation accuracy and keeps
# the most holdout with lr 0.15 and 50 epochs.
EVENT_FINETUNE_DEFAULTS = {"epochs": 50, "batch_size": 8, "lr": 0.15, "rehearsal_ratio": 1.0, "mode": "exact"}
EVENT_FEEDBACK_SEED = 1234


def event_arrays(name: str, spec_text: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames [N, 10, 2312] of a digits-events spec, cached under benchmarks/.cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"events_{name}.npz"
    if path.exists():
        z = np.load(path)
        return z["x"], z["y"]
    from host_tools.datasets import load_arrays

    x, y, _ = load_arrays(spec_text, time_steps=T)
    np.savez_compressed(path, x=x, y=y)
    return x, y


def event_model(seed: int = 0):
    spec = mlp(list(EVENT_SIZES), time_steps=T)
    x, y = event_arrays("train", "digits-events?split=train")

    def make():
        params = fn.init_params(spec, seed)
        params, _ = train(spec, params, x, y, TrainConfig(seed=seed, feedback_seed=EVENT_FEEDBACK_SEED + seed,
                                                          **EVENT_PRETRAIN), progress=True)
        return params

    return spec, cached_params(f"events_mlp_{EVENT_PRETRAIN['method']}_seed{seed}", spec, make)
