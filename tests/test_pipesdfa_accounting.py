"""Workload accounting: every workload, the pipelines, the report, the speed bound."""
from __future__ import annotations

import json

import pytest

from sim_backend.pipesdfa.costs import Activity
from sim_backend.pipesdfa.params import available_presets, load_preset, preset_from_dict
from sim_backend.pipesdfa.report import bench
from sim_backend.pipesdfa.workloads import WORKLOAD_NAMES, load_workload, named_workloads

pytestmark = pytest.mark.unit


def test_presets_load_and_every_value_has_a_source():
    assert {"neurosim32", "isaac"} <= set(available_presets())
    for name in available_presets():
        hw = load_preset(name)
        assert hw.crossbar.rows == 128 and hw.slices >= 1
    raw = json.loads((__import__("sim_backend.pipesdfa.params", fromlist=["x"]).PRESET_DIR / "neurosim32.json").read_text())
    assert load_preset("neurosim32").assumptions == tuple(sorted(raw["assumptions"]))
    from edge_sdfa.errors import UserError

    undeclared = json.loads(json.dumps(raw))
    undeclared["device"]["r_on_ohm"]["source"] = "assumption: a guess"
    with pytest.raises(UserError, match="assumptions"):
        preset_from_dict(undeclared)
    raw["device"]["r_on_ohm"]["source"] = " "
    with pytest.raises(UserError, match="r_on_ohm"):
        preset_from_dict(raw)
    with pytest.raises(UserError, match="unknown preset"):
        load_preset("nope")


def test_workload_shapes():
    wl = load_workload("dvs-vgg11")
    assert wl.spec.shapes()[-1] == (110,) and wl.num_classes == 11 and wl.batch == 8
    assert load_workload("nmnist-mlp5").spec.shapes()[1:] == [(1000,)] * 4 + [(10,)]
    assert load_workload("ncaltech-vgg11").spec.layers[-3].in_features == 17920
    assert load_workload("dvs-convnet").spec.layers[-2].in_features == 2048
    assert load_workload("shd-mlpb", batch=3).batch == 3
    assert "bundle:PATH" in WORKLOAD_NAMES


@pytest.mark.parametrize("name", list(named_workloads()))
def test_every_workload_reports(name):
    r = bench(name, with_adc_less=False)
    for side in ("sdfa", "pipelayer"):
        b = r[side]["breakdown"]["energy_j"]
        dyn = r[side]["dynamic_energy_j"]
        assert dyn == pytest.approx(sum(b["by_phase"].values()))
        assert dyn == pytest.approx(sum(b["by_component"].values()))
        assert r[side]["energy_j"] == pytest.approx(dyn + r[side]["leakage_j"])
        assert r[side]["latency_s"] > 0 and r[side]["area_mm2"]["total"] > 0 and r[side]["tops_per_w"] > 0
        assert r[side]["area_mm2"]["total"] == pytest.approx(sum(row[side]["area_mm2"] for row in r["layers"]))
    assert len(r["layers"]) == len(r["mapping"])
    assert r["speedup"] > 0 and r["energy_ratio"] > 0
    assert r["wear"]["lifetime_updates"] > 0
    json.dumps(r)


def test_sdfa_error_phase_has_no_sequential_chain():
    """Deeper MLPs add a BP backward stage per layer, but leave the SDFA projection unchanged."""
    shallow, deep = bench("nmnist-mlp2", with_adc_less=False), bench("nmnist-mlp5", with_adc_less=False)
    assert shallow["sdfa"]["pipeline"]["sample_latency_s"] == pytest.approx(
        deep["sdfa"]["pipeline"]["sample_latency_s"], rel=0.25)
    assert deep["pipelayer"]["pipeline"]["sample_latency_s"] > 2 * shallow["pipelayer"]["pipeline"]["sample_latency_s"]


def test_update_modes_and_adc_less():
    r = bench("braille-mlpb", activity=Activity(update_mode="write-verify"))
    rs = bench("braille-mlpb", with_adc_less=False)
    assert r["sdfa"]["breakdown"]["energy_j"]["by_phase"]["write"] > rs["sdfa"]["breakdown"]["energy_j"]["by_phase"]["write"]
    rows = r["adc_less"]["bits"]
    assert rows["8"]["inference_latency_s"] > rows["6"]["inference_latency_s"] > rows["1"]["inference_latency_s"]
    assert rows["8"]["inference_energy_j"] > rows["1"]["inference_energy_j"]
    par = bench("braille-mlpb", activity=Activity(update_mode="parallel"), with_adc_less=False)
    assert par["wear"]["pulses_per_cell_per_update"] > rs["wear"]["pulses_per_cell_per_update"]


def test_bundle_workload(tmp_path):
    from pathlib import Path

    bundle = Path(__file__).resolve().parents[1] / "edge_sdfa" / "data" / "default_bundle"
    if not (bundle / "manifest.json").exists():
        pytest.skip("no embedded default bundle")
    r = bench(f"bundle:{bundle}", with_adc_less=False)
    assert r["batch"] == 16
    assert [m["trainable"] for m in r["mapping"]] == [False, True, True]
    from edge_sdfa.errors import UserError

    with pytest.raises(UserError):
        bench(f"bundle:{tmp_path / 'missing'}")
