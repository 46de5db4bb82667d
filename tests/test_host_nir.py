"""NIR import/export: other frameworks' conventions against hand-computed spikes, errors, round trips."""
from __future__ import annotations

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from edge_sdfa import float_net as fn  # noqa: E402
from edge_sdfa import nir_graph  # noqa: E402
from edge_sdfa.errors import UserError  # noqa: E402
from edge_sdfa.int8 import net as qn  # noqa: E402
from edge_sdfa.spec import NeuronSpec, mlp  # noqa: E402
from host_tools import nir_io  # noqa: E402
from host_tools.archs import parse_arch  # noqa: E402

pytestmark = pytest.mark.unit
DT = 1e-4


def _spikes(imp, x):
    """Output spikes [T, N, out] of the imported float network for x[T, N, ...]."""
    trace = fn.forward(imp.spec, imp.params, x.astype(np.float32))
    return trace.outputs[-1].reshape(x.shape[0], x.shape[1], -1)


def _graph(nodes, metadata=None):
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata=metadata or {})


def _snntorch_lif(n, beta, vth=1.0, v_leak=0.0):
    """snnTorch's export_to_nir convention: tau = dt/(1-beta), r = tau/dt, dt = 1e-4."""
    tau = DT / (1 - np.full(n, beta, np.float32))
    return nir.LIF(tau=tau, r=tau / DT, v_leak=np.full(n, v_leak, np.float32),
                   v_threshold=np.full(n, vth, np.float32), v_reset=np.zeros(n, np.float32))


def test_snntorch_style_lif_gives_hand_computed_spikes():
    # snnTorch Leaky(beta=0.5): v_t = 0.5 v_{t-1} + I_t, spike when v > 1, reset to 0.
    # neuron A, I = 0.6: v = 0.6, 0.9, 1.05 (spike), 0.6, 0.9, 1.05 (spike)
    # neuron B, I = 1.2: spikes every step
    # neuron C, I = 0.4 and v_leak = 0.5 (adds dt/tau * v_leak = 0.25 per step):
    #   v = 0.65, 0.975, 1.1375 (spike), 0.65, ...
    # neuron D, I = 0.3 with input only at t = 0, 1: v = 0.3, 0.45, 0.225, ... never spikes
    w = np.array([[0.6, 0], [1.2, 0], [0.4, 0], [0, 0.3]], np.float32)
    lif = _snntorch_lif(4, 0.5)
    lif.v_leak[:] = [0, 0, 0.5, 0]
    g = _graph({"input": nir.Input(input_type=np.array([2])), "fc": nir.Affine(weight=w, bias=np.zeros(4, np.float32)),
                "lif": lif, "output": nir.Output(output_type=np.array([4]))}, {"dt": DT})
    imp = nir_io.import_graph(g, time_steps=6)
    x = np.zeros((6, 1, 2), np.uint8)
    x[:, 0, 0] = 1
    x[:2, 0, 1] = 1
    expect = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(_spikes(imp, x)[:, 0], expect)
    neuron = imp.spec.layers[0].neuron
    assert (neuron.kind, neuron.tau, neuron.v_threshold, neuron.v_reset) == ("lif", 2.0, 1.0, 0.0)
    # r = tau/dt = 2 is folded into the weights, v_leak - v_reset = 0.5 into a bias
    np.testing.assert_allclose(imp.params[0]["weight"], 2 * w, rtol=1e-6)
    np.testing.assert_allclose(imp.params[0]["bias"], [0, 0, 0.5, 0], atol=1e-7)
    # the int8 network gives the same spikes here (no value close to the threshold)
    qnet, _ = qn.quantize(imp.spec, imp.params, trainable=set())
    np.testing.assert_array_equal(qn.output_spikes(imp.spec, qnet, x)[:, 0], expect)


