"""The device's main job: fine-tune the bundle's head on the user's small batch, then commit or revert.

Stages, each a public function that ``finetune()`` composes:

- ``prepare``: open the store (creating it from a bundle if needed), load the active bundle and the
  user's data, validate everything, run the frozen part once per sample (cached), split the user's
  batch into train and validation parts;
- ``train``: program the backend and consume ``epochs`` (a generator of SDFA epochs over the user's
  train part mixed with the bundle's rehearsal samples), stopping on ``epoch_guard`` and keeping
  the weights of the best validation epoch (``improves``);
- ``gate``: the reasons not to commit the candidate;
- ``commit``: install the candidate as the store's active weights.

Telemetry is a snapshot per epoch (``EpochReport``, frozen); ``on_event`` receives a fresh dict
each time. Progress goes to stderr.
"""
from __future__ import annotations

import dataclasses
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from edge_sdfa import augment, bundle as bundle_mod
from edge_sdfa.backend import load_backend
from edge_sdfa.errors import DataError, UserError
from edge_sdfa.executors import open_executor, run_frozen
from edge_sdfa.int8 import net as qn
from edge_sdfa.progress import EpochProgress
from edge_sdfa.spec import DEFAULT_TEMPORAL_MODE, temporal_mode

if TYPE_CHECKING:
    from edge_sdfa.store import Store

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_BUNDLE = DATA_DIR / "default_bundle"
DEFAULT_USER_BATCH = DATA_DIR / "default_user_batch.npz"
DEFAULT_USER_TEST = DATA_DIR / "default_user_test.npz"


