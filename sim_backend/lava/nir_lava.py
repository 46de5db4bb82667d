"""NIR -> Lava: run a whole NIR graph's inference on Lava's own Dense and LIF processes.

Supported graphs are feed-forward chains ``Input -> [Flatten] -> (Affine|Linear -> LIF|IF|CubaLIF
[-> Flatten])+ -> Output``. NIR's continuous-time neurons are discretised with forward Euler at
``dt`` (argument, else ``graph.metadata["dt"]``, else 1.0), the convention NIR's own Lava example
uses:

- LIF: ``v += dt/tau (v_leak - v + R I)``; IF: ``v += dt R I``; spike ``v > v_threshold``, then
  ``v = v_reset`` (Lava resets to 0, so ``v_reset`` must be 0).
- CubaLIF: ``I_syn += dt/tau_syn (w_in I - I_syn)`` first, then the LIF update with the new I_syn.
- State starts at 0 for every sample.

Mapping (per layer): Dense ``weight = W * R * dt/tau`` (CubaLIF: ``W * w_in * dt/tau_syn *
R dt/tau_mem``), LIFReset ``du = 1`` (CubaLIF: ``dt/tau_syn``), ``dv = dt/tau`` (IF: 0),
``bias_mant = dt/tau v_leak + scaled affine bias``, ``vth = v_threshold``. Lava's LIF has one
du/dv/vth per population, so tau, tau_syn and v_threshold must be uniform within a layer.

Each Lava Dense sends the previous step's accumulation (a 1-step delay per layer). This is
accounted for exactly: samples run back to back with LIFReset clearing u and v at the step each
layer's sample window begins (offset = depth + 1), ``depth`` zero frames are appended, and the
output is read ``depth`` steps late. The planning half is plain numpy (testable without Lava).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdfa.errors import UserError

NEURONS = ("LIF", "IF", "CubaLIF")
SYNAPSES = ("Affine", "Linear")


@dataclass(frozen=True)
class LavaLayer:
    """One Dense + LIFReset pair, in Lava's units."""

    weight: np.ndarray      # [out, in], already scaled
    bias: np.ndarray        # [out], added to v every step
    du: float
    dv: float
    vth: float
    source: tuple[str, str]  # (synapse node, neuron node)


@dataclass(frozen=True)
class NirPlan:
    input_shape: tuple[int, ...]
    layers: tuple[LavaLayer, ...]
    dt: float

    @property
    def n_in(self) -> int:
        return int(np.prod(self.input_shape))


def _uniform(name: str, what: str, values) -> float:
    arr = np.asarray(values, np.float64).reshape(-1)
    if arr.size == 0:
        raise UserError(f"NIR node {name!r}: empty {what}")
    if not np.allclose(arr, arr[0], rtol=1e-6, atol=0.0):
        raise UserError(f"NIR node {name!r}: Lava's LIF needs one {what} per layer; it varies across neurons")
    return float(arr[0])


def _chain(graph) -> list[str]:
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    inputs = [k for k, n in graph.nodes.items() if type(n).__name__ == "Input"]
    if len(inputs) != 1:
        raise UserError(f"the NIR graph needs exactly one Input node, found {len(inputs)}")
    order = [inputs[0]]
    while type(graph.nodes[order[-1]]).__name__ != "Output":
        nxt = succ.get(order[-1], [])
        if len(nxt) != 1 or len(pred.get(nxt[0], [])) != 1:
            raise UserError(f"only feed-forward chains can run in Lava; node {order[-1]!r} branches or merges")
        order.append(nxt[0])
        if len(order) > len(graph.nodes):
            raise UserError("the NIR graph has a cycle")
    return order