def test_spikingjelly_style_if_and_soft_reset():
    # SpikingJelly exports IFNode as IF(r=1/dt); v += I. With reset by subtraction and I = 0.7:
    # v = 0.7, 1.4 (spike -> 0.4), 1.1 (spike -> 0.1), 0.8, 1.5 (spike -> 0.5)
    g = _graph({"input": nir.Input(input_type=np.array([1])), "fc": nir.Linear(weight=np.array([[0.7]], np.float32)),
                "if": nir.IF(r=np.array([1 / DT]), v_threshold=np.array([1.0]), v_reset=np.array([0.0])),
                "output": nir.Output(output_type=np.array([1]))}, {"dt": DT})
    x = np.ones((5, 1, 1), np.uint8)
    soft = nir_io.import_graph(g, reset="subtract", time_steps=5)
    assert soft.spec.layers[0].neuron.v_reset is None
    np.testing.assert_array_equal(_spikes(soft, x)[:, 0, 0], [0, 1, 1, 0, 1])
    # hard reset (the NIR default): v = 0.7, 1.4 (spike -> 0), 0.7, 1.4 (spike), 0.7
    hard = nir_io.import_graph(g, time_steps=5)
    np.testing.assert_array_equal(_spikes(hard, x)[:, 0, 0], [0, 1, 0, 1, 0])


def test_norse_style_dt_from_argument():
    # Norse writes tau in seconds for dt = 1e-3 and no dt in the graph: tau_mem = 5 ms -> 5 steps.
    # v += (I - v)/5 with I = 3: v = 0.6, 1.08 (spike -> 0), 0.6, 1.08 (spike)
    g = _graph({"input": nir.Input(input_type=np.array([1])), "fc": nir.Linear(weight=np.array([[3.0]])),
                "lif": nir.LIF(tau=np.array([5e-3]), r=np.array([1.0]), v_leak=np.array([0.0]),
                               v_threshold=np.array([1.0]), v_reset=np.array([0.0])),
                "output": nir.Output(output_type=np.array([1]))})
    imp = nir_io.import_graph(g, dt=1e-3, time_steps=4)
    assert imp.spec.layers[0].neuron.tau == 5.0
    np.testing.assert_array_equal(_spikes(imp, np.ones((4, 1, 1), np.uint8))[:, 0, 0], [0, 1, 0, 1])
    default = nir_io.import_graph(g, time_steps=4)  # without dt: 1e-4 assumed, and said so
    assert default.spec.layers[0].neuron.tau == 50.0 and any("dt" in n for n in default.notes)


def test_cubalif_exact_when_tau_syn_is_dt_else_error_or_approximation():
    def graph(tau_syn):
        return _graph({"input": nir.Input(input_type=np.array([1])), "fc": nir.Linear(weight=np.array([[0.6]])),
                       "cuba": nir.CubaLIF(tau_syn=np.array([tau_syn]), tau_mem=np.array([2 * DT]), r=np.array([2.0]),
                                           v_leak=np.array([0.0]), v_threshold=np.array([1.0]), v_reset=np.array([0.0]),
                                           w_in=np.array([1.0])),
                       "output": nir.Output(output_type=np.array([1]))}, {"dt": DT})
    exact = nir_io.import_graph(graph(DT), time_steps=6)  # I_syn = w_in * input: same as neuron A above
    np.testing.assert_array_equal(_spikes(exact, np.ones((6, 1, 1), np.uint8))[:, 0, 0], [0, 0, 1, 0, 0, 1])
    with pytest.raises(UserError, match=r"'cuba'.*CubaLIF.*no equivalent"):
        nir_io.import_graph(graph(5 * DT))
    approx = nir_io.import_graph(graph(5 * DT), approximate=True)
    assert any("cuba" in n and "approximated" in n for n in approx.notes)


def test_li_readout_needs_approximate():
    g = _graph({"input": nir.Input(input_type=np.array([2])), "fc": nir.Linear(weight=np.ones((3, 2))),
                "li": nir.LI(tau=np.full(3, 2 * DT), r=np.ones(3), v_leak=np.zeros(3)),
                "output": nir.Output(output_type=np.array([3]))}, {"dt": DT})
    with pytest.raises(UserError, match=r"'li'.*LI.*non-spiking"):
        nir_io.import_graph(g)
    imp = nir_io.import_graph(g, approximate=True)
    assert imp.spec.layers[0].neuron.v_threshold == 1.0 and imp.notes