def default_store_dir() -> Path:
    base = os.environ.get("EDGE_SDFA_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "edge-sdfa")
    return Path(base) / "store"


LR_SCHEDULES = ("constant", "cosine")


def epoch_lr(cfg: "FinetuneConfig", epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (1-based): constant, or cosine from lr to lr/10."""
    if cfg.lr_schedule == "constant" or cfg.epochs <= 1:
        return cfg.lr
    frac = (epoch - 1) / (cfg.epochs - 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int | None = None          # None: the bundle's default
    batch_size: int | None = None
    lr: float | None = None
    mode: str | None = None            # spec.TemporalMode; None: the bundle's default, else online
    backend: str = "numpy"
    seed: int = 0                      # training only: sample order, rehearsal picks, rounding stream
    split_seed: int = 0                # the train/validation split of the user's batch, apart from --seed
    val_fraction: float = 0.3
    margin: float = 0.02               # allowed drop of the original-task holdout accuracy
    rehearsal_ratio: float | None = None   # rehearsal samples per user sample in each epoch
    rehearsal_max: float | None = None     # adaptive rehearsal: the ratio doubles (up to this) after an
                                           # epoch that lost more than half the holdout margin
    max_saturation: float = 0.05       # guard: fraction of head weights at +-127
    augment_shift: int | None = None   # shifted copies of the user's train samples: up to this many px
    augment_copies: int | None = None  # shifted copies per user train sample and epoch (besides the sample)
    pull: float | None = None          # L2-SP: fraction of (master - active master) undone after each epoch
    rehearsal_trigger: float | None = None  # adaptive rehearsal doubles after an epoch whose holdout fell by
                                            # more than this many margins (default 1)
    augment_rehearsal: bool | None = None  # shift the rehearsal samples too (augment_shift px, one copy)
    lr_schedule: str | None = None     # constant | cosine (lr per epoch, from lr down to lr/10 at the last)
    image_shape: tuple[int, ...] | None = None  # the input as an image (the bundle's), for augment_shift
    backend_options: dict = field(default_factory=dict)

    def resolved(self, defaults: dict) -> "FinetuneConfig":
        pick = lambda mine, key, fallback: mine if mine is not None else defaults.get(key, fallback)
        cfg = FinetuneConfig(
            epochs=int(pick(self.epochs, "epochs", 20)), batch_size=int(pick(self.batch_size, "batch_size", 16)),
            lr=float(pick(self.lr, "lr", 0.5)), mode=temporal_mode(pick(self.mode, "mode", DEFAULT_TEMPORAL_MODE)), backend=self.backend, seed=self.seed,
            split_seed=self.split_seed, val_fraction=self.val_fraction, margin=self.margin,
            rehearsal_ratio=float(pick(self.rehearsal_ratio, "rehearsal_ratio", 1.0)),
            rehearsal_max=float(pick(self.rehearsal_max, "rehearsal_max", 0.0)),
            max_saturation=self.max_saturation,
            augment_shift=int(pick(self.augment_shift, "augment_shift", 0)),
            augment_copies=int(pick(self.augment_copies, "augment_copies", 1)),
            pull=float(pick(self.pull, "pull", 0.0)),
            rehearsal_trigger=float(pick(self.rehearsal_trigger, "rehearsal_trigger", 1.0)),
            augment_rehearsal=bool(pick(self.augment_rehearsal, "augment_rehearsal", False)),
            lr_schedule=str(pick(self.lr_schedule, "lr_schedule", "constant")),
            image_shape=tuple(pick(self.image_shape, "image_shape", ())) or None,
            backend_options=dict(self.backend_options))
        if cfg.epochs < 0 or cfg.batch_size < 1 or not (cfg.lr > 0 and math.isfinite(cfg.lr)):
            raise UserError("epochs must be >= 0, batch size >= 1 and lr a positive number")
        if not (cfg.rehearsal_ratio >= 0 and math.isfinite(cfg.rehearsal_max)):
            raise UserError("the rehearsal ratio must be >= 0")
        if cfg.rehearsal_max < cfg.rehearsal_ratio:  # no adaptation (also the default without a bundle value)
            cfg = replace(cfg, rehearsal_max=cfg.rehearsal_ratio)
        if not 0 < cfg.val_fraction < 1:
            raise UserError("the validation fraction must be between 0 and 1")
        if not (cfg.rehearsal_trigger >= 0 and math.isfinite(cfg.rehearsal_trigger)):
            raise UserError("the rehearsal trigger must be a number >= 0")
        if cfg.augment_shift < 0 or cfg.augment_copies < 0 or not 0 <= cfg.pull <= 1:
            raise UserError("augment_shift and augment_copies must be >= 0 and pull in [0, 1]")
        if cfg.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if cfg.augment_shift and cfg.image_shape is None:
            raise UserError("augment_shift needs the input's image shape (the bundle's finetune.image_shape)")
        temporal_mode(cfg.mode)
        return cfg


# ---------------------------------------------------------------------------------------------
# inputs


def load_data(spec: str | Path | None, time_steps: int, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """User data as ``x[N, T, *input_shape]`` uint8 and ``y[N]``: an ``npz:PATH`` / ``.npz`` path
    (device side, numpy only) or any spec of the installed data source (``edge_sdfa.plugins``)."""
    text = str(spec)
    if text.startswith("npz:") or text.endswith(".npz"):
        from edge_sdfa.userdata import load_user_data

        path = text[4:] if text.startswith("npz:") else text
        data = load_user_data(path, sample_shape=(time_steps, *input_shape))
        x = data.x if data.x is not None else bin_user_events(data, time_steps, input_shape, path)
        y = data.y
    else:
        from edge_sdfa.plugins import data_source

        source = data_source()
        if source is None:
            raise UserError(f"data spec {text!r} needs the host tools (pip install 'edge-sdfa[host]'); "
                            "on a device pass an npz file")
        x, y, _ = source.load_arrays(text, time_steps=time_steps)
    expect = (time_steps, *input_shape)
    if tuple(x.shape[1:]) != expect and x.ndim >= 2 and x.shape[1] == time_steps \
            and int(np.prod(x.shape[2:])) == int(np.prod(input_shape)):
        x = x.reshape(len(x), *expect)  # flat frames of a conv model (digits): as partition --calib does
    if tuple(x.shape[1:]) != expect:
        raise DataError(f"{text}: samples have shape {tuple(x.shape[1:])}, the model expects {expect}")
    return np.ascontiguousarray(x), y.astype(np.int64)


def bin_user_events(data, time_steps: int, input_shape: tuple[int, ...], path: str) -> np.ndarray:
    """Events of a user-data file -> frames ``[N, T, *input_shape]`` on the device (split by
    number of events, as the reference bins N-MNIST/DVS; counts for camera events)."""
    from edge_sdfa.binning import channel_events_to_frames, events_to_frames

    frames = []
    for i in range(len(data)):
        ev = data.sample_events(i)
        if "channel" in ev.dtype.names:
            f = channel_events_to_frames(ev["t"], ev["channel"], int(np.prod(input_shape)), time_steps)
        else:
            if data.sensor is None:
                raise DataError(f"{path}: camera events need the 'sensor' array (H, W)")
            f = events_to_frames(ev, tuple(data.sensor), time_steps)
        if f.size != time_steps * int(np.prod(input_shape)):
            raise DataError(f"{path}: events bin to frames of shape {f.shape[1:]}, the model expects {input_shape}")
        frames.append(f.reshape(time_steps, *input_shape))
    if not frames:
        return np.zeros((0, time_steps, *input_shape), np.uint8)
    return np.stack(frames)


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices of the user's batch (at least one of each per class
    where the class has two or more samples)."""
    rng = np.random.default_rng([seed, 7])
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size of this process (or of its largest finished child) in MB."""
    rss = resource.getrusage(who).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2 ** 20


# ---------------------------------------------------------------------------------------------
# evaluation


def _accuracy(backend, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    if len(y) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(y), batch):
        counts = backend.forward(np.swapaxes(x[i:i + batch], 0, 1))
        correct += int(np.sum(counts.argmax(1) == y[i:i + batch]))
    return correct / len(y)


# ---------------------------------------------------------------------------------------------
# the job, in stages: prepare -> epochs (a generator) -> train (early stopping, guards) -> gate -> commit


def _is_store(path) -> bool:
    return path is not None and (Path(path) / "state.json").is_file()


def _same_model(st: "Store", bundle_path: Path, root: Path) -> None:
    """``bundle_path`` must be the model and version the store holds (its weights may be fine-tuned)."""
    active = bundle_mod.load_manifest(st.active_dir())
    with bundle_mod.unpacked(bundle_path) as folder:
        incoming = bundle_mod.load_manifest(folder)
    if (incoming.model_id, incoming.version) != (active.model_id, active.version):
        raise UserError(f"store {root} holds {active.model_id} v{active.version}, not the bundle's "
                        f"{incoming.model_id} v{incoming.version}; deploy the new bundle first or use another --store")


def locate_store(source, store) -> tuple["Store | None", Path, Path]:
    """Where a fine-tune runs, creating nothing: ``(open store or None, store root, bundle)``.
    ``source`` may be a store (then it is the store), else a bundle (default: the embedded one)
    for the store ``store`` (default ``default_store_dir()``) that is created from it, once the
    fine-tune's inputs have all been validated, if it does not exist yet."""
    from edge_sdfa.store import Store

    if _is_store(source):
        return Store(source), Path(source), Path(source)
    root = Path(store) if store else default_store_dir()
    bundle_path = Path(source) if source is not None else DEFAULT_BUNDLE
    if not bundle_path.exists():
        raise UserError(f"no such bundle or store: {bundle_path}")
    if _is_store(root):
        st = Store(root)
        if source is not None:
            _same_model(st, bundle_path, root)
        return st, root, bundle_path
    if root.exists() and not root.is_dir():
        raise UserError(f"--store {root} exists and is not a directory")
    return None, root, bundle_path


def open_store(source, store):
    """The store to fine-tune in, created from the bundle if it does not exist (see ``locate_store``)."""
    from edge_sdfa.store import Store

    st, root, bundle_path = locate_store(source, store)
    return st if st is not None else Store.init(root, bundle_path)


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything a fine-tune needs, loaded and validated, with the frozen part already run:
    ``h_*`` are the frozen part's outputs (the head's inputs) ``[N, T, ...]``."""

    store: "Store"
    bundle: bundle_mod.Bundle
    config: FinetuneConfig               # resolved against the bundle's defaults
    h_user: np.ndarray
    y_user: np.ndarray
    train_idx: np.ndarray                # indices into the user's batch
    val_idx: np.ndarray
    h_holdout: np.ndarray
    y_holdout: np.ndarray
    h_test: np.ndarray | None
    y_test: np.ndarray | None
    rehearsal: tuple[np.ndarray, np.ndarray] | None
    rehearsal_per_epoch: int
    update_offset: int = 0               # the store's rounding counter: updates of earlier fine-tunes


def prepare(source: str | Path | None = None, data: str | Path | None = None, *, store: str | Path | None = None,
            test_data: str | Path | None = None, config: FinetuneConfig = FinetuneConfig()) -> Prepared:
    """Open the store, load the active bundle and the user's data, validate them, and run the
    frozen part once per sample. Raises UserError/DataError before anything is trained, and before
    a store that does not exist yet is created (from the validated bundle, as the last step)."""
    st, root, bundle_path = locate_store(source, store)
    with bundle_mod.unpacked(st.active_dir() if st is not None else bundle_path) as folder:
        prep = _prepare(bundle_mod.read_bundle(folder), st, data, test_data, source, config)
        if st is None:
            st = _create_store(root, folder)
    if prep.store is None:
        prep = dataclasses.replace(prep, store=st, bundle=bundle_mod.read_bundle(st.active_dir()))
    return prep


def _create_store(root: Path, factory: Path) -> "Store":
    """``Store.init``; if it fails (disk full, read-only), a folder it created is removed again."""
    from edge_sdfa.store import Store

    existed = root.exists()
    try:
        return Store.init(root, factory)
    except BaseException:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _prepare(bundle, st, data, test_data, source, config) -> Prepared:
    cfg = config.resolved(bundle.manifest.get("finetune", {}))
    if data is None and test_data is None and source is None:
        data, test_data = DEFAULT_USER_BATCH, DEFAULT_USER_TEST
    if data is None:
        raise UserError("no user data: pass --data SPEC (an npz file of the user's samples)")
    spec = bundle.spec
    x_user, y_user = load_data(data, spec.time_steps, spec.input_shape)
    classes = spec.num_classes
    if len(y_user) and (y_user.min() < 0 or y_user.max() >= classes):
        raise DataError(f"user data: labels must be in 0..{classes - 1}")
    if len(y_user) < 2:
        raise DataError("the user's batch needs at least two samples (one is kept for validation)")
    x_test = y_test = None
    if test_data is not None:
        x_test, y_test = load_data(test_data, spec.time_steps, spec.input_shape)
        if len(y_test) and (y_test.min() < 0 or y_test.max() >= classes):
            raise DataError(f"test data: labels must be in 0..{classes - 1}")

    executor = open_executor(bundle)
    h_user = run_frozen(executor, x_user)
    x_hold, y_hold = bundle.holdout()
    h_hold = run_frozen(executor, x_hold)
    h_test = run_frozen(executor, x_test) if x_test is not None else None
    reh = bundle.rehearsal()
    rehearsal = (run_frozen(executor, reh[0]), reh[1]) if reh is not None else None
    train_idx, val_idx = split_validation(y_user, cfg.val_fraction, cfg.split_seed)
    n_reh = 0 if rehearsal is None else min(len(rehearsal[1]),
                                            int(round(cfg.rehearsal_ratio * _user_per_epoch(cfg, len(train_idx)))))
    return Prepared(store=st, bundle=bundle, config=cfg, h_user=h_user, y_user=y_user, train_idx=train_idx,
                    val_idx=val_idx, h_holdout=h_hold, y_holdout=y_hold, h_test=h_test, y_test=y_test,
                    rehearsal=rehearsal, rehearsal_per_epoch=n_reh,
                    update_offset=st.rounding_counter() if st is not None else 0)  # a new store starts at 0


def _user_per_epoch(cfg: FinetuneConfig, n_train: int) -> int:
    """User samples an epoch trains on: the train part and its shifted copies."""
    return n_train * (1 + (cfg.augment_copies if cfg.augment_shift else 0))


def user_epoch_samples(prep: Prepared, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The user's samples of one epoch: the train part, and with ``augment_shift`` that many
    shifted copies of it (each sample its own random shift; ``rng`` is the epoch's stream)."""
    cfg = prep.config
    xs, ys = prep.h_user[prep.train_idx], prep.y_user[prep.train_idx]
    if not cfg.augment_shift:
        return xs, ys
    copies = [augment.shift_samples(xs, cfg.image_shape, cfg.augment_shift, rng) for _ in range(cfg.augment_copies)]
    return np.concatenate([xs, *copies]), np.concatenate([ys] * (1 + cfg.augment_copies))


def program(backend, prep: Prepared, layers: qn.QNet | None = None, lr: float | None = None) -> None:
    """Load the active head (or ``layers``) and the resolved update rule (or its rate ``lr``) into the backend."""
    cfg, bundle = prep.config, prep.bundle
    update_cfg = qn.UpdateConfig(lr=cfg.lr if lr is None else lr, mode=cfg.mode, seed=cfg.seed, feedback_seed=bundle.feedback_seed)
    backend.program(bundle.head_spec(), bundle.head() if layers is None else layers, bundle.feedback_seed, update_cfg)


@dataclass(frozen=True)
class Scores:
    val: float            # the user's validation part (the selection set: not an accuracy figure)
    holdout: float        # the bundle's original-task holdout
    user: float | None    # the user's unseen test data; None without test data


def score(backend, prep: Prepared) -> Scores:
    """Accuracy of the backend's current head on the validation part, holdout and test data."""
    val = _accuracy(backend, prep.h_user[prep.val_idx], prep.y_user[prep.val_idx])
    user = _accuracy(backend, prep.h_test, prep.y_test) if prep.h_test is not None else None
    return Scores(val=val, holdout=_accuracy(backend, prep.h_holdout, prep.y_holdout), user=user)


@dataclass(frozen=True)
class CostTotals:
    """Summed cost of the updates so far (simulated hardware). Immutable: ``add`` returns a new one."""

    latency_s: float = 0.0
    energy_j: float = 0.0
    breakdown: tuple[tuple[str, float], ...] = ()

    def add(self, cost) -> "CostTotals":
        parts = dict(self.breakdown)
        for k, v in cost.breakdown.items():
            if isinstance(v, (int, float)):
                parts[k] = parts.get(k, 0.0) + v
        return CostTotals(self.latency_s + cost.latency_s, self.energy_j + cost.energy_j, tuple(parts.items()))

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "energy_j": self.energy_j, "breakdown": dict(self.breakdown)}


