"""Float learning rules: BPTT against finite differences, SDFA exact against a hand-written loop
implementation, online == exact at T=1, determinism."""
import numpy as np
import pytest

from edge_sdfa import float_net as fn
from edge_sdfa import ops
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d, mlp

pytestmark = pytest.mark.unit


def smooth_spike(x):
    """Primitive of the ATan surrogate (alpha=2): its derivative is exactly the surrogate."""
    return np.arctan(np.pi * x) / np.pi + 0.5


def _params64(spec, seed):
    return [{k: v.astype(np.float64) * 3 for k, v in p.items()} for p in fn.init_params(spec, seed)]


def _loss(spec, params, x, y):
    return fn.output_error(fn.forward(spec, params, x, keep=False).rates, y, spec.loss)[0]


def _numerical_grad(spec, params, x, y, w, eps=1e-6):
    """Central finite differences of the loss w.r.t. every element of ``w`` (one of ``params``' arrays)."""
    num = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        old = w[idx]
        w[idx] = old + eps
        up = _loss(spec, params, x, y)
        w[idx] = old - eps
        down = _loss(spec, params, x, y)
        w[idx] = old
        num[idx] = (up - down) / (2 * eps)
    return num


@pytest.mark.parametrize("neuron", [NeuronSpec("lif"), NeuronSpec("if"), NeuronSpec("lif", v_reset=None),
                                    NeuronSpec("lif", decay_input=False, tau=3.0)])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_bptt_matches_finite_differences(monkeypatch, neuron, loss):
    monkeypatch.setattr(ops, "spike_fn", smooth_spike)
    spec = NetworkSpec((5,), (Dense(5, 4, neuron=neuron), Dense(4, 3, bias=True, neuron=neuron)), 4, loss)
    rng = np.random.default_rng(1)
    params = _params64(spec, 2)
    x = rng.random((4, 3, 5))
    y = np.array([0, 2, 1])
    _, grads, _ = fn.bptt_grads(spec, params, x, y)
    for i, p in enumerate(params):
        for name, w in p.items():
            np.testing.assert_allclose(grads[i][name], _numerical_grad(spec, params, x, y, w), rtol=1e-5, atol=1e-8)


def test_bptt_conv_pool_matches_finite_differences(monkeypatch):
    monkeypatch.setattr(ops, "spike_fn", smooth_spike)
    spec = NetworkSpec((1, 4, 4), (Conv2d(1, 2, 3, padding=1), Pool2d(2, "avg"), Flatten(), Dense(8, 3)), 3)
    params = _params64(spec, 3)
    rng = np.random.default_rng(4)
    x = rng.random((3, 2, 1, 4, 4))
    y = np.array([1, 2])
    _, grads, _ = fn.bptt_grads(spec, params, x, y)
    num = _numerical_grad(spec, params, x, y, params[0]["weight"])
    np.testing.assert_allclose(grads[0]["weight"], num, rtol=1e-5, atol=1e-8)