def test_unsupported_node_and_cycle_and_per_neuron_tau_name_the_node():
    g = _graph({"input": nir.Input(input_type=np.array([2])), "fc": nir.Linear(weight=np.ones((2, 2))),
                "wait": nir.Delay(delay=np.ones(2)), "output": nir.Output(output_type=np.array([2]))})
    with pytest.raises(UserError, match=r"'wait' has type Delay"):
        nir_io.import_graph(g)
    lif = _snntorch_lif(2, 0.5)
    cyc = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2])), "fc": nir.Linear(weight=np.ones((2, 2))),
                              "lif": lif, "rec": nir.Linear(weight=np.eye(2)), "output": nir.Output(output_type=np.array([2]))},
                       edges=[("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "fc"), ("lif", "output")])
    with pytest.raises(UserError, match=r"cyclic at node 'fc'"):
        nir_io.import_graph(cyc)
    lif2 = _snntorch_lif(2, 0.5)
    lif2.tau[1] = 3 * DT
    g2 = _graph({"input": nir.Input(input_type=np.array([2])), "fc": nir.Linear(weight=np.ones((2, 2))),
                 "mixed": lif2, "output": nir.Output(output_type=np.array([2]))}, {"dt": DT})
    with pytest.raises(UserError, match=r"'mixed'.*per-neuron tau"):
        nir_io.import_graph(g2)


def _nir_reference(graph, x, dt):
    """Forward-Euler NIR semantics written from the node equations (hard reset, spike v > v_th)."""
    order = nir_graph.chain(graph)
    out = []
    for b in range(x.shape[1]):
        state, seq = {}, []
        for t in range(x.shape[0]):
            z = x[t, b].astype(np.float64)
            for name in order[1:-1]:
                node = graph.nodes[name]
                kind = type(node).__name__
                if kind == "Flatten":
                    z = z.reshape(-1)
                elif kind in ("Affine", "Linear"):
                    z = node.weight @ z + (node.bias if kind == "Affine" else 0)
                elif kind in ("SumPool2d", "AvgPool2d"):
                    k = int(node.kernel_size[0])
                    c, h, w = z.shape
                    z = z[:, :h // k * k, :w // k * k].reshape(c, h // k, k, w // k, k).sum(axis=(2, 4))
                    z = z / (k * k) if kind == "AvgPool2d" else z
                elif kind == "Threshold":
                    z = (z > node.threshold).astype(np.float64)
                elif kind == "Conv2d":
                    from edge_sdfa.ops import im2col
                    wt = node.weight
                    cols = im2col(z[None].astype(np.float32), wt.shape[2], int(np.ravel(node.stride)[0]),
                                  int(np.ravel(node.padding)[0]))[0]
                    z = np.einsum("hwk,ok->ohw", cols, wt.reshape(wt.shape[0], -1)) + node.bias[:, None, None]
                elif kind in ("LIF", "IF"):
                    v = state.get(name, np.zeros_like(z))
                    if kind == "LIF":
                        v = v + dt / node.tau * (node.v_leak - v + node.r * z)
                    else:
                        v = v + dt * node.r * z
                    z = (v > node.v_threshold).astype(np.float64)
                    state[name] = np.where(z > 0, node.v_reset, v)
            seq.append(z.reshape(-1))
        out.append(np.stack(seq))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_conv_graph_matches_nir_semantics(seed):
    rng = np.random.default_rng(seed)
    lif = lambda shape: nir.LIF(tau=np.full(shape, 3 * DT), r=np.full(shape, 1.5), v_leak=np.full(shape, 0.1),
                                v_threshold=np.full(shape, 1.0), v_reset=np.zeros(shape))
    nodes = {
        "input": nir.Input(input_type=np.array([2, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0, 0.6, (3, 2, 3, 3)), stride=1, padding=1,
                           dilation=1, groups=1, bias=rng.normal(0, 0.1, 3)),
        "lif1": lif((3, 8, 8)),
        "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "max": nir.Threshold(threshold=np.full((3, 4, 4), 0.5)),
        "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([3, 2, 2])}, start_dim=0),
        "fc": nir.Affine(weight=rng.normal(0, 1.0, (5, 12)), bias=rng.normal(0, 0.1, 5)),
        "if": nir.IF(r=np.full(5, 1 / DT), v_threshold=np.ones(5), v_reset=np.zeros(5)),
        "output": nir.Output(output_type=np.array([5])),
    }
    g = _graph(nodes, {"dt": DT})
    imp = nir_io.import_graph(g, time_steps=6)
    assert [l.type for l in imp.spec.layers] == ["conv2d", "pool2d", "pool2d", "flatten", "dense"]
    assert [getattr(l, "mode", None) for l in imp.spec.layers[1:3]] == ["max", "avg"]
    x = (rng.random((6, 4, 2, 8, 8)) < 0.4).astype(np.uint8)
    np.testing.assert_array_equal(_spikes(imp, x), _nir_reference(g, x, DT))


@pytest.mark.parametrize("arch,shape", [("mlp:64-32-10", (64,)), ("mlp:16,neuron=if,reset=subtract,bias=1", (2, 4, 4)),
                                        ("convnet:c=8,fc=16,blocks=2", (2, 16, 16)),
                                        ("vgg11:c=16,fc=16,pool=avg", (2, 32, 32))])
def test_export_import_round_trip(tmp_path, arch, shape):
    spec = parse_arch(arch, shape, 10)
    params = fn.init_params(spec, 3)
    path = nir_io.export_nir(spec, params, tmp_path / "m.nir", metadata={"encoding": "test"})
    imp = nir_io.import_graph(path)
    assert imp.spec == spec and imp.notes == []
    assert imp.metadata["encoding"] == "test" and imp.metadata["edge_sdfa"]["network"] == spec.to_dict()
    for p, q in zip(params, imp.params):
        assert p.keys() == q.keys()
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])


def test_decay_input_false_round_trips():
    spec = mlp([8, 4, 3], NeuronSpec(tau=3.0, decay_input=False))
    params = fn.init_params(spec, 0)
    imp = nir_io.import_graph(nir_io.export_graph(spec, params))
    assert imp.spec == spec


def test_finetuned_bundle_exports_to_nir(tmp_path):
    from edge_sdfa.bundle import read_bundle

    from edge_sdfa.finetune import DEFAULT_BUNDLE
    out = tmp_path / "ft.nir"
    report = nir_io.export_finetuned(DEFAULT_BUNDLE, out)
    b = read_bundle(DEFAULT_BUNDLE)
    imp = nir_io.import_graph(out)
    assert imp.spec == b.spec and report["partition"] == b.cut
    want = nir_io.params_from_qnet(b.spec, b.qnet)
    for p, q in zip(want, imp.params):
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])
    # the re-imported weights quantise back to the same int8 values
    qnet, _ = qn.quantize(imp.spec, imp.params, trainable=set())
    for a, c in zip(b.qnet, qnet):
        if a.w8 is not None:
            np.testing.assert_array_equal(a.w8, c.w8 if a.exp == c.exp else a.w8)


def test_cli_import_error_is_one_line(tmp_path, capsys):
    from edge_sdfa.cli import main

    g = _graph({"input": nir.Input(input_type=np.array([2])), "fc": nir.Linear(weight=np.ones((2, 2))),
                "integ": nir.I(r=np.ones(2)), "output": nir.Output(output_type=np.array([2]))})
    nir.write(str(tmp_path / "bad.nir"), g)
    with pytest.raises(SystemExit) as exc:
        main(["import-nir", str(tmp_path / "bad.nir")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'integ'" in err[0]
