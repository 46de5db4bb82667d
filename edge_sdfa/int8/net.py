"""The int8 SNN: quantisation of a float network, forward pass and the int8 SDFA update.

This module is the executable specification of the int8 semantics (see ``arith``). Every other
executor and backend (numba kernels, ONNX/TFLite frozen parts, Lava ``fixed_pt``, the RRAM
simulator with its non-idealities off) is tested bit-exact against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith
from edge_sdfa.int8.kernels import NUMPY, Kernels
from edge_sdfa.spec import Dense, Flatten, NetworkSpec, Pool2d, has_synapses

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
    """Per synaptic layer, what the update needs: input rows and membrane h for every step."""

    inputs: dict[int, np.ndarray] = field(default_factory=dict)   # [T, N, in] uint8
    membranes: dict[int, np.ndarray] = field(default_factory=dict)  # [T, N, out] int64
    sg_index: dict[int, np.ndarray] = field(default_factory=dict)   # [T, N, out] uint8 LUT index of h - vth
    counts: np.ndarray | None = None                              # [N, classes] output spike counts
    out_spikes: np.ndarray | None = None                          # [T, N, classes] uint8
    sparse: dict[int, object] = field(default_factory=dict)       # kernels' spike index of inputs


def _current(layer, q: QLayer, rows: np.ndarray, kernels: Kernels) -> np.ndarray:
    if isinstance(layer, Dense):
        cur = kernels.matmul_int(rows, q.w8)
        if q.bias is not None:
            cur = cur + q.bias
        return cur
    from edge_sdfa.ops import im2col

    cols = im2col(rows, layer.kernel_size, layer.stride, layer.padding)
    w = q.w8.reshape(q.w8.shape[0], -1).T
    cur = kernels.matmul_int(cols.reshape(-1, cols.shape[-1]), w)
    cur = cur.reshape(*cols.shape[:3], -1).transpose(0, 3, 1, 2)
    if q.bias is not None:
        cur = cur + q.bias[:, None, None]
    return cur


def forward(spec: NetworkSpec, qnet: QNet, x: np.ndarray, kernels: Kernels = NUMPY,
            keep: set[int] | None = None, *, surrogate_index: bool = False) -> Int8Trace:
    """Forward ``x[T, N, ...]`` (uint8 spikes or counts). ``keep`` lists synaptic layers whose
    inputs and membranes are recorded for an update. With ``surrogate_index`` and kernels that
    support it, kept layers record the surrogate LUT index of h (``sg_index``) instead of h."""
    if x.dtype.kind not in "ub" and not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"int8 runtime needs integer spikes or counts, got {x.dtype}")
    t_steps, n = x.shape[:2]
    keep = keep or set()
    trace = Int8Trace()
    rows = np.ascontiguousarray(x).reshape(t_steps * n, *x.shape[2:])
    for i, layer in enumerate(spec.layers):
        if has_synapses(layer):
            q = qnet[i]
            sidx = None
            if isinstance(layer, Dense) and kernels.spike_index is not None:
                sidx = kernels.spike_index(rows, t_steps, n)
            if sidx is not None:
                small = kernels.neuron_run is not None and (q.bias is None or int(np.abs(q.bias).max(initial=0)) < (1 << 30))
                cur = kernels.matmul_index(sidx, q.w8, small)
                if q.bias is not None:
                    cur += q.bias.astype(cur.dtype)
                if i in keep:
                    trace.sparse[i] = sidx
            else:
                cur = _current(layer, q, rows, kernels)
            cur = cur.reshape(t_steps, n, int(np.prod(cur.shape[1:])))
            const = arith.neuron_constants(layer.neuron, q.exp)
            use_sg = surrogate_index and kernels.surrogate_index and i in keep
            if kernels.neuron_run is not None:
                spikes, hs = kernels.neuron_run(layer.neuron, const, cur, i in keep, q.exp if use_sg else None)
            else:
                v = np.full(cur.shape[1:], const["vreset"], np.int64)
                spikes = np.empty(cur.shape, np.uint8)
                hs = np.empty(cur.shape, np.int64) if i in keep else None
                for t in range(t_steps):
                    h, spikes[t], v = arith.neuron_step_int(layer.neuron, const, v, cur[t])
                    if hs is not None:
                        hs[t] = h
            if i in keep:
                trace.inputs[i] = rows.reshape(t_steps, n, -1)
                if use_sg:
                    trace.sg_index[i] = hs
                else:
                    trace.membranes[i] = hs
            out_shape = spec.shapes()[i + 1]
            rows = spikes.reshape(t_steps * n, *out_shape)
        elif isinstance(layer, Pool2d):
            b, c, h, w = rows.shape
            k = layer.kernel_size
            r = rows[:, :, : h // k * k, : w // k * k].reshape(b, c, h // k, k, w // k, k)
            rows = r.max(axis=(3, 5)) if layer.mode == "max" else r.sum(axis=(3, 5), dtype=np.int64).astype(np.uint8)
        elif isinstance(layer, Flatten):
            rows = rows.reshape(rows.shape[0], int(np.prod(rows.shape[1:])))
    out = rows.reshape(t_steps, n, int(np.prod(rows.shape[1:])))
    trace.out_spikes = out
    trace.counts = out.sum(axis=0, dtype=np.int64)
    return trace


def output_spikes(spec: NetworkSpec, qnet: QNet, x: np.ndarray, kernels: Kernels = NUMPY) -> np.ndarray:
    """Output spikes ``[T, N, *out]`` of a (possibly frozen, non-classifier) int8 network."""
    t_steps, n = x.shape[:2]
    out = forward(spec, qnet, x, kernels).out_spikes
    return out.reshape(t_steps, n, *spec.shapes()[-1])


def predict(spec: NetworkSpec, qnet: QNet, x: np.ndarray, kernels: Kernels = NUMPY, batch: int = 256) -> np.ndarray:
    """Predictions for sample-major ``x[N, T, ...]``."""
    preds = []
    for i in range(0, len(x), batch):
        preds.append(forward(spec, qnet, np.swapaxes(x[i:i + batch], 0, 1), kernels).counts.argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# the SDFA update


@dataclass(frozen=True)
class UpdateConfig:
    lr: float = 0.05
    mode: str = "online"          # online | exact
    seed: int = 0                 # stochastic rounding
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
    if mode == "exact":
        e = arith.output_error_q(counts_by_step[-1], t_steps, labels, loss)
        return np.broadcast_to(e, (t_steps, *e.shape))
    return np.stack([arith.output_error_q(counts_by_step[t], t + 1, labels, loss) for t in range(t_steps)])


def local_deltas(spec: NetworkSpec, qnet: QNet, layer_index: int, h: np.ndarray, g: np.ndarray,
                 kernels: Kernels = NUMPY):
    """int8 local errors per step and their shifts: delta_t = int8(g_t * sg'(h_t - v_th))."""
    layer = spec.layers[layer_index]
    q = qnet[layer_index]
    const = arith.neuron_constants(layer.neuron, q.exp)
    if kernels.local_deltas is not None:
        return kernels.local_deltas(h, g, const["vth"], q.exp)
    deltas = np.empty(h.shape, np.int8)
    shifts = np.zeros(h.shape[0], np.int64)
    for t in range(h.shape[0]):
        raw = g[t] * arith.surrogate_q(h[t], const["vth"], q.exp)
        deltas[t], shifts[t] = arith.to_int8_dynamic(raw)
    return deltas, shifts


def update_scale(mode: str, is_last: bool, norm: float, t_steps: int) -> tuple[int, float, int]:
    """(unit_bits, extra factor, steps divisor) of a layer's accumulated gradient.

    As the reference: the output layer's spikes get ``e/T`` at every step (its true gradient);
    a hidden block's output gets ``B_l e / sqrt(max n)`` at every step, with no 1/T. ``online``
    uses the surrogate (units 2**-SG_BITS), ``exact`` the BPTT eligibility (2**-ELIG_BITS).
    """
    elig = arith.ELIG_BITS if mode == "exact" else arith.SG_BITS
    if is_last:
        return arith.ERR_BITS + elig, 1.0, t_steps
    return arith.ERR_BITS + arith.FB_BITS + elig, norm, 1


def exact_local_deltas(layer, q: QLayer, h: np.ndarray, from_index: bool, e: np.ndarray,
                       b: np.ndarray | None, kernels: Kernels = NUMPY) -> tuple[np.ndarray, np.ndarray]:
    """The exact rule's int8 local errors of one layer: ``g = e`` (output layer) or ``e @ B_l``,
    through the layer's own recurrence (``arith.exact_deltas``). ``h`` holds membranes or, with
    ``from_index``, their surrogate bins."""
    const = arith.neuron_constants(layer.neuron, q.exp)
    idx = np.asarray(h, np.uint8) if from_index else arith.sg_index(h, const["vth"], q.exp)
    g = e.astype(np.int64) if b is None else _project_int(e, b)
    carry = arith.carry_lut(layer.neuron)
    if kernels.exact_deltas is not None:
        done = kernels.exact_deltas(idx, g, carry)
        if done is not None:
            return done
    return arith.exact_deltas(idx, g, carry)


def sdfa_update(spec: NetworkSpec, qnet: QNet, x: np.ndarray, y: np.ndarray, feedback: dict[int, np.ndarray],
                config: UpdateConfig, update_index: int, kernels: Kernels = NUMPY) -> tuple[QNet, UpdateStats]:
    """One int8 SDFA update on the batch ``x[T, N, ...]``; returns new layers (inputs untouched).

    Only Dense layers train in int8. ``online``: the per-step local term needs only the current
    step's state, so a streaming executor (Lava, the RRAM simulator) can run it step by step.
    ``exact`` (the reference's rule): the final-rate error, projected once, reaches every step
    and goes back through each layer's own membrane recurrence (``arith.exact_deltas``). This
    reference runs layer by layer over all steps, which gives the same integers.
    """
    if config.mode not in ("online", "exact"):
        raise UserError(f"unknown temporal mode {config.mode!r} (expected online or exact)")
    t_steps, n = x.shape[:2]
    if n == 0:
        raise UserError("empty batch: an SDFA update needs at least one sample")
    train = [i for i, q in enumerate(qnet) if q.trainable]
    for i in train:
        if not isinstance(spec.layers[i], Dense):
            raise UserError(f"layer {i} ({spec.layers[i].type}) cannot be trained in int8; only dense layers can")
    trace = forward(spec, qnet, x, kernels, keep=set(train), surrogate_index=True)
    exact = config.mode == "exact"
    if exact:
        e = arith.output_error_q(trace.counts, t_steps, y, spec.loss)
    else:
        e = step_errors(np.cumsum(trace.out_spikes, axis=0, dtype=np.int64), y, spec.loss, "online")
    last = spec.synaptic_layers()[-1]
    norm = fn.feedback_norm(spec)
    new = list(qnet)
    stats = UpdateStats(arith.loss_value(trace.counts, t_steps, y, spec.loss),
                        int(np.sum(trace.counts.argmax(1) == y)), 0, 0, {})
    for i in train:
        layer = spec.layers[i]
        q = qnet[i]
        unit_bits, extra, steps_div = update_scale(config.mode, i == last, norm, t_steps)
        from_index = i in trace.sg_index
        h = trace.sg_index[i] if from_index else trace.membranes[i]
        if exact:
            deltas, shifts = exact_local_deltas(layer, q, h, from_index, e, None if i == last else feedback[i],
                                                kernels)
        elif kernels.local_deltas is not None:  # fused projection, surrogate and int8 shift
            const = arith.neuron_constants(layer.neuron, q.exp)
            deltas, shifts = kernels.local_deltas(h, e, const["vth"], q.exp, None if i == last else feedback[i],
                                                  from_index=from_index)
        else:
            g = e if i == last else _project_int(e, feedback[i])
            deltas, shifts = local_deltas(spec, qnet, i, h, g)
        xin = trace.inputs[i]
        m, k = arith.update_multiplier(config.lr, n, steps_div, layer.neuron.input_gain, extra, q.exp, unit_bits)
        key = arith.rounding_key(config.seed, update_index, i)
        done = None
        # |grad| <= N * max|x| * 127 * sum_t 2**shift_t; the fused kernel multiplies in int64,
        # so it only runs where grad * m cannot wrap (the reference falls back to exact ints).
        grad_bound = n * int(xin.max(initial=0)) * 127 * int(sum(1 << int(s_) for s_ in shifts))
        if kernels.dense_update is not None and arith.update_fits_int64(grad_bound, m, k):
            done = kernels.dense_update(xin, deltas, shifts, q.master, m, k, key, index=trace.sparse.get(i))
        if done is not None:
            master, w8, sat, sat_w8 = done
        else:
            fused = kernels.outer_acc_steps
            grad = fused(xin, deltas, shifts) if fused else outer_acc_steps_ref(kernels, xin, deltas, shifts)
            rows = np.flatnonzero(xin.reshape(-1, xin.shape[-1]).any(axis=0))
            master, sat = arith.apply_update(q.master, grad, m, k, key, rows)
            w8 = arith.w8_from_master(master)
            sat_w8 = int(np.count_nonzero(np.abs(w8) == 127))
        new[i] = replace(q, master=master, w8=w8)
        stats.saturated_master += sat
        stats.saturated_w8 += sat_w8
        stats.shifts[i] = shifts.tolist()
    return new, stats


def real_gradients(spec: NetworkSpec, qnet: QNet, x: np.ndarray, y: np.ndarray, feedback: dict[int, np.ndarray],
                   mode: str) -> dict[int, np.ndarray]:
    """Per trainable layer, the gradient the int8 rule applies (``dw = -lr * this`` before the
    stochastic rounding) as a float ``[out, in]`` array in real units, to compare with
    ``float_net``'s rules. Numpy reference kernels."""
    t_steps, n = x.shape[:2]
    train = [i for i, q in enumerate(qnet) if q.trainable]
    trace = forward(spec, qnet, x, keep=set(train))
    last = spec.synaptic_layers()[-1]
    norm = fn.feedback_norm(spec)
    if mode == "exact":
        e = arith.output_error_q(trace.counts, t_steps, y, spec.loss)
    else:
        e = step_errors(np.cumsum(trace.out_spikes, axis=0, dtype=np.int64), y, spec.loss, "online")
    out = {}
    for i in train:
        layer, q = spec.layers[i], qnet[i]
        b = None if i == last else feedback[i]
        if mode == "exact":
            deltas, shifts = exact_local_deltas(layer, q, trace.membranes[i], False, e, b)
        else:
            deltas, shifts = local_deltas(spec, qnet, i, trace.membranes[i], e if b is None else _project_int(e, b))
        grad = outer_acc_steps_ref(NUMPY, trace.inputs[i], deltas, shifts)
        unit_bits, extra, steps = update_scale(mode, i == last, norm, t_steps)
        out[i] = (grad.astype(np.float64) * (2.0 ** -unit_bits * layer.neuron.input_gain * extra / (n * steps))).T
    return out


def _project_int(e: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``e @ b`` exactly, int64: float64 BLAS while every sum stays below 2**53 (numpy's int64
    matmul has no BLAS and is ~10x slower), int64 otherwise. A broadcast ``e`` (exact mode, the
    same error at every step) is projected once and broadcast back."""
    if e.ndim == 3 and e.shape[0] > 1 and e.strides[0] == 0:
        return np.broadcast_to(_project_int(e[0], b), (e.shape[0], e.shape[1], b.shape[1]))
    bound = e.shape[-1] * (int(np.abs(e).max()) if e.size else 0) * (int(np.abs(b.astype(np.int64)).max()) if b.size else 0)
    if bound < (1 << 53):
        return (e.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return e @ b.astype(np.int64)


def outer_acc_steps_ref(kernels: Kernels, x: np.ndarray, d: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """sum_t (x_t^T d_t) << shift_t, int64 [in, out]."""
    acc = np.zeros((x.shape[-1], d.shape[-1]), np.int64)
    for t in range(x.shape[0]):
        if shifts[t] < 0:
            raise ValueError("negative shift")
        acc += kernels.outer_acc(x[t], d[t]) << int(shifts[t])
    return acc
