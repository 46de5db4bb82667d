"""The int8 ``exact`` rule (the reference's SDFA: final-rate error, projected once, applied at every
step, BPTT through each layer's own recurrence) against an independent computation: the whole
update of a small network worked out with plain Python integers from the written definitions
(docs/learning-rule.md), sharing nothing with the implementation but its inputs (the int8
weights and feedback matrices)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdfa import float_net as fn
from edge_sdfa.int8 import arith
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import NeuronSpec, mlp


M64 = (1 << 64) - 1


def _splitmix(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _tables(tau, leak_on, vth_real, vreset_real):
    """SG'(bin) in 2**-8 and leak * dv/dh(bin) in 2**-12, from the formulas, per bin of 1/16."""
    sg_q, carry = [], []
    for i in range(128):
        c = (i - 64 + 0.5) / 16
        sg = 1.0 / (1.0 + (math.pi * c) * (math.pi * c))
        sg_q.append(round(sg * 256))
        spiked = i >= 64
        dvdh = (0.0 if spiked else 1.0) + (vreset_real - vth_real - c) * sg
        leak = 1.0 - 1.0 / tau if leak_on else 1.0
        carry.append(round(leak * dvdh * 4096))
    return sg_q, carry


def _hand_update(spec, qnet, fb, x, y, lr, seed, update_index):
    """The int8 exact update with Python ints only; returns {layer: (master, w8)}."""
    T, N = len(x), len(x[0])
    syn = spec.synaptic_layers()
    last = syn[-1]
    neuron = spec.layers[last].neuron
    assert neuron.kind == "lif" and neuron.decay_input and neuron.v_reset == 0.0
    sg_q, carry = _tables(neuron.tau, True, neuron.v_threshold, neuron.v_reset)
    decay = round(4096 / neuron.tau)
    # forward: per layer, inputs [T][N][in] and bins [T][N][out]
    rows = [[list(map(int, x[t][n])) for n in range(N)] for t in range(T)]
    layer_in, layer_bins = {}, {}
    for li in syn:
        w8 = [[int(v) for v in r] for r in qnet[li].w8]  # [in][out]
        exp = qnet[li].exp
        vth = round(neuron.v_threshold * 2 ** exp)
        n_in, n_out = len(w8), len(w8[0])
        layer_in[li] = rows
        out, bins = [], []
        v = [[0] * n_out for _ in range(N)]
        for t in range(T):
            out_t, bins_t = [], []
            for n in range(N):
                s_row, b_row = [], []
                for j in range(n_out):
                    cur = sum(rows[t][n][k] * w8[k][j] for k in range(n_in))
                    h = v[n][j] + (((cur - v[n][j]) * decay) >> 12)
                    s = 1 if h >= vth else 0
                    v[n][j] = 0 if s else h
                    d = h - vth
                    idx = d >> (exp - 4) if exp >= 4 else d << (4 - exp)
                    b_row.append(min(max(idx, -64), 63) + 64)
                    s_row.append(s)
                out_t.append(s_row)
                bins_t.append(b_row)
            out.append(out_t)
            bins.append(bins_t)
        layer_bins[li] = bins
        rows = out
    counts = [[sum(rows[t][n][c] for t in range(T)) for c in range(spec.num_classes)] for n in range(N)]
    # output error per sample: round((softmax(rate) - onehot) * 2**12)
    e = []
    for n in range(N):
        r = [c / T for c in counts[n]]
        mx = max(r)
        p = [math.exp(v - mx) for v in r]
        z = sum(p)
        e.append([round((p[c] / z - (1.0 if c == y[n] else 0.0)) * 4096) for c in range(len(r))])
    result = {}
    norm = 1.0 / math.sqrt(max(spec.shapes()[i + 1][0] for i in syn[:-1]))
    for li in syn:
        q = qnet[li]
        n_in, n_out = q.w8.shape
        if li == last:
            g = e
            unit_bits, extra, steps = 12 + 12, 1.0, T
        else:
            b = [[int(v) for v in r] for r in fb[li]]
            g = [[sum(e[n][c] * b[c][j] for c in range(len(b))) for j in range(n_out)] for n in range(N)]
            unit_bits, extra, steps = 12 + 4 + 12, norm, 1
        bins = layer_bins[li]
        # c_t = SG[i_t] * 16 + round(c_{t+1} * carry[i_t] / 4096), c_T = 0
        elig = [[[0] * n_out for _ in range(N)] for _ in range(T)]
        for n in range(N):
            for j in range(n_out):
                nxt = 0
                for t in range(T - 1, -1, -1):
                    i = bins[t][n][j]
                    nxt = sg_q[i] * 16 + ((nxt * carry[i] + 2048) >> 12)
                    elig[t][n][j] = nxt
        grad = [[0] * n_out for _ in range(n_in)]
        for t in range(T):
            raw = [[g[n][j] * elig[t][n][j] for j in range(n_out)] for n in range(N)]
            big = max(abs(v) for r in raw for v in r)
            sh = max(0, big.bit_length() - 7)
            if sh:
                delta = [[min(127, max(-127, (v + (1 << (sh - 1))) >> sh)) for v in r] for r in raw]
            else:
                delta = raw
            xin = layer_in[li][t]
            for k in range(n_in):
                for j in range(n_out):
                    grad[k][j] += sum(xin[n][k] * delta[n][j] for n in range(N)) << sh
        real = lr * neuron.input_gain * extra / (N * steps) * 2.0 ** (q.exp + 8 - unit_bits)
        kk = 15 - math.floor(math.log2(real))
        m = round(real * 2 ** kk)
        key = _splitmix((seed * 0x100000001B3 + update_index * 0x9E3779B1 + li * 0x85EBCA77) & M64)
        master = [[int(v) for v in r] for r in q.master]
        w8 = []
        for k in range(n_in):
            wr = []
            for j in range(n_out):
                r = _splitmix(key ^ (k * n_out + j)) >> (64 - kk)
                new = master[k][j] - ((grad[k][j] * m + r) >> kk)
                master[k][j] = min(32767, max(-32767, new))
                wr.append(min(127, max(-127, (master[k][j] + 128) >> 8)))
            w8.append(wr)
        result[li] = (master, w8)
    return result