@dataclass(frozen=True)
class EpochReport:
    """A snapshot taken after one epoch; ``to_dict`` builds a fresh telemetry event each call, so
    an event handed to another thread never changes afterwards."""

    epoch: int
    epochs: int
    loss: float
    scores: Scores
    updates: int                      # cumulative
    seconds_per_update: float         # mean so far
    saturation: float                 # fraction of head weights at +-127
    cost: CostTotals | None           # cumulative; None when the backend models no hardware

    def to_dict(self) -> dict:
        event = {"event": "epoch", "epoch": self.epoch, "epochs": self.epochs, "loss": self.loss,
                 "accuracy": self.scores.val, "holdout": self.scores.holdout, "updates": self.updates,
                 "seconds_per_update": self.seconds_per_update, "saturation": self.saturation}
        if self.cost is not None:
            event["cost"] = self.cost.to_dict()
        return event


def epochs(backend, prep: Prepared, before: Scores | None = None) -> Iterator[EpochReport]:
    """Run SDFA epochs over the user's train part mixed with rehearsal samples, yielding a
    snapshot after each. The backend holds the weights; the caller may read them between epochs
    and stop early by not asking for the next one. With ``before`` (the active weights' scores),
    rehearsal adapts: after an epoch whose holdout fell below ``before`` by more than the margin
    (an epoch the gate would refuse), the rehearsal ratio doubles, up to ``rehearsal_max`` (never
    back down)."""
    cfg = prep.config
    rng = np.random.default_rng([cfg.seed, 11])
    updates, update_seconds, costs = 0, 0.0, None
    n_reh = prep.rehearsal_per_epoch
    n_max = 0 if prep.rehearsal is None else min(len(prep.rehearsal[1]),
                                                   int(round(cfg.rehearsal_max * _user_per_epoch(cfg, len(prep.train_idx)))))
    aug_rng = np.random.default_rng([cfg.seed, 13])   # apart, so that rng's stream does not depend on it
    pull_m = augment.pull_fraction(cfg.pull)
    anchor = backend.read_weights() if pull_m else None
    for epoch in range(1, cfg.epochs + 1):
        lr = epoch_lr(cfg, epoch)
        if lr != epoch_lr(cfg, max(epoch - 1, 1)):
            program(backend, prep, backend.read_weights(), lr)
        xs, ys = user_epoch_samples(prep, aug_rng)
        if n_reh:
            h_reh, y_reh = prep.rehearsal
            pick = rng.choice(len(y_reh), n_reh, replace=False)
            x_reh = h_reh[pick]
            if cfg.augment_rehearsal and cfg.augment_shift:
                x_reh = augment.shift_samples(x_reh, cfg.image_shape, cfg.augment_shift, aug_rng)
            xs, ys = np.concatenate([xs, x_reh]), np.concatenate([ys, y_reh[pick]])
        order = rng.permutation(len(ys))
        losses, sat_w8 = [], 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            t0 = time.perf_counter()
            stats = backend.update(np.swapaxes(xs[idx], 0, 1), ys[idx], prep.update_offset + updates)
            update_seconds += time.perf_counter() - t0
            updates += 1
            losses.append(stats.loss)
            sat_w8 = stats.saturated_w8
            c = backend.cost()
            if c is not None:
                costs = (costs or CostTotals()).add(c)
        if pull_m:
            program(backend, prep, augment.pull_towards(backend.read_weights(), anchor, pull_m), lr)
        total_w = sum(q.w8.size for q in backend.read_weights() if q.w8 is not None)
        now = score(backend, prep)
        if before is not None and n_reh and not improves_holdout(now, before, cfg.margin * cfg.rehearsal_trigger):
            n_reh = min(2 * n_reh, n_max) if n_max > n_reh else n_reh
        yield EpochReport(epoch=epoch, epochs=cfg.epochs, loss=float(np.mean(losses)) if losses else float("nan"),
                          scores=now, updates=updates,
                          seconds_per_update=update_seconds / max(updates, 1),
                          saturation=sat_w8 / max(total_w, 1), cost=costs)


