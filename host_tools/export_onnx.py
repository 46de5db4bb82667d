"""Export a bundle's frozen front (layers[:cut] with their neuron dynamics over T) as an int8 ONNX model.

The graph is built by hand from integer operators, so that ONNX Runtime reproduces the numpy int8
reference (``edge_sdfa.int8.net.output_spikes``) bit for bit:

- synapses: ``MatMulInteger`` (uint8 spikes x int8 weights ``[in, out]``) and ``ConvInteger``
  (uint8 x ``[out, in, k, k]``; ONNX Runtime implements ConvInteger for uint8 weights only, so
  the file holds ``w8 + 128`` with weight zero point 128), accumulating in int32: the exact
  integer currents of the reference, computed for all T*N rows in one call; bias added in int32;
- neurons: the operations of ``edge_sdfa.int8.arith.neuron_plan`` (the fixed-point step of
  ``neuron_step_int`` as integer add/sub/mul, floor shift, compare, select), unrolled over the T
  time steps, one ONNX operator each (a floor shift as ``(a - Mod(a, 2^k)) / 2^k``, exact: ONNX's
  integer ``Mod`` takes the divisor's sign). The membrane runs in int32 when a bound of every
  intermediate value (from the weights, T and the input range) stays below 2^31, else in int64;
- max pooling with ``MaxPool`` on uint8 spikes; average pooling as the reference's *sum* pooling
  (1/k^2 is already folded into the next weights): crop, reshape, int32 ``ReduceSum``;
  ``Flatten`` as ``Reshape``.

Input ``spikes`` ``[T, N, *input_shape]`` uint8 (N dynamic), output ``out`` ``[T, N, *out_shape]``
uint8, T fixed to the spec's time steps (the graph is unrolled). Library use:
``export_frozen(spec, qnet, cut, out_path, input_max=255)``; see docs/executors.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_sdfa.errors import UserError, require
from edge_sdfa.int8 import arith
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, Pool2d

OPSET = 18
INPUT_NAME = "spikes"
OUTPUT_NAME = "out"
INT32_LIMIT = (1 << 31) - 1


# ---------------------------------------------------------------------------------------------
# the integer plan shared by the ONNX and TFLite exporters


@dataclass
class FrozenNeuron:
    """A layer's neuron step (``arith.neuron_plan``) with the integer width its graph needs."""
    plan: arith.NeuronPlan
    wide: bool                # needs int64 (a bound of some intermediate reaches 2**31)
    bound: int                # bound of |any intermediate| of the neuron arithmetic

    @property
    def vth(self) -> int:
        return self.plan.vth


@dataclass
class Step:
    kind: str                                  # dense | conv | maxpool | sumpool | flatten
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    w8: np.ndarray | None = None               # dense [in, out]; conv [out, in, k, k]
    bias: np.ndarray | None = None             # int32
    neuron: FrozenNeuron | None = None
    layer: object = None
    max_in: int = 1                            # largest input value this layer can see
    current_bound: int = 0                     # bound of |current| per output unit (max over units)
    extra: dict = field(default_factory=dict)


_decay_fraction = arith.decay_fraction


def current_bound(w8: np.ndarray, bias: np.ndarray | None, max_in: int, dense: bool) -> int:
    """Largest |current| any output unit can reach for inputs in [0, max_in]."""
    w = w8.astype(np.int64)
    w = w if dense else w.reshape(w.shape[0], -1).T       # [fan_in, out]
    pos = np.clip(w, 0, None).sum(axis=0)
    neg = np.clip(-w, 0, None).sum(axis=0)
    b = np.zeros(w.shape[1], np.int64) if bias is None else np.abs(bias.astype(np.int64))
    return int((np.maximum(pos, neg) * max_in + b).max()) if w.size else 0


