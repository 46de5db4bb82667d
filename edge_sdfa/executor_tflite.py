"""Run a bundle's ``frozen.tflite`` (made by the host tools) with the TFLite interpreter.

Uses ``ai_edge_litert`` (LiteRT, the current TFLite runtime) or, where only that exists (armv7
Raspberry Pi OS images), ``tflite_runtime``; both are imported only when this executor is opened.
The model computes exact int32 currents and integer neuron dynamics, so its spikes equal the numpy
int8 reference's bit for bit. The batch dimension is resized on the fly (once per new batch size).
"""
from __future__ import annotations

import os

import numpy as np

from edge_sdfa.executors import check_frozen_input, frozen_source
from edge_sdfa.errors import BundleError, MissingDependency


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        raise MissingDependency("ai-edge-litert", "the TFLite frozen-part executor", extra="tflite") from None


def _threads() -> int | None:
    try:
        n = int(os.environ.get("EDGE_SDFA_EXECUTOR_THREADS", "0"))
    except ValueError:
        n = 0
    return n if n > 0 else None


class TFLiteExecutor:
    name = "tflite"

    def __init__(self, bundle=None, *, path=None, spec=None, threads: int | None = None):
        """Open ``bundle``'s frozen file, or ``path`` with a frozen ``spec`` (tools, benchmarks).

        ``threads`` (or ``EDGE_SDFA_EXECUTOR_THREADS``): interpreter threads, None = runtime default.
        """
        Interpreter = _interpreter_class()
        path, spec = frozen_source(bundle, path, spec, "TFLiteExecutor")
        self.spec = spec
        self.time_steps = int(spec.time_steps)
        self.input_shape = tuple(spec.input_shape)
        self.output_shape = tuple(spec.shapes()[-1])
        n = threads if threads is not None else _threads()
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=n)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{path}: the TFLite runtime cannot load the frozen part ({str(exc).splitlines()[0]})") from None
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self._batch = None
        self.input_max = 255
        for t in self.interpreter.get_tensor_details():
            if t["name"] == "edge_sdfa.input_max":
                try:
                    self.input_max = int(self.interpreter.get_tensor(t["index"]).reshape(-1)[0])
                except (ValueError, RuntimeError, IndexError):  # pragma: no cover
                    pass

    def _resize(self, n: int) -> None:
        if self._batch == n:
            return
        shape = [self.time_steps, n, *self.input_shape]
        try:
            self.interpreter.resize_tensor_input(self.input_index, shape, strict=False)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"the TFLite frozen part cannot run a batch of {n} ({str(exc).splitlines()[0]})") from None
        self._batch = n

    def run(self, x: np.ndarray) -> np.ndarray:
        x = check_frozen_input(x, self.time_steps, self.input_shape, self.input_max)
        n = x.shape[1]
        if n == 0:
            return np.zeros((self.time_steps, 0, *self.output_shape), np.uint8)
        self._resize(n)
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output_index)
        return np.array(out, copy=True).reshape(self.time_steps, n, *self.output_shape)
