"""PREDICT on the device: the active model's labels and output spike rates for given samples,
through the runtime's public inference API (``edge_sdfa.runtime.Runtime``), so the host checks
exactly what an application on the device would get.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdfa.errors import DataError


def predict(store_root: Path, source: Any, limit: int) -> dict[str, Any]:
    """``source``: samples ``x[N, T, *input]`` or an ``npz:PATH`` of user data; at most ``limit``."""
    from edge_sdfa.finetune import load_data
    from edge_sdfa.runtime import Runtime

    rt = Runtime.open(store=store_root, watch=False)
    if isinstance(source, str):
        x, _ = load_data(source, rt.time_steps, rt.input_shape)
    else:
        x = np.asarray(source)
    p = rt.predict(x[:limit])
    return {**p.model.to_dict(), "samples": len(p), "labels": [int(v) for v in p.labels],
            "rates": np.round(np.asarray(p.rates, dtype=np.float64), 4).tolist(),
            "latency_per_sample_s": round(p.latency_per_sample_s, 6)}


def samples_of(npz_bytes: bytes) -> np.ndarray:
    """The samples ``x`` of a user-data npz (host side, for ``remote predict``)."""
    with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as z:
        if "x" not in z.files:
            raise DataError("the npz holds no samples 'x' (event recordings are binned on the device: "
                            "use remote eval)")
        return z["x"]