def frozen_plan(spec: NetworkSpec, qnet, cut: int, input_max: int = 255):
    """The frozen front as integer steps with every constant the exporters need."""
    if not 0 < cut <= len(spec.layers):
        raise UserError(f"partition point {cut} leaves no frozen layers to export")
    layers = spec.layers[:cut]
    shapes = spec.shapes()[: cut + 1]
    t_steps = spec.time_steps
    steps: list[Step] = []
    max_in = int(input_max)
    for i, layer in enumerate(layers):
        in_shape, out_shape = tuple(shapes[i]), tuple(shapes[i + 1])
        if isinstance(layer, (Dense, Conv2d)):
            q = qnet[i]
            if q is None or q.w8 is None:
                raise UserError(f"layer {i} ({layer.type}) has no int8 weights to export")
            dense = isinstance(layer, Dense)
            cb = current_bound(q.w8, q.bias, max_in, dense)
            plan = arith.neuron_plan(layer.neuron, arith.neuron_constants(layer.neuron, q.exp))
            bound = plan.intermediate_bound(cb, t_steps)
            neuron = FrozenNeuron(plan, bound > INT32_LIMIT, bound)
            steps.append(Step("dense" if dense else "conv", in_shape, out_shape, q.w8, q.bias, neuron, layer,
                              max_in, cb))
            max_in = 1
        elif isinstance(layer, Pool2d):
            kind = "maxpool" if layer.mode == "max" else "sumpool"
            steps.append(Step(kind, in_shape, out_shape, layer=layer, max_in=max_in))
            if kind == "sumpool":
                max_in = min(255, max_in * layer.kernel_size ** 2)
        elif isinstance(layer, Flatten):
            steps.append(Step("flatten", in_shape, out_shape, layer=layer, max_in=max_in))
        else:  # pragma: no cover - spec validation prevents this
            raise UserError(f"layer {i}: cannot export {type(layer).__name__}")
    return steps


def reference_steps_int(neuron: FrozenNeuron, cur: np.ndarray) -> np.ndarray:
    """The neuron arithmetic exactly as the exported graphs do it (numpy, for tests)."""
    return arith.run_neuron_plan(neuron.plan, cur)


# ---------------------------------------------------------------------------------------------
# ONNX graph


class _Graph:
    def __init__(self, onnx):
        self.onnx = onnx
        self.h = onnx.helper
        self.nodes, self.inits = [], []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value, dtype, base="c") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, base: str | None = None, **attrs):
        outs = [self.name(base or op.lower()) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(op, inputs, outs, name=self.name("n_" + op), **attrs))
        return outs[0] if n_out == 1 else outs


def _neuron_onnx(g: _Graph, neuron: FrozenNeuron, cur: str, t_steps: int) -> list[str]:
    """Unrolled neuron over T: ``cur`` is ``[T, M]`` int32; returns T spike tensors ``[1, M]`` uint8.

    Each operation of the plan becomes one ONNX operator (``shr`` two: ``(a - Mod(a, 2^k)) / 2^k``,
    an exact floor division, ONNX's integer ``Mod`` takes the divisor's sign)."""
    plan = neuron.plan
    tp = np.int64 if neuron.wide else np.int32
    if neuron.wide:
        cur = g.node("Cast", [cur], to=g.onnx.TensorProto.INT64)
    parts = g.node("Split", [cur], n_out=t_steps, axis=0, num_outputs=t_steps) if t_steps > 1 else [cur]
    consts: dict[int, str] = {}

    def const(k: int) -> str:
        if k not in consts:
            consts[k] = g.const([k], tp)
        return consts[k]

    def emit(op: str, x: list[str]) -> str:
        if op == "shr":
            r = g.node("Mod", x, fmod=0)
            return g.node("Div", [g.node("Sub", [x[0], r]), x[1]])
        return g.node({"add": "Add", "sub": "Sub", "mul": "Mul", "ge": "GreaterOrEqual", "select": "Where"}[op], x)

    spikes = []
    v = const(plan.vreset)  # the membrane at rest, broadcast by the first step's operators
    for t in range(t_steps):
        reg = {"v": v, "cur": parts[t]}
        for dst, op, *args in plan.step + (plan.reset if t + 1 < t_steps else ()):
            if op == "shr":
                args[1] = 1 << args[1]
            reg[dst] = emit(op, [reg[a] if isinstance(a, str) else const(a) for a in args])
        spikes.append(g.node("Cast", [reg["s"]], to=g.onnx.TensorProto.UINT8))
        v = reg["v"]
    return spikes


# ONNX Runtime 1.23's MatMulInteger returns wrong sums, varying from run to run, for 17-31 output
# columns on AVX512-VNNI CPUs (measured: every other width from 1 to 139 is exact); such weights
# are padded with zero columns to 32 and the result sliced back.
_ORT_BAD_WIDTHS = range(17, 32)


def _matmul_integer(g: _Graph, rows: str, w8: np.ndarray) -> str:
    width = w8.shape[1]
    if width not in _ORT_BAD_WIDTHS:
        return g.node("MatMulInteger", [rows, g.const(w8, np.int8, "w8")], base="cur")
    padded = np.zeros((w8.shape[0], 32), np.int8)
    padded[:, :width] = w8
    cur = g.node("MatMulInteger", [rows, g.const(padded, np.int8, "w8")])
    return g.node("Slice", [cur, g.const([0], np.int64), g.const([width], np.int64), g.const([1], np.int64)],
                  base="cur")


