"""Memory planner (hand-computed bytes), cut choice, design-rule names, calibration, archs."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nir")

from edge_sdfa import float_net as fn  # noqa: E402
from edge_sdfa.errors import UserError  # noqa: E402
from edge_sdfa.spec import mlp  # noqa: E402
from host_tools import nir_io, partition as pt  # noqa: E402
from host_tools.archs import parse_arch  # noqa: E402

pytestmark = pytest.mark.unit


def test_plan_bytes_hand_computed():
    # MLP 8-6-4-3, T=2, batch B=2, frozen batch Bf=4, 5 cached samples, overhead 100 bytes; cut at layer 1
    spec = mlp([8, 6, 4, 3], time_steps=2)
    plan = pt.plan_cut(spec, 1, pt.PlanConfig(batch=2, frozen_batch=4, cache_samples=5, overhead=100))
    b = plan["bytes"]
    assert b["frozen_weights"] == 48                    # 8*6 int8
    assert b["trainable_int8"] == 24 + 12               # 6*4 + 4*3
    assert b["trainable_int16_masters"] == 2 * 36
    assert b["trainable_bias"] == 0
    assert b["optimizer_state"] == 8 * 24 + 3 * 4       # int64 accumulator of the largest layer + B (C x 4) int8
    # T*B * [sum(in + 8 out) + head spikes + 16 C + max 9 out] = 4 * [(6+32)+(4+24) + (4+3) + 48 + 36]
    assert b["activations"] == 4 * (66 + 7 + 48 + 36) == 628
    assert b["frozen_activations"] == 2 * 4 * (8 + 9 * 6) == 496
    assert b["cached_head_inputs"] == 5 * 2 * 6
    assert b["runtime_overhead"] == 100
    assert plan["total_bytes"] == 48 + 36 + 72 + 204 + 628 + 496 + 60 + 100 == 1644
    assert plan["trainable_layers"] == 2 and plan["trainable_kinds"] == ["dense"]


def test_plan_with_bias_and_no_frozen_part():
    spec = mlp([4, 3], time_steps=1, bias=True)
    plan = pt.plan_cut(spec, 0, pt.PlanConfig(batch=1, frozen_batch=1, cache_samples=1, overhead=0))
    b = plan["bytes"]
    assert (b["frozen_weights"], b["trainable_int8"], b["trainable_bias"]) == (0, 12, 12)
    assert b["optimizer_state"] == 96 and b["frozen_activations"] == 0
    assert b["activations"] == 1 * (4 + 24 + 3 + 48 + 27)
    assert b["cached_head_inputs"] == 4


def test_budget_picks_largest_suffix_that_fits():
    spec = mlp([8, 6, 4, 3], time_steps=2)
    cfg = pt.PlanConfig(batch=2, frozen_batch=4, cache_samples=5, overhead=100)
    plans = pt.plan_all(spec, cfg)
    totals = {p["cut"]: p["total_bytes"] for p in plans}
    assert pt.choose_cut(spec, plans, None, max(totals.values())) == min(totals, key=lambda c: c)  # all fit: cut 0
    tight = sorted(totals.values())[0]
    assert totals[pt.choose_cut(spec, plans, None, tight)] <= tight
    with pytest.raises(UserError, match="memory_budget"):
        pt.choose_cut(spec, plans, None, 10)
    assert pt.choose_cut(spec, plans, 1, None) == 2
    with pytest.raises(UserError, match="between 1 and 3"):
        pt.choose_cut(spec, plans, 4, None)


def test_parse_bytes():
    assert pt.parse_bytes("64MB") == 64_000_000
    assert pt.parse_bytes("64MiB") == 64 * 2 ** 20
    assert pt.parse_bytes("1.5GB") == 1_500_000_000
    assert pt.parse_bytes("512k") == 512_000
    assert pt.parse_bytes("1000") == 1000
    with pytest.raises(UserError):
        pt.parse_bytes("lots")


def _digits_like(n=64, shape=(64,), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4, *shape)) < 0.3).astype(np.uint8)


def test_calibration_prefers_the_spike_faithful_exponent():
    spec = mlp([64, 32, 10], time_steps=4)
    params = fn.init_params(spec, 0)
    params[0]["weight"] *= 8
    params[0]["weight"][0, 0] = 40.0  # one outlier: clipping it buys 2 bits for every other weight
    qnet, rep = pt.calibrate(spec, params, _digits_like(), cut=1)
    first, head = rep["layers"]
    from edge_sdfa.int8 import arith
    e_max = arith.weight_exponent(40.0)
    assert first["candidates"] == [e_max, e_max + 1, e_max + 2]
    assert first["exp"] > e_max and first["clipped"] >= 1
    assert head["trainable"] and head["candidates"] == [arith.weight_exponent(np.abs(params[1]["weight"]).max(), 2.0)]
    assert qnet[1].master is not None and qnet[0].master is None


def _rules(spec, cut, x, budget=None, fmt="npz"):
    params = fn.init_params(spec, 0)
    qnet, rep = pt.calibrate(spec, params, x, cut)
    plan = pt.plan_cut(spec, cut)
    return {r["rule"]: r for r in pt.design_rules(spec, cut, qnet, rep, plan, budget, fmt, x.dtype)}


def test_design_rules_name_what_fails():
    spec = parse_arch("convnet:c=4,fc=8,blocks=2", (2, 8, 8), 3, time_steps=2)
    x = (np.random.default_rng(0).random((8, 2, 2, 8, 8)) < 0.3).astype(np.uint8)
    rules = _rules(spec, 0, x, budget=1000)
    assert rules["trainable_dense_only"]["status"] == "fail" and "[0, 2]" in rules["trainable_dense_only"]["detail"]
    assert rules["memory_budget"]["status"] == "fail"
    ok = _rules(spec, spec.synaptic_layers()[-2], x)
    assert all(r["status"] == "pass" for r in ok.values()), ok
    big = x.astype(np.uint8) * 200
    over = _rules(spec, spec.synaptic_layers()[-1], big)
    assert over["float32_exact"]["status"] in ("pass", "warn")
    spec2 = mlp([3000, 4, 2], time_steps=2)
    x2 = np.full((2, 2, 3000), 255, np.uint8)
    r2 = _rules(spec2, 1, x2)
    assert r2["float32_exact"]["status"] == "warn" and "layer 0" in r2["float32_exact"]["detail"]


def test_partition_reports_failing_rule_by_name(tmp_path):
    spec = parse_arch("convnet:c=4,fc=8,blocks=2", (2, 8, 8), 3, time_steps=2)
    model = nir_io.export_nir(spec, fn.init_params(spec, 0), tmp_path / "c.nir")
    x = (np.random.default_rng(0).random((30, 2, 2, 8, 8)) < 0.3).astype(np.uint8)
    y = np.arange(30) % 3
    from edge_sdfa.userdata import save_user_data
    save_user_data(str(tmp_path / "d.npz"), y, x=x)
    with pytest.raises(UserError, match=r"design rule trainable_dense_only failed"):
        pt.partition(model, tmp_path / "b", calib=f"npz:{tmp_path / 'd.npz'}", trainable_layers=3)
    assert not (tmp_path / "b").exists()
    with pytest.raises(UserError, match=r"memory_budget"):
        pt.partition(model, tmp_path / "b", calib=f"npz:{tmp_path / 'd.npz'}", memory_budget="1MB")
    rep = pt.partition(model, tmp_path / "b", calib=f"npz:{tmp_path / 'd.npz'}", memory_budget="1GB",
                       holdout_samples=5, rehearsal_samples=5)
    assert rep["trainable_layers"] == 2 and rep["cut"] == spec.synaptic_layers()[-2]
    assert {"frozen.npz", "head.npz", "holdout.npz", "rehearsal.npz", "manifest.json"} <= set(rep["files"])
    from edge_sdfa.bundle import read_bundle
    b = read_bundle(tmp_path / "b")
    assert len(b.holdout()[1]) == 5 and b.cut == rep["cut"]


def test_archs_reference_shapes():
    conv = parse_arch("convnet", (2, 128, 128), 11, time_steps=30)
    dense = [l for l in conv.layers if l.type == "dense"]
    assert [(l.in_features, l.out_features) for l in dense] == [(2048, 1024), (1024, 11)]
    assert [l.out_channels for l in conv.layers if l.type == "conv2d"] == [32, 64, 128, 128, 128]
    vgg = parse_arch("vgg11", (2, 128, 128), 11)
    assert [(l.in_features, l.out_features) for l in vgg.layers if l.type == "dense"] == [(8192, 4096), (4096, 4096), (4096, 11)]
    assert all(l.neuron.kind == "if" for l in vgg.layers if hasattr(l, "neuron"))
    nc = parse_arch("convnet", (2, 180, 240), 101)
    assert [l.in_features for l in nc.layers if l.type == "dense"][0] == 4480
    m = parse_arch("mlp:2312-1000-10", (2312,), 10)
    assert [(l.in_features, l.out_features) for l in m.layers] == [(2312, 1000), (1000, 10)]
    assert parse_arch("mlp:100", (2, 4, 4), 5).layers[0].type == "flatten"
    with pytest.raises(UserError, match="does not match"):
        parse_arch("mlp:784-10", (64,), 10)
    with pytest.raises(UserError, match="unknown arch"):
        parse_arch("resnet", (2, 8, 8), 10)
