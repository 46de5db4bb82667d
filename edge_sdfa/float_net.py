"""Float32 SNN: forward pass and the three learning rules (BPTT, SDFA exact, SDFA online).

Inputs are ``x[T, N, *input_shape]``; the output is the firing rate of the last layer over T.
Gradients are returned as a list parallel to ``spec.layers`` (an empty dict for layers without
parameters). ``trainable`` selects which synaptic layers get gradients (default: all).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_sdfa import ops
from edge_sdfa.spec import Flatten, NetworkSpec, Pool2d, has_synapses

Params = list[dict[str, np.ndarray]]


# ---------------------------------------------------------------------------------------------
# parameters and feedback


def init_params(spec: NetworkSpec, seed: int = 0) -> Params:
    """PyTorch's default init (kaiming-uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    params: Params = []
    for layer in spec.layers:
        p = {}
        for name, shape in layer.param_shapes().items():
            fan_in = int(np.prod(layer.param_shapes()["weight"][1:]))
            bound = 1.0 / math.sqrt(fan_in)
            p[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        params.append(p)
    return params


def feedback_blocks(spec: NetworkSpec) -> list[tuple[int, int]]:
    """(first, last) layer index of every hidden SDFA block: a synaptic layer and the pooling or
    flatten layers after it. The feedback enters at the block's output, as in the reference."""
    syn = spec.synaptic_layers()
    blocks = []
    for a, b in zip(syn[:-1], syn[1:]):
        blocks.append((a, b - 1))
    return blocks


def feedback_matrices(spec: NetworkSpec, seed: int) -> dict[int, np.ndarray]:
    """Fixed random feedback B_l [classes, n_l] ~ N(0, 1) per hidden block, from ``seed``.

    Never trained, never stored: regenerated from the seed in the manifest. Keyed by the
    block's synaptic layer index. The reference's normalisation (one global 1/sqrt(max n_l))
    is applied in :func:`project_error`.
    """
    shapes = spec.shapes()
    out = {}
    for first, last in feedback_blocks(spec):
        n = int(np.prod(shapes[last + 1]))
        rng = np.random.default_rng([seed, first])
        out[first] = rng.standard_normal((spec.num_classes, n)).astype(np.float32)
    return out


def feedback_norm(spec: NetworkSpec) -> float:
    shapes = spec.shapes()
    sizes = [int(np.prod(shapes[last + 1])) for _, last in feedback_blocks(spec)]
    return 1.0 / math.sqrt(max(sizes)) if sizes else 1.0


def project_error(spec: NetworkSpec, feedback: dict[int, np.ndarray], e: np.ndarray) -> dict[int, np.ndarray]:
    norm = feedback_norm(spec)
    return {l: (e @ b) * norm for l, b in feedback.items()}


# ---------------------------------------------------------------------------------------------
# loss


def output_error(rates: np.ndarray, labels: np.ndarray, loss: str) -> tuple[float, np.ndarray]:
    """Loss on the rates and e = dLoss/d rate, averaged over the batch (as torch's losses)."""
    n, c = rates.shape
    onehot = np.zeros_like(rates)
    onehot[np.arange(n), labels] = 1.0
    if loss == "mse":
        diff = rates - onehot
        return float(np.mean(diff ** 2)), (2.0 * diff / (n * c)).astype(rates.dtype)
    z = rates - rates.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    value = float(-np.mean(np.log(p[np.arange(n), labels] + 1e-12)))
    return value, ((p - onehot) / n).astype(rates.dtype)


# ---------------------------------------------------------------------------------------------
# forward


@dataclass
class Trace:
    """What the backward passes need: each layer's input rows and, for synaptic layers, h and s."""

    inputs: list[np.ndarray]          # [T*N, *in_shape] per layer
    membranes: dict[int, np.ndarray]  # h [T, N, *out_shape] per synaptic layer
    outputs: list[np.ndarray]         # [T*N, *out_shape] per layer
    rates: np.ndarray                 # [N, classes]


def forward(spec: NetworkSpec, params: Params, x: np.ndarray, keep: bool = True) -> Trace:
    """Multi-step forward over ``x[T, N, ...]``; with ``keep=False`` only the rates are kept."""
    t_steps, n = x.shape[:2]
    dtype = next((p["weight"].dtype for p in params if "weight" in p), np.float32)
    rows = np.ascontiguousarray(x, dtype=dtype).reshape(t_steps * n, *x.shape[2:])
    inputs, outputs, membranes = [], [], {}
    for i, layer in enumerate(spec.layers):
        if keep:
            inputs.append(rows)
        if has_synapses(layer):
            cur = ops.synapse_forward(layer, params[i], rows)
            h, s = ops.neuron_forward(layer.neuron, cur.reshape(t_steps, n, *cur.shape[1:]))
            if keep:
                membranes[i] = h
            rows = s.reshape(t_steps * n, *s.shape[2:])
        elif isinstance(layer, Pool2d):
            rows = ops.pool_forward(layer, rows)
        elif isinstance(layer, Flatten):
            rows = rows.reshape(rows.shape[0], -1)
        if keep:
            outputs.append(rows)
    rates = rows.reshape(t_steps, n, -1).mean(axis=0)
    return Trace(inputs, membranes, outputs, rates)


def predict(spec: NetworkSpec, params: Params, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class predictions for ``x[N, T, ...]`` (sample-major, as data sets store it)."""
    preds = []
    for i in range(0, len(x), batch):
        xb = np.swapaxes(x[i:i + batch], 0, 1)
        preds.append(forward(spec, params, xb, keep=False).rates.argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# backward helpers


def _backward_layer(spec: NetworkSpec, params: Params, trace: Trace, i: int, grad_rows: np.ndarray,
                    t_steps: int, need_input_grad: bool) -> tuple[dict, np.ndarray | None]:
    """Gradient of one layer given dL/d(its output rows)."""
    layer = spec.layers[i]
    x_in = trace.inputs[i]
    if has_synapses(layer):
        h = trace.membranes[i]
        s = trace.outputs[i].reshape(h.shape)
        g_cur = ops.neuron_backward(layer.neuron, h, s, grad_rows.reshape(h.shape))
        g_cur = g_cur.reshape(grad_rows.shape)
        return ops.synapse_grads(layer, params[i], x_in, g_cur, need_input_grad)
    if isinstance(layer, Pool2d):
        return {}, ops.pool_backward(layer, x_in, trace.outputs[i], grad_rows)
    return {}, grad_rows.reshape(x_in.shape)


def _output_spike_grad(trace: Trace, e: np.ndarray, t_steps: int) -> np.ndarray:
    """rate = mean_t s_t, so dL/ds_t = e / T at every step."""
    n = e.shape[0]
    return np.broadcast_to(e[None] / t_steps, (t_steps, n, e.shape[1])).reshape(t_steps * n, -1).astype(e.dtype)


def _trainable_set(spec: NetworkSpec, trainable) -> set[int]:
    return set(spec.synaptic_layers()) if trainable is None else set(trainable)


# ---------------------------------------------------------------------------------------------
# learning rules


def bptt_grads(spec: NetworkSpec, params: Params, x: np.ndarray, y: np.ndarray, trainable=None):
    """Full BPTT with the ATan surrogate: (loss, grads, rates)."""
    t_steps = x.shape[0]
    trace = forward(spec, params, x)
    loss, e = output_error(trace.rates, y, spec.loss)
    train = _trainable_set(spec, trainable)
    first_needed = min(train) if train else len(spec.layers)
    grads: list[dict] = [{} for _ in spec.layers]
    g = _output_spike_grad(trace, e, t_steps)
    for i in range(len(spec.layers) - 1, first_needed - 1, -1):
        layer_grads, g = _backward_layer(spec, params, trace, i, g, t_steps, need_input_grad=i > first_needed)
        if i in train:
            grads[i] = layer_grads
    return loss, grads, trace.rates


def sdfa_exact_grads(spec: NetworkSpec, params: Params, x: np.ndarray, y: np.ndarray,
                     feedback: dict[int, np.ndarray], trainable=None):
    """SDFA as the reference implements it: the rate error projected once through B_l, applied at
    every time step to the block's output, then BPTT inside the block only. The output layer (and
    any pooling after it) gets the true gradient."""
    t_steps, n = x.shape[:2]
    trace = forward(spec, params, x)
    loss, e = output_error(trace.rates, y, spec.loss)
    train = _trainable_set(spec, trainable)
    grads: list[dict] = [{} for _ in spec.layers]
    last = spec.synaptic_layers()[-1]
    g = _output_spike_grad(trace, e, t_steps)
    for i in range(len(spec.layers) - 1, last - 1, -1):
        layer_grads, g = _backward_layer(spec, params, trace, i, g, t_steps, need_input_grad=i > last)
        if i in train:
            grads[i] = layer_grads
    projected = project_error(spec, feedback, e)
    for first, end in feedback_blocks(spec):
        if first not in train:
            continue
        fb = projected[first]  # [N, n_l]
        g = np.broadcast_to(fb[None], (t_steps, n, fb.shape[1])).reshape(t_steps * n, *trace.outputs[end].shape[1:])
        for i in range(end, first - 1, -1):
            layer_grads, g = _backward_layer(spec, params, trace, i, g, t_steps, need_input_grad=i > first)
        grads[first] = layer_grads
    return loss, grads, trace.rates


def sdfa_online_grads(spec: NetworkSpec, params: Params, x: np.ndarray, y: np.ndarray,
                      feedback: dict[int, np.ndarray], trainable=None):
    """SDFA with a per-step local update and no T-long history (memory O(1) in T).

    At step t the output error is taken on the running rate r_t = mean_{k<=t} s_out,k:
    e_t = dLoss/dr (r_t). The output layer gets dW += (e_t * sg'(h_t - v_th) * gain)^T x_t / T
    and a hidden layer dW += (g_t * sg'(h_t - v_th) * gain)^T x_t with g_t = B_l e_t (normalised),
    the reference's scales (e/T per output spike, B_l e per hidden spike, no 1/T), and sg' the
    ATan surrogate: the eligibility is the
    instantaneous derivative of the spike w.r.t. the input current (no trace through the
    membrane), so nothing but the current membrane state is carried between steps.
    Only dense-after-flatten and conv blocks without pooling are supported in this mode for
    hidden layers; pooling blocks route the feedback through the pool's argmax at that step.
    """
    t_steps, n = x.shape[:2]
    train = _trainable_set(spec, trainable)
    syn = spec.synaptic_layers()
    last = syn[-1]
    blocks = dict(feedback_blocks(spec))
    norm = feedback_norm(spec)
    grads: list[dict] = [{k: np.zeros_like(v) for k, v in params[i].items()} if i in train else {}
                         for i in range(len(spec.layers))]
    v_state = {i: None for i in syn}
    out_count = np.zeros((n, spec.num_classes), params[last]["weight"].dtype)
    loss_value = 0.0
    for t in range(t_steps):
        rows = np.asarray(x[t], dtype=params[last]["weight"].dtype)
        step_inputs, step_h, step_out = {}, {}, {}
        for i, layer in enumerate(spec.layers):
            step_inputs[i] = rows
            if has_synapses(layer):
                cur = ops.synapse_forward(layer, params[i], rows)
                v = v_state[i] if v_state[i] is not None else np.full_like(cur, layer.neuron.v_reset or 0.0)
                h, s, v_state[i] = ops.neuron_step(layer.neuron, v, cur)
                step_h[i] = h
                rows = s
            elif isinstance(layer, Pool2d):
                rows = ops.pool_forward(layer, rows)
            elif isinstance(layer, Flatten):
                rows = rows.reshape(rows.shape[0], -1)
            step_out[i] = rows
        out_count += rows.reshape(n, -1)
        loss_value, e_t = output_error(out_count / (t + 1), y, spec.loss)
        for i in syn:
            if i not in train:
                continue
            layer = spec.layers[i]
            if i == last:
                g = e_t.reshape(step_h[i].shape)
            else:
                end = blocks[i]
                g = ((e_t @ feedback[i]) * norm).reshape(step_out[end].shape)
                for j in range(end, i, -1):  # route through pooling / flatten of the block
                    lj = spec.layers[j]
                    if isinstance(lj, Pool2d):
                        g = ops.pool_backward(lj, step_inputs[j], step_out[j], g)
                    else:
                        g = g.reshape(step_inputs[j].shape)
            # as the reference: e/T reaches the output spikes, B_l e (no 1/T) a hidden block's
            scale = layer.neuron.input_gain / t_steps if i == last else layer.neuron.input_gain
            delta = g * ops.atan_surrogate_grad(step_h[i] - layer.neuron.v_threshold) * scale
            layer_grads, _ = ops.synapse_grads(layer, params[i], step_inputs[i], delta, need_input_grad=False)
            for k, val in layer_grads.items():
                grads[i][k] += val
    return loss_value, grads, out_count / t_steps


# ---------------------------------------------------------------------------------------------
# optimisers (explicit state, returned)


@dataclass
class OptimizerState:
    kind: str
    step: int
    m: list[dict]
    v: list[dict]


def optimizer_init(kind: str, params: Params) -> OptimizerState:
    if kind not in ("sgd", "adam"):
        from edge_sdfa.errors import UserError
        raise UserError(f"unknown optimizer {kind!r} (expected 'sgd' or 'adam')")
    zeros = [{k: np.zeros_like(v) for k, v in p.items()} for p in params]
    zeros2 = [{k: np.zeros_like(v) for k, v in p.items()} for p in params]
    return OptimizerState(kind, 0, zeros, zeros2)


def optimizer_step(params: Params, grads: list[dict], state: OptimizerState, lr: float,
                   momentum: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                   weight_decay: float = 0.0) -> tuple[Params, OptimizerState]:
    """One SGD (with optional momentum) or Adam step, as torch.optim implements them."""
    step = state.step + 1
    new_params = []
    for i, p in enumerate(params):
        q = dict(p)
        for k, g in grads[i].items():
            if weight_decay:
                g = g + weight_decay * p[k]
            if state.kind == "adam":
                state.m[i][k] = betas[0] * state.m[i][k] + (1 - betas[0]) * g
                state.v[i][k] = betas[1] * state.v[i][k] + (1 - betas[1]) * g * g
                mhat = state.m[i][k] / (1 - betas[0] ** step)
                vhat = state.v[i][k] / (1 - betas[1] ** step)
                q[k] = (p[k] - lr * mhat / (np.sqrt(vhat) + eps)).astype(p[k].dtype)
            else:
                if momentum:
                    state.m[i][k] = momentum * state.m[i][k] + g
                    g = state.m[i][k]
                q[k] = (p[k] - lr * g).astype(p[k].dtype)
        new_params.append(q)
    return new_params, OptimizerState(state.kind, step, state.m, state.v)
