"""The inference API an application embeds: ``Runtime.open(store_or_bundle).predict(x)``.

A :class:`Runtime` serves the active weights of a store (or a fixed bundle) to any number of
reader threads while fine-tuning commits new weights in another thread or process:

- every call takes one immutable snapshot of the model (frozen executor, head spec and int8
  layers) and uses it for the whole call, so a commit switches weights *between* two calls
  (decision windows), never inside one;
- before each call the runtime checks the store's commit point, ``state.json``: one ``os.stat``
  (inode, size, times). When it changed, the state's generation (``seq``) and active slot are
  read, and the new active bundle is verified and loaded under a lock, once, by whichever reader
  gets there first; the others keep using the snapshot they hold. As a guard against an
  unchanged stat after two very fast commits, the state itself is re-read at least once a second.

Predictions equal ``edge-sdfa eval``'s (the same frozen executor, the same int8 head forward
and kernels, argmax of the output spike counts). ``docs/runtime.md`` has the details.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdfa import bundle as bundle_mod
from edge_sdfa.errors import BundleError, DataError, UserError
from edge_sdfa.executors import open_executor
from edge_sdfa.int8 import net as qn
from edge_sdfa.int8 import kernels as kernel_sets

SMALL_CALL_ROWS = 64      # T * N up to this: one thread (waking the pool costs more than it saves)
RECHECK_S = 1.0           # re-read state.json at least this often, even when its stat is unchanged
_RELOAD_TRIES = 5         # a slot deleted by two commits between our read of state.json and the load


@dataclass(frozen=True)
class ModelInfo:
    """Which weights produced a prediction. ``generation`` is the store state's ``seq`` when the
    weights were loaded (0 for a bare bundle); ``slot`` the active slot's directory."""

    model_id: str
    version: int
    revision: int
    generation: int
    slot: str

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "version": self.version, "revision": self.revision,
                "generation": self.generation, "slot": self.slot}


@dataclass(frozen=True)
class Prediction:
    """Result of one call. ``labels[N]`` (argmax of the counts, ties to the lowest class),
    ``rates[N, C]`` output spike rates (counts / T), ``counts[N, C]``; ``latency_s`` the wall time
    of the whole call, ``latency_per_sample_s`` that divided by N."""

    labels: np.ndarray
    rates: np.ndarray
    counts: np.ndarray
    latency_s: float
    model: ModelInfo

    @property
    def latency_per_sample_s(self) -> float:
        return self.latency_s / max(len(self.labels), 1)

    def __len__(self) -> int:
        return len(self.labels)


class _Model:
    """An immutable snapshot of one bundle, ready to run."""

    def __init__(self, bundle, info: ModelInfo, kernels):
        self.info = info
        self.spec = bundle.spec
        self.head_spec = bundle.head_spec()
        self.head = [q for q in bundle.head()]
        self.executor = open_executor(bundle)
        # an npz frozen part is the int8 reference itself: run the whole network in one forward
        # (the same integers as executor then head, one pass of per-call overhead less)
        self.whole = (bundle.spec, list(bundle.qnet)) if bundle.frozen_format == "npz" else None
        self.kernels = kernels
        self.time_steps = int(bundle.spec.time_steps)
        self.input_shape = tuple(bundle.spec.input_shape)
        self.num_classes = int(bundle.spec.num_classes)
        # the TFLite interpreter keeps per-call state (input tensor, resizes): one caller at a time
        self._exec_lock = threading.Lock() if self.executor.name == "tflite" else None

    def counts(self, x_tn: np.ndarray) -> np.ndarray:
        """Output spike counts ``[N, C]`` for ``x[T, N, ...]`` (uint8)."""
        if self.whole is not None:
            return qn.forward(self.whole[0], self.whole[1], x_tn, self.kernels).counts
        if self._exec_lock is not None:
            with self._exec_lock:
                h = self.executor.run(x_tn)
        else:
            h = self.executor.run(x_tn)
        h = np.ascontiguousarray(h).astype(np.uint8, copy=False)
        return qn.forward(self.head_spec, self.head, h, self.kernels).counts


