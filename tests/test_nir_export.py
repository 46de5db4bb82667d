"""The reverse direction: files written by the project's export-nir, imported and run by each
framework's own importer (tools/nir_golden/make_goldens.py --reverse, committed), against the
project's spikes.

tests/golden/nir/export/<flavour>_<arch>[_for-<target>]/ holds model.nir, input.npz and
spikes_edge-sdfa.npz (the float executor on the exported network), written by
tools/nir_golden/make_exports.py; spikes_<framework>.npz for every framework that ran it and
result.json with each framework's status or error. EXPECTED is the interop table of docs/nir.md;
refusals.json lists the exports a target refuses in one line.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nir")

from edge_sdfa import float_net as fn  # noqa: E402
from edge_sdfa.errors import UserError  # noqa: E402
from host_tools import nir_io, nir_run  # noqa: E402
from host_tools.archs import parse_arch  # noqa: E402

EXPORTS = Path(__file__).parent / "golden" / "nir" / "export"
E, D, R = "exact", "differs", "refused"
ALL = ("spikingjelly", "snntorch", "norse", "rockpool", "sinabs")


def _row(name, **status):
    return {(name, fw): s for fw, s in status.items()}


EXPECTED = {
    # the nir target, run by every framework
    **_row("lif_mlp", spikingjelly=E, snntorch=E, norse=E, rockpool=R, sinabs=R),
    **_row("lif_conv", spikingjelly=E, snntorch=R, norse=R, rockpool=R, sinabs=R),
    **_row("lif_conv-max", spikingjelly=E, snntorch=R, norse=R, rockpool=R, sinabs=R),
    **_row("if_mlp", spikingjelly=E, snntorch=R, norse=E, rockpool=R, sinabs=R),
    **_row("if_conv", spikingjelly=E, snntorch=R, norse=R, rockpool=R, sinabs=R),
    **_row("if_conv-max", spikingjelly=E, snntorch=R, norse=R, rockpool=R, sinabs=R),
    # NIR 1.0 has no reset mode: every importer resets to v_reset
    **_row("lif-subtract_mlp", spikingjelly=D, snntorch=D, norse=D, rockpool=R, sinabs=R),
    # decay_input=False is r = tau: Norse's LIFBox ignores r (--for norse folds it into the weights)
    **_row("lif-nodecay_mlp", spikingjelly=E, snntorch=E, norse=D, rockpool=R, sinabs=R),
    # export-nir --for <target>, run by that framework
    **{(f"{fl}_{arch}_for-snntorch", "snntorch"): E
       for fl, arch in [("lif", "conv"), ("lif", "conv-max"), ("if", "mlp"), ("if", "conv"), ("if", "conv-max")]},
    **{(f"{fl}_{arch}_for-norse", "norse"): E
       for fl, arch in [("lif", "conv"), ("lif", "conv-max"), ("if", "conv"), ("if", "conv-max"), ("lif-nodecay", "mlp")]},
    # Rockpool and Sinabs emit floor(v/v_th) spikes per step: exact while no membrane reaches 2 v_th
    **{(f"{fl}_mlp_for-rockpool", "rockpool"): s
       for fl, s in [("lif-subtract", D), ("if-subtract", D), ("lif-subtract-low", E), ("if-subtract-low", E)]},
    **{(f"{fl}_{arch}_for-sinabs", "sinabs"): s
       for fl, arch, s in [("lif-subtract", "mlp", D), ("lif-subtract", "conv", D), ("if-subtract", "mlp", D),
                           ("if-subtract", "conv", D), ("lif-subtract-low", "mlp", E),
                           ("lif-subtract-low", "conv", E), ("if-subtract-low", "mlp", E),
                           ("if-subtract-low", "conv", E)]},
}


def _load(d: Path, what: str) -> np.ndarray:
    with np.load(d / what) as z:
        return z[z.files[0]]


def _reimported(d: Path) -> np.ndarray:
    """The project's own import of the exported file, run by the float executor."""
    imp = nir_io.import_graph(d / "model.nir")
    x = _load(d, "input.npz")
    out = fn.forward(imp.spec, imp.params, x.astype(np.float32)).outputs[-1]
    return out.reshape(x.shape[0], x.shape[1], -1)


def _theirs(d: Path, fw: str):
    result = json.loads((d / "result.json").read_text()).get(fw)
    assert result is not None, f"{d.name}: no result for {fw} (run make_goldens.py --reverse)"
    if result["status"] != "ran":
        return None
    return _load(d, f"spikes_{fw}.npz")


def _outcome(d: Path, fw: str, ours: np.ndarray) -> str:
    theirs = _theirs(d, fw)
    if theirs is None or theirs.size != ours.size:  # e.g. Norse's importer flattens the batch into the features
        return R
    return E if np.array_equal(theirs.reshape(ours.shape), ours) else D


@pytest.mark.parametrize("case", sorted(EXPECTED), ids=lambda c: f"{c[0]}-{c[1]}")
def test_framework_runs_the_export_as_documented(case):
    name, fw = case
    d = EXPORTS / name
    ours = _load(d, "spikes_edge-sdfa.npz")
    assert ours.sum() > 0
    assert _outcome(d, fw, ours) == EXPECTED[case]


