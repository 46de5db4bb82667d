"""PREDICT on the device: the active model's labels and output spike rates for given samples.

Built from the same calls as ``edge_sdfa.finetune.evaluate`` (frozen executor, then the numpy
backend programmed with the head); switch to ``edge_sdfa.runtime`` once that public inference
API exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_sdfa.errors import DataError


def predict(bundle_dir: Path, source: Any, limit: int) -> dict[str, Any]:
    """``source``: samples ``x[N, T, *input]`` or an ``npz:PATH`` of user data; at most ``limit``."""
    from edge_sdfa import bundle as bundle_mod
    from edge_sdfa.backend import load_backend
    from edge_sdfa.executors import open_executor, run_frozen
    from edge_sdfa.finetune import load_data
    from edge_sdfa.int8 import net as qn

    bundle = bundle_mod.read_bundle(bundle_dir)
    spec = bundle.spec
    if isinstance(source, str):
        x, _ = load_data(source, spec.time_steps, spec.input_shape)
    else:
        x = np.asarray(source)
        expect = (spec.time_steps, *spec.input_shape)
        if x.ndim != len(expect) + 1 or tuple(x.shape[1:]) != expect:
            raise DataError(f"samples have shape {tuple(x.shape[1:])}, the model expects {expect}")
        if x.dtype.kind not in "biu" or x.size and (x.min() < 0 or x.max() > 255):
            raise DataError("samples must be spike counts in 0..255")
        x = x.astype(np.uint8)
    x = x[:limit]
    be = load_backend("numpy")
    be.program(bundle.head_spec(), bundle.head(), bundle.feedback_seed, qn.UpdateConfig())
    counts = be.forward(np.swapaxes(run_frozen(open_executor(bundle), x), 0, 1)) if len(x) else np.zeros((0, 0))
    rates = np.asarray(counts, dtype=np.float64) / spec.time_steps
    return {"model_id": bundle.model_id, "version": bundle.version, "revision": bundle.revision,
            "samples": int(len(x)), "labels": [int(v) for v in np.asarray(counts).argmax(1)] if len(x) else [],
            "rates": np.round(rates, 4).tolist()}


def samples_of(npz_bytes: bytes) -> np.ndarray:
    """The samples ``x`` of a user-data npz (host side, for ``remote predict``)."""
    import io

    with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as z:
        if "x" not in z.files:
            raise DataError("the npz holds no samples 'x' (event recordings are binned on the device: "
                            "use remote eval)")
        return z["x"]
