"""NIR graphs read once: the one graph walker and table of node handlers that the host's NIR
import (``nir_io``: NIR -> NetworkSpec) and the Lava simulator's NIR runner (``nir_lava``: NIR ->
Lava processes) share. Numpy only; NIR nodes are recognised by their class name, so this module
does not import the ``nir`` package.

Semantics (NIR's own, stated once here): neurons are continuous-time and discretised by forward
Euler at ``dt`` (the caller's, else the graph's ``metadata["dt"]``, else ``DEFAULT_DT`` with a
note). LIF ``v += dt/tau (v_leak - v + r I)``, IF ``v += dt r I``, CubaLIF first
``I_syn += dt/tau_syn (w_in I - I_syn)`` then the LIF update driven by ``I_syn``, LI the LIF update
without spikes. A neuron spikes when ``v > v_threshold``; then ``v = v_reset`` (``reset="hard"``)
or ``v -= v_threshold`` (``"subtract"``); ``reset="auto"`` takes the node's ``metadata
["reset_mode"]``, else hard. ``tau``, ``tau_syn``, ``v_threshold`` and ``v_reset`` must be the
same for all neurons of a node (a layer has one value); ``r``, ``v_leak`` and ``w_in`` may differ
per neuron (per output channel after a Conv2d).

``walk(graph)`` returns the chain as stages: ``SpikingLayer`` (a synaptic node with its neuron
node), ``FlattenStage`` and ``PoolStage``; a ``SumPool2d`` factor is folded into the next synaptic
layer's weights; ``SumPool2d/AvgPool2d -> Threshold`` and ``SumPool2d/AvgPool2d -> IF/LIF`` (hard reset
to 0, threshold below one spike's drive: the export's encoding) become a max pool (exact for spikes).
Every error is a UserError naming the node. NIR does not say which discrete rules the exporter
ran (reset timing, ``>`` or ``>=``, decay form, dt convention): ``detect_framework`` reads the
exporter's fingerprint and the host tools' NIR runner holds each framework's rules (docs/nir.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edge_sdfa.errors import UserError

DEFAULT_DT = 1e-4  # snnTorch's and SpikingJelly's export default
NEURONS = ("LIF", "IF", "CubaLIF", "LI")


# ---------------------------------------------------------------------------------------------
# what a walk produces


@dataclass(frozen=True, eq=False)
class Synapse:
    name: str
    kind: str                      # Affine | Linear | Conv2d
    weight: np.ndarray             # [out, in] or [out, in, k, k]; a preceding SumPool2d's k*k folded in
    bias: np.ndarray               # [out]
    out_shape: tuple[int, ...]
    kernel: int = 0                # Conv2d only
    stride: int = 1
    padding: int = 0

    @property
    def is_conv(self) -> bool:
        return self.kind == "Conv2d"


@dataclass(frozen=True, eq=False)
class Neuron:
    """A neuron node's parameters, validated; per-neuron values as one number per output row."""

    name: str
    kind: str                      # LIF | IF | CubaLIF | LI
    v_threshold: float             # LI: 1.0 (it has none)
    v_reset: float
    reset: str                     # hard | subtract
    r: np.ndarray
    tau: float | None = None       # LIF, LI; CubaLIF: tau_mem
    v_leak: np.ndarray | None = None
    tau_syn: float | None = None   # CubaLIF
    w_in: np.ndarray | None = None  # CubaLIF
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SpikingLayer:
    synapse: Synapse
    neuron: Neuron
    in_shape: tuple[int, ...]


@dataclass(frozen=True)
class FlattenStage:
    name: str | None               # None: inserted before a dense layer that takes a flat input


@dataclass(frozen=True)
class PoolStage:
    name: str
    kernel: int
    mode: str                      # avg | max


Stage = SpikingLayer | FlattenStage | PoolStage


@dataclass
class Walk:
    input_shape: tuple[int, ...]
    stages: list
    dt: float
    order: list[str]               # node names from Input to Output
    notes: list[str]               # defaults taken and reshapes made


# ---------------------------------------------------------------------------------------------
# graph-level: metadata, dt, the chain