def _problem(seed, sizes=(12, 7, 4), T=5, N=3):
    spec = mlp(list(sizes), time_steps=T)
    params = [{k: v * 4.0 for k, v in p.items()} for p in fn.init_params(spec, seed)]
    qnet, _ = qn.quantize(spec, params)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(T, N, sizes[0])).astype(np.uint8) * (rng.random((T, N, sizes[0])) < 0.5)
    y = rng.integers(0, sizes[-1], N)
    return spec, qnet, x.astype(np.uint8), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_rule_equals_the_hand_computation(ks, seed):
    spec, qnet, x, y = _problem(seed)
    fb = qn.feedback_int8(spec, seed)
    cfg = qn.UpdateConfig(lr=2.0, mode="exact", seed=seed + 5)
    got, _ = qn.sdfa_update(spec, qnet, x, y, fb, cfg, 7, ks)
    want = _hand_update(spec, qnet, fb, x.tolist(), y.tolist(), 2.0, seed + 5, 7)
    changed = 0
    for li, (master, w8) in want.items():
        assert got[li].master.tolist() == master
        assert got[li].w8.tolist() == w8
        changed += int(np.count_nonzero(got[li].master != qnet[li].master))
    assert changed > 0


@pytest.mark.unit
def test_exact_rule_has_in_layer_bptt():
    """A neuron below threshold early and spiking later: the exact rule's eligibility at the early
    step carries the later surrogate (BPTT through the membrane), the online rule's does not."""
    neuron = NeuronSpec()
    carry = arith.carry_lut(neuron)
    far, near = 0, 64  # bin 0: h - vth = -4 (sg' ~ 0); bin 64: just above threshold
    idx = np.array([[[far]], [[near]]], np.uint8)
    c = arith.exact_eligibility(idx, carry)
    assert c[1, 0, 0] == arith.SG_LUT[near] << (arith.ELIG_BITS - arith.SG_BITS)
    # c_0 = sg'(far) + leak * dv/dh(far) * c_1, with dv/dh ~ 1 below threshold and leak = 1/2
    assert c[0, 0, 0] > 0.45 * c[1, 0, 0]
    assert arith.SG_LUT[far] * 16 < 0.05 * c[1, 0, 0]


@pytest.mark.unit
def test_reset_term_is_not_detached():
    """Spiking bins carry (v_reset - h) sg' < 0: the hard reset's gradient, as the reference."""
    carry = arith.carry_lut(NeuronSpec())
    assert np.all(carry[64:72] < 0)           # just above threshold: -(1 + d) sg' * leak
    assert carry[63] > 0 and carry[0] > 0     # below: (1 - (1 + d... ) sg') * leak > 0
    soft = arith.carry_lut(NeuronSpec(v_reset=None))
    assert soft[64] == round(0.5 * (1 - 1 / (1 + (np.pi / 32) ** 2)) * 4096)


