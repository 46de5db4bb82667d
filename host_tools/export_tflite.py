"""Export a bundle's frozen front as an int8 ``.tflite`` file, written with flatbuffers, no TensorFlow.

The flatbuffer is built with the TFLite schema's object API (``schema_py_generated``, shipped by
``ai-edge-litert``) and reproduces the numpy int8 reference (``edge_sdfa.int8.net.output_spikes``)
bit for bit. TFLite's int8 ``FULLY_CONNECTED`` and ``CONV_2D`` requantise their int32
accumulators to int8/int16 outputs, which would clip the currents, so the graph avoids that:

- Dense: ``BATCH_MATMUL`` int8 spikes x int8 weights with an **int32 output** (TFLite's
  int8->int32 batch-matmul path, no requantisation): the exact currents for all T*N rows. Inputs
  above 127 (binned counts, only possible at layer 0) are split exactly into ``x = lo + 128*hi``
  (two matmuls) when ``input_max > 127``.
- Conv2d: ``CONV_2D`` in TFLite's 16x8 mode (int16 activations, int8 weights ``OHWI``, int64
  bias 0) with scales chosen so that the requantisation multiplier is exactly 1; that output is
  exact while it fits int16, so the exporter splits the input channels into groups whose largest
  possible partial current (from the actual weights and the input range) is <= 32767, and adds the
  groups' int32 casts. Typical layers need one group.
- neurons: ``UNPACK`` over T, then per step the operations of ``edge_sdfa.int8.arith.neuron_plan``
  in int32, one operator each (``ADD/SUB/MUL``, ``RIGHT_SHIFT``: an arithmetic, flooring shift,
  ``GREATER_EQUAL``, ``SELECT_V2``); ``PACK`` back. A layer whose membrane bound reaches 2^31 is refused (TFLite int64 arithmetic
  is not used); use the ONNX or npz frozen format for it.
- pooling: ``MAX_POOL_2D`` on int8 spikes (NHWC), sum pooling as int32 ``SUM`` over a reshape.
  The graph is NHWC inside; input and output are NCHW like the reference, via ``TRANSPOSE``.

Input ``spikes`` ``[T, N, *input_shape]`` uint8 (N resizable, stored as 1), output ``out``
``[T, N, *out_shape]`` uint8, T fixed to the spec's time steps (unrolled).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_sdfa.errors import UserError, require
from host_tools.export_onnx import FrozenNeuron, frozen_plan

INPUT_NAME = "spikes"
OUTPUT_NAME = "out"
INT16_MAX = 32767
INPUT_MAX_TENSOR = "edge_sdfa.input_max"


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as s  # ships with ai-edge-litert
        return s
    except ImportError:
        pass
    try:
        from tflite_support import schema_py_generated as s  # pragma: no cover
        return s
    except ImportError:
        raise UserError("TFLite export needs the TFLite schema module: pip install ai-edge-litert "
                        "(it ships schema_py_generated.py)") from None


class _Graph:
    """A single-subgraph TFLite model under construction (object API, packed at the end)."""

    def __init__(self, s):
        self.s = s
        self.dtypes = {
            np.dtype(np.float32): s.TensorType.FLOAT32, np.dtype(np.int32): s.TensorType.INT32,
            np.dtype(np.uint8): s.TensorType.UINT8, np.dtype(np.int64): s.TensorType.INT64,
            np.dtype(np.bool_): s.TensorType.BOOL, np.dtype(np.int16): s.TensorType.INT16,
            np.dtype(np.int8): s.TensorType.INT8,
        }
        self.tensors, self.buffers, self.ops, self.codes = [], [s.BufferT()], [], {}
        self.n = 0

    def tensor(self, shape, dtype, name=None, sig=None, data=None, quant=None) -> int:
        s = self.s
        dtype = np.dtype(dtype)
        t = s.TensorT()
        t.shape = [int(d) for d in shape]
        if sig is not None:
            t.shapeSignature = [int(d) for d in sig]
        t.type = self.dtypes[dtype]
        self.n += 1
        t.name = name or f"t{self.n}"
        if quant is None and dtype in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16)):
            quant = (1.0, 0)  # integer tensors: scale 1, zero point 0 (identity requantisation)
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(quant[0])], [int(quant[1])]
            t.quantization = q
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, value, dtype, name=None) -> int:
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        return self.tensor(arr.shape, arr.dtype, name, data=arr)

    def op(self, code, inputs, outputs, opt_type=0, opt=None):
        s = self.s
        if code not in self.codes:
            self.codes[code] = len(self.codes)
        o = s.OperatorT()
        o.opcodeIndex = self.codes[code]
        o.inputs, o.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        if opt is not None:
            o.builtinOptionsType, o.builtinOptions = opt_type, opt
        self.ops.append(o)
        return outputs[0] if len(outputs) == 1 else outputs

    def finish(self, inputs, outputs, description: str) -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = self.tensors, list(inputs), list(outputs), self.ops, "main"
        codes = [None] * len(self.codes)
        for code, i in self.codes.items():
            c = s.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            codes[i] = c
        sig = s.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        sig.inputs = [self._tmap(INPUT_NAME, inputs[0])]
        sig.outputs = [self._tmap(OUTPUT_NAME, outputs[0])]
        m = s.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, [sg], self.buffers
        m.description, m.signatureDefs = description, [sig]
        b = flatbuffers.Builder(1 << 16)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    def _tmap(self, name, idx):
        t = self.s.TensorMapT()
        t.name, t.tensorIndex = name, idx
        return t


class _Builder:
    """Emits the frozen front into a ``_Graph``, tracking each tensor's shape for N=1."""

    def __init__(self, s, t_steps: int):
        self.s, self.B, self.O = s, s.BuiltinOperator, s.BuiltinOptions
        self.g = _Graph(s)
        self.T = t_steps

    # -- small op wrappers (shape = the N=1 shape; the first dim scales with N) ---------------
    def reshape(self, x, shape_n1, new_shape, dtype):
        out = self.g.tensor(shape_n1, dtype)
        o = self.s.ReshapeOptionsT()
        o.newShape = [int(d) for d in new_shape]
        return self.g.op(self.B.RESHAPE, [x, self.g.const(new_shape, np.int32)], [out], self.O.ReshapeOptions, o)

    def cast(self, x, shape, dtype):
        out = self.g.tensor(shape, dtype)
        return self.g.op(self.B.CAST, [x], [out])

    def transpose(self, x, shape_out, perm, dtype):
        out = self.g.tensor(shape_out, dtype)
        return self.g.op(self.B.TRANSPOSE, [x, self.g.const(perm, np.int32)], [out], self.O.TransposeOptions,
                         self.s.TransposeOptionsT())

    def binary(self, code, a, b, shape, dtype=np.int32):
        out = self.g.tensor(shape, dtype)
        opts = {self.B.ADD: (self.O.AddOptions, self.s.AddOptionsT), self.B.SUB: (self.O.SubOptions, self.s.SubOptionsT),
                self.B.MUL: (self.O.MulOptions, self.s.MulOptionsT),
                self.B.RIGHT_SHIFT: (self.O.RightShiftOptions, self.s.RightShiftOptionsT),
                self.B.GREATER_EQUAL: (self.O.GreaterEqualOptions, self.s.GreaterEqualOptionsT)}
        ot, cls = opts[code]
        return self.g.op(code, [a, b], [out], ot, cls())

    def strided_slice(self, x, shape, dtype, begin, end, full_mask):
        """``x[begin:end]`` with the dims in ``full_mask`` taken whole (the batch dim stays dynamic;
        TFLite's SLICE does not resize with the batch)."""
        out = self.g.tensor(shape, dtype)
        o = self.s.StridedSliceOptionsT()
        o.beginMask = o.endMask = full_mask
        ins = [x, self.g.const(begin, np.int32), self.g.const(end, np.int32), self.g.const([1] * len(begin), np.int32)]
        return self.g.op(self.B.STRIDED_SLICE, ins, [out], self.O.StridedSliceOptions, o)

    def matmul(self, x, w, shape):
        out = self.g.tensor(shape, np.int32)
        return self.g.op(self.B.BATCH_MATMUL, [x, w], [out], self.O.BatchMatMulOptions, self.s.BatchMatMulOptionsT())

    # -- layers ----------------------------------------------------------------------------
    def dense(self, x, x_dtype, m, w8, bias, max_in):
        """int32 currents ``[M, out]`` for rows ``x [M, in]`` (int8, or uint8 at the input)."""
        n_in, n_out = w8.shape
        w = self.g.const(w8, np.int8, "w8")
        if x_dtype == np.uint8 and max_in > 127:
            xi = self.cast(x, [m, n_in], np.int32)
            hi = self.binary(self.B.RIGHT_SHIFT, xi, self.g.const([7], np.int32), [m, n_in])
            lo = self.binary(self.B.SUB, xi, self.binary(self.B.MUL, hi, self.g.const([128], np.int32), [m, n_in]), [m, n_in])
            c_lo = self.matmul(self.cast(lo, [m, n_in], np.int8), w, [m, n_out])
            c_hi = self.matmul(self.cast(hi, [m, n_in], np.int8), w, [m, n_out])
            cur = self.binary(self.B.ADD, c_lo, self.binary(self.B.MUL, c_hi, self.g.const([128], np.int32), [m, n_out]),
                              [m, n_out])
        else:
            if x_dtype != np.int8:
                x = self.cast(x, [m, n_in], np.int8)
            cur = self.matmul(x, w, [m, n_out])
        if bias is not None:
            cur = self.binary(self.B.ADD, cur, self.g.const(bias.astype(np.int32), np.int32, "bias"), [m, n_out])
        return cur

    def conv(self, x, m, in_hwc, layer, w8, bias, max_in):
        """int32 currents NHWC for NHWC rows ``x`` (int8 or uint8)."""
        s, B = self.s, self.B
        h, w_, c = in_hwc
        k, st, p = layer.kernel_size, layer.stride, layer.padding
        oh, ow = (h + 2 * p - k) // st + 1, (w_ + 2 * p - k) // st + 1
        co = w8.shape[0]
        x16 = self.cast(x, [m, h, w_, c], np.int16)
        if p and not (st == 1 and 2 * p == k - 1):
            pads = self.g.const([[0, 0], [p, p], [p, p], [0, 0]], np.int32)
            xp = self.g.tensor([m, h + 2 * p, w_ + 2 * p, c], np.int16)
            x16 = self.g.op(B.PAD, [x16, pads], [xp], self.s.BuiltinOptions.PadOptions, s.PadOptionsT())
            h, w_ = h + 2 * p, w_ + 2 * p
            padding = s.Padding.VALID
        else:
            padding = s.Padding.SAME if p else s.Padding.VALID
        groups = _channel_groups(w8, max_in)
        ohwi = w8.transpose(0, 2, 3, 1)  # [out, kh, kw, in]
        total = None
        for c0, c1 in groups:
            xg = x16
            if (c0, c1) != (0, c):
                xg = self.strided_slice(x16, [m, h, w_, c1 - c0], np.int16, [0, 0, 0, c0], [0, 0, 0, c1], 0b0111)
            wt = self.g.const(np.ascontiguousarray(ohwi[..., c0:c1]), np.int8, "w8")
            bt = self.g.const(np.zeros(co, np.int64), np.int64, "bias0")
            y16 = self.g.tensor([m, oh, ow, co], np.int16)
            o = s.Conv2DOptionsT()
            o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = padding, st, st, 1, 1
            self.g.op(B.CONV_2D, [xg, wt, bt], [y16], self.s.BuiltinOptions.Conv2DOptions, o)
            y32 = self.cast(y16, [m, oh, ow, co], np.int32)
            total = y32 if total is None else self.binary(B.ADD, total, y32, [m, oh, ow, co])
        if bias is not None:
            total = self.binary(B.ADD, total, self.g.const(bias.astype(np.int32), np.int32, "bias"), [m, oh, ow, co])
        return total, (oh, ow, co)

    def neuron(self, cur, feat: int, neuron: FrozenNeuron):
        """Unrolled neuron on int32 currents ``[T*N, ...]`` (N=1 shape ``feat``); int8 spikes ``[T, N*feat]``.

        Each operation of the plan (``arith.neuron_plan``) becomes one TFLite operator."""
        B, T, plan = self.B, self.T, neuron.plan
        if neuron.wide:
            raise UserError(f"this layer's membrane can reach {neuron.bound} (>= 2^31); the TFLite export keeps "
                            "neurons in int32 — export this front as onnx or npz")
        flat = self.reshape(cur, [T, feat], [T, -1], np.int32)
        if T > 1:
            parts = [self.g.tensor([feat], np.int32) for _ in range(T)]
            o = self.s.UnpackOptionsT()
            o.num, o.axis = T, 0
            self.g.op(B.UNPACK, [flat], parts, self.O.UnpackOptions, o)
        else:
            parts = [self.reshape(flat, [feat], [-1], np.int32)]
        shp = [feat]
        consts: dict[int, int] = {}
        codes = {"add": B.ADD, "sub": B.SUB, "mul": B.MUL, "shr": B.RIGHT_SHIFT, "ge": B.GREATER_EQUAL}

        def const(k: int) -> int:
            if k not in consts:
                consts[k] = self.g.const([k], np.int32)
            return consts[k]

        def emit(op: str, x: list[int]) -> int:
            if op == "select":
                out = self.g.tensor(shp, np.int32)
                return self.g.op(B.SELECT_V2, x, [out], self.O.SelectV2Options, self.s.SelectV2OptionsT())
            return self.binary(codes[op], x[0], x[1], shp, np.bool_ if op == "ge" else np.int32)

        spikes, v = [], const(plan.vreset)  # the membrane at rest, broadcast by the first step
        for t in range(T):
            reg = {"v": v, "cur": parts[t]}
            for dst, op, *args in plan.step + (plan.reset if t + 1 < T else ()):
                reg[dst] = emit(op, [reg[a] if isinstance(a, str) else const(a) for a in args])
            spikes.append(self.cast(reg["s"], shp, np.int8))
            v = reg["v"]
        if T == 1:
            return self.reshape(spikes[0], [1, feat], [1, -1], np.int8)
        out = self.g.tensor([T, feat], np.int8)
        o = self.s.PackOptionsT()
        o.valuesCount, o.axis = T, 0
        return self.g.op(B.PACK, spikes, [out], self.O.PackOptions, o)