def graph_metadata(graph) -> dict:
    """The graph's metadata as plain Python values, ``edge_sdfa`` (our export's JSON) decoded."""
    meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(graph.metadata or {}).items()}
    ours = {}
    if isinstance(meta.get("edge_sdfa"), (str, bytes)):
        try:
            ours = json.loads(meta["edge_sdfa"])
        except ValueError:
            ours = {}
    meta["edge_sdfa"] = ours
    return meta


def resolve_dt(graph, dt: float | None, notes: list[str]) -> float:
    """``dt`` if given, else the graph's, else DEFAULT_DT (and a note saying so)."""
    if dt is None:
        meta = dict(graph.metadata or {})
        if "dt" in meta:
            dt = float(meta["dt"])
        else:
            dt = DEFAULT_DT
            notes.append(f"the graph has no dt in its metadata; assumed dt={DEFAULT_DT:g} s "
                         "(snnTorch/SpikingJelly export default; pass --dt for Norse/Rockpool graphs)")
    if not dt > 0:
        raise UserError(f"dt must be > 0, got {dt}")
    return float(dt)


def chain(graph) -> list[str]:
    """Node names from the Input to the Output of a feed-forward chain; cycles and branches fail."""
    names = list(graph.nodes)
    for name, node in graph.nodes.items():
        if type(node).__name__ == "NIRGraph":
            raise UserError(f"NIR node {name!r} is a sub-graph (e.g. a recurrent layer); only feed-forward "
                            "chains of single nodes are supported")
    succ: dict[str, list[str]] = {n: [] for n in names}
    pred: dict[str, list[str]] = {n: [] for n in names}
    for a, b in graph.edges:
        a, b = str(a), str(b)
        for end in (a, b):
            if end not in succ:
                raise UserError(f"NIR edge ({a!r}, {b!r}) names a node {end!r} that is not in the graph "
                                "(sub-graph ports are not supported)")
        succ[a].append(b)
        pred[b].append(a)
    indeg = {n: len(pred[n]) for n in names}
    queue = [n for n in names if indeg[n] == 0]
    seen = []
    while queue:
        n = queue.pop(0)
        seen.append(n)
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                queue.append(m)
    if len(seen) != len(names):
        cyc = sorted(n for n in names if n not in seen)
        raise UserError(f"NIR graph is cyclic at node {cyc[0]!r} (nodes in or after the cycle: {', '.join(cyc)}); "
                        "recurrent graphs are not supported")
    inputs = [n for n in names if type(graph.nodes[n]).__name__ == "Input"]
    if len(inputs) != 1:
        raise UserError(f"NIR graph must have exactly one Input node, found {len(inputs)}")
    for n in names:
        if len(succ[n]) > 1:
            raise UserError(f"NIR node {n!r} fans out to {', '.join(succ[n])}; only feed-forward chains are supported")
        if len(pred[n]) > 1:
            raise UserError(f"NIR node {n!r} has several inputs ({', '.join(pred[n])}); only feed-forward chains "
                            "are supported")
    order = [inputs[0]]
    while succ[order[-1]]:
        order.append(succ[order[-1]][0])
    unreached = [n for n in names if n not in order]
    if unreached:
        raise UserError(f"NIR node {unreached[0]!r} is not connected to the input chain")
    if type(graph.nodes[order[-1]]).__name__ != "Output":
        raise UserError(f"NIR chain ends at node {order[-1]!r}, not at an Output node")
    return order


# ---------------------------------------------------------------------------------------------
# the walk: one handler per node type


@dataclass
class _State:
    dt: float
    reset: str
    notes: list[str]
    shape: tuple[int, ...] | None = None
    input_shape: tuple[int, ...] = ()
    stages: list = field(default_factory=list)
    pending: Synapse | None = None      # a synaptic node waiting for its neuron
    pending_in: tuple[int, ...] = ()
    scale: float = 1.0                  # SumPool2d factor to fold into the next synaptic node
    last_pool: tuple | None = None      # (name, kind, k, scale before it)
    done: bool = False
    input_has_time: bool = False        # Sinabs writes Input [T, ...]

    @property
    def has_layers(self) -> bool:
        return bool(self.stages)

    def no_pending(self, name: str, kind: str) -> None:
        if self.pending is not None:
            raise UserError(f"NIR node {name!r} ({kind}) sits between the synapses {self.pending.name!r} and their "
                            "neuron; only Affine/Linear/Conv2d -> neuron pairs are supported")


