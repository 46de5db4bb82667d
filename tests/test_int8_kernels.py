"""The numba int8 kernels against the numpy reference and an int64 numpy oracle (bit-exact)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edge_sdfa import float_net as fn
from edge_sdfa.int8 import arith, net
from edge_sdfa.int8.kernels import NUMPY, get_kernels
from edge_sdfa.spec import NeuronSpec, mlp

pytestmark = pytest.mark.unit

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fk():
    pytest.importorskip("numba")
    from edge_sdfa.int8 import fast_kernels

    return fast_kernels


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


# ---------------------------------------------------------------------------------------------
# the kernels against an int64 oracle


@SETTINGS
@given(r=st.integers(0, 40), k=st.integers(0, 70), m=st.integers(0, 300), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       counts=st.booleans(), extremes=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matmul_int_matches_int64_oracle(fk, r, k, m, density, counts, extremes, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (r, k), density, counts)
    w = _int8(rng, (k, m), extremes)
    oracle = x.astype(np.int64) @ w.astype(np.int64)
    got = fk.matmul_int(x, w)
    assert got.dtype == np.int64 and got.shape == (r, m)
    np.testing.assert_array_equal(got, oracle)
    np.testing.assert_array_equal(NUMPY.matmul_int(x, w), oracle)


def test_matmul_int_no_int16_wraparound(fk):
    # 600 active inputs of -128 (or 127) per row: past the int16 chunk of the binary path
    x = np.ones((3, 600), np.uint8)
    for v in (-128, 127):
        w = np.full((600, 40), v, np.int8)
        np.testing.assert_array_equal(fk.matmul_int(x, w), np.full((3, 40), 600 * v, np.int64))
    xc = np.full((2, 600), 255, np.uint8)  # counts: 600 * 255 * -128 needs int32
    w = np.full((600, 17), -128, np.int8)
    np.testing.assert_array_equal(fk.matmul_int(xc, w), np.full((2, 17), 600 * 255 * -128, np.int64))


def test_matmul_int_other_dtypes_fall_back_exactly(fk):
    rng = np.random.default_rng(3)
    x = rng.integers(-300, 300, (5, 7)).astype(np.int64)  # negative and > 255: the reference path
    w = _int8(rng, (7, 9), True)
    np.testing.assert_array_equal(fk.matmul_int(x, w), x @ w.astype(np.int64))
    xb = rng.random((5, 7)) < 0.5  # bool spikes
    np.testing.assert_array_equal(fk.matmul_int(xb, w), xb.astype(np.int64) @ w.astype(np.int64))


@SETTINGS
@given(t=st.integers(1, 4), r=st.integers(0, 30), k=st.integers(0, 50), m=st.integers(0, 280),
       density=st.sampled_from([0.0, 0.1, 0.6, 1.0]), counts=st.booleans(), extremes=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_outer_acc_steps_matches_int64_oracle(fk, t, r, k, m, density, counts, extremes, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (t, r, k), density, counts)
    d = _int8(rng, (t, r, m), extremes)
    shifts = rng.integers(0, 40, t)
    oracle = np.zeros((k, m), np.int64)
    for i in range(t):
        oracle += (x[i].astype(np.int64).T @ d[i].astype(np.int64)) << int(shifts[i])
    np.testing.assert_array_equal(fk.outer_acc_steps(x, d, shifts), oracle)
    np.testing.assert_array_equal(net.outer_acc_steps_ref(NUMPY, x, d, shifts), oracle)
    np.testing.assert_array_equal(fk.outer_acc(x[0], d[0]), x[0].astype(np.int64).T @ d[0].astype(np.int64))


def test_outer_acc_no_wraparound_and_negative_shift(fk):
    x = np.ones((1, 600, 3), np.uint8)
    d = np.full((1, 600, 33), -128, np.int8)
    np.testing.assert_array_equal(fk.outer_acc_steps(x, d, [20]), np.full((3, 33), (600 * -128) << 20, np.int64))
    with pytest.raises(ValueError):
        fk.outer_acc_steps(x, d, [-1])


# ---------------------------------------------------------------------------------------------
# the fused update against the reference sequence


def _reference_update(x, d, shifts, master, m, k, key):
    grad = net.outer_acc_steps_ref(NUMPY, x, d, shifts)
    rows = np.flatnonzero(x.reshape(-1, x.shape[-1]).any(axis=0))
    new, sat = arith.apply_update(master, grad, m, k, key, rows)
    w8 = arith.w8_from_master(new)
    return new, w8, sat, int(np.count_nonzero(np.abs(w8) == 127))


@SETTINGS
@given(t=st.integers(1, 3), n=st.integers(0, 20), k_in=st.integers(1, 40), m_out=st.integers(1, 270),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), counts=st.booleans(), extremes=st.booleans(),
       mult=st.sampled_from([0, 1, 37, 40000, 2**20]), kbits=st.sampled_from([0, 1, 15, 30, 62]),
       near_limit=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dense_update_matches_reference(fk, t, n, k_in, m_out, density, counts, extremes, mult, kbits,
                                        near_limit, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (t, n, k_in), density, counts)
    d = _int8(rng, (t, n, m_out), extremes)
    shifts = rng.integers(0, 12, t)
    master = rng.integers(-32767, 32768, (k_in, m_out)).astype(np.int16)
    if near_limit:  # saturation of the master copy, and the w8 rails
        master[rng.random(master.shape) < 0.5] = rng.choice(np.array([-32767, 32767, 32512, -32512], np.int16))
    key = int(rng.integers(0, 2**63)) * 2 + 1
    got = fk.dense_update(x, d, shifts, master, mult, kbits, key)
    want = _reference_update(x, d, shifts, master.copy(), mult, kbits, key)
    assert got is not None
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int16 and got[1].dtype == np.int8
    assert got[2:] == want[2:]


def test_dense_update_counts_saturation(fk):
    x = np.ones((1, 4, 3), np.uint8)
    d = np.full((1, 4, 5), -128, np.int8)  # grad = -512: pushes master up
    master = np.full((3, 5), 32700, np.int16)
    new, w8, sat, sat8 = fk.dense_update(x, d, [0], master, 1 << 10, 0, 7)
    assert sat == 15 and (new == 32767).all() and (w8 == 127).all() and sat8 == 15
    assert (master == 32700).all()  # the input is untouched


def test_dense_update_skips_rows_without_input(fk):
    # a master value of -32768 in a row whose input never fired is left as it is (reference semantics)
    x = np.zeros((2, 3, 2), np.uint8)
    x[1, 0, 0] = 1
    d = np.ones((2, 3, 4), np.int8)
    master = np.full((2, 4), -32768, np.int16)
    got = fk.dense_update(x, d, [0, 0], master, 5, 3, 11)
    want = _reference_update(x, d, [0, 0], master.copy(), 5, 3, 11)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert (got[0][1] == -32768).all()


# ---------------------------------------------------------------------------------------------
# neuron dynamics and local errors


@pytest.mark.parametrize("neuron", [NeuronSpec(), NeuronSpec(decay_input=False), NeuronSpec(kind="if"),
                                    NeuronSpec(v_reset=None), NeuronSpec(tau=3.0, v_threshold=0.5, v_reset=-0.25)])
def test_neuron_run_matches_stepping(fk, neuron):
    rng = np.random.default_rng(0)
    exp = 6
    const = arith.neuron_constants(neuron, exp)
    cur = rng.integers(-200, 300, (6, 5, 37)).astype(np.int64)
    v = np.full(cur.shape[1:], const["vreset"], np.int64)
    spikes, hs = fk.neuron_run(neuron, const, cur, True)
    for t in range(cur.shape[0]):
        h, s, v = arith.neuron_step_int(neuron, const, v, cur[t])
        np.testing.assert_array_equal(hs[t], h)
        np.testing.assert_array_equal(spikes[t], s)
    assert fk.neuron_run(neuron, const, cur, False)[1] is None
    # the surrogate LUT index path (what sdfa_update records instead of h) and int32 currents
    spikes32, sgi = fk.neuron_run(neuron, const, cur.astype(np.int32), True, sg_exp=exp)
    np.testing.assert_array_equal(spikes32, spikes)
    half = arith.SG_RANGE << arith.SG_RES_BITS
    want_idx = np.clip((hs - const["vth"]) >> (exp - arith.SG_RES_BITS), -half, half - 1) + half
    np.testing.assert_array_equal(sgi, want_idx)
    np.testing.assert_array_equal(arith.SG_LUT[sgi], arith.surrogate_q(hs, const["vth"], exp))


@SETTINGS
@given(t=st.integers(1, 4), n=st.integers(1, 9), m=st.integers(1, 40), classes=st.integers(1, 10),
       exp=st.integers(0, 10), project=st.booleans(), broadcast=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_local_deltas_match_reference(fk, t, n, m, classes, exp, project, broadcast, seed):
    rng = np.random.default_rng(seed)
    spec = mlp([3, m, classes] if project else [3, m])
    li = 0
    qnet = [net.QLayer(exp, np.zeros((3, m), np.int8)), net.QLayer(exp)]
    vth = arith.neuron_constants(spec.layers[li].neuron, exp)["vth"]
    h = vth + rng.integers(-(8 << exp), 8 << exp, (t, n, m))
    width = classes if project else m
    e = rng.integers(-4096, 4097, (1 if broadcast else t, n, width))
    if broadcast:
        e = np.broadcast_to(e[0], (t, n, width))
    b = _int8(rng, (classes, m), True) if project else None
    g = e @ b.astype(np.int64) if project else e
    want = net.local_deltas(spec, qnet, li, h, g)
    got = fk.local_deltas(h, e, vth, exp, b)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    half = arith.SG_RANGE << arith.SG_RES_BITS
    sh = exp - arith.SG_RES_BITS
    d = h - vth
    sgi = (np.clip((d >> sh) if sh >= 0 else (d << -sh), -half, half - 1) + half).astype(np.uint8)
    got = fk.local_deltas(sgi, e, vth, exp, b, from_index=True)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------------------
# the whole update, and the registry


@pytest.mark.parametrize("mode", ["online", "exact"])
@pytest.mark.parametrize("counts", [False, True])
def test_sdfa_update_numba_equals_numpy(fk, mode, counts):
    spec = mlp([50, 40, 30, 10], time_steps=6)
    params = fn.init_params(spec, 1)
    params = [{k: v * 6 for k, v in p.items()} for p in params]  # make the hidden layers fire
    qnet, _ = net.quantize(spec, params)
    rng = np.random.default_rng(2)
    x = _spikes(rng, (6, 16, 50), 0.3, False)
    if counts:
        x = x * rng.integers(1, 4, x.shape).astype(np.uint8)
    y = rng.integers(0, 10, 16)
    feedback = net.feedback_int8(spec, 5)
    config = net.UpdateConfig(lr=0.5, mode=mode, seed=3)
    q_np, q_nb = qnet, qnet
    for step in range(3):
        q_np, s_np = net.sdfa_update(spec, q_np, x, y, feedback, config, step, NUMPY)
        q_nb, s_nb = net.sdfa_update(spec, q_nb, x, y, feedback, config, step, fk.KERNELS)
        for a, b in zip(q_np, q_nb):
            if a.w8 is not None:
                np.testing.assert_array_equal(a.master, b.master)
                np.testing.assert_array_equal(a.w8, b.w8)
        assert s_np == s_nb
    assert any((a.master != b.master).any() for a, b in zip(qnet, q_nb) if a.w8 is not None)
    tr_np = net.forward(spec, q_np, x, NUMPY, keep={0, 1, 2})
    tr_nb = net.forward(spec, q_np, x, fk.KERNELS, keep={0, 1, 2})
    np.testing.assert_array_equal(tr_np.out_spikes, tr_nb.out_spikes)
    for i in (0, 1, 2):
        np.testing.assert_array_equal(tr_np.membranes[i], tr_nb.membranes[i])
        assert tr_nb.inputs[i].mean() > 0


def test_empty_batch_and_silent_input(fk):
    from edge_sdfa.errors import UserError

    spec = mlp([20, 15, 5], time_steps=3)
    qnet, _ = net.quantize(spec, fn.init_params(spec, 0))
    feedback = net.feedback_int8(spec, 0)
    config = net.UpdateConfig()
    empty = np.zeros((3, 0, 20), np.uint8)
    for k in (NUMPY, fk.KERNELS):
        assert net.forward(spec, qnet, empty, k).counts.shape == (0, 5)
        with pytest.raises(UserError):
            net.sdfa_update(spec, qnet, empty, np.zeros(0, np.int64), feedback, config, 0, k)
    x = np.zeros((3, 4, 20), np.uint8)
    y = np.arange(4) % 5
    want = net.sdfa_update(spec, qnet, x, y, feedback, config, 0, NUMPY)
    got = net.sdfa_update(spec, qnet, x, y, feedback, config, 0, fk.KERNELS)
    for a, b in zip(want[0], got[0]):
        np.testing.assert_array_equal(a.master, b.master)
        np.testing.assert_array_equal(a.w8, b.w8)
    assert want[1] == got[1]


def test_get_kernels_registry(fk, monkeypatch):
    assert get_kernels("numpy") is NUMPY
    assert get_kernels("numba").name == "numba"
    assert get_kernels("auto").name in ("c", "numba")  # c where a C compiler is available
    monkeypatch.setenv("EDGE_SDFA_KERNELS", "numpy")
    assert get_kernels() is NUMPY


def test_auto_falls_back_without_numba(monkeypatch):
    from edge_sdfa.errors import MissingDependency, UserError

    import edge_sdfa.int8 as pkg
    from edge_sdfa.int8 import c_kernels

    monkeypatch.setattr(c_kernels, "_LIB", None)  # no C kernels either
    monkeypatch.setattr(c_kernels, "find_compiler", lambda: None)
    monkeypatch.setitem(sys.modules, "edge_sdfa.int8.fast_kernels", None)  # import fails
    monkeypatch.delattr(pkg, "fast_kernels", raising=False)
    assert get_kernels("auto") is NUMPY
    with pytest.raises(MissingDependency):
        get_kernels("numba")
    with pytest.raises(UserError):
        get_kernels("cuda")