def _cos(a, b):
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.unit
def test_exact_rule_gradients_match_the_reference_rule():
    """The int8 exact rule's gradient (before rounding) against float SDFA exact (= the reference
    to 3e-7) on the same int8 weights: same direction and size, hidden and output layer; the
    online rule's hidden/output ratio within 25% of the reference's (it was 1/T before)."""
    spec = mlp([96, 64, 10], time_steps=8)
    params = [{k: v * 3.0 for k, v in p.items()} for p in fn.init_params(spec, 4)]
    qnet, _ = qn.quantize(spec, params, headroom=2.0)
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(8, 64, 96)).astype(np.uint8) * (rng.random((8, 64, 96)) < 0.3)
    x = x.astype(np.uint8)
    y = rng.integers(0, 10, 64)
    _, ref, _ = fn.sdfa_exact_grads(spec, qn.dequantize(spec, qnet), x, y, fn.feedback_matrices(spec, 2))
    fb = qn.feedback_int8(spec, 2)
    exact = qn.real_gradients(spec, qnet, x, y, fb, "exact")
    online = qn.real_gradients(spec, qnet, x, y, fb, "online")
    ratio = {}
    for i, g in exact.items():
        r = ref[i]["weight"]
        assert np.linalg.norm(r) > 0
        assert _cos(g, r) > 0.99
        assert 0.93 < np.linalg.norm(g) / np.linalg.norm(r) < 1.07
        ratio[i] = np.linalg.norm(online[i]) / np.linalg.norm(r)
    assert 0.8 < ratio[0] / ratio[1] < 1.25


def _oracle_exact_deltas(idx, g, carry):
    """arith.exact_deltas with Python ints, element by element (saturation included)."""
    lim = (1 << 40) - 1
    t_n, n_n, m_n = idx.shape
    sg = [int(v) for v in arith.SG_LUT]
    c = [[[0] * m_n for _ in range(n_n)] for _ in range(t_n)]
    for n in range(n_n):
        for j in range(m_n):
            nxt = 0
            for t in range(t_n - 1, -1, -1):
                i = int(idx[t, n, j])
                nxt = max(-lim, min(lim, sg[i] * 16 + ((nxt * int(carry[i]) + 2048) >> 12)))
                c[t][n][j] = nxt
    deltas = np.zeros(idx.shape, np.int8)
    shifts = np.zeros(t_n, np.int64)
    for t in range(t_n):
        raw = [[int(g[n, j]) * c[t][n][j] for j in range(m_n)] for n in range(n_n)]
        sh = max(0, max(abs(v) for r in raw for v in r).bit_length() - 7)
        shifts[t] = sh
        for n in range(n_n):
            for j in range(m_n):
                v = raw[n][j]
                deltas[t, n, j] = min(127, max(-127, (v + (1 << (sh - 1))) >> sh)) if sh else v
    return deltas, shifts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(t=st.integers(1, 40), n=st.integers(1, 5), m=st.integers(1, 24), kind=st.sampled_from(["lif", "if"]),
       soft=st.booleans(), g_bits=st.integers(0, 22), grow=st.booleans(), project=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_exact_deltas_entry_point_matches_the_oracle(ks, t, n, m, kind, soft, g_bits, grow, project, seed):
    """Every kernel set's ``exact_deltas`` against Python ints: the largest errors allowed
    (2**22), IF neurons, and (``grow``) a carry table of +-2 per step that drives the eligibility
    into its saturation."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 128, (t, n, m)).astype(np.uint8)
    idx[rng.random(idx.shape) < 0.3] = rng.choice(np.array([0, 63, 64, 127], np.uint8))
    carry = arith.carry_lut(NeuronSpec(kind, v_reset=None if soft else 0.0))
    if grow:
        carry = rng.choice(np.array([-2, 2]), carry.shape) << arith.CARRY_BITS
    if project:
        b = rng.integers(-127, 128, (3, m)).astype(np.int8)
        e = rng.integers(-(1 << max(0, g_bits - 9)), (1 << max(0, g_bits - 9)) + 1, (n, 3)).astype(np.int64)
        g = e @ b.astype(np.int64)
    else:
        b = None
        e = g = rng.integers(-(1 << g_bits), (1 << g_bits) + 1, (n, m)).astype(np.int64)
    got = ks.exact_deltas(idx, e, b, carry)
    want = _oracle_exact_deltas(idx, g, carry)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_exact_deltas_refuse_errors_beyond_the_limit(ks):
    idx = np.zeros((2, 1, 3), np.uint8)
    e = np.full((1, 3), arith.G_LIMIT + 1, np.int64)
    with pytest.raises(ValueError):
        ks.exact_deltas(idx, e, None, arith.carry_lut(NeuronSpec()))
