"""NIR -> Lava inference, checked spike for spike against a plain numpy simulation of NIR."""
from __future__ import annotations

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from edge_sdfa import nir_graph  # noqa: E402
from edge_sdfa.errors import UserError  # noqa: E402
from sim_backend.lava import nir_lava  # noqa: E402

DT = 1e-3


def _numpy_nir(graph, x, dt=DT):
    """Forward-Euler simulation of a NIR chain, written from the NIR node equations."""
    order = nir_graph.chain(graph)
    t_steps, n = x.shape[:2]
    outs = []
    for b in range(n):
        state = {}
        seq = []
        for t in range(t_steps):
            z = x[t, b].astype(np.float64)
            for name in order[1:-1]:
                node = graph.nodes[name]
                kind = type(node).__name__
                if kind == "Flatten":
                    z = z.reshape(-1)
                elif kind == "Affine":
                    z = node.weight @ z + node.bias
                elif kind == "Linear":
                    z = node.weight @ z
                elif kind == "LIF":
                    v = state.get(name, np.zeros_like(z))
                    v = v + dt / node.tau * (node.v_leak - v + node.r * z)
                    z = (v > node.v_threshold).astype(np.float64)
                    state[name] = np.where(z > 0, node.v_reset, v)
                elif kind == "IF":
                    v = state.get(name, np.zeros_like(z))
                    v = v + dt * node.r * z
                    z = (v > node.v_threshold).astype(np.float64)
                    state[name] = np.where(z > 0, node.v_reset, v)
                elif kind == "CubaLIF":
                    i_syn, v = state.get(name, (np.zeros_like(z), np.zeros_like(z)))
                    i_syn = i_syn + dt / node.tau_syn * (node.w_in * z - i_syn)
                    v = v + dt / node.tau_mem * (node.v_leak - v + node.r * i_syn)
                    z = (v > node.v_threshold).astype(np.float64)
                    state[name] = (i_syn, np.where(z > 0, node.v_reset, v))
            seq.append(z)
        outs.append(np.stack(seq))
    return np.stack(outs, axis=1).astype(np.uint8)


def _lif(n, tau=0.02, v_leak=0.0, vth=1.0):
    return nir.LIF(tau=np.full(n, tau), r=np.full(n, 1.5), v_leak=np.full(n, v_leak),
                   v_threshold=np.full(n, vth), v_reset=np.zeros(n))


def _graph(seed=0):
    rng = np.random.default_rng(seed)
    shape = np.array([2, 3, 4])
    w1, b1 = rng.normal(0, 4.0, (24, 24)), rng.normal(0.5, 1.0, 24)
    w2 = rng.normal(0.3, 4.0, (16, 24))
    w3 = rng.normal(0.5, 3.0, (6, 16))
    nodes = {
        "input": nir.Input(input_type=shape),
        "flat": nir.Flatten(input_type={"input": shape}, start_dim=0, end_dim=-1),
        "fc1": nir.Affine(weight=w1, bias=b1), "lif1": _lif(24, tau=0.004, v_leak=0.2),
        "fc2": nir.Linear(weight=w2), "if2": nir.IF(r=np.full(16, 400.0), v_threshold=np.ones(16)),
        "fc3": nir.Linear(weight=w3),
        "cuba": nir.CubaLIF(tau_syn=np.full(6, 0.004), tau_mem=np.full(6, 0.005), r=np.ones(6),
                            v_leak=np.zeros(6), v_threshold=np.full(6, 0.3), w_in=np.full(6, 2.0)),
        "output": nir.Output(output_type=np.array([6])),
    }
    chain = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain[:-1], chain[1:])), metadata={"dt": DT})


@pytest.mark.lava
def test_nir_graph_runs_spike_exact_in_lava(tmp_path):
    pytest.importorskip("lava", reason="lava-nc is not importable")
    graph = _graph()
    rng = np.random.default_rng(1)
    x = (rng.random((10, 4, 2, 3, 4)) < 0.4).astype(np.float64)
    ref = _numpy_nir(graph, x)
    assert ref.sum() > 20, "the reference network must be active for the comparison to mean anything"
    got = nir_lava.run(graph, x, chunk=16)          # several chunks: the pipe is drained between them
    np.testing.assert_array_equal(got, ref)
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    np.testing.assert_array_equal(nir_lava.run(path, x[:, :2]), ref[:, :2])


@pytest.mark.unit
def test_plan_maps_lif_units():
    graph = _graph()
    p = nir_lava.plan(graph)
    lif1 = p.layers[0]
    assert p.input_shape == (2, 3, 4) and p.dt == DT
    assert lif1.du == 1.0 and lif1.dv == pytest.approx(DT / 0.004)
    np.testing.assert_allclose(lif1.weight, graph.nodes["fc1"].weight * 1.5 * DT / 0.004)
    np.testing.assert_allclose(lif1.bias, graph.nodes["fc1"].bias * 1.5 * DT / 0.004 + DT / 0.004 * 0.2)
    assert p.layers[1].dv == 0.0 and p.layers[2].du == pytest.approx(DT / 0.004)


@pytest.mark.unit
def test_plan_rejects_what_lava_cannot_express():
    g = _graph()
    g.nodes["lif1"] = nir.LIF(tau=np.linspace(0.01, 0.02, 24), r=np.ones(24), v_leak=np.zeros(24),
                              v_threshold=np.ones(24), v_reset=np.zeros(24))
    with pytest.raises(UserError, match="one tau per layer"):
        nir_lava.plan(g)
    g = _graph()
    g.edges.append(("lif1", "output"))
    with pytest.raises(UserError, match="feed-forward chains"):
        nir_lava.plan(g)
    g = _graph()
    g.nodes["lif1"] = nir.LIF(tau=np.full(24, 0.02), r=np.ones(24), v_leak=np.zeros(24),
                              v_threshold=np.ones(24), v_reset=np.full(24, -0.5))
    with pytest.raises(UserError, match="v_reset must be 0"):
        nir_lava.plan(g)


@pytest.mark.unit
def test_plan_reads_dt_and_reset_as_nir_import_does():
    """One walker for both: the same dt default and the same reset mode, so a graph that imports
    with reset by subtraction is refused by Lava (it resets to 0) instead of running another way."""
    from host_tools import nir_io

    nodes = dict(_graph().nodes)
    del nodes["cuba"], nodes["output"]          # NIR import has no CubaLIF with tau_syn != dt
    nodes.update(lif3=_lif(6, tau=0.02), output=nir.Output(output_type=np.array([6])))
    chain = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(zip(chain[:-1], chain[1:])), metadata={})
    assert nir_lava.plan(g).dt == nir_io.import_graph(g).dt == nir_graph.DEFAULT_DT
    g.nodes["lif3"].metadata = {"reset_mode": "subtract"}
    assert nir_io.import_graph(g).spec.layers[-1].neuron.v_reset is None
    with pytest.raises(UserError, match="subtraction"):
        nir_lava.plan(g)