def test_every_export_is_in_the_table():
    names = {p.name for p in EXPORTS.iterdir() if (p / "model.nir").is_file()}
    assert names == {n for n, _ in EXPECTED}
    for name in names:  # a targeted export is run by its framework only, the nir target by all
        ran = set(json.loads((EXPORTS / name / "result.json").read_text()))
        assert ran == ({name.split("_for-")[1]} if "_for-" in name else set(ALL))


@pytest.mark.parametrize("name", sorted({n for n, _ in EXPECTED}))
def test_the_project_reads_its_export_back_with_the_same_spikes(name):
    """Every export (thresholds moved for a '>' importer, the max-pool neuron, Rockpool's CubaLIF,
    Sinabs' tau in steps, decays that round to 1 for IF) imports here as the network it came from."""
    d = EXPORTS / name
    np.testing.assert_array_equal(_reimported(d), _load(d, "spikes_edge-sdfa.npz"))


@pytest.mark.parametrize("name", sorted(n for n, fw in EXPECTED if fw in ("rockpool", "sinabs") and "_for-" in n))
def test_rockpool_and_sinabs_differ_only_by_their_multi_spike_rule(name):
    """Their spikes are the exported graph's, run with floor(v/v_th) spikes per step; they equal the
    project's single spike exactly where no membrane reached 2 v_th (info.json: the peak)."""
    d = EXPORTS / name
    fw = name.split("_for-")[1]
    graph = nir_run.read_graph(d / "model.nir")
    sem = nir_run.semantics(graph)
    multi = nir_run.simulate(graph, _load(d, "input.npz"), dataclasses.replace(sem, multi_spike=True))
    theirs = _theirs(d, fw)
    np.testing.assert_array_equal(theirs.reshape(multi.shape), multi)
    peak = json.loads((d / "info.json").read_text())["peak_v_over_v_th"]
    if peak < 2:
        assert EXPECTED[(name, fw)] == E
    if EXPECTED[(name, fw)] == D:
        assert peak >= 2 and theirs.max() >= 2


def test_max_pool_export_is_a_neuron_after_the_pool():
    """NIR has no max-pool node: the export writes the pool followed by a neuron that spikes on one
    spike in the window (threshold half a spike, hard reset to 0), which every importer with the pool reads."""
    graph = nir_run.read_graph(EXPORTS / "if_conv-max" / "model.nir")
    kinds = [type(graph.nodes[n]).__name__ for n in ("pool1", "pool1_max")]
    assert kinds == ["AvgPool2d", "IF"]
    assert np.all(graph.nodes["pool1_max"].v_threshold == 0.125) and np.all(graph.nodes["pool1_max"].v_reset == 0)
    imp = nir_io.import_graph(graph)
    assert imp.spec.layers[1].type == "pool2d" and imp.spec.layers[1].mode == "max"


def test_refused_exports_still_refuse_in_one_line():
    refusals = json.loads((EXPORTS / "refusals.json").read_text())
    assert {v["target"] for v in refusals.values()} == {"snntorch", "norse", "rockpool", "sinabs"}
    for name, r in refusals.items():
        spec = parse_arch(r["network"], tuple(r["input_shape"]), 6)
        with pytest.raises(UserError) as exc:
            nir_io.export_graph(spec, fn.init_params(spec, 0), target=r["target"])
        assert str(exc.value) == r["error"] and "\n" not in r["error"], name


def test_sinabs_export_has_no_v_reset(tmp_path):
    """nir <= 1.0.4 (the one Sinabs 3.1.3 runs with) has no v_reset and raises on the key."""
    import h5py

    with h5py.File(EXPORTS / "lif-subtract_conv_for-sinabs" / "model.nir") as f:
        neurons = [n for n in f["node/nodes"].values() if n["type"][()] in (b"LIF", b"IF")]
        assert neurons and not any("v_reset" in n for n in neurons)


def test_a_neuron_after_a_pool_that_is_no_max_pool_is_refused_naming_it():
    graph = nir_run.read_graph(EXPORTS / "if_conv-max" / "model.nir")
    node = graph.nodes["pool1_max"]
    node.v_threshold = np.full_like(node.v_threshold, 0.25)  # one spike of 4 gives 0.25: not below it
    with pytest.raises(UserError, match=r"NIR node 'pool1_max' \(IF\) follows the pool 'pool1'.*v_threshold 0.25"):
        nir_io.import_graph(graph)
    node.v_threshold = np.full_like(node.v_threshold, 0.125)
    node.v_reset = np.full_like(node.v_reset, 0.1)
    with pytest.raises(UserError, match=r"'pool1_max'.*v_reset 0.1"):
        nir_io.import_graph(graph)


def test_a_strict_spike_condition_survives_the_nir_target(tmp_path):
    """A '>' model (imported from snnTorch or Norse) exported with the nir target reads back as '>'."""
    spec = parse_arch("mlp:24-16-6,neuron=lif,tau=3", (24,), 6)
    spec = dataclasses.replace(spec, layers=tuple(dataclasses.replace(l, neuron=dataclasses.replace(l.neuron, spike_if=">"))
                                                  for l in spec.layers))
    params = fn.init_params(spec, 0)
    imp = nir_io.import_graph(nir_io.export_nir(spec, params, tmp_path / "m.nir"))
    assert imp.spec == spec
