"""The Lava SDFA head: fixed_pt bit-exact with the numpy int8 backend, floating_pt with float SDFA."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lava", reason="lava-nc is not importable (needs Python 3.10, numpy<2)")

from edge_sdfa import float_net as fn  # noqa: E402
from edge_sdfa.backend import NumpyBackend, load_backend  # noqa: E402
from edge_sdfa.int8 import net as qn  # noqa: E402
from edge_sdfa.spec import Dense, NetworkSpec, NeuronSpec, mlp  # noqa: E402
from sim_backend.lava.backend import LavaBackend, LavaFloatHead  # noqa: E402

pytestmark = pytest.mark.lava


def _qhead(spec, seed=1, gain=10.0, trainable=None):
    params = [{k: v * gain for k, v in p.items()} for p in fn.init_params(spec, seed)]
    qnet, _ = qn.quantize(spec, params, trainable=trainable)
    return qnet


def _batch(rng, t, n, k, p=0.3):
    return (rng.random((t, n, k)) < p).astype(np.uint8), rng.integers(0, 10, n)


def _run_both(spec, qnet, cfg, batches, capacity):
    ref = NumpyBackend("numpy")
    ref.program(spec, qnet, 7, cfg)
    lava = LavaBackend(capacity=capacity)
    try:
        lava.program(spec, qnet, 7, cfg)
        for u, (x, y) in enumerate(batches):
            sa, sb = ref.update(x, y, u), lava.update(x, y, u)
            assert (sa.loss, sa.correct, sa.saturated_master, sa.saturated_w8, sa.shifts) == \
                   (sb.loss, sb.correct, sb.saturated_master, sb.saturated_w8, sb.shifts), f"update {u}"
        x_eval = batches[0][0]
        x_big = np.concatenate([b[0] for b in batches], axis=1)   # > capacity: chunked forward
        assert np.array_equal(ref.forward(x_eval), lava.forward(x_eval))
        assert np.array_equal(ref.forward(x_big), lava.forward(x_big))
        wa, wb = ref.read_weights(), lava.read_weights()
        for qa, qb in zip(wa, wb):
            if qa.w8 is None:
                continue
            assert np.array_equal(qa.w8, qb.w8)
            assert qa.trainable == qb.trainable
            if qa.trainable:
                assert np.array_equal(qa.master, qb.master)
        return wa
    finally:
        lava.close()


@pytest.mark.parametrize("mode", ["online", "exact"])
def test_fixed_pt_bit_exact_with_numpy_backend(mode):
    spec = mlp([40, 32, 10], time_steps=8)
    qnet = _qhead(spec)
    rng = np.random.default_rng(0)
    batches = [_batch(rng, 8, 12, 40) for _ in range(4)] + [_batch(rng, 8, 7, 40)]  # last one padded
    cfg = qn.UpdateConfig(lr=0.5, mode=mode, seed=3)
    after = _run_both(spec, qnet, cfg, batches, capacity=12)
    moved = [int(np.abs(a.master.astype(int) - b.master.astype(int)).sum()) for a, b in zip(after, qnet)]
    assert all(m > 0 for m in moved), "the updates must actually change both layers"


def test_fixed_pt_variants_bias_if_soft_reset_frozen_layer_and_rebuild():
    """Bias, IF neurons, soft reset, a frozen (non-trainable) dense layer, and an update batch
    larger than the capacity (graph rebuilt with the current weights)."""
    lif_soft = NeuronSpec(kind="lif", tau=2.0, v_reset=None)
    if_n = NeuronSpec(kind="if", v_threshold=1.0)
    spec = NetworkSpec((30,), (Dense(30, 24, bias=True, neuron=if_n), Dense(24, 16, neuron=lif_soft),
                               Dense(16, 10, neuron=NeuronSpec())), time_steps=6, loss="mse")
    qnet = _qhead(spec, seed=4, gain=6.0, trainable={1, 2})
    rng = np.random.default_rng(1)
    batches = [_batch(rng, 6, 5, 30), _batch(rng, 6, 9, 30), _batch(rng, 6, 4, 30)]
    _run_both(spec, qnet, qn.UpdateConfig(lr=1.0, mode="online", seed=5), batches, capacity=5)


def test_backend_registry_and_protocol():
    from edge_sdfa.backend import Backend

    be = load_backend("lava", capacity="4")
    try:
        assert isinstance(be, Backend) and be.name == "lava" and be.cost() is None
    finally:
        be.close()


@pytest.mark.parametrize("mode", ["online", "exact"])
def test_floating_pt_matches_float_sdfa(mode):
    spec = mlp([40, 32, 10], time_steps=8, bias=True)
    params = [{k: (v * 10).astype(np.float64) for k, v in p.items()} for p in fn.init_params(spec, 1)]
    fb = {k: v.astype(np.float64) for k, v in fn.feedback_matrices(spec, 7).items()}
    rule = fn.sdfa_online_grads if mode == "online" else fn.sdfa_exact_grads
    rng = np.random.default_rng(2)
    head = LavaFloatHead(spec, params, 7, lr=0.5, mode=mode, capacity=12)
    try:
        ref = params
        for n in (12, 12, 5):
            x, y = _batch(rng, 8, n, 40)
            x = x.astype(np.float64)
            loss, grads, _ = rule(spec, ref, x, y, fb)
            ref, _ = fn.optimizer_step(ref, grads, fn.optimizer_init("sgd", ref), 0.5)
            assert head.update(x, y) == pytest.approx(loss, rel=1e-12, abs=1e-12)
        got = head.read_params()
        for a, b, p0 in zip(ref, got, params):
            assert np.abs(a["weight"] - p0["weight"]).max() > 1e-3
            np.testing.assert_allclose(b["weight"], a["weight"], rtol=0, atol=1e-10)
            np.testing.assert_allclose(b["bias"], a["bias"], rtol=0, atol=1e-10)
        x, _ = _batch(rng, 8, 20, 40)
        rates = fn.forward(spec, ref, x.astype(np.float64), keep=False).rates
        np.testing.assert_array_equal(head.forward(x), np.rint(rates * 8).astype(np.int64))
    finally:
        head.close()


def test_finetune_lava_matches_numpy_on_embedded_default(tmp_path):
    from edge_sdfa.finetune import FinetuneConfig, finetune

    reports = {}
    for name in ("numpy", "lava"):
        reports[name] = finetune(store=tmp_path / name, config=FinetuneConfig(epochs=3, backend=name))
    timing = {"seconds", "seconds_per_update", "peak_rss_mb", "peak_rss_children_mb", "backend", "kernels", "store"}
    a, b = reports["numpy"], reports["lava"]
    assert a.keys() == b.keys()
    assert {k: a[k] for k in a if k not in timing} == {k: b[k] for k in b if k not in timing}
    assert b["backend"] == "lava"
    if a["committed"]:
        from edge_sdfa.store import Store

        with np.load(Store(tmp_path / "numpy").active_dir() / "head.npz") as ha, \
                np.load(Store(tmp_path / "lava").active_dir() / "head.npz") as hb:
            assert sorted(ha.files) == sorted(hb.files)
            for key in ha.files:
                assert np.array_equal(ha[key], hb[key]), key
    json.dumps(b)