def _sdfa_by_hand(w1, w2, b, norm, x, y, tau):
    """One hidden LIF layer and an LIF output layer, written with explicit scalar loops."""
    t_steps, n, n_in = x.shape
    n_hid, n_out = w1.shape[0], w2.shape[0]

    def run(w, inp):
        h = np.zeros((t_steps, n, w.shape[0]))
        s = np.zeros_like(h)
        for b_ in range(n):
            for j in range(w.shape[0]):
                v = 0.0
                for t in range(t_steps):
                    cur = sum(w[j, k] * inp[t, b_, k] for k in range(w.shape[1]))
                    hh = v + (cur - v) / tau
                    ss = 1.0 if hh >= 1.0 else 0.0
                    h[t, b_, j], s[t, b_, j] = hh, ss
                    v = 0.0 if ss else hh
        return h, s

    def sg(z):
        return 1.0 / (1.0 + (np.pi * z) ** 2)

    def bptt_layer(h, s, grad_s, inp, n_units, n_inputs):
        g = np.zeros((n_units, n_inputs))
        for b_ in range(n):
            for j in range(n_units):
                gv = 0.0
                for t in reversed(range(t_steps)):
                    d = sg(h[t, b_, j] - 1.0)
                    dv_dh = (1 - s[t, b_, j]) + (0.0 - h[t, b_, j]) * d
                    gh = grad_s[t, b_, j] * d + gv * dv_dh
                    gx = gh / tau
                    gv = gh * (1 - 1 / tau)
                    for k in range(n_inputs):
                        g[j, k] += gx * inp[t, b_, k]
        return g

    h1, s1 = run(w1, x)
    h2, s2 = run(w2, s1)
    rate = s2.mean(0)
    p = np.exp(rate - rate.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(n_out)[y]
    e = (p - onehot) / n
    g2 = bptt_layer(h2, s2, np.broadcast_to(e / t_steps, (t_steps, n, n_out)), s1, n_out, n_hid)
    fb = (e @ b) * norm
    g1 = bptt_layer(h1, s1, np.broadcast_to(fb, (t_steps, n, n_hid)), x, n_hid, n_in)
    return g1, g2


def test_sdfa_exact_matches_hand_computation():
    spec = mlp([6, 5, 3], time_steps=4)
    rng = np.random.default_rng(0)
    params = [{"weight": rng.normal(0, 0.9, (5, 6))}, {"weight": rng.normal(0, 0.9, (3, 5))}]
    x = (rng.random((4, 2, 6)) < 0.6).astype(np.float64)
    y = np.array([2, 0])
    fb = fn.feedback_matrices(spec, 7)
    _, grads, _ = fn.sdfa_exact_grads(spec, params, x, y, fb)
    g1, g2 = _sdfa_by_hand(params[0]["weight"], params[1]["weight"], fb[0].astype(np.float64),
                           fn.feedback_norm(spec), x, y, 2.0)
    np.testing.assert_allclose(grads[1]["weight"], g2, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(grads[0]["weight"], g1, rtol=1e-5, atol=1e-8)


def test_sdfa_output_layer_gets_the_true_gradient():
    spec = mlp([8, 6, 6, 4], time_steps=5)
    params = fn.init_params(spec, 1)
    params = [{k: v * 4 for k, v in p.items()} for p in params]
    x = (np.random.default_rng(2).random((5, 3, 8)) < 0.5).astype(np.float32)
    y = np.array([0, 3, 1])
    _, g_bptt, _ = fn.bptt_grads(spec, params, x, y)
    _, g_sdfa, _ = fn.sdfa_exact_grads(spec, params, x, y, fn.feedback_matrices(spec, 0))
    np.testing.assert_allclose(g_sdfa[2]["weight"], g_bptt[2]["weight"], rtol=1e-6)
    assert not np.allclose(g_sdfa[0]["weight"], g_bptt[0]["weight"])


def test_online_equals_exact_for_one_time_step():
    spec = mlp([8, 6, 6, 4], time_steps=1)
    params = [{k: v * 4 for k, v in p.items()} for p in fn.init_params(spec, 3)]
    x = (np.random.default_rng(5).random((1, 4, 8)) < 0.5).astype(np.float32)
    y = np.array([0, 3, 1, 2])
    fb = fn.feedback_matrices(spec, 1)
    _, g_exact, _ = fn.sdfa_exact_grads(spec, params, x, y, fb)
    _, g_online, _ = fn.sdfa_online_grads(spec, params, x, y, fb)
    for a, b in zip(g_exact, g_online):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_feedback_is_regenerated_from_the_seed():
    spec = mlp([10, 7, 5, 3])
    a, b, c = fn.feedback_matrices(spec, 4), fn.feedback_matrices(spec, 4), fn.feedback_matrices(spec, 5)
    assert set(a) == {0, 1}
    assert a[0].shape == (3, 7) and a[1].shape == (3, 5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a[0], c[0])
    assert fn.feedback_norm(spec) == pytest.approx(1 / np.sqrt(7))


def test_training_is_deterministic_under_a_seed():
    from edge_sdfa.train import TrainConfig, train

    spec = mlp([12, 8, 3], time_steps=3)
    rng = np.random.default_rng(0)
    x = (rng.random((40, 3, 12)) < 0.3).astype(np.uint8)
    y = rng.integers(0, 3, 40)
    outs = []
    for _ in range(2):
        p, _ = train(spec, fn.init_params(spec, 1), x, y, TrainConfig("sdfa_online", epochs=2, batch_size=8, seed=3))
        outs.append(p)
    for a, b in zip(*outs):
        for k in a:
            assert np.array_equal(a[k], b[k])


def test_neuron_dynamics_match_spikingjelly_semantics():
    lif = NeuronSpec("lif", tau=2.0)
    h, s = ops.neuron_forward(lif, np.array([[1.5], [1.5], [2.0], [0.0]]))
    # v0=0: h=0.75 (no spike) -> h=0.75+(1.5-0.75)/2=1.125 spike, reset 0 -> h=1.0 spike -> h=0
    np.testing.assert_allclose(h[:, 0], [0.75, 1.125, 1.0, 0.0])
    np.testing.assert_array_equal(s[:, 0], [0, 1, 1, 0])
    soft = NeuronSpec("if", v_reset=None)
    h, s = ops.neuron_forward(soft, np.array([[0.6], [0.6], [0.6]]))
    np.testing.assert_allclose(h[:, 0], [0.6, 1.2, 0.8])
    np.testing.assert_array_equal(s[:, 0], [0, 1, 0])
