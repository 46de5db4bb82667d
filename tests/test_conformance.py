"""The one conformance suite: every kernel set and every backend reproduces the int8 golden
known-answer vectors (tests/golden/int8/, written by tools/make_int8_golden.py from the numpy set).

The cases cover hard and soft reset, LIF with and without input decay, IF, bias, input counts
above 1, both temporal modes and a frozen conv front (a backend that cannot run conv says so in
``UNSUPPORTED`` with the reason, and is skipped for that case only). Runners:

- ``numpy``: ``NumpyBackend(kernels="numpy")``, the spec itself against its committed answers.
- ``c``: ``NumpyBackend(kernels="c")``, the C kernel set built at install time (integration).
- ``pipesdfa``: ``PipeSDFABackend`` with every non-ideality off (the crossbars through the seam).
- ``lava``: ``LavaBackend`` (``fixed_pt`` process models), where lava-nc imports (marker lava).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import NetworkSpec

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "int8")
CASES = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(GOLDEN, "*.npz")))
UNSUPPORTED = {("lava", "conv_front_online"): "the Lava head runs dense layers only"}


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


def _backend(runner: str):
    if runner == "numpy":
        from edge_sdfa.backend import NumpyBackend

        return NumpyBackend(kernels="numpy")
    if runner == "c":
        from edge_sdfa.backend import NumpyBackend
        from edge_sdfa.errors import UserError

        try:
            return NumpyBackend(kernels="c")
        except UserError as exc:
            pytest.skip(str(exc))
    if runner == "pipesdfa":
        from sim_backend.pipesdfa.backend import PipeSDFABackend

        return PipeSDFABackend(kernels="numpy")
    pytest.importorskip("lava", reason="lava-nc is not importable (needs Python 3.10, numpy<2)")
    from sim_backend.lava.backend import LavaBackend

    return LavaBackend(capacity=6)


RUNNERS = [pytest.param("numpy", marks=pytest.mark.unit), pytest.param("c", marks=pytest.mark.integration),
           pytest.param("pipesdfa", marks=pytest.mark.unit), pytest.param("lava", marks=pytest.mark.lava)]


def test_the_golden_cases_exist():
    assert len(CASES) >= 7, "run tools/make_int8_golden.py"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("runner", RUNNERS)
def test_reproduces_the_golden_vectors(runner, case):
    if (runner, case) in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[(runner, case)])
    spec, layers, config, g = load_case(case)
    backend = _backend(runner)
    try:
        backend.program(spec, layers, config["feedback_seed"],
                        qn.UpdateConfig(lr=config["lr"], mode=config["mode"], seed=config["seed"],
                                        feedback_seed=config["feedback_seed"]))
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

    spec, layers, config, g = load_case(case)
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