def _input(st: _State, name: str, node) -> None:
    it = node.input_type.get("input") if isinstance(node.input_type, dict) else node.input_type
    shape = tuple(int(d) for d in np.asarray(it).ravel()) if it is not None else None
    if not shape or min(shape) < 1:
        raise UserError(f"NIR node {name!r} (Input) has no usable input shape ({it})")
    if st.input_has_time and len(shape) >= 2:
        st.notes.append(f"Input {name!r} {list(shape)}: the leading {shape[0]} is the time dimension (dropped)")
        shape = shape[1:]
    elif len(shape) == 4 and shape[0] == 1:
        st.notes.append(f"Input {name!r} {list(shape)}: dropped the leading batch dimension of size 1")
        shape = shape[1:]
    st.shape = st.input_shape = shape


def _output(st: _State, name: str, node) -> None:
    if st.pending is not None:
        raise UserError(f"NIR node {st.pending.name!r} ({st.pending.kind}) reaches the Output without a "
                        "spiking neuron; the network's output must be spikes")
    st.done = True


def _dense(st: _State, name: str, node) -> None:
    kind = type(node).__name__
    if st.pending is not None:
        raise UserError(f"NIR node {name!r} ({kind}) follows {st.pending.name!r} without a neuron between "
                        "them; fold the two linear maps into one before export")
    w = np.asarray(node.weight, np.float64)
    if w.ndim != 2:
        raise UserError(f"NIR node {name!r} ({kind}): weight must be 2-D [out, in], got shape {w.shape}")
    shape = st.shape
    if len(shape) > 1 and all(d == 1 for d in shape[:-1]) and shape[-1] == w.shape[1]:
        st.notes.append(f"dropped the leading size-1 dimensions of the input {shape} before {name!r}")
        shape = (shape[-1],)
        if not st.has_layers:
            st.input_shape = shape
    if len(shape) != 1:
        if int(np.prod(shape)) != w.shape[1]:
            raise UserError(f"NIR node {name!r} ({kind}) takes {w.shape[1]} inputs, the input is {shape}")
        st.stages.append(FlattenStage(None))
        st.notes.append(f"inserted a Flatten before {name!r} (input {shape})")
        shape = (int(np.prod(shape)),)
    if w.shape[1] != shape[0]:
        raise UserError(f"NIR node {name!r} ({kind}) takes {w.shape[1]} inputs, the previous node gives {shape[0]}")
    b = np.asarray(node.bias, np.float64) if kind == "Affine" else np.zeros(w.shape[0])
    if b.shape != (w.shape[0],):
        raise UserError(f"NIR node {name!r} (Affine): bias shape {b.shape} does not match {w.shape[0]} outputs")
    st.pending, st.pending_in = Synapse(name, kind, w * st.scale, b, (w.shape[0],)), shape
    st.shape, st.scale, st.last_pool = shape, 1.0, None