def epoch_guard(report: EpochReport, cfg: FinetuneConfig) -> str | None:
    """Why training must stop after this epoch (the candidate is then rejected), or None."""
    if not math.isfinite(report.loss):
        return f"loss is not finite at epoch {report.epoch}"
    if report.saturation > cfg.max_saturation:
        return f"{report.saturation:.1%} of the head's weights saturated at +-127 (limit {cfg.max_saturation:.0%})"
    return None


def improves_holdout(now: Scores, before: Scores, margin: float) -> bool:
    """The holdout stays within ``margin`` of the active weights' (1e-9: float rounding of the
    accuracies, e.g. 0.92 - 0.02)."""
    return now.holdout >= before.holdout - margin - 1e-9


def improves(now: Scores, best: Scores, before: Scores, margin: float) -> bool:
    """Early stopping on the user's validation set: an epoch is kept if it improves on the active
    weights and respects the holdout margin (ties go to the later epoch)."""
    return now.val > before.val and now.val >= best.val and improves_holdout(now, before, margin)


@dataclass(frozen=True, eq=False)
class Training:
    before: Scores                    # the active weights
    after: Scores                     # the candidate (the best epoch; the last one if a guard fired)
    best_epoch: int                   # 0: no epoch was kept
    best_layers: qn.QNet
    guard: str | None
    history: tuple[EpochReport, ...]

    @property
    def last(self) -> EpochReport | None:
        return self.history[-1] if self.history else None


