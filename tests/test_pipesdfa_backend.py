"""PipeSDFABackend against the numpy int8 backend: bit-exact with the non-idealities off."""
from __future__ import annotations


import numpy as np
import pytest

from edge_sdfa.backend import NumpyBackend, load_backend
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import mlp, NeuronSpec
from sim_backend.pipesdfa.backend import PipeSDFABackend
from sim_backend.pipesdfa.device import NonIdealities

pytestmark = pytest.mark.unit


def small_problem(mode="online", loss="ce", neuron=None):
    spec = mlp([48, 64, 32, 10], neuron or NeuronSpec("lif"), time_steps=6, loss=loss)
    rng = np.random.default_rng(0)
    params = [{"weight": rng.normal(0, 0.35, (l.out_features, l.in_features)).astype(np.float32)}
              for l in spec.layers]
    qnet, _ = qn.quantize(spec, params)
    x = (rng.random((64, 6, 48)) < 0.3).astype(np.uint8)
    y = rng.integers(0, 10, 64)
    cfg = qn.UpdateConfig(lr=0.5, mode=mode, seed=3, feedback_seed=11)
    return spec, qnet, x, y, cfg


def run(backend, spec, qnet, x, y, cfg, updates=6):
    backend.program(spec, qnet, cfg.feedback_seed, cfg)
    stats = []
    for u in range(updates):
        sl = slice((u * 16) % len(y), (u * 16) % len(y) + 16)
        stats.append(backend.update(np.swapaxes(x[sl], 0, 1), y[sl], u))
    return backend.read_weights(), backend.forward(np.swapaxes(x, 0, 1)), stats


@pytest.mark.parametrize("mode,loss,kind", [("online", "ce", "lif"), ("exact", "mse", "if")])
@pytest.mark.parametrize("kernels", ["numpy", "auto"])
def test_bit_exact_with_numpy_backend(mode, loss, kind, kernels):
    spec, qnet, x, y, cfg = small_problem(mode, loss, NeuronSpec(kind))
    ref_w, ref_out, ref_stats = run(NumpyBackend("numpy"), spec, qnet, x, y, cfg)
    sim = PipeSDFABackend(kernels=kernels)
    w, out, stats = run(sim, spec, qnet, x, y, cfg)
    assert np.array_equal(out, ref_out)
    for a, b in zip(ref_w, w):
        for field in ("w8", "master", "bias"):
            va, vb = getattr(a, field), getattr(b, field)
            assert (va is None and vb is None) or np.array_equal(va, vb)
    assert [s.loss for s in stats] == [s.loss for s in ref_stats]
    assert [s.shifts for s in stats] == [s.shifts for s in ref_stats]
    # the cells really hold the int8 weights, and the feedback is the bundle's
    for i, xb in sim.xbars.items():
        assert np.array_equal(xb.read_back(), w[i].w8)
    ref_fb = qn.feedback_int8(spec, cfg.feedback_seed)
    assert all(np.array_equal(sim.feedback[k], ref_fb[k]) for k in ref_fb)


def test_device_path_is_exact_when_ideal():
    """Force the crossbar read path (not the digital shortcut) with ideal cells and readout."""
    spec, qnet, x, y, cfg = small_problem()
    sim = PipeSDFABackend()
    sim.program(spec, qnet, cfg.feedback_seed, cfg)
    xt = np.swapaxes(x, 0, 1)
    ref = NumpyBackend("numpy")
    ref.program(spec, qnet, cfg.feedback_seed, cfg)
    sim.ni = NonIdealities(adc_bits=None, read_noise=False)
    out_digital = sim.forward(xt)
    for xb in sim.xbars.values():
        rows = (np.random.default_rng(0).random((5, xb.shape[0])) < 0.5).astype(np.uint8)
        w = xb.read_back().astype(np.int64)
        assert np.array_equal(xb.mvm(rows), rows.astype(np.int64) @ w)
    assert np.array_equal(out_digital, ref.forward(xt))


def test_cost_report_per_update():
    spec, qnet, x, y, cfg = small_problem()
    sim = PipeSDFABackend()
    assert sim.cost() is None
    run(sim, spec, qnet, x, y, cfg, updates=2)
    c = sim.cost()
    assert c.latency_s > 0 and c.energy_j > 0
    phases = sum(c.breakdown[f"energy_j.{p}"] for p in ("forward", "error", "gradient", "write", "leakage"))
    assert phases == pytest.approx(c.energy_j)
    assert all(isinstance(v, float) for v in c.breakdown.values())
    assert sim.wear()["pulses_total"] == pytest.approx(
        sum(int(xb.pulse_count.sum()) for xb in sim.xbars.values()))


def test_nonidealities_change_results_but_keep_learning():
    spec, qnet, x, y, cfg = small_problem()
    _, ref_out, _ = run(NumpyBackend("numpy"), spec, qnet, x, y, cfg)
    sim = PipeSDFABackend(nonidealities=NonIdealities.all_on(adc_bits=4, seed=1))
    w, out, stats = run(sim, spec, qnet, x, y, cfg)
    assert not np.array_equal(out, ref_out)
    assert all(np.isfinite(s.loss) for s in stats)
    again = PipeSDFABackend(nonidealities=NonIdealities.all_on(adc_bits=4, seed=1))
    _, out2, _ = run(again, spec, qnet, x, y, cfg)
    assert np.array_equal(out, out2)          # seeded: reproducible


def test_entry_point_and_options():
    be = load_backend("pipesdfa", preset="isaac", update_mode="write-verify")
    assert isinstance(be, PipeSDFABackend) and be.hw.name == "isaac"
    from edge_sdfa.errors import UserError

    with pytest.raises(UserError):
        PipeSDFABackend(update_mode="sideways")
    with pytest.raises(UserError):
        PipeSDFABackend(preset="nope")
    with pytest.raises(UserError, match="non-ideality"):
        PipeSDFABackend(nonidealities={"telepathy": True})


@pytest.mark.integration
def test_finetune_reports_accumulated_cost(tmp_path):
    from edge_sdfa.finetune import FinetuneConfig, finetune

    r = finetune(store=tmp_path / "store", config=FinetuneConfig(backend="pipesdfa", epochs=1))
    assert r["backend"] == "pipesdfa" and r["updates"] > 0
    cost = r["cost"]
    assert cost["latency_s"] > 0 and cost["energy_j"] > 0
    assert cost["breakdown"]["energy_j.write"] > 0 and cost["breakdown"]["write_pulses"] > 0


def test_adc_bits_reach_the_cost_model():
    """One readout model: the bits the functional crossbars convert with are the bits costed
    (1 bit: a sense amplifier per column)."""
    spec, qnet, x, y, cfg = small_problem()
    adc = {}
    for bits in (1, 8):
        sim = PipeSDFABackend(nonidealities=NonIdealities(adc_bits=bits))
        run(sim, spec, qnet, x, y, cfg, updates=1)
        adc[bits] = sim.cost().breakdown["energy_j.adc"]
    assert adc[8] > 4 * adc[1]