def _conv(st: _State, name: str, node) -> None:
    from edge_sdfa.spec import Conv2d

    if st.pending is not None:
        raise UserError(f"NIR node {name!r} (Conv2d) follows {st.pending.name!r} without a neuron between them")
    w = np.asarray(node.weight, np.float64)
    if w.ndim != 4:
        raise UserError(f"NIR node {name!r} (Conv2d): weight must be [out, in, kh, kw], got {w.shape}")
    if int(node.groups) != 1:
        raise UserError(f"NIR node {name!r} (Conv2d): groups={node.groups} is not supported")
    if _pair(node.dilation, "dilation", name) != 1:
        raise UserError(f"NIR node {name!r} (Conv2d): dilation is not supported")
    if w.shape[2] != w.shape[3]:
        raise UserError(f"NIR node {name!r} (Conv2d): non-square kernel {w.shape[2:]} is not supported")
    k = int(w.shape[2])
    stride = _pair(node.stride, "stride", name)
    pad = node.padding
    if isinstance(pad, str):
        if pad == "valid":
            padding = 0
        elif pad == "same" and stride == 1 and k % 2 == 1:
            padding = k // 2
        else:
            raise UserError(f"NIR node {name!r} (Conv2d): padding {pad!r} with kernel {k}, stride {stride} is not supported")
    else:
        padding = _pair(pad, "padding", name)
    cin = int(w.shape[1])
    shape = st.shape
    if shape is None or len(shape) != 3:
        n = int(np.prod(shape)) if shape else 0
        ishape = getattr(node, "input_shape", None)
        if ishape is not None and len(np.asarray(ishape).ravel()) == 2 and n == cin * int(np.prod(ishape)):
            shape = (cin, *(int(d) for d in np.asarray(ishape).ravel()))
        else:
            raise UserError(f"NIR node {name!r} (Conv2d) needs a (C, H, W) input, got {shape}")
    if shape[0] != cin:
        raise UserError(f"NIR node {name!r} (Conv2d) expects {cin} input channels, got {shape[0]}")
    b = np.asarray(node.bias, np.float64) if node.bias is not None else np.zeros(w.shape[0])
    if np.ndim(b) == 0:
        b = np.full(w.shape[0], float(b))
    try:
        out_shape = Conv2d(cin, int(w.shape[0]), k, stride, padding).output_shape(shape)
    except UserError as exc:
        raise UserError(f"NIR node {name!r}: {exc}") from None
    if not st.has_layers:
        st.input_shape = shape
    st.pending = Synapse(name, "Conv2d", w * st.scale, b.reshape(-1), tuple(out_shape), k, stride, padding)
    st.pending_in, st.shape, st.scale, st.last_pool = shape, shape, 1.0, None


def _neuron(st: _State, name: str, node) -> None:
    kind = type(node).__name__
    if st.pending is None and st.last_pool is not None and kind in ("IF", "LIF") and st.stages \
            and isinstance(st.stages[-1], PoolStage):
        _pool_neuron(st, name, node)
        return
    if st.pending is None:
        raise UserError(f"NIR node {name!r} ({kind}) has no Affine/Linear/Conv2d before it; every neuron "
                        "layer needs its own synapses here")
    syn = st.pending
    neuron = read_neuron(node, name, syn.out_shape, st.reset)
    st.stages.append(SpikingLayer(syn, neuron, st.pending_in))
    st.pending, st.shape = None, syn.out_shape


def _flatten(st: _State, name: str, node) -> None:
    st.no_pending(name, "Flatten")
    st.stages.append(FlattenStage(name))
    st.shape = (int(np.prod(st.shape)),)


def _pool(st: _State, name: str, node) -> None:
    from edge_sdfa.spec import Pool2d

    kind = type(node).__name__
    st.no_pending(name, kind)
    k = _pool_kernel(node, name, kind)
    if st.shape is None or len(st.shape) != 3:
        raise UserError(f"NIR node {name!r} ({kind}) needs a (C, H, W) input, got {st.shape}")
    try:
        st.shape = Pool2d(k, "avg").output_shape(st.shape)
    except UserError as exc:
        raise UserError(f"NIR node {name!r}: {exc}") from None
    st.stages.append(PoolStage(name, k, "avg"))
    st.last_pool = (name, kind, k, st.scale)
    if kind == "SumPool2d":
        st.scale *= k * k


def _threshold(st: _State, name: str, node) -> None:
    st.no_pending(name, "Threshold")
    thr = np.asarray(node.threshold, np.float64)
    lo, hi = float(np.min(thr)), float(np.max(thr))
    if st.last_pool is None or not (st.stages and isinstance(st.stages[-1], PoolStage)):
        raise UserError(f"NIR node {name!r} (Threshold) is supported only right after a SumPool2d/AvgPool2d "
                        "(where it makes a max-pool of binary spikes)")
    pname, pkind, k, prev_scale = st.last_pool
    limit = 1.0 if pkind == "SumPool2d" else 1.0 / (k * k)
    if not (0.0 < lo and hi < limit):
        raise UserError(f"NIR node {name!r} (Threshold {lo:g}..{hi:g}) after {pname!r} is not a max-pool of "
                        f"binary spikes (needs 0 < threshold < {limit:g})")
    st.stages[-1] = PoolStage(pname, k, "max")
    st.scale, st.last_pool = prev_scale, None