def train(backend, prep: Prepared, *, on_event: Callable[[dict], None] | None = None,
          progress: bool = False) -> Training:
    """Program the backend, score the active weights, run the epochs with the guards and early
    stopping, and return the candidate (not yet gated or committed)."""
    cfg = prep.config
    program(backend, prep)
    before = score(backend, prep)
    best, best_layers, best_epoch, guard = before, backend.read_weights(), 0, None
    history = []
    with EpochProgress("finetune", cfg.epochs, progress) as bar:
        for report in epochs(backend, prep, before):
            history.append(report)
            if on_event:
                on_event(report.to_dict())
            bar.update(report.epoch, loss=report.loss, val=report.scores.val)
            guard = epoch_guard(report, cfg)
            if guard:
                break
            if improves(report.scores, best, before, cfg.margin):
                best, best_layers, best_epoch = report.scores, backend.read_weights(), report.epoch
    after = best if guard is None else score(backend, prep)
    return Training(before=before, after=after, best_epoch=best_epoch, best_layers=best_layers,
                    guard=guard, history=tuple(history))


def gate(training: Training, margin: float) -> list[str]:
    """Reasons not to commit the candidate; empty means commit."""
    before, after = training.before, training.after
    reasons = []
    if training.guard:
        reasons.append(training.guard)
    if training.best_epoch == 0 and training.guard is None:
        reasons.append("no epoch improved on the user's validation set within the holdout margin")
    if after.val < before.val:
        reasons.append(f"user validation accuracy fell ({before.val:.3f} -> {after.val:.3f})")
    if not improves_holdout(after, before, margin):
        reasons.append(f"holdout accuracy fell more than {margin} ({before.holdout:.3f} -> {after.holdout:.3f})")
    return reasons


