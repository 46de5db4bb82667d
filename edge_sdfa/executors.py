"""Frozen-part executors: run the bundle's frozen front once per sample, int8, on the device.

The numpy executor runs ``frozen.npz`` through the int8 reference; ONNX Runtime and TFLite
executors (for ``frozen.onnx`` / ``frozen.tflite``) are imported lazily by format name, so a
device without those runtimes never loads them.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.int8 import net as qn

EXECUTORS = {
    "npz": "edge_sdfa.executors:NumpyExecutor",
    "onnx": "edge_sdfa.executor_onnx:OnnxExecutor",
    "tflite": "edge_sdfa.executor_tflite:TFLiteExecutor",
}


class FrozenExecutor(Protocol):
    name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """Output spikes ``[T, N, *head_input_shape]`` (uint8) for input ``x[T, N, ...]``."""


class NumpyExecutor:
    name = "numpy"

    def __init__(self, bundle):
        from edge_sdfa.int8 import kernels as kernel_sets

        self.spec = bundle.frozen_spec()
        self.layers = bundle.qnet[: bundle.cut]
        self.kernels = kernel_sets.get()

    def run(self, x):
        return qn.output_spikes(self.spec, self.layers, x, self.kernels)


class IdentityExecutor:
    """No frozen part (partition point 0): the head sees the raw input."""

    name = "identity"

    def __init__(self, bundle=None):
        pass

    def run(self, x):
        return x


def frozen_source(bundle, path, spec, who: str):
    """(model file, frozen spec) of an exported frozen part: from ``bundle``, or given directly."""
    if bundle is not None:
        path = bundle.file(bundle.manifest["frozen"]["file"])
        spec = bundle.frozen_spec()
    if path is None or spec is None:
        raise UserError(f"{who} needs a bundle, or a model path and its frozen spec")
    return path, spec


def check_frozen_input(x: np.ndarray, time_steps: int, input_shape: tuple[int, ...], input_max: int = 255) -> np.ndarray:
    """Validate an exported frozen part's input ``x[T, N, ...]``: shape, integer range, and the
    ``input_max`` it was exported for. Returns it as contiguous uint8."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] != time_steps or tuple(x.shape[2:]) != tuple(input_shape):
        raise UserError(f"frozen part expects input [T={time_steps}, N, {', '.join(map(str, input_shape))}], "
                        f"got {list(x.shape)}")
    if x.dtype != np.uint8:
        if x.dtype.kind not in "uib" or (x.size and (x.min() < 0 or x.max() > 255)):
            raise UserError(f"frozen part expects uint8 spikes or counts, got {x.dtype}")
        x = x.astype(np.uint8)
    if input_max < 255 and x.size and x.max() > input_max:
        raise UserError(f"input values up to {int(x.max())} exceed the range the frozen part was exported "
                        f"for (input_max={input_max}); re-export it with a larger input_max")
    return np.ascontiguousarray(x)


def open_executor(bundle, kind: str | None = None) -> FrozenExecutor:
    kind = kind or bundle.frozen_format
    if kind == "none":
        return IdentityExecutor(bundle)
    if kind not in EXECUTORS:
        raise UserError(f"unknown frozen-part executor {kind!r} (known: {', '.join(EXECUTORS)})")
    module_name, _, attr = EXECUTORS[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"the {kind} executor is not available in this install ({exc})") from None
    return getattr(module, attr)(bundle)


def run_frozen(executor: FrozenExecutor, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Head inputs ``[N, T, ...]`` for sample-major ``x[N, T, ...]``, computed once and cached by callers."""
    outs = []
    for i in range(0, len(x), batch):
        out = executor.run(np.swapaxes(x[i:i + batch], 0, 1))
        outs.append(np.swapaxes(out, 0, 1))
    if not outs:
        return np.zeros((0,) + x.shape[1:], np.uint8)
    return np.ascontiguousarray(np.concatenate(outs)).astype(np.uint8, copy=False)
