"""Float kernels for the layer specs: synaptic ops (dense, conv via im2col), pooling, neurons.

Everything works on a leading "rows" axis B = T*N (time-major), so one BLAS call covers all time
steps of a batch. Neuron dynamics run step by step over T.
"""
from __future__ import annotations

import numpy as np

from edge_sdfa.spec import Conv2d, Dense, NeuronSpec, Pool2d

# ---------------------------------------------------------------------------------------------
# surrogate and neuron dynamics

ATAN_ALPHA = 2.0


def atan_surrogate_grad(x: np.ndarray, alpha: float = ATAN_ALPHA) -> np.ndarray:
    """d spike / d (h - v_th) of SpikingJelly's ATan surrogate: (alpha/2) / (1 + (pi/2*alpha*x)^2)."""
    return (alpha / 2.0) / (1.0 + (np.pi / 2.0 * alpha * x) ** 2)


def spike_fn(x: np.ndarray) -> np.ndarray:
    """Heaviside spike, ``x >= 0`` (SpikingJelly). Tests swap in a smooth primitive of the surrogate."""
    return (x >= 0).astype(x.dtype)


def neuron_step(neuron: NeuronSpec, v: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One time step: returns (h, spikes, new_v); h is the membrane before spike and reset."""
    v_rest = neuron.v_reset if neuron.v_reset is not None else 0.0
    if neuron.kind == "lif":
        if neuron.decay_input:
            h = v + (current - (v - v_rest)) / neuron.tau
        else:
            h = v - (v - v_rest) / neuron.tau + current
    else:
        h = v + current
    s = spike_fn(h - neuron.v_threshold)
    if neuron.v_reset is None:
        v_new = h - neuron.v_threshold * s
    else:
        v_new = h * (1.0 - s) + neuron.v_reset * s
    return h, s, v_new


def neuron_forward(neuron: NeuronSpec, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multi-step dynamics over ``current[T, ...]`` from v = v_reset; returns (h, spikes), both [T, ...]."""
    v = np.full(current.shape[1:], neuron.v_reset or 0.0, dtype=current.dtype)
    hs = np.empty_like(current)
    ss = np.empty_like(current)
    for t in range(current.shape[0]):
        hs[t], ss[t], v = neuron_step(neuron, v, current[t])
    return hs, ss


def neuron_backward(neuron: NeuronSpec, h: np.ndarray, s: np.ndarray, grad_s: np.ndarray) -> np.ndarray:
    """BPTT through one layer's membrane recurrence (reset not detached, as in the reference).

    Given dL/ds_t for every t, returns dL/d current_t.
    """
    sg = atan_surrogate_grad(h - neuron.v_threshold)
    leak, gain = neuron.leak, neuron.input_gain
    grad_x = np.empty_like(grad_s)
    grad_v = np.zeros(grad_s.shape[1:], dtype=grad_s.dtype)
    for t in range(grad_s.shape[0] - 1, -1, -1):
        if neuron.v_reset is None:
            dv_dh = 1.0 - neuron.v_threshold * sg[t]
        else:
            dv_dh = (1.0 - s[t]) + (neuron.v_reset - h[t]) * sg[t]
        grad_h = grad_s[t] * sg[t] + grad_v * dv_dh
        grad_x[t] = grad_h * gain
        grad_v = grad_h * leak
    return grad_x


# ---------------------------------------------------------------------------------------------
# synaptic ops on rows [B, ...]


def im2col(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """[B, C, H, W] -> patches [B, OH, OW, C*k*k] (C-major, then kh, kw, like a torch weight)."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    b, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    sb, sc, sh, sw = x.strides
    view = np.lib.stride_tricks.as_strided(
        x, (b, oh, ow, c, k, k), (sb, sh * stride, sw * stride, sc, sh, sw), writeable=False)
    return view.reshape(b, oh, ow, c * k * k)


def col2im(cols: np.ndarray, shape: tuple[int, ...], k: int, stride: int, pad: int) -> np.ndarray:
    """Adjoint of im2col: patches [B, OH, OW, C*k*k] -> [B, C, H, W] with overlaps summed."""
    b, c, h, w = shape
    hp, wp = h + 2 * pad, w + 2 * pad
    oh, ow = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.zeros((b, c, hp, wp), dtype=cols.dtype)
    cols = cols.reshape(b, oh, ow, c, k, k)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return out[:, :, pad:pad + h, pad:pad + w] if pad else out


def synapse_forward(layer: Dense | Conv2d, params: dict, x: np.ndarray) -> np.ndarray:
    """Input current of a synaptic layer for rows x[B, *in_shape]."""
    w = params["weight"]
    if isinstance(layer, Dense):
        out = x @ w.T
    else:
        cols = im2col(x, layer.kernel_size, layer.stride, layer.padding)
        out = (cols @ w.reshape(w.shape[0], -1).T).transpose(0, 3, 1, 2)
    if "bias" in params:
        out = out + (params["bias"] if isinstance(layer, Dense) else params["bias"][:, None, None])
    return out


def synapse_grads(layer: Dense | Conv2d, params: dict, x: np.ndarray, grad_out: np.ndarray,
                  need_input_grad: bool) -> tuple[dict, np.ndarray | None]:
    """Weight (and bias) gradients of a synaptic layer, and optionally the input gradient."""
    w = params["weight"]
    grads = {}
    if isinstance(layer, Dense):
        grads["weight"] = grad_out.T @ x
        if "bias" in params:
            grads["bias"] = grad_out.sum(0)
        gx = grad_out @ w if need_input_grad else None
        return grads, gx
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    cols = im2col(x, k, s, p)
    g = grad_out.transpose(0, 2, 3, 1)  # [B, OH, OW, out]
    g2 = g.reshape(-1, g.shape[-1])
    grads["weight"] = (g2.T @ cols.reshape(-1, cols.shape[-1])).reshape(w.shape)
    if "bias" in params:
        grads["bias"] = g2.sum(0)
    gx = None
    if need_input_grad:
        gcols = g @ w.reshape(w.shape[0], -1)
        gx = col2im(gcols, x.shape, k, s, p)
    return grads, gx


def pool_forward(layer: Pool2d, x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    k = layer.kernel_size
    xr = x[:, :, : h // k * k, : w // k * k].reshape(b, c, h // k, k, w // k, k)
    return xr.max(axis=(3, 5)) if layer.mode == "max" else xr.mean(axis=(3, 5))


def pool_backward(layer: Pool2d, x: np.ndarray, y: np.ndarray, grad_y: np.ndarray) -> np.ndarray:
    """Max pooling routes the gradient to the first maximum of each window (argmax routing)."""
    b, c, h, w = x.shape
    k = layer.kernel_size
    hh, ww = h // k, w // k
    gx = np.zeros_like(x)
    if layer.mode == "avg":
        g = np.repeat(np.repeat(grad_y, k, axis=2), k, axis=3) / (k * k)
        gx[:, :, : hh * k, : ww * k] = g
        return gx
    xr = x[:, :, : hh * k, : ww * k].reshape(b, c, hh, k, ww, k).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hh, ww, k * k)
    first = xr.argmax(axis=-1)
    onehot = np.zeros_like(xr)
    np.put_along_axis(onehot, first[..., None], 1.0, axis=-1)
    g = (onehot * grad_y[..., None]).reshape(b, c, hh, ww, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hh * k, ww * k)
    gx[:, :, : hh * k, : ww * k] = g
    return gx


def pool2d_int(rows: np.ndarray, k: int, mode: str) -> np.ndarray:
    """Integer k x k pooling of spikes/counts ``[B, C, H, W]`` (stride k, remainder dropped): max,
    or a sum wrapped to uint8 as ``astype`` does. Strided slices combined pairwise: the same values
    as a reduction over a reshaped 6-D view, several times faster (no multi-axis reduce)."""
    b, c, h, w = rows.shape
    oh, ow = h // k, w // k
    r = rows[:, :, : oh * k, : ow * k]
    if mode == "max":
        out = np.array(r[:, :, 0::k, 0::k])
        for i in range(k):
            for j in range(k):
                if i or j:
                    np.maximum(out, r[:, :, i::k, j::k], out=out)
        return out
    out = r[:, :, 0::k, 0::k].astype(np.int64)
    for i in range(k):
        for j in range(k):
            if i or j:
                out += r[:, :, i::k, j::k]
    return out.astype(np.uint8)