def commit(prep: Prepared, layers: qn.QNet, rounding_updates: int = 0) -> int:
    """Install the candidate head as the store's new active weights and advance the rounding
    counter by the updates run, in one atomic state change; returns the new revision."""
    with tempfile.TemporaryDirectory(prefix="edge-sdfa-cand-") as tmp:
        cand = bundle_mod.with_head(prep.bundle, layers, Path(tmp) / "candidate")
        prep.store.install_candidate(cand, allow_same_version=True, activate=True, rounding_updates=rounding_updates)
    return prep.bundle.revision + 1


def finetune(source: str | Path | None = None, data: str | Path | None = None, *, store: str | Path | None = None,
             test_data: str | Path | None = None, config: FinetuneConfig = FinetuneConfig(),
             on_event: Callable[[dict], None] | None = None, progress: bool = False) -> dict:
    """Fine-tune, gate, and commit or revert. Returns the report (see ``edge-sdfa finetune --json``)."""
    t_start = time.perf_counter()
    backend = load_backend(config.backend, **config.backend_options)
    try:
        prep = prepare(source, data, store=store, test_data=test_data, config=config)
        training = train(backend, prep, on_event=on_event, progress=progress)
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()
    reasons = gate(training, prep.config.margin)
    committed = not reasons
    updates = training.last.updates if training.last is not None else 0   # next fine-tune draws a new stream
    if committed:
        revision = commit(prep, training.best_layers, rounding_updates=updates)
    else:
        revision = prep.bundle.revision
        if updates:
            prep.store.advance_rounding_counter(updates)
    report = build_report(prep, training, reasons, revision, seconds=time.perf_counter() - t_start,
                          kernels=getattr(backend, "kernel_set", None))
    if on_event:
        on_event({"event": "done", **{k: v for k, v in report.items() if k != "cost"}})
    return report


