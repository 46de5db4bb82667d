"""Run a bundle's ``frozen.onnx`` (made by the host tools) with ONNX Runtime.

The model is integer-only (MatMulInteger / ConvInteger with int32 accumulation, integer neuron
arithmetic), so its output spikes equal the numpy int8 reference's bit for bit. onnxruntime is
imported only when this executor is opened; without it the error names the ``onnx`` extra.
"""
from __future__ import annotations

import os

import numpy as np

from edge_sdfa.executors import check_frozen_input, frozen_source
from edge_sdfa.errors import BundleError, require


def _threads() -> int:
    try:
        return max(0, int(os.environ.get("EDGE_SDFA_EXECUTOR_THREADS", "0")))
    except ValueError:
        return 0


class OnnxExecutor:
    name = "onnx"

    def __init__(self, bundle=None, *, path=None, spec=None, threads: int | None = None):
        """Open ``bundle``'s frozen file, or ``path`` with a frozen ``spec`` (tools, benchmarks).

        ``threads`` (or ``EDGE_SDFA_EXECUTOR_THREADS``): intra-op threads, 0 = runtime default.
        """
        ort = require("onnxruntime", "the ONNX frozen-part executor", extra="onnx")
        path, spec = frozen_source(bundle, path, spec, "OnnxExecutor")
        self.spec = spec
        self.time_steps = int(spec.time_steps)
        self.input_shape = tuple(spec.input_shape)
        self.output_shape = tuple(spec.shapes()[-1])
        opts = ort.SessionOptions()
        n = _threads() if threads is None else int(threads)
        if n:
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load the frozen part ({str(exc).splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        try:
            self.input_max = int(self.session.get_modelmeta().custom_metadata_map.get("input_max", 255))
        except (ValueError, AttributeError):
            self.input_max = 255

    def run(self, x: np.ndarray) -> np.ndarray:
        x = check_frozen_input(x, self.time_steps, self.input_shape, self.input_max)
        if x.shape[1] == 0:
            return np.zeros((self.time_steps, 0, *self.output_shape), np.uint8)
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.reshape(self.time_steps, x.shape[1], *self.output_shape)
