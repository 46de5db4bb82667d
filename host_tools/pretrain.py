"""Pretrain a float SNN on the host and write it as a NIR graph (``edge-sdfa pretrain``).

Data: the train split of the data set spec trains, the test split reports ``test_accuracy``
(see :func:`split_specs` for how the test split of a spec is derived). The network is built from an
ARCH string (host_tools.archs), trained with BPTT or SDFA by edge_sdfa.train, and written with
host_tools.nir_io with the metadata NIR does not store (dt, time steps, encoding, neuron details,
loss, data spec, training record).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.progress import EpochProgress

METHODS = {"bptt": "bptt", "sdfa": "sdfa_exact", "sdfa_exact": "sdfa_exact", "sdfa_online": "sdfa_online"}
HOLDOUT_FRACTION = 0.2


def split_specs(text: str):
    """(train DataSpec, test DataSpec or None) for a data set spec string.

    - A spec without ``split=`` (or with ``split=train``): train on ``split=train``, test on the same
      spec with ``split=test`` (every other option kept: frames, user, subject, limit, ...).
    - ``split=all`` and kinds without splits (``npz:``): ``None`` for the test part; the caller holds
      out a seeded, stratified 20 % of the loaded samples (:func:`holdout_split`).
    - ``split=test`` is refused for training data.
    """
    from host_tools.datasets import parse_spec

    ds = parse_spec(text)
    split = ds.get("split")
    if split == "test":
        raise UserError(f"{text!r} asks for the test split as training data; drop split= (the test split is "
                        "used for the reported accuracy) or pass split=all")
    if ds.kind == "npz" or split == "all":
        return ds, None
    return ds.with_options(split="train"), ds.with_options(split="test")


def holdout_split(y: np.ndarray, fraction: float = HOLDOUT_FRACTION, seed: int = 0):
    """Seeded stratified (train, test) indices: ``fraction`` of every class (at least one where a
    class has two or more samples) is held out."""
    rng = np.random.default_rng([seed, 20])
    tr, te = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction))
        k = min(max(k, 1 if len(idx) > 1 else 0), max(len(idx) - 1, 0))
        te.extend(idx[:k])
        tr.extend(idx[k:])
    return np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(te, np.int64))


def load_train_test(text: str, time_steps: int | None = None, limit: int | None = None,
                    test_limit: int | None = None, seed: int = 0):
    """(x_train, y_train, x_test, y_test, info) from one spec, as :func:`split_specs` defines."""
    from host_tools.datasets import load_arrays

    train_ds, test_ds = split_specs(text)
    x, y, _ = load_arrays(train_ds, time_steps=time_steps, limit=limit)
    if test_ds is None:
        tr, te = holdout_split(y, HOLDOUT_FRACTION, seed)
        xt, yt = x[te], y[te]
        x, y = x[tr], y[tr]
        if test_limit is not None:
            xt, yt = xt[:test_limit], yt[:test_limit]
        how = f"seeded stratified {HOLDOUT_FRACTION:.0%} of {text}"
    else:
        xt, yt, _ = load_arrays(test_ds, time_steps=time_steps, limit=test_limit)
        how = "split=test"
    if len(y) == 0:
        raise UserError(f"{text}: no training samples")
    return x, y, xt, yt, {"test_split": how}


def pretrain(data: str, arch: str, out: str | Path, *, method: str = "bptt", epochs: int = 10,
             lr: float | None = None, batch_size: int = 64, seed: int = 0, time_steps: int | None = None,
             limit: int | None = None, test_data: str | None = None, loss: str = "ce", optimizer: str = "adam",
             dt: float | None = None, progress: bool = False) -> dict:
    """Train a float SNN and write ``out`` (.nir). Returns the report ``--json`` prints."""
    from edge_sdfa import float_net as fn
    from edge_sdfa.train import TrainConfig, accuracy, train
    from host_tools.archs import parse_arch
    from host_tools import nir_io

    if method not in METHODS:
        raise UserError(f"unknown method {method!r} (expected bptt or sdfa; also sdfa_exact, sdfa_online)")
    if epochs < 0 or batch_size < 1:
        raise UserError("epochs must be >= 0 and batch >= 1")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as model.nir")
    t0 = time.perf_counter()
    x, y, xt, yt, info = load_train_test(data, time_steps, limit, None, seed)
    if test_data is not None:
        from host_tools.datasets import load_arrays

        xt, yt, _ = load_arrays(test_data, time_steps=x.shape[1])
        info["test_split"] = test_data
    if x.dtype.kind == "f":
        raise UserError(f"{data}: float (analog) inputs cannot run on the int8 device; use a spike encoding")
    classes = int(max(y.max(), yt.max() if len(yt) else 0)) + 1
    spec = parse_arch(arch, tuple(x.shape[2:]), classes, int(x.shape[1]), loss)
    if tuple(spec.input_shape) != tuple(x.shape[2:]):
        if math.prod(spec.input_shape) != math.prod(x.shape[2:]):
            raise UserError(f"arch input {spec.input_shape} does not fit the data's samples {tuple(x.shape[2:])}")
        x = x.reshape(len(x), x.shape[1], *spec.input_shape)
        xt = xt.reshape(len(xt), xt.shape[1], *spec.input_shape)
    if lr is None:
        lr = 1e-3
    config = TrainConfig(method=METHODS[method], epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         feedback_seed=seed, optimizer=optimizer)
    params = fn.init_params(spec, seed)
    load_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    with EpochProgress("pretrain", epochs, progress, digits=4) as bar:
        params, history = train(spec, params, x, y, config,
                                on_epoch=lambda r: bar.update(r["epoch"], loss=r["loss"], train=r["train_accuracy"]))
    train_seconds = time.perf_counter() - t1
    train_acc = accuracy(spec, params, x, y)
    test_acc = accuracy(spec, params, xt, yt) if len(yt) else float("nan")
    encoding = _encoding_of(data)
    nir_dt = float(dt or nir_io.DEFAULT_DT)
    meta = {"encoding": encoding, "data": data, "arch": arch, "method": method, "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "seed": seed, "optimizer": optimizer, "classes": classes,
            "train_accuracy": train_acc, "test_accuracy": test_acc, "test_split": info["test_split"],
            "neurons": [{"layer": i, "kind": l.neuron.kind, "tau": l.neuron.tau, "v_threshold": l.neuron.v_threshold,
                         "v_reset": l.neuron.v_reset, "reset_mode": "hard" if l.neuron.v_reset is not None else "subtract",
                         "decay_input": l.neuron.decay_input, "surrogate": "atan(alpha=2)"}
                        for i, l in enumerate(spec.layers) if hasattr(l, "neuron")]}
    nir_io.export_nir(spec, params, out, dt=nir_dt, metadata=meta)
    per_epoch = [h["seconds"] for h in history]
    return {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_seconds,
        "seconds_per_epoch": float(np.mean(per_epoch)) if per_epoch else 0.0,
        "load_seconds": load_seconds,
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "out": str(out),
        "method": METHODS[method],
        "arch": arch,
        "layers": [f"{l.type}{tuple(a)}->{tuple(b)}" for l, a, b in zip(spec.layers, spec.shapes()[:-1], spec.shapes()[1:])],
        "parameters": int(sum(v.size for p in params for v in p.values())),
        "train_samples": int(len(y)),
        "test_samples": int(len(yt)),
        "test_split": info["test_split"],
        "time_steps": spec.time_steps,
        "dt": nir_dt,
    }


def _encoding_of(data: str) -> str:
    kind = data.split("?")[0].split(":")[0].lower()
    return {"digits": "rate coded pixels (Bernoulli p = pixel/16 per step)",
            "digits-events": "DVS-emulated events binned to frames",
            "nmnist": "event frames (SpikingJelly split_by=number, counts)",
            "dvsgesture": "event frames (counts)", "ncaltech101": "event frames (counts)",
            "shd": "spike counts per bin", "braille": "sigma-delta spikes",
            "idx": "DVS-emulated events binned to frames", "npz": "as stored in the npz file"}.get(kind, kind)