def build_report(prep: Prepared, training: Training, reasons: list[str], revision: int, *, seconds: float,
                 kernels: str | None = None) -> dict:
    """The ``finetune --json`` report."""
    cfg, before, after, last = prep.config, training.before, training.after, training.last
    committed = not reasons
    report = {
        "committed": committed,
        "reasons": list(reasons),
        # accuracy_* is only ever the user's unseen test data; validation_* is the selection set
        "accuracy_before": before.user,
        "accuracy_after": after.user if committed else before.user,
        "accuracy_candidate": after.user,
        "validation_before": before.val,
        "validation_after": after.val,
        "holdout_before": before.holdout,
        "holdout_after": after.holdout if committed else before.holdout,
        "holdout_candidate": after.holdout,
        "best_epoch": training.best_epoch,
        "epochs": cfg.epochs,
        "updates": last.updates if last else 0,
        "seconds_per_update": last.seconds_per_update if last else 0.0,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_children_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
        "backend": cfg.backend,
        "kernels": kernels,  # the int8 kernel set that ran (numpy, c)
        "mode": cfg.mode,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "user_train_samples": int(len(prep.train_idx)),
        "user_validation_samples": int(len(prep.val_idx)),
        "user_test_samples": int(len(prep.y_test)) if prep.y_test is not None else 0,
        "rehearsal_samples_per_epoch": prep.rehearsal_per_epoch,
        "split_seed": cfg.split_seed,
        "seed": cfg.seed,
        "rounding_offset": prep.update_offset,
        "model_id": prep.bundle.model_id,
        "revision": revision,
        "store": str(prep.store.root),
    }
    if prep.y_test is None:
        report["accuracy_note"] = ("no test data: accuracy_* needs the user's unseen samples (--test-data); "
                                   "validation_* is the set early stopping and the gate select on")
    if last is not None and last.cost is not None:
        report["cost"] = last.cost.to_dict()
    return report


