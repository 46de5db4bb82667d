"""The int8 SNN: quantisation of a float network, and the network-level forward pass and SDFA
update, which walk the layers and call a kernel set's layer-level entry points.

The arithmetic lives in ``arith`` (definitions) and the kernel sets (``reference``, the numpy set
and the spec; ``c_kernels``), chosen through the registry ``kernels``. A backend that replaces the
arithmetic of the synapses (the crossbars of PipeSDFA) passes its matrix-vector product in as
``mvm``; nothing is intercepted. Every other executor and backend (ONNX/TFLite frozen parts, Lava
``fixed_pt``, the RRAM simulator with its non-idealities off) is tested bit-exact against the
numpy set.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import ModuleType

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith
from edge_sdfa.int8 import kernels as kernel_sets
from edge_sdfa.spec import (
    DEFAULT_TEMPORAL_MODE,
    Dense,
    Flatten,
    NetworkSpec,
    Pool2d,
    has_synapses,
    temporal_mode,
)

# A backend's matrix-vector product: (synaptic layer index, integer input rows [R, K]) -> the
# layer's current [R, M] without bias (int64), or None to leave it to the kernel set.
MVM = Callable[[int, np.ndarray], "np.ndarray | None"]
Kernels = ModuleType | str | None

# ---------------------------------------------------------------------------------------------
# quantised parameters


@dataclass
class QLayer:
    """Quantised parameters of one layer. Dense ``w8`` is stored input-major, ``[in, out]``, so a
    spike selects a row; Conv2d ``w8`` keeps the ``[out, in, k, k]`` layout."""

    exp: int = 0
    w8: np.ndarray | None = None
    bias: np.ndarray | None = None      # int32, weight units
    master: np.ndarray | None = None    # int16, present for trainable layers

    @property
    def trainable(self) -> bool:
        return self.master is not None


QNet = list[QLayer]


def quantize(spec: NetworkSpec, params: fn.Params, trainable: set[int] | None = None,
             headroom: float = 2.0) -> tuple[QNet, dict]:
    """Per-layer power-of-two scales from the weights (trainable layers keep ``headroom`` of the
    int8 range free to grow). Average pooling becomes sum pooling with 1/k^2 folded into the next
    synaptic layer. Returns the network and a report of saturated values."""
    trainable = set(spec.synaptic_layers()) if trainable is None else set(trainable)
    qnet: QNet = []
    fold = 1.0
    saturated = {}
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Pool2d) and layer.mode == "avg":
            fold /= layer.kernel_size ** 2
        if not has_synapses(layer):
            qnet.append(QLayer())
            continue
        w = params[i]["weight"].astype(np.float64) * fold
        fold = 1.0
        exp = arith.weight_exponent(float(np.abs(w).max()), headroom if i in trainable else 1.0)
        w8, sat = arith.quantize_weight(w, exp)
        saturated[i] = sat
        if isinstance(layer, Dense):
            w8 = np.ascontiguousarray(w8.T)
        bias = None
        if "bias" in params[i]:
            bias = np.round(params[i]["bias"].astype(np.float64) * 2.0 ** exp).astype(np.int32)
        master = arith.master_from_w8(w8) if i in trainable else None
        qnet.append(QLayer(exp, w8, bias, master))
    return qnet, {"saturated": saturated}


def dequantize(spec: NetworkSpec, qnet: QNet) -> fn.Params:
    """Float parameters equal to the int8 ones (avg-pool folding is not undone)."""
    params = []
    for layer, q in zip(spec.layers, qnet):
        if q.w8 is None:
            params.append({})
            continue
        w = q.w8.astype(np.float32) * 2.0 ** -q.exp
        p = {"weight": w.T.copy() if isinstance(layer, Dense) else w}
        if q.bias is not None:
            p["bias"] = (q.bias.astype(np.float32) * 2.0 ** -q.exp)
        params.append(p)
    return params


# ---------------------------------------------------------------------------------------------
# forward


@dataclass
class Int8Trace:
    """Per synaptic layer, what the update needs: inputs and the surrogate LUT index of h."""

    inputs: dict[int, np.ndarray] = field(default_factory=dict)    # [T, N, in] integer
    prepared: dict[int, object] = field(default_factory=dict)      # the kernel set's view of inputs
    sg_index: dict[int, np.ndarray] = field(default_factory=dict)  # [T, N, out] uint8
    counts: np.ndarray | None = None                               # [N, classes] output spike counts
    out_spikes: np.ndarray | None = None                           # [T, N, classes] uint8


def _conv_current(layer, q: QLayer, rows: np.ndarray, ks: ModuleType, mvm, i: int,
                  channels_last: bool = False) -> np.ndarray:
    """Conv currents ``[B, C, OH, OW]``, or with ``channels_last`` ``[B, OH, OW, C]`` (the
    kernel set's own layout: no transposed copy of the currents)."""
    cur = None
    if mvm is not None:
        from edge_sdfa.ops import im2col

        cols = im2col(rows, layer.kernel_size, layer.stride, layer.padding)
        cur = mvm(i, cols.reshape(-1, cols.shape[-1]))
        if cur is not None:
            cur = cur.reshape(*cols.shape[:3], -1)
            if q.bias is not None:
                cur = cur + q.bias.astype(np.int64)
    if cur is None:
        cur = ks.conv_current(rows, q.w8, q.bias, layer.stride, layer.padding)
    return cur if channels_last else cur.transpose(0, 3, 1, 2)


_STACK_PLANS: dict[tuple, tuple] = {}


def _dense_stack_out(spec: NetworkSpec, qnet: QNet, ks: ModuleType, x: np.ndarray) -> np.ndarray | None:
    """Output spikes of a network of dense layers (and flattens) run by the kernel set's fused
    ``dense_stack`` in one call, or None where the set has none or its bounds do not hold. The
    plan holds the layers' own arrays, so it is cached by their identities."""
    if not hasattr(ks, "dense_stack") or not all(isinstance(layer, (Dense, Flatten)) for layer in spec.layers):
        return None
    dense = [(layer, q) for layer, q in zip(spec.layers, qnet) if isinstance(layer, Dense)]
    key = (ks.NAME, *((id(layer), id(q.w8), id(q.bias), q.exp) for layer, q in dense))
    hit = _STACK_PLANS.get(key)
    if hit is None:
        plan = ks.stack_plan([(q.w8, q.bias, layer.neuron, arith.neuron_constants(layer.neuron, q.exp))
                              for layer, q in dense])
        if len(_STACK_PLANS) >= 16:
            _STACK_PLANS.clear()
        hit = _STACK_PLANS[key] = (plan, dense)  # ``dense`` keeps the keyed objects alive
    if hit[0] is None:
        return None
    t_steps, n = x.shape[:2]
    return ks.dense_stack(hit[0], x.reshape(t_steps, n, -1))


def forward(spec: NetworkSpec, qnet: QNet, x: np.ndarray, kernels: Kernels = None,
            keep: set[int] | None = None, *, mvm: MVM | None = None) -> Int8Trace:
    """Forward ``x[T, N, ...]`` (uint8 spikes or counts) with a kernel set (module or name; None:
    the numpy reference). ``keep`` lists synaptic layers whose inputs and surrogate indices are
    recorded for an update. ``mvm`` replaces the synapses' matrix-vector product (see ``MVM``)."""
    if x.dtype.kind not in "ub" and not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"int8 runtime needs integer spikes or counts, got {x.dtype}")
    ks = kernel_sets.resolve(kernels)
    t_steps, n = x.shape[:2]
    keep = keep or set()
    trace = Int8Trace()
    if not keep and mvm is None:
        out = _dense_stack_out(spec, qnet, ks, x)
        if out is not None:
            trace.out_spikes = out
            trace.counts = out.sum(axis=0, dtype=np.int64)
            return trace
    shapes = spec.shapes()
    rows = np.ascontiguousarray(x).reshape(t_steps * n, *x.shape[2:])
    for i, layer in enumerate(spec.layers):
        if has_synapses(layer):
            q = qnet[i]
            if isinstance(layer, Dense):
                x3 = rows.reshape(t_steps, n, -1)
                cur = mvm(i, rows.reshape(t_steps * n, -1)) if mvm is not None else None
                prepared = None
                if cur is None:
                    prepared = ks.prepare_inputs(x3)
                    cur = ks.dense_current(prepared, q.w8, q.bias)
                elif q.bias is not None:
                    cur = cur + q.bias.astype(np.int64)
                if i in keep:
                    trace.inputs[i] = x3
                    trace.prepared[i] = prepared if prepared is not None else ks.prepare_inputs(x3)
            else:
                # a conv layer nobody records runs its neurons in the channels-last order of the
                # gather (the dynamics are per neuron, so only the order of the spikes changes)
                # and transposes the uint8 spikes instead of the int32/int64 currents
                channels_last = i not in keep
                cur = _conv_current(layer, q, rows, ks, mvm, i, channels_last)
                if i in keep:
                    trace.inputs[i] = rows.reshape(t_steps, n, -1)
            oh_ow_c = cur.shape[1:]
            cur = cur.reshape(t_steps, n, -1)
            const = arith.neuron_constants(layer.neuron, q.exp)
            spikes, sg = ks.neuron_run(layer.neuron, const, cur, q.exp if i in keep else None)
            if i in keep:
                trace.sg_index[i] = sg
            if not isinstance(layer, Dense) and channels_last:
                spikes = np.ascontiguousarray(spikes.reshape(t_steps * n, *oh_ow_c).transpose(0, 3, 1, 2))
            rows = spikes.reshape(t_steps * n, *shapes[i + 1])
        elif isinstance(layer, Pool2d):
            from edge_sdfa.ops import pool2d_int

            rows = pool2d_int(rows, layer.kernel_size, layer.mode)
        elif isinstance(layer, Flatten):
            rows = rows.reshape(rows.shape[0], int(np.prod(rows.shape[1:])))
    out = rows.reshape(t_steps, n, int(np.prod(rows.shape[1:])))
    trace.out_spikes = out
    trace.counts = out.sum(axis=0, dtype=np.int64)
    return trace


