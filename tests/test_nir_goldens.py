"""`edge-sdfa nir run` against graphs and spikes written by the frameworks themselves.

tests/golden/nir/<framework>_<flavour>_<arch>/ holds what tools/nir_golden/make_goldens.py wrote in
a venv with SpikingJelly, snnTorch, Norse and Rockpool: the framework's own ``export`` (model.nir),
an input (input.npz) and the framework's own simulation of that input (spikes.npz). ``run_flags``
in info.json are what a user must pass because the file cannot say it (snnTorch's reset "zero").
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from edge_sdfa.errors import UserError  # noqa: E402
from host_tools import nir_run  # noqa: E402
from host_tools.nir_io import read_graph  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "nir"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "model.nir").is_file() and (p / "info.json").is_file())
FLAG_KEYS = {"--reset": "reset", "--spike-if": "spike_if", "--decay": "decay", "--dt": "dt", "--framework": "framework"}


def _case(name):
    d = GOLDEN / name
    info = json.loads((d / "info.json").read_text())
    with np.load(d / "input.npz") as z:
        x = z["x"]
    with np.load(d / "spikes.npz") as z:
        ref = z["spikes"]
    return d, info, x, ref.reshape(ref.shape[0], ref.shape[1], -1)


def _kwargs(flags):
    out = {}
    for key, value in zip(flags[::2], flags[1::2]):
        out[FLAG_KEYS[key]] = float(value) if key == "--dt" else value
    return out


def test_every_framework_and_flavour_is_present():
    frameworks = {c.split("_")[0] for c in CASES}
    assert {"spikingjelly", "snntorch", "norse", "rockpool", "sinabs"} <= frameworks
    assert {"spikingjelly_lif_conv", "spikingjelly_if_conv", "snntorch_leaky_conv", "snntorch_leaky-zero_conv",
            "rockpool_cubalif_mlp", "norse_lif_mlp", "norse_if_mlp", "norse_lifcell_mlp", "snntorch_synaptic_mlp", "sinabs_lif_mlp", "sinabs_iaf_mlp"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_nir_run_gives_the_framework_spikes(name):
    d, info, x, ref = _case(name)
    graph = read_graph(d / "model.nir")
    sem = nir_run.semantics(graph, **_kwargs(info["run_flags"]))
    assert sem.framework == info["framework"]  # detected from the file itself
    spikes = nir_run.simulate(graph, x, sem)
    assert ref.sum() > 0
    np.testing.assert_array_equal(spikes, ref)


@pytest.mark.parametrize("name", ["snntorch_leaky_mlp", "snntorch_leaky_conv", "rockpool_lif_mlp",
                                  "rockpool_cubalif_mlp", "sinabs_lif_mlp", "sinabs_iaf_mlp"])
def test_the_framework_rules_matter(name):
    """Each detected rule is needed: NIR's plain reading (Euler, v > v_th, hard reset) differs."""
    d, info, x, ref = _case(name)
    graph = read_graph(d / "model.nir")
    plain_sem = nir_run.semantics(graph, framework="nir", dt=1e-3 if "rockpool" in name else None)
    if "sinabs" in name:  # and the time dimension in its Input: NIR's reading refuses it, naming the node
        with pytest.raises(UserError, match="NIR node '0' \\(Affine\\)"):
            nir_run.simulate(graph, x, plain_sem)
        plain_sem = dataclasses.replace(plain_sem, framework="sinabs")  # only the Input reading from Sinabs
    plain = nir_run.simulate(graph, x, plain_sem)
    assert np.any(plain != ref)


def test_norse_dt_convention_is_needed():
    """Norse writes tau = dt/tau_mem_inv: read with NIR's default dt the Euler step is unstable (refused)."""
    d, _, x, _ = _case("norse_lif_mlp")
    graph = read_graph(d / "model.nir")
    with pytest.raises(UserError, match="NIR node '1' \\(LIF\\).*dt/tau"):
        nir_run.simulate(graph, x, nir_run.semantics(graph, framework="nir"))


def test_snntorch_reset_zero_needs_the_flag():
    d, info, x, ref = _case("snntorch_leaky-zero_conv")
    graph = read_graph(d / "model.nir")
    assert info["run_flags"] == ["--reset", "hard"]
    assert np.any(nir_run.simulate(graph, x, nir_run.semantics(graph)) != ref)