def build_model(spec: NetworkSpec, qnet, cut: int, input_max: int = 255):
    """The frozen front as an ``onnx.ModelProto`` (checked)."""
    onnx = require("onnx", "ONNX export", extra="onnx")
    steps = frozen_plan(spec, qnet, cut, input_max)
    t_steps = spec.time_steps
    g = _Graph(onnx)
    in_shape = tuple(spec.input_shape)
    out_shape = steps[-1].out_shape
    rows = g.node("Reshape", [INPUT_NAME, g.const([-1, *in_shape], np.int64, "shape")], base="rows")
    for st in steps:
        if st.kind in ("dense", "conv"):
            if st.kind == "dense":
                cur = _matmul_integer(g, rows, st.w8)
            else:
                layer = st.layer
                p, k, s = layer.padding, layer.kernel_size, layer.stride
                # ONNX Runtime's ConvInteger takes uint8 weights only: store w8 + 128 with a
                # weight zero point of 128, which the kernel subtracts exactly in int32.
                wu8 = (st.w8.astype(np.int16) + 128).astype(np.uint8)
                cur = g.node("ConvInteger", [rows, g.const(wu8, np.uint8, "w8u"), g.const(0, np.uint8, "xzp"),
                                             g.const(128, np.uint8, "wzp")], base="cur",
                             kernel_shape=[k, k], pads=[p, p, p, p], strides=[s, s])
            if st.bias is not None:
                b = st.bias.astype(np.int32)
                cur = g.node("Add", [cur, g.const(b if st.kind == "dense" else b[:, None, None], np.int32, "bias")])
            flat = g.node("Reshape", [cur, g.const([t_steps, -1], np.int64, "shape")])
            spikes = _neuron_onnx(g, st.neuron, flat, t_steps)
            allsp = g.node("Concat", spikes, axis=0) if len(spikes) > 1 else spikes[0]
            rows = g.node("Reshape", [allsp, g.const([-1, *st.out_shape], np.int64, "shape")], base="rows")
        elif st.kind == "maxpool":
            k = st.layer.kernel_size
            rows = g.node("MaxPool", [rows], kernel_shape=[k, k], strides=[k, k], base="rows")
        elif st.kind == "sumpool":
            k = st.layer.kernel_size
            c, h, w = st.in_shape
            oh, ow = h // k, w // k
            if (oh * k, ow * k) != (h, w):
                rows = g.node("Slice", [rows, g.const([0, 0], np.int64), g.const([oh * k, ow * k], np.int64),
                                        g.const([2, 3], np.int64)])
            r = g.node("Reshape", [rows, g.const([-1, c, oh, k, ow, k], np.int64, "shape")])
            r = g.node("Cast", [r], to=onnx.TensorProto.INT32)
            r = g.node("ReduceSum", [r, g.const([3, 5], np.int64, "axes")], keepdims=0)
            rows = g.node("Cast", [r], to=onnx.TensorProto.UINT8, base="rows")
        elif st.kind == "flatten":
            rows = g.node("Reshape", [rows, g.const([-1, *st.out_shape], np.int64, "shape")], base="rows")
    g.nodes.append(onnx.helper.make_node("Reshape", [rows, g.const([t_steps, -1, *out_shape], np.int64, "shape")],
                                         [OUTPUT_NAME], name="output"))
    h = onnx.helper
    graph = h.make_graph(
        g.nodes, "edge_sdfa_frozen",
        [h.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, [t_steps, "N", *in_shape])],
        [h.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.UINT8, [t_steps, "N", *out_shape])],
        g.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="edge-sdfa",
                         doc_string="edge-sdfa frozen front: int8 synapses, integer LIF/IF dynamics unrolled over T")
    model.ir_version = 8
    meta = {"time_steps": str(t_steps), "input_shape": ",".join(map(str, in_shape)),
            "output_shape": ",".join(map(str, out_shape)), "input_max": str(int(input_max)),
            "semantics": "edge_sdfa.int8.net.output_spikes (bit-exact)"}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


def export_frozen(spec: NetworkSpec, qnet, cut: int, out_path, input_max: int = 255) -> Path:
    """Write layers[:cut] of ``spec`` with the int8 weights of ``qnet`` as an ONNX file.

    ``input_max`` bounds the input values (spikes 1, binned counts up to 255); it only decides
    whether the membrane arithmetic needs int64, never changes results within range.
    """
    onnx = require("onnx", "ONNX export", extra="onnx")
    model = build_model(spec, qnet, cut, input_max)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_path))
    return out_path
