"""NIR -> Lava: run a whole NIR graph's inference on Lava's own Dense and LIF processes.

The graph is read by the walker NIR import uses too (``edge_sdfa.nir_graph``: one chain walk, one
``dt`` default, one reading of every neuron's parameters and reset mode; its docstring states NIR's
semantics). Lava runs the chains ``Input -> [Flatten] -> (Affine|Linear -> LIF|IF|CubaLIF
[-> Flatten])+ -> Output`` exactly: NIR's forward-Euler neuron at ``dt`` is Lava's LIF with

- LIF: Dense ``weight = W * r * dt/tau``, ``du = 1``, ``dv = dt/tau``,
  ``bias_mant = dt/tau * v_leak + weight-scaled affine bias``;
- IF: ``weight = W * r * dt``, ``du = 1``, ``dv = 0``;
- CubaLIF: ``weight = W * w_in * dt/tau_syn * r * dt/tau_mem``, ``du = dt/tau_syn``,
  ``dv = dt/tau_mem`` (an Affine bias into a CubaLIF has no exact mapping);
- ``vth = v_threshold``; Lava spikes on ``v > vth`` as NIR does, and resets to 0, so only a hard
  reset with ``v_reset = 0`` maps. State starts at 0 for every sample.

Lava's LIF has one du/dv/vth per population (the walker already requires one tau, tau_syn and
v_threshold per node). Convolutions, pooling and LI readouts have no mapping here.

Each Lava Dense sends the previous step's accumulation (a 1-step delay per layer). This is
accounted for exactly: samples run back to back with LIFReset clearing u and v at the step each
layer's sample window begins (offset = depth + 1), ``depth`` zero frames are appended, and the
output is read ``depth`` steps late. The planning half is plain numpy (testable without Lava).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdfa import nir_graph
from edge_sdfa.errors import UserError

NEURONS = ("LIF", "IF", "CubaLIF")


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


def plan(graph, dt: float | None = None) -> NirPlan:
    """Lava parameters for every layer of a NIR chain (pure numpy)."""
    walked = nir_graph.walk(graph, dt=dt)
    dt = walked.dt
    layers: list[LavaLayer] = []
    for stage in walked.stages:
        if isinstance(stage, nir_graph.FlattenStage):
            continue
        if isinstance(stage, nir_graph.PoolStage):
            raise UserError(f"NIR node {stage.name!r} (pooling) has no Lava mapping here")
        syn, neuron = stage.synapse, stage.neuron
        if syn.is_conv or neuron.kind not in NEURONS:
            kind = syn.kind if syn.is_conv else neuron.kind
            name = syn.name if syn.is_conv else neuron.name
            raise UserError(f"NIR node {name!r} of type {kind} has no Lava mapping "
                            f"(supported: Input, Output, Flatten, Affine, Linear, {', '.join(NEURONS)})")
        layers.append(_lava_layer(syn, neuron, dt))
    return NirPlan(walked.input_shape, tuple(layers), float(dt))


def _lava_layer(syn: nir_graph.Synapse, n: nir_graph.Neuron, dt: float) -> LavaLayer:
    if n.reset != "hard":
        raise UserError(f"NIR node {n.name!r}: Lava's LIF resets to 0; reset by subtraction has no mapping")
    if n.v_reset != 0:
        raise UserError(f"NIR node {n.name!r}: Lava's LIF resets to 0; v_reset must be 0")
    w, b = syn.weight, syn.bias
    if n.kind == "IF":
        scale, du, dv, leak = n.r * dt, 1.0, 0.0, np.zeros(len(n.r))
    elif n.kind == "LIF":
        dv = dt / n.tau
        scale, du, leak = n.r * dv, 1.0, dv * n.v_leak
    else:  # CubaLIF
        du, dv = dt / n.tau_syn, dt / n.tau
        scale, leak = n.w_in * du * n.r * dv, dv * n.v_leak
        if np.any(b != 0):
            raise UserError(f"NIR node {syn.name!r}: an Affine bias into a CubaLIF has no exact Lava mapping")
    if not (0.0 <= du <= 1.0 and 0.0 <= dv <= 1.0):
        raise UserError(f"NIR node {n.name!r}: dt/tau must be in [0, 1] for Euler steps (dt={dt})")
    return LavaLayer(w * scale[:, None], scale * b + leak, du, dv, n.v_threshold, (syn.name, n.name))


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
