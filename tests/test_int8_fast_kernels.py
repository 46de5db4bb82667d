"""The fast int8 kernel sets (numba, C) against the numpy reference and an int64 numpy oracle,
bit-exact: one suite, run once per kernel set (skipped where numba or a C compiler is missing)."""
from __future__ import annotations

import numpy as np
import pytest

from edge_sdfa import float_net as fn
from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith, net
from edge_sdfa.int8.kernels import NUMPY
from edge_sdfa.spec import NeuronSpec, mlp

pytestmark = pytest.mark.unit

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["numba", "c"])
def kern(request):
    """Each fast kernel set in turn: every one must equal the numpy reference bit for bit."""
    if request.param == "numba":
        pytest.importorskip("numba")
        from edge_sdfa.int8 import fast_kernels

        return fast_kernels
    from edge_sdfa.int8 import c_kernels

    if c_kernels.find_compiler() is None:
        pytest.skip("no C compiler")
    try:
        c_kernels.load()
    except UserError as exc:
        pytest.skip(f"C kernels unavailable: {exc}")
    return c_kernels


def _spikes(rng, shape, density, counts):
    x = (rng.random(shape) < density).astype(np.uint8)
    if counts:
        x = x * rng.integers(1, 256, shape).astype(np.uint8)
    return x


def _int8(rng, shape, extremes):
    w = rng.integers(-128, 128, shape).astype(np.int8)
    if extremes:
        w[rng.random(shape) < 0.5] = rng.choice(np.array([-128, 127], np.int8))
    return w


def _shifts(rng, t, runs):
    """Per-step shifts; with ``runs`` mostly equal neighbours (the fused kernel sums runs of equal
    shifts together)."""
    if runs:
        return np.sort(rng.choice(np.array([0, 3, 3, 9]), t))
    return rng.integers(0, 40, t)


# ---------------------------------------------------------------------------------------------
# the kernels against an int64 oracle


@SETTINGS
@given(r=st.integers(0, 40), k=st.integers(0, 70), m=st.integers(0, 300), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       counts=st.booleans(), extremes=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matmul_int_matches_int64_oracle(kern, r, k, m, density, counts, extremes, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (r, k), density, counts)
    w = _int8(rng, (k, m), extremes)
    oracle = x.astype(np.int64) @ w.astype(np.int64)
    got = kern.matmul_int(x, w)
    assert got.dtype == np.int64 and got.shape == (r, m)
    np.testing.assert_array_equal(got, oracle)
    np.testing.assert_array_equal(NUMPY.matmul_int(x, w), oracle)


def test_matmul_int_no_int16_wraparound(kern):
    x = np.ones((3, 600), np.uint8)  # past the int16 chunk of the binary path
    for v in (-128, 127):
        w = np.full((600, 40), v, np.int8)
        np.testing.assert_array_equal(kern.matmul_int(x, w), np.full((3, 40), 600 * v, np.int64))
    xc = np.full((2, 600), 255, np.uint8)  # counts: 600 * 255 * -128 needs int32
    w = np.full((600, 17), -128, np.int8)
    np.testing.assert_array_equal(kern.matmul_int(xc, w), np.full((2, 17), 600 * 255 * -128, np.int64))
    idx = kern.spike_index(xc, 1, 2)
    got = kern.matmul_index(idx, w, True)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.full((2, 17), 600 * 255 * -128))


def test_matmul_int_other_dtypes_fall_back_exactly(kern):
    rng = np.random.default_rng(3)
    x = rng.integers(-300, 300, (5, 7)).astype(np.int64)
    w = _int8(rng, (7, 9), True)
    np.testing.assert_array_equal(kern.matmul_int(x, w), x @ w.astype(np.int64))
    xb = rng.random((5, 7)) < 0.5
    np.testing.assert_array_equal(kern.matmul_int(xb, w), xb.astype(np.int64) @ w.astype(np.int64))
    w16 = rng.integers(-1000, 1000, (7, 9))  # weights outside int8: the reference
    np.testing.assert_array_equal(kern.matmul_int(xb.astype(np.uint8), w16), xb.astype(np.int64) @ w16)