def evaluate(source: str | Path | None = None, data: str | Path | None = None, *, store=None,
             backend: str = "numpy") -> dict:
    """Accuracy of the active weights on user data (default: the embedded new user's test part)
    and on the bundle's holdout."""
    be = load_backend(backend)
    try:
        return _evaluate(be, source, data, store)
    finally:
        close = getattr(be, "close", None)
        if close:
            close()


def eval_target(source, store) -> tuple[Path, Path | None]:
    """``(bundle folder or .tar to evaluate, store root or None)``, creating nothing.

    ``source`` a store: its active weights. ``source`` a bundle: that bundle's own weights, or with
    ``--store S`` the weights S holds for it (S must exist and hold the bundle's model_id and
    version, else UserError: a store's weights are never reported for another model). Neither:
    ``--store S`` (which must exist), else the default store if there is one, else the embedded
    default bundle."""
    from edge_sdfa.store import Store

    if _is_store(source):
        return Store(source).active_dir(), Path(source)
    if store is not None:
        root = Path(store)
        if not _is_store(root):
            raise UserError(f"no store at {root} (eval never creates one; run finetune to create it)")
        st = Store(root)
        if source is not None:
            if not Path(source).exists():
                raise UserError(f"no such bundle or store: {source}")
            _same_model(st, Path(source), root)
        return st.active_dir(), root
    if source is not None:
        if not Path(source).exists():
            raise UserError(f"no such bundle or store: {source}")
        return Path(source), None
    if _is_store(default_store_dir()):
        return Store(default_store_dir()).active_dir(), default_store_dir()
    return DEFAULT_BUNDLE, None


def _evaluate(be, source, data, store) -> dict:
    bundle_path, root = eval_target(source, store)
    with bundle_mod.open_bundle(bundle_path) as bundle:
        return _evaluate_bundle(be, bundle, root, data, source)


def _evaluate_bundle(be, bundle, root, data, source) -> dict:
    executor = open_executor(bundle)
    be.program(bundle.head_spec(), bundle.head(), bundle.feedback_seed, qn.UpdateConfig())
    hx, hy = bundle.holdout()
    report = {"model_id": bundle.model_id, "version": bundle.version, "revision": bundle.revision,
              "holdout": _accuracy(be, run_frozen(executor, hx), hy),
              "store": None if root is None else str(root), "weights": "store" if root is not None else "bundle"}
    if data is None and source is None:
        data = DEFAULT_USER_TEST
    if data is not None:
        x, y = load_data(data, bundle.spec.time_steps, bundle.spec.input_shape)
        report["accuracy"] = _accuracy(be, run_frozen(executor, x), y)
        report["samples"] = int(len(y))
    return report
