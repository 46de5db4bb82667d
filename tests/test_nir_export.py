"""The reverse direction: files written by the project's export-nir, imported and run by each
framework (tools/nir_golden/make_goldens.py --reverse, committed), against the project's spikes.

tests/golden/nir/export/<flavour>_<arch>[_for-<target>]/ holds model.nir and input.npz (written by
tools/nir_golden/make_exports.py), spikes_<framework>.npz for every framework that ran it and
result.json with each framework's status or error. EXPECTED is the interop table of docs/nir.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nir")

from edge_sdfa import float_net as fn  # noqa: E402
from host_tools import nir_io  # noqa: E402

EXPORTS = Path(__file__).parent / "golden" / "nir" / "export"
E, D, R = "exact", "differs", "refused"
EXPECTED = {
    ("lif_mlp", "spikingjelly"): E, ("lif_mlp", "snntorch"): E, ("lif_mlp", "norse"): E, ("lif_mlp", "rockpool"): R,
    ("lif_mlp", "sinabs"): R,
    ("lif_conv", "spikingjelly"): E, ("lif_conv", "snntorch"): R, ("lif_conv", "norse"): R, ("lif_conv", "rockpool"): R,
    ("lif_conv", "sinabs"): R,
    ("if_mlp", "spikingjelly"): E, ("if_mlp", "snntorch"): R, ("if_mlp", "norse"): E, ("if_mlp", "rockpool"): R,
    ("if_mlp", "sinabs"): R,
    ("if_conv", "spikingjelly"): E, ("if_conv", "snntorch"): R, ("if_conv", "norse"): R, ("if_conv", "rockpool"): R,
    ("if_conv", "sinabs"): R,
    # NIR 1.0 has no reset mode: every importer resets to v_reset
    ("lif-subtract_mlp", "spikingjelly"): D, ("lif-subtract_mlp", "snntorch"): D, ("lif-subtract_mlp", "norse"): D,
    ("lif-subtract_mlp", "rockpool"): R, ("lif-subtract_mlp", "sinabs"): R,
    # export-nir --for snntorch | norse
    ("lif_conv_for-snntorch", "snntorch"): E, ("if_mlp_for-snntorch", "snntorch"): R,
    ("if_conv_for-snntorch", "snntorch"): R, ("if_conv_for-norse", "norse"): R,
}


def _ours(d: Path):
    imp = nir_io.import_graph(d / "model.nir")
    with np.load(d / "input.npz") as z:
        x = z["x"]
    out = fn.forward(imp.spec, imp.params, x.astype(np.float32)).outputs[-1]
    return out.reshape(x.shape[0], x.shape[1], -1)


def _outcome(d: Path, fw: str, ours: np.ndarray) -> str:
    result = json.loads((d / "result.json").read_text()).get(fw)
    assert result is not None, f"{d.name}: no result for {fw} (run make_goldens.py --reverse)"
    if result["status"] != "ran":
        return R
    with np.load(d / f"spikes_{fw}.npz") as z:
        theirs = z["spikes"]
    if theirs.size != ours.size:  # e.g. Norse's importer flattens the batch into the features
        return R
    return E if np.array_equal(theirs.reshape(ours.shape), ours) else D


@pytest.mark.parametrize("case", sorted(EXPECTED), ids=lambda c: f"{c[0]}-{c[1]}")
def test_framework_runs_the_export_as_documented(case):
    name, fw = case
    d = EXPORTS / name
    ours = _ours(d)
    assert ours.sum() > 0
    assert _outcome(d, fw, ours) == EXPECTED[case]


def test_every_export_is_in_the_table():
    names = {p.name for p in EXPORTS.iterdir() if (p / "model.nir").is_file()}
    assert names == {n for n, _ in EXPECTED}


def test_targeted_export_reads_back_the_same():
    """An export for snnTorch (thresholds one float32 below, spike on >) imports here with the same spikes."""
    np.testing.assert_array_equal(_ours(EXPORTS / "lif_conv_for-snntorch"), _ours(EXPORTS / "lif_conv"))
