"""Float training loop over the three rules; used by pretraining and the float baselines."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.errors import UserError
from edge_sdfa.progress import EpochProgress
from edge_sdfa.spec import NetworkSpec

METHODS = ("bptt", "sdfa_exact", "sdfa_online")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "sdfa_exact"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    cosine: bool = True
    seed: int = 0
    feedback_seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r} (expected one of {', '.join(METHODS)})")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise UserError("epochs must be >= 0, batch size >= 1 and lr > 0")


def gradients(spec: NetworkSpec, params, xb_tn: np.ndarray, yb: np.ndarray, method: str,
              feedback: dict, trainable=None):
    """(loss, grads, rates) of one batch ``xb_tn[T, N, ...]`` under a rule."""
    if method == "bptt":
        return fn.bptt_grads(spec, params, xb_tn, yb, trainable)
    if method == "sdfa_exact":
        return fn.sdfa_exact_grads(spec, params, xb_tn, yb, feedback, trainable)
    return fn.sdfa_online_grads(spec, params, xb_tn, yb, feedback, trainable)


def accuracy(spec: NetworkSpec, params, x: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(fn.predict(spec, params, x) == y))


def train(spec: NetworkSpec, params, x: np.ndarray, y: np.ndarray, config: TrainConfig,
          trainable=None, on_epoch: Callable[[dict], None] | None = None, progress: bool = False):
    """Train on ``x[N, T, ...]``, ``y[N]``; returns the new params and a per-epoch history."""
    rng = np.random.default_rng(config.seed)
    feedback = fn.feedback_matrices(spec, config.feedback_seed)
    state = fn.optimizer_init(config.optimizer, params)
    history = []
    n = len(y)
    with EpochProgress("train", config.epochs, progress) as bar:
        for epoch in range(config.epochs):
            lr = config.lr
            if config.cosine and config.epochs > 1:
                lr = 0.5 * config.lr * (1 + math.cos(math.pi * epoch / config.epochs))
            order = rng.permutation(n)
            t0 = time.perf_counter()
            losses, correct = [], 0
            for start in range(0, n, config.batch_size):
                idx = order[start:start + config.batch_size]
                xb = np.swapaxes(x[idx], 0, 1)
                loss, grads, rates = gradients(spec, params, xb, y[idx], config.method, feedback, trainable)
                params, state = fn.optimizer_step(params, grads, state, lr, config.momentum,
                                                  weight_decay=config.weight_decay)
                losses.append(loss)
                correct += int(np.sum(rates.argmax(1) == y[idx]))
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                      "train_accuracy": correct / max(n, 1), "seconds": time.perf_counter() - t0}
            history.append(record)
            bar.update(epoch + 1, loss=record["loss"], acc=record["train_accuracy"])
            if on_epoch:
                on_epoch(record)
    return params, history