def _channel_groups(w8: np.ndarray, max_in: int) -> list[tuple[int, int]]:
    """Split input channels into consecutive groups whose partial current fits int16."""
    co, ci = w8.shape[:2]
    w = w8.astype(np.int64)
    pos = np.clip(w, 0, None).sum(axis=(2, 3)) * max_in   # [out, in]
    neg = np.clip(-w, 0, None).sum(axis=(2, 3)) * max_in
    groups, start = [], 0
    acc_p, acc_n = np.zeros(co, np.int64), np.zeros(co, np.int64)
    for c in range(ci):
        if max(pos[:, c].max(), neg[:, c].max()) > INT16_MAX:
            raise UserError(f"conv input channel {c}: one channel's current alone can exceed int16 "
                            f"(input values up to {max_in}); export this front as onnx or npz")
        if c > start and ((acc_p + pos[:, c]).max() > INT16_MAX or (acc_n + neg[:, c]).max() > INT16_MAX):
            groups.append((start, c))
            start = c
            acc_p[:], acc_n[:] = 0, 0
        acc_p += pos[:, c]
        acc_n += neg[:, c]
    groups.append((start, ci))
    return groups


def build_flatbuffer(spec, qnet, cut: int, input_max: int = 255) -> bytes:
    s = _schema()
    steps = frozen_plan(spec, qnet, cut, input_max)
    T = spec.time_steps
    b = _Builder(s, T)
    g = b.g
    in_shape = tuple(spec.input_shape)
    out_shape = tuple(steps[-1].out_shape)
    x_in = g.tensor([T, 1, *in_shape], np.uint8, INPUT_NAME, sig=[T, -1, *in_shape])
    g.const([int(input_max)], np.int32, INPUT_MAX_TENSOR)  # read by the executor's range check
    m = T  # rows for N=1
    if len(in_shape) == 3:
        c, h, w = in_shape
        x = b.reshape(x_in, [m, c, h, w], [-1, c, h, w], np.uint8)
        x = b.transpose(x, [m, h, w, c], [0, 2, 3, 1], np.uint8)
        layout = ("nhwc", (h, w, c))
    else:
        x = b.reshape(x_in, [m, *in_shape], [-1, *in_shape], np.uint8)
        layout = ("flat", in_shape)
    dtype = np.uint8
    for st in steps:
        if st.kind == "dense":
            if layout[0] != "flat":
                raise UserError("a Dense layer after a 3-D tensor needs a Flatten first")
            cur = b.dense(x, dtype, m, st.w8, st.bias, st.max_in)
            spikes = b.neuron(cur, st.out_shape[0], st.neuron)
            x = b.reshape(spikes, [m, *st.out_shape], [-1, *st.out_shape], np.int8)
            layout, dtype = ("flat", st.out_shape), np.int8
        elif st.kind == "conv":
            cur, hwc = b.conv(x, m, layout[1], st.layer, st.w8, st.bias, st.max_in)
            spikes = b.neuron(cur, int(np.prod(hwc)), st.neuron)
            x = b.reshape(spikes, [m, *hwc], [-1, *hwc], np.int8)
            layout, dtype = ("nhwc", hwc), np.int8
        elif st.kind in ("maxpool", "sumpool"):
            h, w, c = layout[1]
            k = st.layer.kernel_size
            oh, ow = h // k, w // k
            if dtype != np.int8:
                if st.max_in > 127:
                    raise UserError("pooling of raw input counts above 127 is not supported in the TFLite export")
                x = b.cast(x, [m, h, w, c], np.int8)
                dtype = np.int8
            if st.kind == "maxpool":
                y = g.tensor([m, oh, ow, c], np.int8)
                o = s.Pool2DOptionsT()
                o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = s.Padding.VALID, k, k, k, k
                x = g.op(s.BuiltinOperator.MAX_POOL_2D, [x], [y], s.BuiltinOptions.Pool2DOptions, o)
            else:
                if st.max_in * k * k > 127:
                    raise UserError("sum pooling whose counts can exceed 127 is not supported in the TFLite export")
                xi = b.cast(x, [m, h, w, c], np.int32)
                if (oh * k, ow * k) != (h, w):
                    xi = b.strided_slice(xi, [m, oh * k, ow * k, c], np.int32, [0, 0, 0, 0], [0, oh * k, ow * k, c],
                                         0b1001)
                r = b.reshape(xi, [m, oh, k, ow, k, c], [-1, oh, k, ow, k, c], np.int32)
                y = g.tensor([m, oh, ow, c], np.int32)
                o = s.ReducerOptionsT()
                o.keepDims = False
                g.op(s.BuiltinOperator.SUM, [r, g.const([2, 4], np.int32)], [y], s.BuiltinOptions.ReducerOptions, o)
                x = b.cast(y, [m, oh, ow, c], np.int8)
            layout = ("nhwc", (oh, ow, c))
        elif st.kind == "flatten":
            if layout[0] == "nhwc":
                h, w, c = layout[1]
                x = b.transpose(x, [m, c, h, w], [0, 3, 1, 2], dtype)
            x = b.reshape(x, [m, *st.out_shape], [-1, *st.out_shape], dtype)
            layout = ("flat", st.out_shape)
    if layout[0] == "nhwc":
        h, w, c = layout[1]
        x = b.transpose(x, [m, c, h, w], [0, 3, 1, 2], dtype)
    x = b.reshape(x, [T, 1, *out_shape], [T, -1, *out_shape], dtype)
    out = g.tensor([T, 1, *out_shape], np.uint8, OUTPUT_NAME, sig=[T, -1, *out_shape])
    g.op(s.BuiltinOperator.CAST, [x], [out])
    return g.finish([x_in], [out], f"edge-sdfa frozen front T={T} input_max={int(input_max)}: int8 synapses, "
                                    "int32 neuron dynamics (bit-exact with edge_sdfa.int8.net.output_spikes)")


def export_frozen(spec, qnet, cut: int, out_path, input_max: int = 255) -> Path:
    """Write layers[:cut] of ``spec`` with the int8 weights of ``qnet`` as a ``.tflite`` file.

    ``input_max`` bounds the input values (1 for spikes, up to 255 for binned counts). Above 127
    the first Dense layer runs two exact int8 matmuls instead of one.
    """
    require("flatbuffers", "TFLite export", extra="host")
    data = build_flatbuffer(spec, qnet, cut, input_max)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)
    return out_path


__all__ = ["export_frozen", "build_flatbuffer"]