def _state_stat(path: Path):
    try:
        s = os.stat(path)
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)


class Runtime:
    """Inference on the active weights of a store, or on a fixed bundle. Open with :meth:`open`."""

    def __init__(self, *, store=None, bundle_path: Path | None = None, kernels=None, batch: int = 256,
                 watch: bool = True, threads: int | None = None):
        self._store = store
        self._bundle_path = bundle_path
        self._kernels = kernels
        self.batch = int(batch)
        self.watch = watch
        self.threads = threads
        self._lock = threading.Lock()       # serialises reloads (the single writer of _model)
        self._stat = None
        self._checked = 0.0
        self._model: _Model | None = None
        self.reloads = 0
        if store is not None:
            self._stat = _state_stat(self._state_path)
            self._reload()
        else:
            b = bundle_mod.read_bundle(bundle_path)
            self._model = _Model(b, ModelInfo(b.model_id, b.version, b.revision, 0, str(b.path)), kernels)
            self._checked = time.monotonic()

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, source: str | Path | None = None, *, store: str | Path | None = None,
             kernels: str | None = None, batch: int = 256, watch: bool = True,
             threads: int | None = None) -> "Runtime":
        """Open a store directory (follows its commits), a bundle directory or ``.tar`` (fixed
        weights), or with neither the default store (``edge-sdfa finetune``'s) when it exists,
        else the embedded default bundle. ``store`` names a store directory explicitly.
        ``kernels``: numpy | c | auto (default ``EDGE_SDFA_KERNELS`` or auto).
        ``watch=False`` keeps the weights loaded at open (call :meth:`reload` to update).
        ``threads``: threads of the C kernels per call, for this calling thread only: 1 runs the
        call on the calling thread, any other value on the library's pool (``EDGE_SDFA_THREADS``,
        default one per CPU). Default: 1 for small calls of at most ``SMALL_CALL_ROWS`` time steps
        x samples, the pool otherwise."""
        from edge_sdfa.finetune import DEFAULT_BUNDLE, default_store_dir
        from edge_sdfa.store import STATE_FILE, Store

        if batch < 1:
            raise UserError("batch must be >= 1")
        if threads is not None and threads < 1:
            raise UserError("threads must be >= 1")
        k = kernel_sets.get(kernels)
        if source is not None and store is not None:
            raise UserError("give a store or bundle path, or --store, not both")
        if store is not None:
            return cls(store=Store(store), kernels=k, batch=batch, watch=watch, threads=threads)
        if source is None:
            root = default_store_dir()
            if (root / STATE_FILE).is_file():
                return cls(store=Store(root), kernels=k, batch=batch, watch=watch, threads=threads)
            return cls(bundle_path=DEFAULT_BUNDLE, kernels=k, batch=batch, watch=watch, threads=threads)
        path = Path(source)
        if (path / STATE_FILE).is_file():
            return cls(store=Store(path), kernels=k, batch=batch, watch=watch, threads=threads)
        if not path.exists():
            raise UserError(f"no such store or bundle: {path}")
        return cls(bundle_path=path, kernels=k, batch=batch, watch=watch, threads=threads)

    # ---- the model snapshot -------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        from edge_sdfa.store import STATE_FILE

        return self._store.root / STATE_FILE

    @property
    def info(self) -> ModelInfo:
        """The weights the next call will use (after checking the store)."""
        return self._current().info

    @property
    def time_steps(self) -> int:
        return self._current().time_steps

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._current().input_shape

    def reload(self) -> bool:
        """Check the store now; True if other weights were loaded."""
        if self._store is None:
            return False
        with self._lock:
            return self._reload()

    def _current(self) -> _Model:
        if self._store is not None and self.watch:
            stat = _state_stat(self._state_path)
            now = time.monotonic()
            if stat != self._stat or now - self._checked > RECHECK_S:
                with self._lock:
                    if _state_stat(self._state_path) != self._stat or time.monotonic() - self._checked > RECHECK_S:
                        self._reload()
        return self._model

    def _reload(self) -> bool:
        """Load the store's active bundle if it is not the one held. Caller holds ``_lock``
        (or is ``__init__``). Publishes the new snapshot with one reference assignment."""
        last = None
        for _ in range(_RELOAD_TRIES):
            stat = _state_stat(self._state_path)
            status = self._store.status()
            gen, slot = int(status["seq"]), status["active"]["dir"]
            self._checked = time.monotonic()
            if self._model is not None and self._model.info.slot == slot:
                self._stat = stat
                return False
            try:
                b = bundle_mod.read_bundle(self._store.root / slot)
            except (BundleError, FileNotFoundError) as exc:  # committed away and collected meanwhile
                last = exc
                continue
            info = ModelInfo(b.model_id, b.version, b.revision, gen, slot)
            self._model = _Model(b, info, self._kernels)
            self._stat = stat
            self.reloads += 1
            return True
        raise BundleError(f"{self._store.root}: the active weights could not be loaded ({last})")

    # ---- inference ----------------------------------------------------------------------------

    def predict(self, x) -> Prediction:
        """Predict sample-major ``x[N, T, *input_shape]`` (or one sample ``[T, *input_shape]``):
        integer spikes or counts in 0..255."""
        t0 = time.perf_counter()
        return self._run(self._current(), x, t0)

    def predict_events(self, events, sensor: tuple[int, ...] | None = None, *,
                       split_by: str = "number") -> Prediction:
        """Bin the events of one decision window (or a list of windows, one sample each) on the
        device and predict; the latency includes the binning. Camera events: a structured array
        with fields t, x, y, p (``edge_sdfa.binning.EVENT_DTYPE``), ``sensor`` (H, W) inferred
        from a ``(2, H, W)`` or square ``2*S*S`` input; channel events (audio): fields t, channel."""
        t0 = time.perf_counter()
        model = self._current()
        windows = [events] if isinstance(events, np.ndarray) else list(events)
        if not windows:
            return self._run(model, np.zeros((0, model.time_steps, *model.input_shape), np.uint8), t0)
        frames = np.stack([bin_window(w, model.time_steps, model.input_shape, sensor, split_by) for w in windows])
        return self._run(model, frames, t0)

    def _run(self, model: _Model, x, t0: float) -> Prediction:
        """Every chunk of one call runs on the same snapshot ``model``."""
        x = self._check(model, x)
        n = x.shape[0]
        counts = np.empty((n, model.num_classes), np.int64)
        xt = np.swapaxes(x, 0, 1)
        # the thread settings are per calling thread, so this never affects other callers
        want = self.threads or (1 if model.time_steps * min(n, self.batch) <= SMALL_CALL_ROWS else 0)
        # the C kernels' own pool: 1 runs the call's loops on this thread alone
        c_prev = model.kernels.load().esd_set_call_threads(want) if model.kernels.NAME == "c" else None
        try:
            for i in range(0, n, self.batch):
                counts[i:i + self.batch] = model.counts(xt[:, i:i + self.batch])
        finally:
            if c_prev is not None:
                model.kernels.load().esd_set_call_threads(c_prev)
        labels = counts.argmax(axis=1) if n else np.zeros(0, np.int64)
        return Prediction(labels, (counts / float(model.time_steps)).astype(np.float32), counts,
                          time.perf_counter() - t0, model.info)

    @staticmethod
    def _check(model: _Model, x) -> np.ndarray:
        x = np.asarray(x)
        want = (model.time_steps, *model.input_shape)
        if x.ndim == len(want):
            x = x[None]
        if tuple(x.shape[1:]) != want:
            raise DataError(f"samples have shape {tuple(x.shape[1:])}, the model expects {want} "
                            "(sample-major [N, T, ...])")
        if x.dtype != np.uint8:
            if x.dtype.kind not in "uib" or (x.size and (int(x.min()) < 0 or int(x.max()) > 255)):
                raise DataError(f"samples must be integer spikes or counts in 0..255, got {x.dtype}")
            x = x.astype(np.uint8)
        return x


