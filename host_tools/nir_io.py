"""NIR (Neuromorphic Intermediate Representation) import and export.

Export writes a NetworkSpec and its float parameters as a ``nir.NIRGraph`` in SpikingJelly's
convention (NIR time constants in seconds with ``dt`` in the graph metadata):

- Dense -> ``Linear`` (or ``Affine`` with a bias), Conv2d -> ``Conv2d``, Flatten -> ``Flatten``,
  avg Pool2d -> ``AvgPool2d``, max Pool2d -> ``SumPool2d`` followed by ``Threshold(0.5)`` (exact
  for binary spikes: the max of a 0/1 window is ``sum > 0.5``; NIR has no max-pool node).
- LIF(tau, v_th, v_reset, decay_input) -> ``LIF(tau=tau*dt, r=1 (decay_input) or tau,
  v_leak=v_reset, v_threshold, v_reset)``; IF -> ``IF(r=1/dt, v_threshold, v_reset)``.
- What NIR does not store goes into metadata: graph ``metadata`` holds ``dt``, ``time_steps``,
  ``encoding``, ``loss``, ``readout`` and ``edge_sdfa`` (JSON: the full NetworkSpec, reset modes,
  ``decay_input``, quantisation exponents of a fine-tuned export); every neuron node's metadata has
  ``reset_mode`` (``hard`` | ``subtract``) and ``decay_input``.

Import accepts the node types other frameworks write (Input, Output, Affine, Linear, Flatten,
Conv2d, SumPool2d, AvgPool2d, Threshold after a pool, LIF, IF, CubaLIF, LI), maps their
continuous-time parameters with forward Euler at ``dt`` onto NeuronSpec, and folds what NeuronSpec
has no field for into the weights and biases (see docs/host.md, "NIR parameter mapping"):

- LIF: ``v += dt/tau (v_leak - v + r I)`` is our decay_input LIF with ``tau_steps = tau/dt`` and
  input ``x = r I + (v_leak - v_rest)``: ``r`` (per neuron) scales the weights and bias rows,
  ``v_leak - v_rest`` becomes a bias.
- IF: ``v += dt r I``: IF with the weights scaled by ``dt r``.
- CubaLIF: exact only when ``dt == tau_syn`` (the synaptic current is then ``w_in * input``);
  otherwise an error, or with ``approximate=True`` its DC gain (the filter is dropped).
- LI (no spikes, a membrane readout): an error, or with ``approximate=True`` a spiking LIF
  (threshold 1, hard reset 0) whose spike count replaces the membrane readout.
- ``tau``, ``v_threshold``, ``v_reset`` must be the same for all neurons of a node (NeuronSpec has
  one value per layer); ``r`` and ``v_leak`` may differ per neuron (per output channel for Conv2d).

Errors (unsupported node, cycle, branch, shape mismatch, per-neuron parameter that cannot be folded)
raise UserError naming the node.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_sdfa.errors import UserError
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d, has_synapses

DEFAULT_DT = 1e-4  # snnTorch's and SpikingJelly's export default
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Flatten", "Conv2d", "SumPool2d", "AvgPool2d",
             "Threshold", "LIF", "IF", "CubaLIF", "LI")


def _nir():
    try:
        import nir
    except ImportError:
        raise UserError("NIR support needs the nir package (pip install 'edge-sdfa[host]')") from None
    return nir


# ---------------------------------------------------------------------------------------------
# export


def export_graph(spec: NetworkSpec, params, *, dt: float = DEFAULT_DT, metadata: dict | None = None):
    """A ``nir.NIRGraph`` of ``spec`` with float ``params`` (Dense weights ``[out, in]``)."""
    nir = _nir()
    if not dt > 0:
        raise UserError(f"dt must be > 0, got {dt}")
    shapes = spec.shapes()
    nodes: dict = {"input": nir.Input(input_type=np.array(spec.input_shape))}
    order = ["input"]
    for i, layer in enumerate(spec.layers):
        out_shape = shapes[i + 1]
        if isinstance(layer, Dense):
            w = np.asarray(params[i]["weight"], np.float32)
            if layer.bias:
                nodes[f"fc{i}"] = nir.Affine(weight=w, bias=np.asarray(params[i]["bias"], np.float32))
            else:
                nodes[f"fc{i}"] = nir.Linear(weight=w)
            order.append(f"fc{i}")
        elif isinstance(layer, Conv2d):
            w = np.asarray(params[i]["weight"], np.float32)
            bias = np.asarray(params[i]["bias"], np.float32) if layer.bias else np.zeros(w.shape[0], np.float32)
            nodes[f"conv{i}"] = nir.Conv2d(input_shape=tuple(shapes[i][1:]), weight=w, stride=layer.stride,
                                           padding=layer.padding, dilation=1, groups=1, bias=bias)
            order.append(f"conv{i}")
        elif isinstance(layer, Pool2d):
            k = np.array([layer.kernel_size] * 2)
            if layer.mode == "avg":
                nodes[f"pool{i}"] = nir.AvgPool2d(kernel_size=k, stride=k, padding=np.array([0, 0]))
                order.append(f"pool{i}")
            else:
                nodes[f"pool{i}"] = nir.SumPool2d(kernel_size=k, stride=k, padding=np.array([0, 0]),
                                                  metadata={"edge_sdfa": "maxpool (binary spikes)"})
                nodes[f"pool{i}_max"] = nir.Threshold(threshold=np.full(out_shape, 0.5, np.float32),
                                                      metadata={"edge_sdfa": "maxpool (binary spikes)"})
                order += [f"pool{i}", f"pool{i}_max"]
        elif isinstance(layer, Flatten):
            nodes[f"flatten{i}"] = nir.Flatten(input_type={"input": np.array(shapes[i])}, start_dim=0, end_dim=-1)
            order.append(f"flatten{i}")
        if has_synapses(layer):
            nodes[f"{layer.neuron.kind}{i}"] = _neuron_node(nir, layer.neuron, out_shape, dt)
            order.append(f"{layer.neuron.kind}{i}")
    nodes["output"] = nir.Output(output_type=np.array(shapes[-1]))
    order.append("output")
    meta = {"dt": float(dt), "time_steps": int(spec.time_steps), "loss": spec.loss, "readout": "spike_rate",
            "encoding": "spike frames (uint8 counts per step)", "producer": "edge-sdfa"}
    extra = dict(metadata or {})
    for key in ("encoding",):
        if key in extra:
            meta[key] = str(extra.pop(key))
    meta["edge_sdfa"] = json.dumps({"network": spec.to_dict(), **extra}, sort_keys=True, default=_json_default)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata=meta)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _neuron_node(nir, neuron: NeuronSpec, shape, dt: float):
    full = lambda v: np.full(shape, v, np.float64)
    v_reset = 0.0 if neuron.v_reset is None else float(neuron.v_reset)
    meta = {"reset_mode": "subtract" if neuron.v_reset is None else "hard", "decay_input": int(neuron.decay_input),
            "spike_condition": "v >= v_threshold"}
    if neuron.kind == "if":
        return nir.IF(r=full(1.0 / dt), v_threshold=full(neuron.v_threshold), v_reset=full(v_reset), metadata=meta)
    r = 1.0 if neuron.decay_input else neuron.tau
    return nir.LIF(tau=full(neuron.tau * dt), r=full(r), v_leak=full(v_reset), v_threshold=full(neuron.v_threshold),
                   v_reset=full(v_reset), metadata=meta)


def export_nir(spec: NetworkSpec, params, out: str | Path, *, dt: float = DEFAULT_DT,
               metadata: dict | None = None) -> Path:
    """Write ``spec``/``params`` as a .nir file (hdf5) and return its path."""
    nir = _nir()
    graph = export_graph(spec, params, dt=dt, metadata=metadata)
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        nir.write(str(tmp), graph)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def params_from_qnet(spec: NetworkSpec, qnet) -> list[dict]:
    """Float parameters equal to int8 ones, with the avg-pool folding of ``quantize`` undone."""
    from edge_sdfa.int8 import net as qn

    params = qn.dequantize(spec, qnet)
    fold = 1.0
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Pool2d) and layer.mode == "avg":
            fold *= layer.kernel_size ** 2
        if has_synapses(layer):
            if fold != 1.0 and "weight" in params[i]:
                params[i] = {k: (v * fold if k == "weight" else v) for k, v in params[i].items()}
            fold = 1.0
    return params


# ---------------------------------------------------------------------------------------------
# import


@dataclass
class Imported:
    spec: NetworkSpec
    params: list
    dt: float
    metadata: dict = field(default_factory=dict)   # the graph's metadata (edge_sdfa JSON decoded)
    notes: list[str] = field(default_factory=list)  # approximations and defaults taken
    nodes: list[str] = field(default_factory=list)  # node names in execution order


def read_graph(source):
    """A NIRGraph from a path (or the graph itself); an unreadable file is a UserError."""
    nir = _nir()
    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    if not path.is_file():
        raise UserError(f"no such NIR file: {path}")
    try:
        return nir.read(str(path))
    except Exception as exc:  # h5py / nir raise many kinds on a bad file
        raise UserError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


def _chain(graph) -> list[str]:
    """Node names from the Input to the Output of a feed-forward chain; cycles and branches fail."""
    names = list(graph.nodes)
    for name, node in graph.nodes.items():
        if type(node).__name__ == "NIRGraph":
            raise UserError(f"NIR node {name!r} is a sub-graph (e.g. a recurrent layer); only feed-forward "
                            "chains of single nodes are supported")
    succ = {n: [] for n in names}
    pred = {n: [] for n in names}
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
            raise UserError(f"NIR node {n!r} fans out to {', '.join(succ[n])}; only a single chain is supported")
        if len(pred[n]) > 1:
            raise UserError(f"NIR node {n!r} has several inputs ({', '.join(pred[n])}); only a single chain is supported")
    order = [inputs[0]]
    while succ[order[-1]]:
        order.append(succ[order[-1]][0])
    unreached = [n for n in names if n not in order]
    if unreached:
        raise UserError(f"NIR node {unreached[0]!r} is not connected to the input chain")
    if type(graph.nodes[order[-1]]).__name__ != "Output":
        raise UserError(f"NIR chain ends at node {order[-1]!r}, not at an Output node")
    return order


def _arr(node, attr) -> np.ndarray | None:
    v = getattr(node, attr, None)
    return None if v is None else np.asarray(v, np.float64)


def _uniform(name: str, kind: str, attr: str, value, allow_none=False, default=None) -> float | None:
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
                        f"equivalent here: NeuronSpec has one {attr} per layer")
    return float(v[0])


def _snap(x: float) -> float:
    """Undo the float noise of tau = steps * dt round trips (2e-4 / 1e-4 = 2.0000000000000004)."""
    short = float(f"{x:.6g}")
    if abs(x - short) <= 1e-6 * abs(x):
        return short
    return float(x)


def _per_out(name: str, kind: str, attr: str, value, out_shape) -> np.ndarray:
    """A per-neuron value as one number per output row (Dense) or channel (Conv2d)."""
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


def import_graph(source, *, dt: float | None = None, reset: str = "auto", approximate: bool = False,
                 time_steps: int | None = None, loss: str | None = None) -> Imported:
    """Map a NIR graph (or .nir path) onto a NetworkSpec and float parameters. See the module doc."""
    graph = read_graph(source)
    if reset not in ("auto", "hard", "subtract"):
        raise UserError(f"reset mode {reset!r} must be auto, hard or subtract")
    gmeta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(graph.metadata or {}).items()}
    ours = {}
    if isinstance(gmeta.get("edge_sdfa"), (str, bytes)):
        try:
            ours = json.loads(gmeta["edge_sdfa"])
        except ValueError:
            ours = {}
    gmeta["edge_sdfa"] = ours
    notes: list[str] = []
    if dt is None:
        if "dt" in gmeta:
            dt = float(gmeta["dt"])
        else:
            dt = DEFAULT_DT
            notes.append(f"the graph has no dt in its metadata; assumed dt={DEFAULT_DT:g} s "
                         "(snnTorch/SpikingJelly export default; pass --dt for Norse/Rockpool graphs)")
    if not dt > 0:
        raise UserError(f"dt must be > 0, got {dt}")
    if time_steps is None:
        if "time_steps" in gmeta:
            time_steps = int(gmeta["time_steps"])
        else:
            time_steps = 10
            notes.append("the graph does not say how many time steps it runs; assumed T=10 (pass --time-steps)")
    loss = loss or str(gmeta.get("loss", "ce"))
    if loss not in ("ce", "mse"):
        loss = "ce"

    order = _chain(graph)
    layers: list = []
    params: list = []
    shape: tuple[int, ...] | None = None
    in_shape: tuple[int, ...] = ()
    pending = None          # synaptic node waiting for its neuron: dict
    scale = 1.0             # sum-pool factor to fold into the next synaptic layer
    last_pool = None        # (name, kind, k, previous scale) of the last pooling layer
    for name in order:
        node = graph.nodes[name]
        kind = type(node).__name__
        if kind not in SUPPORTED:
            raise UserError(f"NIR node {name!r} has type {kind}, which is not supported "
                            f"(supported: {', '.join(SUPPORTED)})")
        if kind == "Input":
            it = node.input_type.get("input") if isinstance(node.input_type, dict) else node.input_type
            shape = tuple(int(d) for d in np.asarray(it).ravel()) if it is not None else None
            if not shape or min(shape) < 1:
                raise UserError(f"NIR node {name!r} (Input) has no usable input shape ({it})")
            in_shape = shape
            continue
        if kind == "Output":
            if pending is not None:
                raise UserError(f"NIR node {pending['name']!r} ({pending['kind']}) reaches the Output without a "
                                "spiking neuron; the network's output must be spikes")
            break
        if kind in ("Affine", "Linear"):
            if pending is not None:
                raise UserError(f"NIR node {name!r} ({kind}) follows {pending['name']!r} without a neuron between "
                                "them; fold the two linear maps into one before export")
            w = np.asarray(node.weight, np.float64)
            if w.ndim != 2:
                raise UserError(f"NIR node {name!r} ({kind}): weight must be 2-D [out, in], got shape {w.shape}")
            if len(shape) > 1 and all(d == 1 for d in shape[:-1]) and shape[-1] == w.shape[1]:
                notes.append(f"dropped the leading size-1 dimensions of the input {shape} before {name!r}")
                shape = (shape[-1],)
                if not layers:
                    in_shape = shape
            if len(shape) != 1:
                if int(np.prod(shape)) != w.shape[1]:
                    raise UserError(f"NIR node {name!r} ({kind}) takes {w.shape[1]} inputs, the input is {shape}")
                layers.append(Flatten())
                params.append({})
                notes.append(f"inserted a Flatten before {name!r} (input {shape})")
                shape = (int(np.prod(shape)),)
            if w.shape[1] != shape[0]:
                raise UserError(f"NIR node {name!r} ({kind}) takes {w.shape[1]} inputs, the previous node gives {shape[0]}")
            b = np.asarray(node.bias, np.float64) if kind == "Affine" else np.zeros(w.shape[0])
            if b.shape != (w.shape[0],):
                raise UserError(f"NIR node {name!r} (Affine): bias shape {b.shape} does not match {w.shape[0]} outputs")
            pending = {"name": name, "kind": kind, "type": "dense", "w": w * scale, "b": b,
                       "out_shape": (w.shape[0],)}
            scale, last_pool = 1.0, None
            continue
        if kind == "Conv2d":
            if pending is not None:
                raise UserError(f"NIR node {name!r} (Conv2d) follows {pending['name']!r} without a neuron between them")
            pending, shape = _conv(node, name, shape, scale)
            if not layers:
                in_shape = shape
            scale, last_pool = 1.0, None
            continue
        if kind in ("LIF", "IF", "CubaLIF", "LI"):
            if pending is None:
                raise UserError(f"NIR node {name!r} ({kind}) has no Affine/Linear/Conv2d before it; every neuron "
                                "layer needs its own synapses here")
            neuron, gain, offset = _neuron(node, name, kind, dt, reset, approximate, notes, pending["out_shape"])
            w, b = pending["w"], pending["b"]
            g = gain.reshape((-1,) + (1,) * (w.ndim - 1))
            w = w * g
            b = b * gain + offset
            has_bias = bool(np.any(b != 0))
            if pending["type"] == "dense":
                layer = Dense(w.shape[1], w.shape[0], bias=has_bias, neuron=neuron)
            else:
                layer = Conv2d(w.shape[1], w.shape[0], pending["k"], pending["stride"], pending["padding"],
                               bias=has_bias, neuron=neuron)
            p = {"weight": w.astype(np.float32)}
            if has_bias:
                p["bias"] = b.astype(np.float32)
            layers.append(layer)
            params.append(p)
            try:
                shape = layer.output_shape(shape)
            except UserError as exc:
                raise UserError(f"NIR node {pending['name']!r}: {exc}") from None
            pending = None
            continue
        if pending is not None:
            raise UserError(f"NIR node {name!r} ({kind}) sits between the synapses {pending['name']!r} and their "
                            "neuron; only Affine/Linear/Conv2d -> neuron pairs are supported")
        if kind == "Flatten":
            layers.append(Flatten())
            params.append({})
            shape = (int(np.prod(shape)),)
            continue
        if kind in ("SumPool2d", "AvgPool2d"):
            k = _pool_kernel(node, name, kind)
            if len(shape) != 3:
                raise UserError(f"NIR node {name!r} ({kind}) needs a (C, H, W) input, got {shape}")
            layer = Pool2d(k, "avg")
            try:
                shape = layer.output_shape(shape)
            except UserError as exc:
                raise UserError(f"NIR node {name!r}: {exc}") from None
            layers.append(layer)
            params.append({})
            last_pool = (name, kind, k, scale)
            if kind == "SumPool2d":
                scale *= k * k
            continue
        if kind == "Threshold":
            thr = _arr(node, "threshold")
            lo, hi = float(np.min(thr)), float(np.max(thr))
            if last_pool is None or not (layers and isinstance(layers[-1], Pool2d)):
                raise UserError(f"NIR node {name!r} (Threshold) is supported only right after a SumPool2d/AvgPool2d "
                                "(where it makes a max-pool of binary spikes)")
            pname, pkind, k, prev_scale = last_pool
            limit = 1.0 if pkind == "SumPool2d" else 1.0 / (k * k)
            if not (0.0 < lo and hi < limit):
                raise UserError(f"NIR node {name!r} (Threshold {lo:g}..{hi:g}) after {pname!r} is not a max-pool of "
                                f"binary spikes (needs 0 < threshold < {limit:g})")
            layers[-1] = Pool2d(k, "max")
            scale, last_pool = prev_scale, None
            continue
    if pending is not None:
        raise UserError(f"NIR node {pending['name']!r} ({pending['kind']}) is not followed by a neuron")
    if not layers:
        raise UserError("NIR graph has no layers between its Input and Output")
    if scale != 1.0:
        raise UserError("NIR graph ends with a SumPool2d; the output must be the spikes of a neuron layer")
    try:
        spec = NetworkSpec(in_shape, tuple(layers), int(time_steps), loss)
    except UserError as exc:
        raise UserError(f"NIR graph does not form a network this runtime can run: {exc}") from None
    return Imported(spec, params, float(dt), gmeta, notes, order)


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


def _conv(node, name: str, shape, scale: float):
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
    probe = Conv2d(cin, int(w.shape[0]), k, stride, padding)
    try:
        out_shape = probe.output_shape(shape)
    except UserError as exc:
        raise UserError(f"NIR node {name!r}: {exc}") from None
    return ({"name": name, "kind": "Conv2d", "type": "conv", "w": w * scale, "b": b.reshape(-1), "k": k,
             "stride": stride, "padding": padding, "out_shape": out_shape}, shape)


def _neuron(node, name: str, kind: str, dt: float, reset: str, approximate: bool, notes: list, out_shape):
    """(NeuronSpec, gain per output row, offset per output row) for a NIR neuron node."""
    meta = dict(getattr(node, "metadata", {}) or {})
    mode = reset
    if mode == "auto":
        mode = str(meta.get("reset_mode", "hard"))
        if mode not in ("hard", "subtract"):
            mode = "hard"
    v_th = _uniform(name, kind, "v_threshold", _arr(node, "v_threshold"), allow_none=kind == "LI", default=1.0)
    v_reset = _uniform(name, kind, "v_reset", _arr(node, "v_reset"), allow_none=True, default=0.0)
    if mode == "subtract":
        if v_reset:
            notes.append(f"{name}: reset by subtraction ignores v_reset={v_reset:g}")
        v_rest, spec_reset = 0.0, None
    else:
        v_rest, spec_reset = v_reset, v_reset
    try:
        if kind == "IF":
            r = _per_out(name, kind, "r", _arr(node, "r"), out_shape)
            return NeuronSpec("if", 2.0, v_th, spec_reset), _snap_arr(r * dt), np.zeros_like(r)
        if kind == "CubaLIF":
            tau_syn = _uniform(name, kind, "tau_syn", _arr(node, "tau_syn"))
            if abs(dt / tau_syn - 1.0) > 1e-6:
                msg = (f"NIR node {name!r} (CubaLIF): a synaptic current with tau_syn={tau_syn:g} s (dt={dt:g} s, "
                       f"{tau_syn / dt:.4g} steps) has no equivalent in NeuronSpec (one state per neuron)")
                if not approximate:
                    raise UserError(msg + "; exact only when tau_syn == dt; pass --approximate to drop the "
                                    "synaptic filter (keeping its DC gain)")
                notes.append(msg + "; approximated by its DC gain (filter dropped)")
            w_in = _per_out(name, kind, "w_in", _arr(node, "w_in") if node.w_in is not None else 1.0, out_shape)
            tau_mem = _uniform(name, kind, "tau_mem", _arr(node, "tau_mem"))
            r = _per_out(name, kind, "r", _arr(node, "r"), out_shape) * w_in
            v_leak = _per_out(name, kind, "v_leak", _arr(node, "v_leak"), out_shape)
            return _lif_spec(name, kind, tau_mem, dt, v_th, spec_reset, r, v_leak - v_rest, meta)
        tau = _uniform(name, kind, "tau", _arr(node, "tau"))
        r = _per_out(name, kind, "r", _arr(node, "r"), out_shape)
        v_leak = _per_out(name, kind, "v_leak", _arr(node, "v_leak"), out_shape)
        if kind == "LI":
            msg = (f"NIR node {name!r} (LI) is a non-spiking leaky integrator (a membrane readout); the runtime's "
                   "output is the spike rate of the last layer")
            if not approximate:
                raise UserError(msg + "; pass --approximate to replace it by a LIF with threshold 1 and hard reset 0")
            notes.append(msg + "; approximated by a LIF (threshold 1, hard reset 0): spike counts replace the membrane")
            return _lif_spec(name, kind, tau, dt, 1.0, 0.0, r, v_leak, meta)
        return _lif_spec(name, kind, tau, dt, v_th, spec_reset, r, v_leak - v_rest, meta)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"NIR node {name!r} ({kind}): {exc}") from None


def _snap_arr(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.size > 1 and np.all(a == a.flat[0]):
        return np.full(a.shape, _snap(float(a.flat[0])))
    return np.array([_snap(float(x)) for x in a.ravel()]).reshape(a.shape) if a.size <= 100_000 else a


def _lif_spec(name, kind, tau, dt, v_th, spec_reset, r, offset, meta):
    steps = _snap(tau / dt)
    if not steps > 1.0:
        raise UserError(f"NIR node {name!r} ({kind}): tau={tau:g} s is {steps:g} steps of dt={dt:g} s; a LIF here "
                        "needs tau > dt (check --dt)")
    r = _snap_arr(np.asarray(r, np.float64))
    decay_input = True
    if int(meta.get("decay_input", 1)) == 0 and np.all(np.abs(r - steps) <= 1e-9 * steps):
        decay_input, r = False, np.ones_like(r)  # our own export of decay_input=False: r = tau steps
        offset = offset / steps
    neuron = NeuronSpec("lif", steps, v_th, spec_reset, decay_input)
    return neuron, r, np.asarray(offset, np.float64)


# ---------------------------------------------------------------------------------------------
# fine-tuned model back to NIR


def export_finetuned(source: str | Path, out: str | Path, *, frozen_from: str | Path | None = None,
                     dt: float | None = None) -> dict:
    """Write the active weights of a store (or a bundle) as NIR: int8 weights dequantised exactly.

    A bundle whose frozen part is ONNX/TFLite does not carry the frozen weights as arrays; pass
    ``frozen_from`` (the .nir the bundle was partitioned from): its frozen layers are quantised
    again with the manifest's exponents and must reproduce them.
    """
    from edge_sdfa import bundle as bundle_mod
    from edge_sdfa.int8 import net as qn

    source = Path(source)
    if (source / "state.json").exists():
        from edge_sdfa.store import Store

        bpath = Store(source).active_dir()
    else:
        bpath = source
    b = bundle_mod.read_bundle(bpath)
    spec, cut = b.spec, b.cut
    qnet = list(b.qnet)
    meta = b.manifest.get("metadata", {}) or {}
    if cut > 0 and b.frozen_format != "npz":
        if frozen_from is None:
            raise UserError(f"bundle {bpath} keeps its frozen layers as {b.frozen_format}; pass --frozen-from "
                            "MODEL.nir (the graph it was partitioned from)")
        src = import_graph(frozen_from, dt=meta.get("nir_dt"))
        if src.spec.to_dict()["layers"][:cut] != spec.to_dict()["layers"][:cut]:
            raise UserError(f"{frozen_from}: its layers do not match the bundle's frozen part")
        exps = {int(k): int(v) for k, v in b.manifest["quant"]["exps"].items()}
        from edge_sdfa.int8 import arith

        fold = 1.0
        for i in range(cut):
            layer = spec.layers[i]
            if isinstance(layer, Pool2d) and layer.mode == "avg":
                fold /= layer.kernel_size ** 2
            if not has_synapses(layer):
                continue
            w = src.params[i]["weight"].astype(np.float64) * fold
            fold = 1.0
            w8, _ = arith.quantize_weight(w, exps[i])
            if isinstance(layer, Dense):
                w8 = np.ascontiguousarray(w8.T)
            bias = None
            if "bias" in src.params[i]:
                bias = np.round(src.params[i]["bias"].astype(np.float64) * 2.0 ** exps[i]).astype(np.int32)
            qnet[i] = qn.QLayer(exps[i], w8, bias, None)
    params = params_from_qnet(spec, qnet)
    dt = float(dt or meta.get("nir_dt") or DEFAULT_DT)
    extra = {"source_bundle": {"model_id": b.model_id, "version": b.version, "revision": b.revision},
             "quant_exps": {str(i): int(q.exp) for i, q in enumerate(qnet) if q.w8 is not None},
             "partition": cut}
    if "encoding" in meta:
        extra["encoding"] = meta["encoding"]
    path = export_nir(spec, params, out, dt=dt, metadata=extra)
    return {"out": str(path), "model_id": b.model_id, "version": b.version, "revision": b.revision,
            "layers": len(spec.layers), "partition": cut, "dt": dt,
            "parameters": int(sum(p["weight"].size for p in params if "weight" in p))}