def _pool_neuron(st: _State, name: str, node) -> None:
    """A neuron right after a pool of spikes: a max pool when it spikes on one spike in the window and
    is back at 0 after every step (hard reset to 0, threshold between 0 and what one spike adds; the
    export's encoding, docs/nir.md); anything else is refused, naming the node."""
    kind = type(node).__name__
    n = read_neuron(node, name, st.shape, st.reset)
    pname, pkind, k, prev_scale = st.last_pool
    unit = 1.0 if pkind == "SumPool2d" else 1.0 / (k * k)
    if kind == "IF":
        drive = st.dt * n.r
    else:
        drive = st.dt / n.tau * n.r if np.all(n.v_leak == 0) and st.dt <= n.tau else np.zeros_like(n.r)
    one = float(np.min(drive)) * unit
    if not (n.reset == "hard" and n.v_reset == 0.0 and 0.0 < n.v_threshold < one):
        raise UserError(f"NIR node {name!r} ({kind}) follows the pool {pname!r} without synapses; read as a max pool "
                        f"only with a hard reset to 0 and 0 < v_threshold < {one:g} (one spike's drive at dt={st.dt:g}), "
                        f"got reset {n.reset}, v_reset {n.v_reset:g}, v_threshold {n.v_threshold:g}")
    st.stages[-1] = PoolStage(pname, k, "max")
    st.scale, st.last_pool = prev_scale, None


HANDLERS: dict[str, Callable[[_State, str, object], None]] = {
    "Input": _input, "Output": _output,
    "Affine": _dense, "Linear": _dense, "Conv2d": _conv,
    **{kind: _neuron for kind in NEURONS},
    "Flatten": _flatten, "SumPool2d": _pool, "AvgPool2d": _pool, "Threshold": _threshold,
}
SUPPORTED = tuple(HANDLERS)


def walk(graph, *, dt: float | None = None, reset: str = "auto", notes: list[str] | None = None,
         input_has_time: bool = False) -> Walk:
    """The graph's chain as stages (see the module doc). ``notes`` collects the defaults taken."""
    if reset not in ("auto", "hard", "subtract"):
        raise UserError(f"reset mode {reset!r} must be auto, hard or subtract")
    notes = [] if notes is None else notes
    order = chain(graph)
    st = _State(dt=resolve_dt(graph, dt, notes), reset=reset, notes=notes, input_has_time=input_has_time)
    for name in order:
        node = graph.nodes[name]
        kind = type(node).__name__
        handler = HANDLERS.get(kind)
        if handler is None:
            raise UserError(f"NIR node {name!r} has type {kind}, which is not supported "
                            f"(supported: {', '.join(SUPPORTED)})")
        handler(st, name, node)
        if st.done:
            break
    if st.pending is not None:
        raise UserError(f"NIR node {st.pending.name!r} ({st.pending.kind}) is not followed by a neuron")
    if not st.stages:
        raise UserError("NIR graph has no layers between its Input and Output")
    if st.scale != 1.0:
        raise UserError("NIR graph ends with a SumPool2d; the output must be the spikes of a neuron layer")
    return Walk(st.input_shape, st.stages, st.dt, order, notes)


# ---------------------------------------------------------------------------------------------
# neuron parameters


def read_neuron(node, name: str, out_shape, reset: str = "auto") -> Neuron:
    """A neuron node's parameters, validated (uniform where a layer has one value)."""
    kind = type(node).__name__
    meta = dict(getattr(node, "metadata", {}) or {})
    mode = reset
    if mode == "auto":
        mode = str(meta.get("reset_mode", "hard"))
        if mode not in ("hard", "subtract"):
            mode = "hard"
    try:
        v_th = uniform(name, kind, "v_threshold", _arr(node, "v_threshold"), allow_none=kind == "LI", default=1.0)
        v_reset = uniform(name, kind, "v_reset", _arr(node, "v_reset"), allow_none=True, default=0.0)
        common = dict(name=name, kind=kind, v_threshold=v_th, v_reset=v_reset, reset=mode, metadata=meta)
        if kind == "IF":
            return Neuron(r=per_out(name, kind, "r", _arr(node, "r"), out_shape), **common)
        if kind == "CubaLIF":
            tau_syn = uniform(name, kind, "tau_syn", _arr(node, "tau_syn"))
            w_in = per_out(name, kind, "w_in", _arr(node, "w_in") if node.w_in is not None else 1.0, out_shape)
            return Neuron(tau=uniform(name, kind, "tau_mem", _arr(node, "tau_mem")),
                          r=per_out(name, kind, "r", _arr(node, "r"), out_shape),
                          v_leak=per_out(name, kind, "v_leak", _arr(node, "v_leak"), out_shape),
                          tau_syn=tau_syn, w_in=w_in, **common)
        return Neuron(tau=uniform(name, kind, "tau", _arr(node, "tau")),
                      r=per_out(name, kind, "r", _arr(node, "r"), out_shape),
                      v_leak=per_out(name, kind, "v_leak", _arr(node, "v_leak"), out_shape), **common)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"NIR node {name!r} ({kind}): {exc}") from None