def test_li_output_is_refused_naming_the_node():
    n = 3
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2])),
                            "fc": nir.Linear(weight=np.ones((n, 2), np.float32)),
                            "readout": nir.LI(tau=np.full(n, 1e-3), r=np.ones(n), v_leak=np.zeros(n)),
                            "output": nir.Output(output_type=np.array([n]))},
                     edges=[("input", "fc"), ("fc", "readout"), ("readout", "output")], metadata={"dt": 1e-4})
    with pytest.raises(UserError, match="'readout' \\(LI\\)"):
        nir_run.simulate(g, np.ones((2, 1, 2)), nir_run.semantics(g))


def test_input_of_the_wrong_shape_names_the_input_node():
    d, _, x, _ = _case("spikingjelly_lif_mlp")
    graph = read_graph(d / "model.nir")
    with pytest.raises(UserError, match="input_1"):
        nir_run.simulate(graph, x[:, :, :5], nir_run.semantics(graph))


@pytest.mark.integration
@pytest.mark.parametrize("name", CASES)
def test_cli_nir_run_matches(name, tmp_path):
    d, info, x, ref = _case(name)
    out = tmp_path / "spikes.npz"
    cmd = [sys.executable, "-m", "edge_sdfa", "nir", "run", str(d / "model.nir"), "--input", str(d / "input.npz"),
           "--out", str(out), "--json", *info["run_flags"]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["semantics"]["framework"] == info["framework"]
    with np.load(out) as z:
        np.testing.assert_array_equal(z["spikes"], ref)


@pytest.mark.integration
def test_cli_nir_run_bad_input_is_one_line(tmp_path):
    d = GOLDEN / CASES[0]
    bad = tmp_path / "x.npz"
    np.savez(bad, x=np.zeros((3, 1, 7)))
    r = subprocess.run([sys.executable, "-m", "edge_sdfa", "nir", "run", str(d / "model.nir"), "--input", str(bad),
                        "--out", str(tmp_path / "o.npz")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
    assert not (tmp_path / "o.npz").exists()


# NeuronSpec (float and int8 executors) cannot hold these rules: import refuses, naming the node
IMPORT_REFUSED = {"snntorch_leaky_mlp": "reset by subtraction one step late",
                  "snntorch_leaky_conv": "reset by subtraction one step late",
                  "snntorch_synaptic_mlp": "reset by subtraction one step late",
                  "norse_lifcell_mlp": "second state",
                  "rockpool_lif_mlp": "several spikes per step", "rockpool_cubalif_mlp": "several spikes per step",
                  "sinabs_lif_mlp": "several spikes per step", "sinabs_iaf_mlp": "several spikes per step"}


@pytest.mark.parametrize("name", CASES)
def test_import_gives_the_framework_spikes_or_names_the_node(name):
    from edge_sdfa import float_net as fn
    from host_tools import nir_io

    d, info, x, ref = _case(name)
    kw = _kwargs(info["run_flags"])
    if name in IMPORT_REFUSED:
        with pytest.raises(UserError, match=f"NIR node '.+' \\(\\w+\\): .*{IMPORT_REFUSED[name]}"):
            nir_io.import_graph(d / "model.nir", **kw)
        return
    imp = nir_io.import_graph(d / "model.nir", **kw)
    assert imp.semantics["framework"] == info["framework"]
    out = fn.forward(imp.spec, imp.params, x.astype(np.float32)).outputs[-1]
    np.testing.assert_array_equal(out.reshape(ref.shape), ref)


def test_snntorch_synaptic_current_is_refused_by_neuronspec():
    from host_tools import nir_io

    d = GOLDEN / "snntorch_synaptic_mlp"
    with pytest.raises(UserError, match="NIR node '1' \\(CubaLIF\\).*second state.*no equivalent"):
        nir_io.import_graph(d / "model.nir", reset="hard")


def test_rockpool_cubalif_refused_even_single_spike():
    from host_tools import nir_io

    d = GOLDEN / "rockpool_cubalif_mlp"
    with pytest.raises(UserError, match="NIR node '1_LIFTorch' \\(CubaLIF\\).*no equivalent"):
        nir_io.import_graph(d / "model.nir", multi_spike=False)


def test_imported_dt_reads_the_graph_back_the_same():
    """partition stores Imported.dt as nir_dt and export-nir re-imports with it: same network."""
    from host_tools import nir_io

    for name in ("norse_lif_mlp", "spikingjelly_lif_mlp", "snntorch_leaky-zero_mlp"):
        path = GOLDEN / name / "model.nir"
        flags = _kwargs(json.loads((GOLDEN / name / "info.json").read_text())["run_flags"])
        first = nir_io.import_graph(path, **flags)
        again = nir_io.import_graph(path, dt=first.dt, **flags)
        assert again.spec == first.spec