def plan(graph, dt: float | None = None) -> NirPlan:
    """Lava parameters for every layer of a NIR chain (pure numpy)."""
    if dt is None:
        dt = float((graph.metadata or {}).get("dt", 1.0))
    order = _chain(graph)
    nodes = [(k, graph.nodes[k]) for k in order]
    in_type = nodes[0][1].input_type
    input_shape = tuple(int(d) for d in np.asarray(in_type["input"] if isinstance(in_type, dict) else in_type).reshape(-1))
    layers: list[LavaLayer] = []
    pending = None  # (name, weight, bias)
    n_prev = int(np.prod(input_shape))
    for name, node in nodes[1:-1]:
        kind = type(node).__name__
        if kind == "Flatten":
            continue
        if kind in SYNAPSES:
            if pending is not None:
                raise UserError(f"NIR node {name!r}: two synapses in a row cannot map to Lava Dense/LIF")
            w = np.asarray(node.weight, np.float64)
            if w.ndim != 2 or w.shape[1] != n_prev:
                raise UserError(f"NIR node {name!r}: weight {w.shape} does not take {n_prev} inputs")
            b = np.asarray(node.bias, np.float64).reshape(-1) if kind == "Affine" else np.zeros(w.shape[0])
            pending = (name, w, b)
            continue
        if kind not in NEURONS:
            raise UserError(f"NIR node {name!r} of type {kind} has no Lava mapping "
                            f"(supported: Input, Output, Flatten, {', '.join(SYNAPSES + NEURONS)})")
        if pending is None:
            raise UserError(f"NIR node {name!r}: a neuron needs a synapse (Affine/Linear) before it")
        syn_name, w, b = pending
        pending = None
        n = w.shape[0]
        r = np.broadcast_to(np.asarray(node.r, np.float64).reshape(-1), (n,))
        if np.any(np.asarray(node.v_reset, np.float64) != 0):
            raise UserError(f"NIR node {name!r}: Lava's LIF resets to 0; v_reset must be 0")
        vth = _uniform(name, "v_threshold", node.v_threshold)
        if kind == "IF":
            scale, du, dv, leak = r * dt, 1.0, 0.0, np.zeros(n)
        elif kind == "LIF":
            dv = dt / _uniform(name, "tau", node.tau)
            scale, du = r * dv, 1.0
            leak = dv * np.broadcast_to(np.asarray(node.v_leak, np.float64).reshape(-1), (n,))
        else:  # CubaLIF
            du = dt / _uniform(name, "tau_syn", node.tau_syn)
            dv = dt / _uniform(name, "tau_mem", node.tau_mem)
            w_in = np.broadcast_to(np.asarray(node.w_in, np.float64).reshape(-1), (n,))
            scale = w_in * du * r * dv
            leak = dv * np.broadcast_to(np.asarray(node.v_leak, np.float64).reshape(-1), (n,))
            if np.any(b != 0):
                raise UserError(f"NIR node {syn_name!r}: an Affine bias into a CubaLIF has no exact Lava mapping")
        if not (0.0 <= du <= 1.0 and 0.0 <= dv <= 1.0):
            raise UserError(f"NIR node {name!r}: dt/tau must be in [0, 1] for Euler steps (dt={dt})")
        layers.append(LavaLayer(w * scale[:, None], scale * b + leak, du, dv, vth, (syn_name, name)))
        n_prev = n
    if pending is not None:
        raise UserError("the NIR graph ends in a synapse; Lava needs a neuron after every Affine/Linear")
    if not layers:
        raise UserError("the NIR graph has no synapse + neuron layer")
    return NirPlan(input_shape, tuple(layers), float(dt))


def load(graph_or_path):
    """A NIRGraph, or read one from a .nir file (needs the ``nir`` package)."""
    if isinstance(graph_or_path, (str, Path)):
        from edge_sdfa.errors import require

        nir = require("nir", "reading NIR graphs", extra="host")
        path = Path(graph_or_path)
        if not path.exists():
            raise UserError(f"no such NIR file: {path}")
        return nir.read(str(path))
    return graph_or_path


def run(graph_or_path, x: np.ndarray, dt: float | None = None, chunk: int = 128) -> np.ndarray:
    """Output spikes ``[T, N, out]`` (uint8) of the NIR graph for ``x[T, N, *input_shape]`` in Lava
    (floating_pt: RingBuffer -> (Dense -> LIFReset)+ -> PipeSink)."""
    from sim_backend.lava.backend import require_lava

    require_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIFReset

    from sim_backend.lava.procs.io import PipeSink

    p = plan(load(graph_or_path), dt)
    x = np.asarray(x, np.float64)
    t_steps, n = x.shape[:2]
    if int(np.prod(x.shape[2:])) != p.n_in:
        raise UserError(f"the NIR graph takes inputs of shape {p.input_shape}, got {x.shape[2:]}")
    depth = len(p.layers)
    total = t_steps * n + depth
    frames = np.zeros((p.n_in, total))
    frames[:, :t_steps * n] = x.reshape(t_steps, n, -1).transpose(2, 1, 0).reshape(p.n_in, -1)
    src = RingBuffer(data=frames)
    prev = src.s_out
    for d, layer in enumerate(p.layers, start=1):
        dense = Dense(weights=layer.weight, num_message_bits=24 if d == 1 else 0)
        lif = LIFReset(shape=(layer.weight.shape[0],), du=layer.du, dv=layer.dv, vth=layer.vth,
                       bias_mant=layer.bias, reset_interval=t_steps, reset_offset=(1 + d) % t_steps)
        prev.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        prev = lif.s_out
    n_out = p.layers[-1].weight.shape[0]
    sink = PipeSink(shape=(n_out,), buffer_size=chunk)
    prev.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="floating_pt")
    out = np.empty((total, n_out))
    src.create_runtime(run_cfg=cfg)
    try:
        done = 0
        while done < total:
            k = min(chunk, total - done)
            src.run(condition=RunSteps(num_steps=k), run_cfg=cfg)
            for j in range(k):
                out[done + j] = sink.out.external_pipe_csp_recv_port.recv()
            done += k
    finally:
        src.stop()
    spikes = out[depth:].reshape(n, t_steps, n_out).transpose(1, 0, 2)
    return np.rint(spikes).astype(np.uint8)