def _arr(node, attr) -> np.ndarray | None:
    v = getattr(node, attr, None)
    return None if v is None else np.asarray(v, np.float64)


def uniform(name: str, kind: str, attr: str, value, allow_none=False, default=None) -> float | None:
    """One value for the whole node, or a UserError naming it."""
    if value is None:
        if allow_none:
            return default
        raise UserError(f"NIR node {name!r} ({kind}) has no {attr}")
    v = np.asarray(value, np.float64).ravel()
    if v.size == 0:
        return default
    if not np.all(np.isfinite(v)):
        raise UserError(f"NIR node {name!r} ({kind}): {attr} is not finite")
    if np.max(np.abs(v - v[0])) > 1e-6 * max(1.0, abs(v[0])):
        raise UserError(f"NIR node {name!r} ({kind}): per-neuron {attr} (from {v.min():g} to {v.max():g}) has no "
                        f"equivalent: one {attr} per layer (NeuronSpec and Lava's LIF alike)")
    return float(v[0])


def per_out(name: str, kind: str, attr: str, value, out_shape) -> np.ndarray:
    """A per-neuron value as one number per output row (dense) or channel (Conv2d)."""
    v = np.broadcast_to(np.asarray(value, np.float64), ()) if np.ndim(value) == 0 else np.asarray(value, np.float64)
    n_out = int(out_shape[0])
    if v.ndim == 0 or v.size == 1:
        return np.full(n_out, float(v.ravel()[0]))
    try:
        full = np.broadcast_to(v.reshape(v.shape), out_shape) if v.shape != tuple(out_shape) else v
    except ValueError:
        if v.size == int(np.prod(out_shape)):
            full = v.reshape(out_shape)
        else:
            raise UserError(f"NIR node {name!r} ({kind}): {attr} has shape {v.shape}, the layer has {tuple(out_shape)} "
                            "neurons") from None
    if len(out_shape) == 1:
        return full.astype(np.float64)
    flat = full.reshape(n_out, -1)
    if np.max(np.abs(flat - flat[:, :1])) > 1e-6 * max(1.0, float(np.abs(flat).max())):
        raise UserError(f"NIR node {name!r} ({kind}): {attr} differs within a channel; a convolution can fold "
                        "only one value per output channel")
    return flat[:, 0].astype(np.float64)


def _pair(v, what: str, name: str) -> int:
    a = np.asarray(v).ravel()
    if a.size == 0:
        raise UserError(f"NIR node {name!r}: empty {what}")
    if np.any(a != a[0]):
        raise UserError(f"NIR node {name!r}: non-square {what} {tuple(a.tolist())} is not supported")
    return int(a[0])


def _pool_kernel(node, name: str, kind: str) -> int:
    k = _pair(node.kernel_size, "kernel", name)
    s = _pair(node.stride, "stride", name) if node.stride is not None else k
    p = _pair(node.padding, "padding", name) if node.padding is not None else 0
    if s != k or p != 0:
        raise UserError(f"NIR node {name!r} ({kind}): only non-overlapping pooling (stride = kernel, no padding) "
                        f"is supported, got kernel {k}, stride {s}, padding {p}")
    return k


# ---------------------------------------------------------------------------------------------
# which exporter wrote the graph: NIR 1.0 stores neither the reset rule, its timing, the spike
# condition nor the decay form, so they are read from the exporter's fingerprint (node names and
# parameter conventions), and the CLI's flags override.

FRAMEWORKS = ("edge-sdfa", "spikingjelly", "snntorch", "norse", "rockpool", "sinabs", "nir")


