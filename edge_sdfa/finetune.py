"""The device's main job: fine-tune the bundle's head on the user's small batch, then commit or revert.

Flow: open the store (creating it from a bundle if needed) → load the active bundle → run the
frozen part once per sample (cached) → split the user's batch into train and validation parts →
program the backend → SDFA epochs over the user's train part mixed with the bundle's rehearsal
samples, keeping the weights of the best validation epoch → gate → commit the candidate or
leave the active weights untouched. Progress goes to stderr; ``on_event`` receives telemetry.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_sdfa import bundle as bundle_mod
from edge_sdfa.backend import load_backend
from edge_sdfa.errors import DataError, UserError
from edge_sdfa.executors import open_executor, run_frozen
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import DEFAULT_TEMPORAL_MODE, temporal_mode

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_BUNDLE = DATA_DIR / "default_bundle"
DEFAULT_USER_BATCH = DATA_DIR / "default_user_batch.npz"
DEFAULT_USER_TEST = DATA_DIR / "default_user_test.npz"


def default_store_dir() -> Path:
    base = os.environ.get("EDGE_SDFA_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "edge-sdfa")
    return Path(base) / "store"


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int | None = None          # None: the bundle's default
    batch_size: int | None = None
    lr: float | None = None
    mode: str = DEFAULT_TEMPORAL_MODE  # spec.TemporalMode
    backend: str = "numpy"
    seed: int = 0
    val_fraction: float = 0.3
    margin: float = 0.02               # allowed drop of the original-task holdout accuracy
    rehearsal_ratio: float | None = None   # rehearsal samples per user sample in each epoch
    max_saturation: float = 0.05       # guard: fraction of head weights at +-127
    backend_options: dict = field(default_factory=dict)

    def resolved(self, defaults: dict) -> "FinetuneConfig":
        pick = lambda mine, key, fallback: mine if mine is not None else defaults.get(key, fallback)
        cfg = FinetuneConfig(
            epochs=int(pick(self.epochs, "epochs", 20)), batch_size=int(pick(self.batch_size, "batch_size", 16)),
            lr=float(pick(self.lr, "lr", 0.5)), mode=self.mode, backend=self.backend, seed=self.seed,
            val_fraction=self.val_fraction, margin=self.margin,
            rehearsal_ratio=float(pick(self.rehearsal_ratio, "rehearsal_ratio", 1.0)),
            max_saturation=self.max_saturation, backend_options=dict(self.backend_options))
        if cfg.epochs < 0 or cfg.batch_size < 1 or not (cfg.lr > 0 and math.isfinite(cfg.lr)):
            raise UserError("epochs must be >= 0, batch size >= 1 and lr a positive number")
        if not 0 < cfg.val_fraction < 1:
            raise UserError("the validation fraction must be between 0 and 1")
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
        data = load_user_data(path)
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


class _Progress:
    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.t0 = enabled and total > 0, total, time.perf_counter()
        self.tty = sys.stderr.isatty()  # a log file gets one line per epoch, a terminal one updating line

    def show(self, epoch: int, loss: float, acc: float):
        if not self.enabled:
            return
        width = 24
        done = int(width * epoch / self.total)
        sys.stderr.write(f"{chr(13) if self.tty else ''}finetune [{'#' * done}{'.' * (width - done)}] "
                         f"epoch {epoch}/{self.total} loss {loss:.3f} val {acc:.3f} "
                         f"{time.perf_counter() - self.t0:.1f}s{'' if self.tty else chr(10)}")
        sys.stderr.flush()

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")


# ---------------------------------------------------------------------------------------------
# the job


def _open_store(source, store):
    from edge_sdfa.store import Store

    if source is not None and (Path(source) / "state.json").exists():
        return Store(source)
    root = Path(store) if store else default_store_dir()
    bundle_path = Path(source) if source is not None else DEFAULT_BUNDLE
    if (root / "state.json").exists():
        st = Store(root)
        if source is not None:
            active = bundle_mod.read_manifest(st.active_dir())
            incoming = bundle_mod.read_bundle(bundle_path).manifest
            if (incoming["model_id"], incoming["version"]) != (active["model_id"], active["version"]):
                raise UserError(f"store {root} holds {active['model_id']} v{active['version']}; "
                                f"deploy the new bundle first or use another --store")
        return st
    if bundle_path.is_file():
        tmp = Path(tempfile.mkdtemp(prefix="edge-sdfa-unpack-"))
        bundle_path = bundle_mod.safe_extract_tar(bundle_path, tmp)
    bundle_mod.read_bundle(bundle_path)
    return Store.init(root, bundle_path)


def finetune(source: str | Path | None = None, data: str | Path | None = None, *, store: str | Path | None = None,
             test_data: str | Path | None = None, config: FinetuneConfig = FinetuneConfig(),
             on_event: Callable[[dict], None] | None = None, progress: bool = False) -> dict:
    """Fine-tune, gate, and commit or revert. Returns the report (see ``edge-sdfa finetune --json``)."""
    t_start = time.perf_counter()
    backend = load_backend(config.backend, **config.backend_options)
    try:
        return _finetune(backend, source, data, store, test_data, config, on_event, progress, t_start)
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()


def _finetune(backend, source, data, store, test_data, config, on_event, progress, t_start) -> dict:
    st = _open_store(source, store)
    bundle = bundle_mod.read_bundle(st.active_dir())
    cfg = config.resolved(bundle.manifest.get("finetune", {}))
    if data is None and test_data is None and source is None:
        data, test_data = DEFAULT_USER_BATCH, DEFAULT_USER_TEST
    if data is None:
        raise UserError("no user data: pass --data SPEC (an npz file of the user's samples)")
    spec = bundle.spec
    x_user, y_user = load_data(data, spec.time_steps, spec.input_shape)
    classes = spec.num_classes
    for name, y in (("user data", y_user),):
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{name}: labels must be in 0..{classes - 1}")
    if len(y_user) < 2:
        raise DataError("the user's batch needs at least two samples (one is kept for validation)")
    x_test = y_test = None
    if test_data is not None:
        x_test, y_test = load_data(test_data, spec.time_steps, spec.input_shape)

    executor = open_executor(bundle)
    head_spec = bundle.head_spec()
    cache = lambda x: run_frozen(executor, x)
    h_user = cache(x_user)
    h_hold_x, h_hold_y = bundle.holdout()
    h_hold = cache(h_hold_x)
    h_test = cache(x_test) if x_test is not None else None
    reh = bundle.rehearsal()
    h_reh = (cache(reh[0]), reh[1]) if reh is not None else None

    tr_idx, val_idx = split_validation(y_user, cfg.val_fraction, cfg.seed)
    update_cfg = qn.UpdateConfig(lr=cfg.lr, mode=cfg.mode, seed=cfg.seed, feedback_seed=bundle.feedback_seed)
    backend.program(head_spec, bundle.head(), bundle.feedback_seed, update_cfg)

    def evaluate() -> dict:
        out = {"val": _accuracy(backend, h_user[val_idx], y_user[val_idx]),
               "holdout": _accuracy(backend, h_hold, h_hold_y)}
        out["user"] = _accuracy(backend, h_test, y_test) if h_test is not None else out["val"]
        return out

    before = evaluate()
    best = dict(before)
    best_layers, best_epoch = backend.read_weights(), 0
    rng = np.random.default_rng([cfg.seed, 11])
    n_reh = 0 if h_reh is None else min(len(h_reh[1]), int(round(cfg.rehearsal_ratio * len(tr_idx))))
    updates, update_seconds, guard = 0, 0.0, None
    costs = {"latency_s": 0.0, "energy_j": 0.0, "breakdown": {}}
    has_cost = False
    bar = _Progress(progress, cfg.epochs)
    history = []
    last_loss = float("nan")
    for epoch in range(1, cfg.epochs + 1):
        xs, ys = h_user[tr_idx], y_user[tr_idx]
        if n_reh:
            pick = rng.choice(len(h_reh[1]), n_reh, replace=False)
            xs, ys = np.concatenate([xs, h_reh[0][pick]]), np.concatenate([ys, h_reh[1][pick]])
        order = rng.permutation(len(ys))
        losses, sat_w8 = [], 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            t0 = time.perf_counter()
            stats = backend.update(np.swapaxes(xs[idx], 0, 1), ys[idx], updates)
            update_seconds += time.perf_counter() - t0
            updates += 1
            losses.append(stats.loss)
            sat_w8 = stats.saturated_w8
            c = backend.cost()
            if c is not None:
                has_cost = True
                costs["latency_s"] += c.latency_s
                costs["energy_j"] += c.energy_j
                for k, v in c.breakdown.items():
                    if isinstance(v, (int, float)):
                        costs["breakdown"][k] = costs["breakdown"].get(k, 0.0) + v
        last_loss = float(np.mean(losses)) if losses else float("nan")
        total_w = sum(q.w8.size for q in backend.read_weights() if q.w8 is not None)
        saturation = sat_w8 / max(total_w, 1)
        now = evaluate()
        event = {"event": "epoch", "epoch": epoch, "epochs": cfg.epochs, "loss": last_loss,
                 "accuracy": now["val"], "holdout": now["holdout"], "updates": updates,
                 "seconds_per_update": update_seconds / max(updates, 1), "saturation": saturation}
        if has_cost:
            event["cost"] = dict(costs)
        history.append(event)
        if on_event:
            on_event(event)
        bar.show(epoch, last_loss, now["val"])
        if not math.isfinite(last_loss):
            guard = f"loss is not finite at epoch {epoch}"
            break
        if saturation > cfg.max_saturation:
            guard = f"{saturation:.1%} of the head's weights saturated at +-127 (limit {cfg.max_saturation:.0%})"
            break
        # early stopping on the user's validation set: keep the best epoch that improves on the
        # active weights and respects the holdout margin (ties go to the later epoch)
        if (now["val"] > before["val"] and now["val"] >= best["val"]
                and now["holdout"] >= before["holdout"] - cfg.margin):
            best, best_layers, best_epoch = now, backend.read_weights(), epoch
    bar.close()

    after = best if guard is None else evaluate()
    reasons = []
    if guard:
        reasons.append(guard)
    if best_epoch == 0 and guard is None:
        reasons.append("no epoch improved on the user's validation set within the holdout margin")
    if after["val"] < before["val"]:
        reasons.append(f"user validation accuracy fell ({before['val']:.3f} -> {after['val']:.3f})")
    if after["holdout"] < before["holdout"] - cfg.margin:
        reasons.append(f"holdout accuracy fell more than {cfg.margin} ({before['holdout']:.3f} -> {after['holdout']:.3f})")
    committed = not reasons
    revision = bundle.revision
    if committed:
        with tempfile.TemporaryDirectory(prefix="edge-sdfa-cand-") as tmp:
            cand = bundle_mod.with_head(bundle, best_layers,
                                        Path(tmp) / "candidate")
            st.install_candidate(cand, allow_same_version=True)
            st.commit()
        revision = bundle.revision + 1
    report = {
        "committed": committed,
        "reasons": reasons,
        "accuracy_before": before["user"],
        "accuracy_after": after["user"] if committed else before["user"],
        "accuracy_candidate": after["user"],
        "validation_before": before["val"],
        "validation_after": after["val"],
        "holdout_before": before["holdout"],
        "holdout_after": after["holdout"] if committed else before["holdout"],
        "holdout_candidate": after["holdout"],
        "best_epoch": best_epoch,
        "epochs": cfg.epochs,
        "updates": updates,
        "seconds_per_update": update_seconds / max(updates, 1),
        "seconds": time.perf_counter() - t_start,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_children_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
        "backend": cfg.backend,
        "kernels": getattr(backend, "kernel_set", None),  # the int8 kernel set that ran (numpy, c)
        "mode": cfg.mode,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "user_train_samples": int(len(tr_idx)),
        "user_validation_samples": int(len(val_idx)),
        "user_test_samples": int(len(y_test)) if y_test is not None else 0,
        "rehearsal_samples_per_epoch": n_reh,
        "model_id": bundle.model_id,
        "revision": revision,
        "store": str(st.root),
    }
    if has_cost:
        report["cost"] = costs
    if on_event:
        on_event({"event": "done", **{k: v for k, v in report.items() if k != "cost"}})
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


def _evaluate(be, source, data, store) -> dict:
    st = _open_store(source, store)
    bundle = bundle_mod.read_bundle(st.active_dir())
    executor = open_executor(bundle)
    be.program(bundle.head_spec(), bundle.head(), bundle.feedback_seed, qn.UpdateConfig())
    hx, hy = bundle.holdout()
    report = {"model_id": bundle.model_id, "version": bundle.version, "revision": bundle.revision,
              "holdout": _accuracy(be, run_frozen(executor, hx), hy), "store": str(st.root)}
    if data is None and source is None:
        data = DEFAULT_USER_TEST
    if data is not None:
        x, y = load_data(data, bundle.spec.time_steps, bundle.spec.input_shape)
        report["accuracy"] = _accuracy(be, run_frozen(executor, x), y)
        report["samples"] = int(len(y))
    return report
