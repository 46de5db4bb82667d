"""The int8 arithmetic definitions shared by every executor and backend (the executable spec).

Fixed-point conventions (all exponents are powers of two, "units" means the value of one LSB):
- weights ``w8`` int8, real value ``w8 * 2**-exp``; trainable layers keep an int16 master copy
  ``master`` in units ``2**-(exp + MASTER_EXTRA_BITS)``; ``w8 = clip(round(master / 2**8), ±127)``.
- currents, membrane, threshold and bias are int32/int64 in weight units ``2**-exp``.
- LIF decay is ``DECAY_BITS``-bit fixed point: ``h = v + floor((I - (v - v_r)) * decay_q / 2**12)``.
- the surrogate derivative is a lookup table ``SG_LUT`` in units ``2**-SG_BITS``, indexed by
  ``h - v_th`` at a resolution of ``2**-SG_RES_BITS`` over ``[-SG_RANGE, SG_RANGE)``.
- the output error is ``e_q = round(e_sample * 2**ERR_BITS)`` (per-sample error, the 1/N of a
  batch mean is folded into the update multiplier).
- feedback matrices are ``B_q = clip(round(B * 2**FB_BITS), ±127)`` from the same seeded normal
  draw as the float rule.
- local errors are brought to int8 with a per-step dynamic shift (NITI-style), accumulated as
  ``x^T delta`` in int32 and summed in int64 at their shift.
- updates are stochastically rounded with a counter-based generator (splitmix64 of
  (seed, update, layer, element index)), so any executor can draw any element in any order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.spec import NeuronSpec

MASTER_EXTRA_BITS = 8
DECAY_BITS = 12
SG_BITS = 8
SG_RES_BITS = 4
SG_RANGE = 4
ERR_BITS = 12
FB_BITS = 4
DELTA_BITS = 7  # local errors fit int8: |delta| <= 127
ELIG_BITS = 12  # the exact rule's in-layer BPTT eligibility c_t, units 2**-ELIG_BITS
CARRY_BITS = 12  # leak * dv_t/dh_t per surrogate bin (carry_lut), units 2**-CARRY_BITS
ELIG_LIMIT = (1 << 40) - 1  # c_t saturates here, so g * c_t fits int64 for |g| <= G_LIMIT
G_LIMIT = 1 << 22  # bound of the error reaching the spikes (CE/MSE: |e_q @ B_q| <= 2**20)
FLOAT_EXACT_LIMIT = 1 << 24

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# scales


def weight_exponent(max_abs: float, headroom: float = 1.0, bits: int = 8) -> int:
    """Largest exponent e with ``max_abs * headroom * 2**e <= 2**(bits-1) - 1``."""
    if not max_abs > 0:
        return 7
    return int(math.floor(math.log2(((1 << (bits - 1)) - 1) / (max_abs * headroom))))


def quantize_weight(w: np.ndarray, exp: int) -> tuple[np.ndarray, int]:
    """int8 weights and the number of values that saturated at ±127."""
    q = np.round(np.asarray(w, np.float64) * 2.0 ** exp)
    sat = int(np.count_nonzero(np.abs(q) > 127))
    return np.clip(q, -127, 127).astype(np.int8), sat


def master_from_w8(w8: np.ndarray) -> np.ndarray:
    return (w8.astype(np.int16) << MASTER_EXTRA_BITS).astype(np.int16)


def w8_from_master(master: np.ndarray) -> np.ndarray:
    """Round half up to int8, saturating at ±127."""
    r = (master.astype(np.int32) + (1 << (MASTER_EXTRA_BITS - 1))) >> MASTER_EXTRA_BITS
    return np.clip(r, -127, 127).astype(np.int8)


# ---------------------------------------------------------------------------------------------
# neurons


def neuron_constants(neuron: NeuronSpec, exp: int) -> dict[str, int]:
    """Threshold, reset and decay of a neuron in the fixed point of a layer with weight exponent exp.

    The spike test is ``h >= vth``. A neuron that spikes on ``v > v_threshold`` (snnTorch, Norse)
    gets ``vth + 1``: for integer membranes ``h > vth`` is ``h >= vth + 1`` (exact; its surrogate
    centre moves by one LSB). With reset by subtraction the subtracted amount would move too, so
    that combination is refused."""
    vth = int(round(neuron.v_threshold * 2 ** exp))
    if neuron.spike_if == ">":
        if neuron.v_reset is None:
            raise UserError("a neuron that spikes on v > v_threshold and resets by subtraction is not in the int8 spec "
                            "(it fires on h >= vth and subtracts vth); re-import with --spike-if '>='")
        vth += 1
    return {
        "vth": vth,
        "vreset": int(round((neuron.v_reset or 0.0) * 2 ** exp)),
        "decay": int(round((1 << DECAY_BITS) / neuron.tau)) if neuron.kind == "lif" else 0,
    }


def neuron_step_int(neuron: NeuronSpec, const: dict[str, int], v: np.ndarray, cur: np.ndarray):
    """One fixed-point neuron step on int64 arrays: returns (h, spikes uint8, new v)."""
    vr = const["vreset"]
    if neuron.kind == "lif":
        if neuron.decay_input:
            h = v + (((cur - (v - vr)) * const["decay"]) >> DECAY_BITS)
        else:
            h = v - (((v - vr) * const["decay"]) >> DECAY_BITS) + cur
    else:
        h = v + cur
    s = h >= const["vth"]
    if neuron.v_reset is None:
        v_new = h - const["vth"] * s
    else:
        v_new = np.where(s, vr, h)
    return h, s.astype(np.uint8), v_new


def decay_fraction(decay: int) -> tuple[int, int]:
    """``decay / 2**DECAY_BITS`` as ``odd / 2**shift`` (lowest terms)."""
    shift = DECAY_BITS
    while decay and decay % 2 == 0 and shift > 0:
        decay //= 2
        shift -= 1
    return decay, shift


@dataclass(frozen=True)
class NeuronPlan:
    """``neuron_step_int`` as straight-line integer operations, for executors that build graphs.

    The ONNX and TFLite exporters translate these operations one by one into their operators and
    know nothing of the neuron model. Registers: ``v`` (the membrane, ``vreset`` before step 0),
    ``cur`` (this step's current); ``step`` computes the spike ``s`` (bool), ``reset`` the new
    ``v``. An operation is ``(dst, op, *args)``, an argument a register name or an int constant:
    ``add a b``, ``sub a b``, ``mul a k``, ``shr a k`` (floor of ``a / 2**k``), ``ge a b`` (bool),
    ``select c a b`` (``a`` where ``c`` else ``b``). Every intermediate is bounded by
    ``intermediate_bound``.
    """
    step: tuple[tuple, ...]
    reset: tuple[tuple, ...]
    vth: int
    vreset: int
    mul_max: int  # largest multiplier of a ``mul``

    def intermediate_bound(self, current_bound: int, t_steps: int) -> int:
        """A bound of |any register| over ``t_steps`` steps with |current| <= current_bound."""
        vr, vth = abs(self.vreset), abs(self.vth)
        mem = t_steps * (current_bound + vr + vth + 1) + vr + vth
        return (current_bound + mem + vr) * max(self.mul_max, 1) + mem + current_bound


def neuron_plan(neuron: NeuronSpec, const: dict[str, int]) -> NeuronPlan:
    """The operations of ``neuron_step_int`` for ``neuron`` with ``const = neuron_constants(...)``."""
    vth, vr = const["vth"], const["vreset"]
    odd, shift = decay_fraction(const["decay"]) if neuron.kind == "lif" else (0, 0)
    ops: list[tuple] = []

    def decayed(src: str) -> str | None:  # floor(src * decay / 2**DECAY_BITS); None when decay is 0
        if odd == 0:
            return None
        if odd != 1:
            ops.append(("d", "mul", src, odd))
            src = "d"
        if shift:
            ops.append(("d", "shr", src, shift))
            src = "d"
        return src

    if neuron.kind != "lif":
        ops.append(("h", "add", "v", "cur"))
    elif neuron.decay_input and odd == 0:  # the current never reaches the membrane: keep its shape
        ops += [("d", "mul", "cur", 0), ("h", "add", "v", "d")]
    elif neuron.decay_input:  # h = v + floor((cur - (v - vr)) * decay / 2**DECAY_BITS)
        ops.append(("d", "sub", "cur", "v"))
        if vr:
            ops.append(("d", "add", "d", vr))
        ops.append(("h", "add", "v", decayed("d")))
    else:  # h = v - floor((v - vr) * decay / 2**DECAY_BITS) + cur
        if vr and odd:
            ops.append(("d", "sub", "v", vr))
        f = decayed("d" if vr else "v")
        if f is None:
            ops.append(("h", "add", "v", "cur"))
        else:
            ops += [("h", "sub", "v", f), ("h", "add", "h", "cur")]
    ops.append(("s", "ge", "h", vth))
    if neuron.v_reset is None:
        reset = (("r", "sub", "h", vth), ("v", "select", "s", "r", "h"))
    else:
        reset = (("v", "select", "s", vr, "h"),)
    return NeuronPlan(tuple(ops), reset, vth, vr, odd)


def run_neuron_plan(plan: NeuronPlan, cur: np.ndarray) -> np.ndarray:
    """Spikes ``[T, ...]`` uint8 of a plan run from rest over currents ``cur [T, ...]`` (numpy int64)."""
    fns = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "shr": np.right_shift,
           "ge": np.greater_equal, "select": np.where}
    v = np.full(cur.shape[1:], plan.vreset, np.int64)
    out = np.empty(cur.shape, np.uint8)
    for t in range(cur.shape[0]):
        reg = {"v": v, "cur": cur[t].astype(np.int64)}
        for dst, op, *args in plan.step + plan.reset:
            reg[dst] = fns[op](*(reg[a] if isinstance(a, str) else np.int64(a) for a in args))
        out[t] = reg["s"]
        v = reg["v"]
    return out


def _build_sg_lut() -> np.ndarray:
    n = 2 * SG_RANGE << SG_RES_BITS
    centers = (np.arange(n) - n // 2 + 0.5) / (1 << SG_RES_BITS)
    sg = 1.0 / (1.0 + (np.pi * centers) ** 2)  # ATan, alpha = 2
    return np.round(sg * (1 << SG_BITS)).astype(np.int64)


SG_LUT = _build_sg_lut()


def surrogate_index(h: np.ndarray, vth: int, exp: int) -> np.ndarray:
    """The LUT index (uint8, in ``[0, len(SG_LUT))``) of ``h - vth`` at resolution 2**-SG_RES_BITS."""
    d = np.asarray(h).astype(np.int64) - vth
    shift = exp - SG_RES_BITS
    idx = (d >> shift) if shift >= 0 else (d << -shift)
    half = SG_RANGE << SG_RES_BITS
    return (np.clip(idx, -half, half - 1) + half).astype(np.uint8)


def surrogate_q(h: np.ndarray, vth: int, exp: int) -> np.ndarray:
    """Surrogate derivative at ``h - vth`` from the LUT, in units 2**-SG_BITS (int64)."""
    return SG_LUT[surrogate_index(h, vth, exp)]


def carry_lut(neuron: NeuronSpec) -> np.ndarray:
    """``leak * dv_t/dh_t`` per surrogate bin, int64 in units 2**-CARRY_BITS (the exact rule).

    The reference does not detach the reset, so with a hard reset ``v_t = h_t (1 - s_t) + v_r s_t``
    gives ``dv/dh = (1 - s) + (v_r - h) sg'(h - v_th)``; a soft reset ``v = h - v_th s`` gives
    ``1 - v_th sg'``. In int8 ``h`` is taken at its bin's centre (``v_th + d``, ``|d| < 4``; the
    exact ``h`` moves the term by at most ``sg'/32`` inside the table, and less than 0.02 beyond
    it), so the whole in-layer BPTT needs nothing but the uint8 bin of every step: one table per
    neuron type, computed in float64 from +,-,*,/ only (the same integers on every machine).
    """
    n = 2 * SG_RANGE << SG_RES_BITS
    half = n // 2
    centers = (np.arange(n) - half + 0.5) / (1 << SG_RES_BITS)
    sg = 1.0 / (1.0 + (np.pi * centers) ** 2)  # ATan, alpha = 2, as SG_LUT
    if neuron.v_reset is None:
        dvdh = 1.0 - neuron.v_threshold * sg
    else:
        spiked = np.arange(n) >= half
        dvdh = (~spiked) + (neuron.v_reset - neuron.v_threshold - centers) * sg
    return np.round(neuron.leak * dvdh * (1 << CARRY_BITS)).astype(np.int64)


def shift_round(x: np.ndarray, s: int) -> np.ndarray:
    """``x / 2**s`` rounded half up (``s >= 1``), int64."""
    return (x + (1 << (s - 1))) >> s


def exact_eligibility(idx: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """The in-layer BPTT factor of the exact rule, int64 ``[T, ...]`` in units 2**-ELIG_BITS.

    When the same ``g`` reaches the spikes at every step (the exact rule's feedback; the output
    layer's ``e/T``), BPTT through the layer's own recurrence gives ``dL/dh_t = g * c_t`` with
    ``c_t = sg'_t + leak * dv_t/dh_t * c_{t+1}`` and ``c_T = 0``. Computed backwards from the bins
    ``idx [T, ...]`` (``surrogate_index``): ``c_t = SG_LUT[i_t] << 4 + shift_round(c_{t+1} *
    carry[i_t], CARRY_BITS)``, saturating at ``±ELIG_LIMIT``.
    """
    idx = np.asarray(idx)
    out = np.empty(idx.shape, np.int64)
    nxt = np.zeros(idx.shape[1:], np.int64)
    for t in range(idx.shape[0] - 1, -1, -1):
        i = idx[t]
        c = (SG_LUT[i] << (ELIG_BITS - SG_BITS)) + shift_round(nxt * carry[i], CARRY_BITS)
        nxt = np.clip(c, -ELIG_LIMIT, ELIG_LIMIT)
        out[t] = nxt
    return out


def exact_deltas(idx: np.ndarray, g: np.ndarray, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 local errors of the exact rule: ``delta_t = to_int8_dynamic(g * c_t)`` per step.

    ``idx [T, N, M]`` surrogate bins, ``g [N, M]`` the error reaching the spikes at every step
    (``|g| <= G_LIMIT``: the projected or the output error), ``carry = carry_lut(neuron)``.
    The products are in units 2**-(g's bits + ELIG_BITS). Returns (int8 [T, N, M], shifts [T]).
    """
    g = np.asarray(g, np.int64)
    if g.size and int(np.abs(g).max()) > G_LIMIT:
        raise ValueError(f"exact_deltas: |g| = {int(np.abs(g).max())} exceeds 2**22")
    c = exact_eligibility(idx, carry)
    deltas = np.empty(c.shape, np.int8)
    shifts = np.zeros(c.shape[0], np.int64)
    for t in range(c.shape[0]):
        deltas[t], shifts[t] = to_int8_dynamic(g * c[t])
    return deltas, shifts


# ---------------------------------------------------------------------------------------------
# errors


def output_error_q(counts: np.ndarray, steps: int, labels: np.ndarray, loss: str) -> np.ndarray:
    """Per-sample dLoss/d rate at rate = counts / steps, as int64 in units 2**-ERR_BITS.

    CE: softmax(rate) - onehot. MSE: 2 (rate - onehot) / classes. Computed in float64 from integers,
    the same function in every backend.
    """
    rates = counts.astype(np.float64) / steps
    n, c = rates.shape
    onehot = np.zeros_like(rates)
    onehot[np.arange(n), labels] = 1.0
    if loss == "mse":
        e = 2.0 * (rates - onehot) / c
    else:
        z = rates - rates.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        e = p - onehot
    return np.round(e * (1 << ERR_BITS)).astype(np.int64)


def loss_value(counts: np.ndarray, steps: int, labels: np.ndarray, loss: str) -> float:
    rates = counts.astype(np.float64) / steps
    n, c = rates.shape
    if loss == "mse":
        onehot = np.zeros_like(rates)
        onehot[np.arange(n), labels] = 1.0
        return float(np.mean((rates - onehot) ** 2))
    z = rates - rates.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(n), labels]))


