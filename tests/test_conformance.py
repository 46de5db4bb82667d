"""The one conformance suite: every kernel set and every backend reproduces the int8 golden
known-answer vectors (tests/golden/int8/, written by tools/make_int8_golden.py from the numpy set).

The cases cover hard and soft reset, LIF with and without input decay, IF, bias, input counts
above 1, both temporal modes and a frozen conv front (a backend whose ``program`` refuses conv
layers with a UserError is skipped for that case only). Runners, found, not listed:

- ``set:<name>``: every kernel set of ``edge_sdfa.int8.kernels.SETS`` through
  ``NumpyBackend(kernels=name)``: ``set:numpy`` is the spec against its committed answers (unit),
  ``set:c`` the C set built at install time (integration).
- ``backend:<name>``: every installed backend (entry points ``edge_sdfa.backends``) with its
  default options and the numpy set in its digital units: PipeSDFA with every non-ideality off
  (unit), Lava ``fixed_pt`` where lava-nc imports (marker lava); any other backend runs as
  integration.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from edge_sdfa.errors import UserError
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import Conv2d, NetworkSpec

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "int8")
CASES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(GOLDEN, "*.npz")))


def load_case(name: str):
    with np.load(os.path.join(GOLDEN, f"{name}.npz")) as z:
        g = {k: z[k] for k in z.files}
    spec = NetworkSpec.from_dict(json.loads(str(g["spec"])))
    config = json.loads(str(g["config"]))
    layers = []
    for i in range(len(spec.layers)):
        if f"layer{i}_w8" not in g:
            layers.append(qn.QLayer())
            continue
        layers.append(qn.QLayer(int(g[f"layer{i}_exp"]), g[f"layer{i}_w8"], g.get(f"layer{i}_bias"),
                                g.get(f"layer{i}_master")))
    return spec, layers, config, g


def _runners():
    """Every kernel set (through NumpyBackend) and every installed backend with its defaults (a
    backend registered under ``edge_sdfa.backends`` joins the suite without editing this file)."""
    from edge_sdfa.backend import available_backends
    from edge_sdfa.int8 import kernels

    marks = {"set:numpy": pytest.mark.unit, "backend:pipesdfa": pytest.mark.unit, "backend:lava": pytest.mark.lava}
    names = [f"set:{s}" for s in kernels.SETS] + [f"backend:{b}" for b in sorted(available_backends()) if b != "numpy"]
    return [pytest.param(n, marks=marks.get(n, pytest.mark.integration)) for n in names]


def _backend(runner: str, monkeypatch):
    from edge_sdfa.backend import NumpyBackend, load_backend
    from edge_sdfa.int8 import kernels

    kind, name = runner.split(":")
    monkeypatch.setenv(kernels.ENV, "numpy")  # a backend's digital units: the numpy set (c is set:c)
    try:
        return NumpyBackend(kernels=name) if kind == "set" else load_backend(name)
    except UserError as exc:  # a set not built here, lava-nc not importable, ...
        pytest.skip(f"{runner}: {exc}")


RUNNERS = _runners()


def test_the_golden_cases_exist():
    assert len(CASES) >= 7, "run tools/make_int8_golden.py"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("runner", RUNNERS)
def test_reproduces_the_golden_vectors(runner, case, monkeypatch):
    spec, layers, config, g = load_case(case)
    backend = _backend(runner, monkeypatch)
    try:
        try:
            backend.program(spec, layers, config["feedback_seed"],
                            qn.UpdateConfig(lr=config["lr"], mode=config["mode"], seed=config["seed"],
                                            feedback_seed=config["feedback_seed"]))
        except UserError as exc:
            if not any(isinstance(layer, Conv2d) for layer in spec.layers):
                raise
            pytest.skip(f"{runner} runs no conv layers: {exc}")  # conv where supported
        np.testing.assert_array_equal(backend.forward(g["forward_x"]), g["forward_counts"], err_msg="forward counts")
        for u in range(config["updates"]):
            stats = backend.update(g[f"update{u}_x"], g[f"update{u}_y"], u)
            assert [stats.correct, stats.saturated_master, stats.saturated_w8] == g[f"update{u}_stats"].tolist(), u
            assert stats.loss == pytest.approx(float(g[f"update{u}_loss"]), rel=0, abs=1e-12)
            got = backend.read_weights()
            for i, q in enumerate(got):
                if f"update{u}_layer{i}_master" not in g:
                    continue
                assert stats.shifts[i] == g[f"update{u}_layer{i}_shifts"].tolist(), (u, i)
                np.testing.assert_array_equal(q.master, g[f"update{u}_layer{i}_master"], err_msg=f"update {u} layer {i}")
                np.testing.assert_array_equal(q.w8, g[f"update{u}_layer{i}_w8"], err_msg=f"update {u} layer {i}")
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()


@pytest.mark.unit
@pytest.mark.parametrize("case", ["lif_soft_bias_counts_online", "conv_front_online"])
def test_the_mvm_seam_carries_the_whole_synaptic_product(case):
    """A backend's mvm replaces every synaptic product (dense and conv rows); an exact one gives
    the golden integers, a wrong one changes them, and returning None leaves it to the kernels."""
    from edge_sdfa.int8 import reference

    spec, layers, _, g = load_case(case)
    seen = []

    def exact(i, rows):
        seen.append(i)
        w = layers[i].w8
        return reference.matmul(rows, w if w.ndim == 2 else w.reshape(w.shape[0], -1).T)

    counts = qn.forward(spec, layers, g["forward_x"], mvm=exact).counts
    np.testing.assert_array_equal(counts, g["forward_counts"])
    assert sorted(set(seen)) == spec.synaptic_layers()
    np.testing.assert_array_equal(qn.forward(spec, layers, g["forward_x"], mvm=lambda i, rows: None).counts,
                                  g["forward_counts"])
    louder = qn.forward(spec, layers, g["forward_x"], mvm=lambda i, rows: 4 * exact(i, rows)).counts
    assert louder.sum() > g["forward_counts"].sum()