def sensor_for(input_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The camera (H, W) a model input implies: ``(2, H, W)``, or a flat ``2*S*S`` (square)."""
    if len(input_shape) == 3 and input_shape[0] == 2:
        return int(input_shape[1]), int(input_shape[2])
    if len(input_shape) == 1 and input_shape[0] % 2 == 0:
        s = int(round((input_shape[0] // 2) ** 0.5))
        if 2 * s * s == input_shape[0]:
            return s, s
    return None


def bin_window(events: np.ndarray, time_steps: int, input_shape: tuple[int, ...],
               sensor: tuple[int, ...] | None = None, split_by: str = "number") -> np.ndarray:
    """One window of events -> frames ``[T, *input_shape]`` uint8, binned as the device bins a
    user-data file (``edge_sdfa.finetune.bin_user_events``: split by number of events)."""
    from edge_sdfa.binning import channel_events_to_frames, events_to_frames

    names = getattr(getattr(events, "dtype", None), "names", None) or ()
    size = int(np.prod(input_shape))
    try:
        if "channel" in names:
            f = channel_events_to_frames(events["t"], events["channel"], size, time_steps)
        elif {"t", "x", "y", "p"} <= set(names):
            hw = tuple(sensor) if sensor is not None else sensor_for(tuple(input_shape))
            if hw is None:
                raise DataError(f"camera events for a model input {tuple(input_shape)} need the sensor size (H, W)")
            f = events_to_frames(events, hw[:2], time_steps, split_by=split_by)
        else:
            raise DataError("events must be a structured array with fields t, x, y, p (camera) or t, channel")
    except ValueError as exc:
        raise DataError(f"events cannot be binned: {exc}") from None
    if f.size != time_steps * size:
        raise DataError(f"events bin to frames of shape {tuple(f.shape[1:])}, the model expects {tuple(input_shape)}")
    return f.reshape(time_steps, *input_shape)


def percentiles_ms(seconds, qs=(50, 90, 99)) -> dict:
    """Latency percentiles in ms of a list of durations in seconds (``p50``, ``p90``, ``p99``, ``max``)."""
    a = np.asarray(list(seconds), np.float64) * 1e3
    if a.size == 0:
        return {f"p{q}": None for q in qs} | {"max": None}
    out = {f"p{q}": float(np.percentile(a, q)) for q in qs}
    out["max"] = float(a.max())
    return out


def predict_report(source: str | Path | None = None, data: str | Path | None = None, *, store=None,
                   kernels: str | None = None, batch: int = 256, latency_samples: int = 200) -> dict:
    """``edge-sdfa predict``: predict ``data`` (default: the embedded new user's test set) with
    the active weights; accuracy, and the latency of one sample per call (as an application
    deciding live windows sees it) as percentiles, plus the batched cost per sample."""
    from edge_sdfa.finetune import DEFAULT_USER_TEST, load_data, peak_rss_mb

    rt = Runtime.open(source, store=store, kernels=kernels, batch=batch)
    model = rt._current()
    x, y = load_data(data if data is not None else DEFAULT_USER_TEST, model.time_steps, model.input_shape)
    pred = rt.predict(x)
    single = [rt.predict(x[i]).latency_s for i in range(min(len(x), max(int(latency_samples), 0)))]
    report = {**pred.model.to_dict(), "samples": int(len(x))}
    if len(y):
        report["accuracy"] = float(np.mean(pred.labels == y))
    report.update({
        "predicted_per_class": np.bincount(pred.labels, minlength=model.num_classes).tolist(),
        "latency_ms": percentiles_ms(single),
        "latency_samples": len(single),
        "batch_ms_per_sample": pred.latency_per_sample_s * 1e3,
        "batch": rt.batch,
        "kernels": model.kernels.NAME,
        "frozen_executor": model.executor.name,
        "peak_rss_mb": peak_rss_mb(),
    })
    return report