def output_spikes(spec: NetworkSpec, qnet: QNet, x: np.ndarray, kernels: Kernels = None) -> np.ndarray:
    """Output spikes ``[T, N, *out]`` of a (possibly frozen, non-classifier) int8 network."""
    t_steps, n = x.shape[:2]
    out = forward(spec, qnet, x, kernels).out_spikes
    return out.reshape(t_steps, n, *spec.shapes()[-1])


def predict(spec: NetworkSpec, qnet: QNet, x: np.ndarray, kernels: Kernels = None, batch: int = 256) -> np.ndarray:
    """Predictions for sample-major ``x[N, T, ...]``."""
    ks = kernel_sets.resolve(kernels)
    preds = []
    for i in range(0, len(x), batch):
        preds.append(forward(spec, qnet, np.swapaxes(x[i:i + batch], 0, 1), ks).counts.argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# the SDFA update


@dataclass(frozen=True)
class UpdateConfig:
    lr: float = 0.05
    mode: str = DEFAULT_TEMPORAL_MODE   # spec.TemporalMode
    seed: int = 0                       # stochastic rounding
    feedback_seed: int = 0


@dataclass
class UpdateStats:
    loss: float
    correct: int
    saturated_master: int
    saturated_w8: int
    shifts: dict[int, list[int]]


def feedback_int8(spec: NetworkSpec, seed: int) -> dict[int, np.ndarray]:
    """Int8 feedback matrices: the float rule's seeded N(0,1) draw, scaled by 2**FB_BITS."""
    return {l: arith.feedback_q(b) for l, b in fn.feedback_matrices(spec, seed).items()}


def step_errors(counts_by_step: np.ndarray, labels: np.ndarray, loss: str, mode: str) -> np.ndarray:
    """Output error per step ``[T, N, C]`` (int64, 2**-ERR_BITS): online uses the running rate
    at each step; exact uses the final rate at every step."""
    t_steps = counts_by_step.shape[0]
    if temporal_mode(mode) == "exact":
        e = arith.output_error_q(counts_by_step[-1], t_steps, labels, loss)
        return np.broadcast_to(e, (t_steps, *e.shape))
    return np.stack([arith.output_error_q(counts_by_step[t], t + 1, labels, loss) for t in range(t_steps)])


def sdfa_update(spec: NetworkSpec, qnet: QNet, x: np.ndarray, y: np.ndarray, feedback: dict[int, np.ndarray],
                config: UpdateConfig, update_index: int, kernels: Kernels = None, *,
                mvm: MVM | None = None) -> tuple[QNet, UpdateStats]:
    """One int8 SDFA update on the batch ``x[T, N, ...]``; returns new layers (inputs untouched).

    Only Dense layers train in int8. ``online``: the per-step local term needs only the current
    step's state, so a streaming executor (Lava, the RRAM simulator) can run it step by step.
    ``exact`` (the reference's rule): the final-rate error, projected once, reaches every step and
    goes back through each layer's own membrane recurrence (``arith.exact_deltas``). The kernel
    sets run layer by layer over all steps, which gives the same integers.
    """
    mode = temporal_mode(config.mode)
    ks = kernel_sets.resolve(kernels)
    t_steps, n = x.shape[:2]
    if n == 0:
        raise UserError("empty batch: an SDFA update needs at least one sample")
    train = [i for i, q in enumerate(qnet) if q.trainable]
    for i in train:
        if not isinstance(spec.layers[i], Dense):
            raise UserError(f"layer {i} ({spec.layers[i].type}) cannot be trained in int8; only dense layers can")
    trace = forward(spec, qnet, x, ks, keep=set(train), mvm=mvm)
    if mode == "exact":
        e = arith.output_error_q(trace.counts, t_steps, y, spec.loss)
    else:
        e = step_errors(np.cumsum(trace.out_spikes, axis=0, dtype=np.int64), y, spec.loss, mode)
    last = spec.synaptic_layers()[-1]
    new = list(qnet)
    stats = UpdateStats(arith.loss_value(trace.counts, t_steps, y, spec.loss),
                        int(np.sum(trace.counts.argmax(1) == y)), 0, 0, {})
    for i in train:
        q = qnet[i]
        b = None if i == last else feedback[i]
        if mode == "exact":
            deltas, shifts = ks.exact_deltas(trace.sg_index[i], e, b, arith.carry_lut(spec.layers[i].neuron))
        else:
            deltas, shifts = ks.local_deltas(trace.sg_index[i], e, b)
        m, k = arith.update_scale(config.lr, n, t_steps, spec.layers[i].neuron.input_gain, q.exp,
                                  None if i == last else fn.feedback_norm(spec), mode)
        key = arith.rounding_key(config.seed, update_index, i)
        master, w8, sat, sat_w8 = ks.dense_update(trace.prepared[i], deltas, shifts, q.master, m, k, key)
        new[i] = replace(q, master=master, w8=w8)
        stats.saturated_master += sat
        stats.saturated_w8 += sat_w8
        stats.shifts[i] = [int(s_) for s_ in shifts]
    return new, stats


def real_gradients(spec: NetworkSpec, qnet: QNet, x: np.ndarray, y: np.ndarray, feedback: dict[int, np.ndarray],
                   mode: str) -> dict[int, np.ndarray]:
    """Per trainable layer, the gradient the int8 rule applies (``dw = -lr * this`` before the
    stochastic rounding) as a float ``[out, in]`` array in real units, to compare with
    ``float_net``'s rules. Numpy kernel set."""
    mode = temporal_mode(mode)
    ks = kernel_sets.resolve(None)
    t_steps, n = x.shape[:2]
    train = [i for i, q in enumerate(qnet) if q.trainable]
    trace = forward(spec, qnet, x, ks, keep=set(train))
    last = spec.synaptic_layers()[-1]
    if mode == "exact":
        e = arith.output_error_q(trace.counts, t_steps, y, spec.loss)
    else:
        e = step_errors(np.cumsum(trace.out_spikes, axis=0, dtype=np.int64), y, spec.loss, mode)
    out = {}
    for i in train:
        layer = spec.layers[i]
        b = None if i == last else feedback[i]
        if mode == "exact":
            deltas, shifts = ks.exact_deltas(trace.sg_index[i], e, b, arith.carry_lut(layer.neuron))
        else:
            deltas, shifts = ks.local_deltas(trace.sg_index[i], e, b)
        grad = ks.gradient(np.asarray(trace.prepared[i]), deltas, shifts)
        elig = arith.ELIG_BITS if mode == "exact" else arith.SG_BITS
        if i == last:
            scale = 2.0 ** -(arith.ERR_BITS + elig) / (n * t_steps)
        else:
            scale = 2.0 ** -(arith.ERR_BITS + arith.FB_BITS + elig) * fn.feedback_norm(spec) / n
        out[i] = (grad.astype(np.float64) * scale * layer.neuron.input_gain).T
    return out