def detect_framework(graph) -> tuple[str, str]:
    """(framework, why) from what the file holds; ``nir`` (the spec's own reading) when unsure."""
    meta = dict(graph.metadata or {})
    if str(meta.get("producer", "")) == "edge-sdfa" or "edge_sdfa" in meta:
        return "edge-sdfa", "graph metadata producer=edge-sdfa"
    names = [str(n) for n in graph.nodes]
    kinds = {str(n): type(v).__name__ for n, v in graph.nodes.items()}
    if any(n.endswith(("_LIFTorch", "_LinearTorch", "_LIFNeuronTorch", "_ExpSynTorch")) for n in names):
        return "rockpool", "node names <i>_LIFTorch/<i>_LinearTorch (rockpool.nn.modules.torch.nir.to_nir)"
    neurons = [(n, v) for n, v in graph.nodes.items() if type(v).__name__ in NEURONS]
    if "input_1" in names or any(n.startswith("_") and n[1:].isdigit() for n in names):
        return "spikingjelly", "node names _<i> and input_1 (spikingjelly nir_exchange.export_to_nir)"
    digit_names = all(n.isdigit() or kinds[n] in ("Input", "Output") for n in names)
    in_shape = _input_dims(graph)
    if digit_names and neurons and len(in_shape) >= 2 and in_shape[0] > 1 and all(
            np.allclose(np.asarray(getattr(v, "r", 1.0), np.float64), 1.0) for _, v in neurons) and all(
            kinds[n] == "IF" or float(np.min(_tau_of(v))) >= 1.0 for n, v in neurons):
        return "sinabs", (f"node names <i>, Input {list(in_shape)} with a leading time dimension, r = 1, tau in steps "
                          "(sinabs.nir.to_nir)")
    if digit_names and neurons:
        rs = [np.asarray(getattr(v, "r", 1.0), np.float64) for _, v in neurons]
        if all(np.allclose(r, 1.0) for r in rs) and all(kinds[n] in ("LIF", "IF", "CubaLIF", "LI") for n, _ in neurons):
            if any(kinds[n] in ("LIF", "CubaLIF", "LI") and float(np.min(_tau_of(v))) < 1e-4 for n, v in neurons) \
                    or all(kinds[n] == "IF" for n, _ in neurons):
                return "norse", "node names <i>, r = 1 everywhere, tau = dt/tau_mem_inv (norse.torch.utils.export_nir)"
        lifs = [v for n, v in neurons if kinds[n] in ("LIF", "CubaLIF")]
        if lifs and all(np.allclose(np.asarray(v.r, np.float64) * DEFAULT_DT, _tau_of(v), rtol=1e-5) for v in lifs):
            return "snntorch", ("node names <i>, LIF/CubaLIF with r = tau/1e-4 (snntorch.export_nir: tau = dt/(1-beta), "
                                "tau_syn = dt/(1-alpha))")
    return "nir", "no exporter fingerprint; NIR's own semantics (forward Euler, spike v > v_threshold, hard reset)"


def _input_dims(graph) -> tuple[int, ...]:
    for node in graph.nodes.values():
        if type(node).__name__ == "Input":
            it = node.input_type.get("input") if isinstance(node.input_type, dict) else node.input_type
            return tuple(int(d) for d in np.asarray(it).ravel()) if it is not None else ()
    return ()


def _tau_of(node) -> np.ndarray:
    return np.asarray(getattr(node, "tau", None) if hasattr(node, "tau") else node.tau_mem, np.float64)


def rockpool_dt(tau: np.ndarray, r: np.ndarray) -> float:
    """Rockpool writes r = tau exp(-dt/tau) / dt; solve that for dt (bisection on a monotone map)."""
    tau, r = float(np.ravel(tau)[0]), float(np.ravel(r)[0])
    f = lambda dt: tau * np.exp(-dt / tau) / dt - r  # decreasing in dt
    lo, hi = tau * 1e-9, tau * 50.0
    if not (f(lo) > 0 > f(hi)):
        raise UserError(f"r={r:g} with tau={tau:g} is not Rockpool's r = tau exp(-dt/tau)/dt for any dt")
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return float(_round_sig((lo * hi) ** 0.5))


def _round_sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")