@SETTINGS
@given(t=st.integers(1, 4), r=st.integers(0, 30), k=st.integers(0, 50), m=st.integers(0, 280),
       density=st.sampled_from([0.0, 0.1, 0.6, 1.0]), counts=st.booleans(), extremes=st.booleans(),
       runs=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_outer_acc_steps_matches_int64_oracle(kern, t, r, k, m, density, counts, extremes, runs, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (t, r, k), density, counts)
    d = _int8(rng, (t, r, m), extremes)
    shifts = _shifts(rng, t, runs)
    oracle = np.zeros((k, m), np.int64)
    for i in range(t):
        oracle += (x[i].astype(np.int64).T @ d[i].astype(np.int64)) << int(shifts[i])
    np.testing.assert_array_equal(kern.outer_acc_steps(x, d, shifts), oracle)
    np.testing.assert_array_equal(net.outer_acc_steps_ref(NUMPY, x, d, shifts), oracle)
    np.testing.assert_array_equal(kern.outer_acc(x[0], d[0]), x[0].astype(np.int64).T @ d[0].astype(np.int64))


def test_outer_acc_no_wraparound_and_negative_shift(kern):
    x = np.ones((1, 600, 3), np.uint8)
    d = np.full((1, 600, 33), -128, np.int8)
    np.testing.assert_array_equal(kern.outer_acc_steps(x, d, [20]), np.full((3, 33), (600 * -128) << 20, np.int64))
    # three steps of 600 rows at one shift: one run of 1800 rows, summed in int16 chunks of <= 255
    x3 = np.ones((3, 600, 2), np.uint8)
    d3 = np.full((3, 600, 5), 127, np.int8)
    np.testing.assert_array_equal(kern.outer_acc_steps(x3, d3, [4, 4, 4]), np.full((2, 5), (1800 * 127) << 4))
    np.testing.assert_array_equal(kern.outer_acc_steps(x3, d3, [0, 40, 62 - 20]),
                                  np.full((2, 5), 600 * 127 + ((600 * 127) << 40) + ((600 * 127) << 42)))
    with pytest.raises(ValueError):
        kern.outer_acc_steps(x, d, [-1])


# ---------------------------------------------------------------------------------------------
# the fused update against the reference sequence


def _reference_update(x, d, shifts, master, m, k, key):
    grad = net.outer_acc_steps_ref(NUMPY, x, d, shifts)
    rows = np.flatnonzero(x.reshape(-1, x.shape[-1]).any(axis=0))
    new, sat = arith.apply_update(master, grad, m, k, key, rows)
    w8 = arith.w8_from_master(new)
    return new, w8, sat, int(np.count_nonzero(np.abs(w8) == 127))


@SETTINGS
@given(t=st.integers(1, 4), n=st.integers(0, 20), k_in=st.integers(1, 40), m_out=st.integers(1, 270),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), counts=st.booleans(), extremes=st.booleans(),
       mult=st.sampled_from([0, 1, 37, 40000, 2**20]), kbits=st.sampled_from([0, 1, 15, 30, 62]),
       near_limit=st.booleans(), runs=st.booleans(), with_index=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dense_update_matches_reference(kern, t, n, k_in, m_out, density, counts, extremes, mult, kbits,
                                        near_limit, runs, with_index, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (t, n, k_in), density, counts)
    d = _int8(rng, (t, n, m_out), extremes)
    shifts = _shifts(rng, t, runs) % 12
    master = rng.integers(-32767, 32768, (k_in, m_out)).astype(np.int16)
    if near_limit:
        master[rng.random(master.shape) < 0.5] = rng.choice(np.array([-32767, 32767, 32512, -32512], np.int16))
    key = int(rng.integers(0, 2**63)) * 2 + 1
    index = kern.spike_index(x, t, n) if with_index and x.size else None
    before = master.copy()
    got = kern.dense_update(x, d, shifts, master, mult, kbits, key, index=index)
    want = _reference_update(x, d, shifts, master.copy(), mult, kbits, key)
    assert got is not None
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int16 and got[1].dtype == np.int8
    assert got[2:] == want[2:]
    np.testing.assert_array_equal(master, before)


def test_dense_update_many_samples_per_step(kern):
    # 300 samples fire one input at each step (> 255: no int32 plan, several int16 chunks)
    rng = np.random.default_rng(4)
    x = np.ones((2, 300, 3), np.uint8)
    d = _int8(rng, (2, 300, 40), True)
    master = rng.integers(-30000, 30000, (3, 40)).astype(np.int16)
    for shifts in ([5, 5], [2, 7]):
        got = kern.dense_update(x, d, shifts, master, 3, 20, 123)
        want = _reference_update(x, d, shifts, master.copy(), 3, 20, 123)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_dense_update_counts_saturation(kern):
    x = np.ones((1, 4, 3), np.uint8)
    d = np.full((1, 4, 5), -128, np.int8)
    master = np.full((3, 5), 32700, np.int16)
    new, w8, sat, sat8 = kern.dense_update(x, d, [0], master, 1 << 10, 0, 7)
    assert sat == 15 and (new == 32767).all() and (w8 == 127).all() and sat8 == 15
    assert (master == 32700).all()


def test_dense_update_skips_rows_without_input(kern):
    x = np.zeros((2, 3, 2), np.uint8)
    x[1, 0, 0] = 1
    d = np.ones((2, 3, 4), np.int8)
    master = np.full((2, 4), -32768, np.int16)
    got = kern.dense_update(x, d, [0, 0], master, 5, 3, 11)
    want = _reference_update(x, d, [0, 0], master.copy(), 5, 3, 11)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert (got[0][1] == -32768).all()


def test_dense_update_declines_what_it_does_not_cover(kern):
    x = np.ones((1, 2, 3), np.uint8)
    d = np.ones((1, 2, 4), np.int8)
    master = np.zeros((3, 4), np.int16)
    assert kern.dense_update(x, d, [63], master, 1, 1, 1) is None
    assert kern.dense_update(x, d, [0], master, 1, 63, 1) is None
    assert kern.dense_update(x, d.astype(np.int64) * 300, [0], master, 1, 1, 1) is None
    assert kern.dense_update(x, d, [0], master.astype(np.int32), 1, 1, 1) is None


# ---------------------------------------------------------------------------------------------
# neuron dynamics and local errors


@pytest.mark.parametrize("neuron", [NeuronSpec(), NeuronSpec(decay_input=False), NeuronSpec(kind="if"),
                                    NeuronSpec(v_reset=None), NeuronSpec(tau=3.0, v_threshold=0.5, v_reset=-0.25),
                                    NeuronSpec(kind="if", v_reset=None)])
@pytest.mark.parametrize("exp", [2, 6])
def test_neuron_run_matches_stepping(kern, neuron, exp):
    rng = np.random.default_rng(0)
    const = arith.neuron_constants(neuron, exp)
    cur = rng.integers(-200, 300, (6, 5, 37)).astype(np.int64)
    v = np.full(cur.shape[1:], const["vreset"], np.int64)
    spikes, hs = kern.neuron_run(neuron, const, cur, True)
    for t in range(cur.shape[0]):
        h, s, v = arith.neuron_step_int(neuron, const, v, cur[t])
        np.testing.assert_array_equal(hs[t], h)
        np.testing.assert_array_equal(spikes[t], s)
    s0, none = kern.neuron_run(neuron, const, cur.astype(np.int32), False)
    assert none is None
    np.testing.assert_array_equal(s0, spikes)
    spikes32, sgi = kern.neuron_run(neuron, const, cur.astype(np.int32), True, sg_exp=exp)
    np.testing.assert_array_equal(spikes32, spikes)
    half = arith.SG_RANGE << arith.SG_RES_BITS
    sh = exp - arith.SG_RES_BITS
    d = hs - const["vth"]
    want_idx = np.clip((d >> sh) if sh >= 0 else (d << -sh), -half, half - 1) + half
    np.testing.assert_array_equal(sgi, want_idx)
    np.testing.assert_array_equal(arith.SG_LUT[sgi], arith.surrogate_q(hs, const["vth"], exp))
    _, hs32 = kern.neuron_run(neuron, const, cur.astype(np.int32), True)
    np.testing.assert_array_equal(hs32, hs)


@SETTINGS
@given(t=st.integers(1, 4), n=st.integers(1, 9), m=st.integers(1, 40), classes=st.integers(1, 10),
       exp=st.integers(0, 10), project=st.booleans(), broadcast=st.booleans(), big=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_local_deltas_match_reference(kern, t, n, m, classes, exp, project, broadcast, big, seed):
    rng = np.random.default_rng(seed)
    spec = mlp([3, m, classes] if project else [3, m])
    li = 0
    qnet = [net.QLayer(exp, np.zeros((3, m), np.int8)), net.QLayer(exp)]
    vth = arith.neuron_constants(spec.layers[li].neuron, exp)["vth"]
    h = vth + rng.integers(-(8 << exp), 8 << exp, (t, n, m))
    width = classes if project else m
    lim = 2**40 if big else 4096  # big: past the int32 projection (int64 path)
    e = rng.integers(-lim, lim + 1, (1 if broadcast else t, n, width))
    if broadcast:
        e = np.broadcast_to(e[0], (t, n, width))
    b = _int8(rng, (classes, m), True) if project else None
    g = e @ b.astype(np.int64) if project else e
    want = net.local_deltas(spec, qnet, li, h, g)
    got = kern.local_deltas(h, e, vth, exp, b)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    half = arith.SG_RANGE << arith.SG_RES_BITS
    sh = exp - arith.SG_RES_BITS
    d = h - vth
    sgi = (np.clip((d >> sh) if sh >= 0 else (d << -sh), -half, half - 1) + half).astype(np.uint8)
    got = kern.local_deltas(sgi, e, vth, exp, b, from_index=True)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_local_deltas_huge_errors_use_the_reference(kern):
    h = np.zeros((2, 3, 4), np.int64)
    e = np.full((2, 3, 4), 2**60, np.int64)  # g * LUT would wrap int64 in C: the reference decides
    spec = mlp([3, 4])
    qnet = [net.QLayer(6, np.zeros((3, 4), np.int8)), net.QLayer(6)]
    with np.errstate(over="ignore"):
        want = net.local_deltas(spec, qnet, 0, h, e)
        got = kern.local_deltas(h, e, 64, 6)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------------------
# the whole update


def _net(counts):
    spec = mlp([50, 40, 30, 10], time_steps=6)
    params = fn.init_params(spec, 1)
    params = [{k: v * 6 for k, v in p.items()} for p in params]
    qnet, _ = net.quantize(spec, params)
    rng = np.random.default_rng(2)
    x = _spikes(rng, (6, 16, 50), 0.3, False)
    if counts:
        x = x * rng.integers(1, 4, x.shape).astype(np.uint8)
    return spec, qnet, x, rng.integers(0, 10, 16)


@pytest.mark.parametrize("mode", ["online", "exact"])
@pytest.mark.parametrize("counts", [False, True])
def test_sdfa_update_equals_numpy(kern, mode, counts):
    spec, qnet, x, y = _net(counts)
    feedback = net.feedback_int8(spec, 5)
    config = net.UpdateConfig(lr=0.5, mode=mode, seed=3)
    q_np, q_c = qnet, qnet
    for step in range(3):
        q_np, s_np = net.sdfa_update(spec, q_np, x, y, feedback, config, step, NUMPY)
        q_c, s_c = net.sdfa_update(spec, q_c, x, y, feedback, config, step, kern.KERNELS)
        for a, b in zip(q_np, q_c):
            if a.w8 is not None:
                np.testing.assert_array_equal(a.master, b.master)
                np.testing.assert_array_equal(a.w8, b.w8)
        assert s_np == s_c
    assert any((a.master != b.master).any() for a, b in zip(qnet, q_c) if a.w8 is not None)
    tr_np = net.forward(spec, q_np, x, NUMPY, keep={0, 1, 2})
    tr_c = net.forward(spec, q_np, x, kern.KERNELS, keep={0, 1, 2})
    np.testing.assert_array_equal(tr_np.out_spikes, tr_c.out_spikes)
    for i in (0, 1, 2):
        np.testing.assert_array_equal(tr_np.membranes[i], tr_c.membranes[i])
        assert tr_c.inputs[i].mean() > 0


def test_sdfa_update_with_bias_equals_numpy(kern):
    spec, qnet, x, y = _net(False)
    qnet = [q if q.w8 is None else net.QLayer(q.exp, q.w8, np.arange(q.w8.shape[1], dtype=np.int32) - 5, q.master)
            for q in qnet]
    feedback = net.feedback_int8(spec, 5)
    config = net.UpdateConfig(lr=0.5, seed=1)
    a = net.sdfa_update(spec, qnet, x, y, feedback, config, 0, NUMPY)
    b = net.sdfa_update(spec, qnet, x, y, feedback, config, 0, kern.KERNELS)
    for p, q in zip(a[0], b[0]):
        if p.w8 is not None:
            np.testing.assert_array_equal(p.master, q.master)
    assert a[1] == b[1]


def test_empty_batch_and_silent_input(kern):
    spec = mlp([20, 15, 5], time_steps=3)
    qnet, _ = net.quantize(spec, fn.init_params(spec, 0))
    feedback = net.feedback_int8(spec, 0)
    config = net.UpdateConfig()
    empty = np.zeros((3, 0, 20), np.uint8)
    assert net.forward(spec, qnet, empty, kern.KERNELS).counts.shape == (0, 5)
    with pytest.raises(UserError):
        net.sdfa_update(spec, qnet, empty, np.zeros(0, np.int64), feedback, config, 0, kern.KERNELS)
    x = np.zeros((3, 4, 20), np.uint8)
    y = np.arange(4) % 5
    want = net.sdfa_update(spec, qnet, x, y, feedback, config, 0, NUMPY)
    got = net.sdfa_update(spec, qnet, x, y, feedback, config, 0, kern.KERNELS)
    for a, b in zip(want[0], got[0]):
        np.testing.assert_array_equal(a.master, b.master)
        np.testing.assert_array_equal(a.w8, b.w8)
    assert want[1] == got[1]


@SETTINGS
@given(t=st.integers(1, 60), n=st.integers(1, 9), m=st.integers(1, 40), kind=st.sampled_from(["lif", "if"]),
       soft=st.booleans(), g_bits=st.integers(0, 22), grow=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_exact_deltas_match_reference(kern, t, n, m, kind, soft, g_bits, grow, seed):
    """The exact rule's eligibility recurrence and int8 deltas (``arith.exact_deltas``), including
    the largest errors allowed (2**22), IF neurons, and (``grow``) a carry table of +-2 per step
    that drives the eligibility into its saturation at ELIG_LIMIT."""
    if getattr(kern.KERNELS, "exact_deltas", None) is None:
        pytest.skip(f"{kern.KERNELS.name} has no exact_deltas kernel (the reference runs)")
    rng = np.random.default_rng(seed)
    neuron = NeuronSpec(kind, v_reset=None if soft else 0.0)
    idx = rng.integers(0, 128, (t, n, m)).astype(np.uint8)
    idx[rng.random(idx.shape) < 0.3] = rng.choice(np.array([0, 63, 64, 127], np.uint8))
    g = rng.integers(-(1 << g_bits), (1 << g_bits) + 1, (n, m)).astype(np.int64)
    carry = arith.carry_lut(neuron)
    if grow:
        carry = rng.choice(np.array([-2, 2]), carry.shape) << arith.CARRY_BITS
    want = arith.exact_deltas(idx, g, carry)
    got = kern.KERNELS.exact_deltas(idx, g, carry)
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])


def test_exact_deltas_refuse_errors_beyond_the_limit(kern):
    if getattr(kern.KERNELS, "exact_deltas", None) is None:
        pytest.skip(f"{kern.KERNELS.name} has no exact_deltas kernel")
    idx = np.zeros((2, 1, 3), np.uint8)
    g = np.full((1, 3), arith.G_LIMIT + 1, np.int64)
    assert kern.KERNELS.exact_deltas(idx, g, arith.carry_lut(NeuronSpec())) is None
    with pytest.raises(ValueError):
        arith.exact_deltas(idx, g, arith.carry_lut(NeuronSpec()))