def feedback_q(b: np.ndarray) -> np.ndarray:
    return np.clip(np.round(b.astype(np.float64) * (1 << FB_BITS)), -127, 127).astype(np.int8)


def to_int8_dynamic(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Shift int64 values right (round half up) until they fit int8; returns (delta8, shift)."""
    m = int(np.abs(raw).max()) if raw.size else 0
    shift = max(0, m.bit_length() - DELTA_BITS)
    if shift == 0:
        return raw.astype(np.int8), 0
    q = (raw + (1 << (shift - 1))) >> shift
    return np.clip(q, -127, 127).astype(np.int8), shift


# ---------------------------------------------------------------------------------------------
# the weight update


def update_multiplier(lr: float, batch: int, steps: int, gain: float, extra: float, exp: int,
                      unit_bits: int) -> tuple[int, int]:
    """(m, k) with m / 2**k ~= lr * gain * extra / (batch * steps) * 2**(exp + 8 - unit_bits).

    It converts an accumulated int64 gradient (in units 2**-unit_bits) into master-copy LSBs.
    """
    real = lr * gain * extra / (batch * steps) * 2.0 ** (exp + MASTER_EXTRA_BITS - unit_bits)
    if not real > 0 or not math.isfinite(real):
        return 0, 0
    k = 15 - int(math.floor(math.log2(real)))
    k = max(0, min(k, 62))
    m = int(round(real * 2.0 ** k))
    return m, k


def update_scale(lr: float, batch: int, steps: int, gain: float, exp: int,
                 hidden_norm: float | None, mode: str = "online") -> tuple[int, int]:
    """(m, k) of one layer's SDFA update, the one place that scales it (every executor calls it).

    As the reference: the output layer's spikes (``hidden_norm`` None) get ``e/T`` at every step
    (its true gradient), a hidden block's output gets ``B_l e * hidden_norm`` at every step with
    no 1/T (``steps`` only divides the output layer). ``online`` accumulates ``g * sg`` in units
    2**-(ERR_BITS+SG_BITS), ``exact`` ``g * c_t`` (``exact_eligibility``) in 2**-(ERR_BITS+ELIG_BITS);
    a hidden layer's ``g = e @ B_q`` has one more factor 2**-FB_BITS.
    """
    elig = ELIG_BITS if mode == "exact" else SG_BITS
    if hidden_norm is None:
        return update_multiplier(lr, batch, steps, gain, 1.0, exp, ERR_BITS + elig)
    return update_multiplier(lr, batch, 1, gain, hidden_norm, exp, ERR_BITS + FB_BITS + elig)


def splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def rounding_key(seed: int, update: int, layer: int) -> int:
    """64-bit key of one layer's update; element i draws splitmix64(key ^ i)."""
    z = np.array([(seed * 0x100000001B3 + update * 0x9E3779B1 + layer * 0x85EBCA77) & _MASK64], dtype=np.uint64)
    return int(splitmix64(z)[0])


def random_bits(key: int, index: np.ndarray, k: int) -> np.ndarray:
    """Uniform integers in [0, 2**k) for flat element indices, as int64."""
    if k == 0:
        return np.zeros(index.shape, np.int64)
    z = splitmix64(np.asarray(index, dtype=np.uint64) ^ _U64(key))
    return (z >> _U64(64 - k)).astype(np.int64)


def update_fits_int64(grad_abs_bound: int, m: int, k: int) -> bool:
    """True when ``grad * m + r`` (r < 2**k) cannot leave the int64 range."""
    return grad_abs_bound * m + (1 << k) < (1 << 63)


def _scaled_round(grad: np.ndarray, m: int, k: int, r: np.ndarray) -> np.ndarray:
    """floor((grad * m + r) / 2**k) exactly: int64 where it cannot wrap, Python ints otherwise."""
    g = grad.astype(np.int64)
    bound = int(np.abs(g).max(initial=0))
    if update_fits_int64(bound, m, k):
        return (g * m + r) >> k
    exact = (g.astype(object) * m + r.astype(object)) >> k
    return np.clip(exact, -(1 << 62), 1 << 62).astype(np.int64)


def apply_update(master: np.ndarray, grad: np.ndarray, m: int, k: int, key: int,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """master - stochastic_round(grad * m / 2**k), saturating at int16; returns (master, saturated).

    ``rows`` optionally lists the rows of a 2-D gradient that may be non-zero (rows of inputs that
    never fired give exactly zero change, so skipping them changes nothing).
    """
    out = master.copy()
    flat_cols = master.shape[1] if master.ndim == 2 else 1
    if rows is None:
        sel_grad = grad.reshape(-1)
        idx = np.arange(grad.size, dtype=np.int64)
        target = out.reshape(-1)
        delta = _scaled_round(sel_grad, m, k, random_bits(key, idx, k))
        new = target.astype(np.int64) - delta
        sat = int(np.count_nonzero((new > 32767) | (new < -32767)))
        target[:] = np.clip(new, -32767, 32767).astype(np.int16)
        return out, sat
    rows = np.asarray(rows, dtype=np.int64)
    idx = (rows[:, None] * flat_cols + np.arange(flat_cols, dtype=np.int64)[None, :])
    delta = _scaled_round(grad[rows], m, k, random_bits(key, idx, k))
    new = out[rows].astype(np.int64) - delta
    sat = int(np.count_nonzero((new > 32767) | (new < -32767)))
    out[rows] = np.clip(new, -32767, 32767).astype(np.int16)
    return out, sat


def check_float_exact(bound: float, what: str) -> bool:
    """True when float32 BLAS on these integer values is exact (every partial sum < 2**24)."""
    return bound < FLOAT_EXACT_LIMIT
