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

from edge_sdfa import nir_graph
from edge_sdfa.errors import UserError
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d, has_synapses

DEFAULT_DT = nir_graph.DEFAULT_DT
SUPPORTED = nir_graph.SUPPORTED


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


def import_graph(source, *, dt: float | None = None, reset: str = "auto", approximate: bool = False,
                 time_steps: int | None = None, loss: str | None = None) -> Imported:
    """Map a NIR graph (or .nir path) onto a NetworkSpec and float parameters. See the module doc."""
    graph = read_graph(source)
    gmeta = nir_graph.graph_metadata(graph)
    notes: list[str] = []
    dt = nir_graph.resolve_dt(graph, dt, notes)
    if time_steps is None:
        if "time_steps" in gmeta:
            time_steps = int(gmeta["time_steps"])
        else:
            time_steps = 10
            notes.append("the graph does not say how many time steps it runs; assumed T=10 (pass --time-steps)")
    loss = loss or str(gmeta.get("loss", "ce"))
    if loss not in ("ce", "mse"):
        loss = "ce"
    walked = nir_graph.walk(graph, dt=dt, reset=reset, notes=notes)
    layers: list = []
    params: list = []
    for stage in walked.stages:
        if isinstance(stage, nir_graph.FlattenStage):
            layer, p = Flatten(), {}
        elif isinstance(stage, nir_graph.PoolStage):
            layer, p = Pool2d(stage.kernel, stage.mode), {}
        else:
            layer, p = _spiking_layer(stage, dt, approximate, notes)
        layers.append(layer)
        params.append(p)
    try:
        spec = NetworkSpec(walked.input_shape, tuple(layers), int(time_steps), loss)
    except UserError as exc:
        raise UserError(f"NIR graph does not form a network this runtime can run: {exc}") from None
    return Imported(spec, params, float(dt), gmeta, notes, walked.order)


def _spiking_layer(stage: nir_graph.SpikingLayer, dt: float, approximate: bool, notes: list):
    """A Dense/Conv2d layer with its NeuronSpec and float parameters: the neuron's gain per output
    row folded into the weights and bias, its offset added to the bias."""
    syn = stage.synapse
    neuron, gain, offset = _neuron_spec(stage.neuron, dt, approximate, notes)
    w = syn.weight * gain.reshape((-1,) + (1,) * (syn.weight.ndim - 1))
    b = syn.bias * gain + offset
    has_bias = bool(np.any(b != 0))
    if syn.is_conv:
        layer = Conv2d(w.shape[1], w.shape[0], syn.kernel, syn.stride, syn.padding, bias=has_bias, neuron=neuron)
    else:
        layer = Dense(w.shape[1], w.shape[0], bias=has_bias, neuron=neuron)
    p = {"weight": w.astype(np.float32)}
    if has_bias:
        p["bias"] = b.astype(np.float32)
    try:
        layer.output_shape(stage.in_shape)
    except UserError as exc:
        raise UserError(f"NIR node {syn.name!r}: {exc}") from None
    return layer, p


def _neuron_spec(n: nir_graph.Neuron, dt: float, approximate: bool, notes: list):
    """(NeuronSpec, gain per output row, offset per output row) for a NIR neuron."""
    name, kind = n.name, n.kind
    if n.reset == "subtract":
        if n.v_reset:
            notes.append(f"{name}: reset by subtraction ignores v_reset={n.v_reset:g}")
        v_rest, spec_reset = 0.0, None
    else:
        v_rest, spec_reset = n.v_reset, n.v_reset
    try:
        if kind == "IF":
            return NeuronSpec("if", 2.0, n.v_threshold, spec_reset), _snap_arr(n.r * dt), np.zeros_like(n.r)
        if kind == "CubaLIF":
            if abs(dt / n.tau_syn - 1.0) > 1e-6:
                msg = (f"NIR node {name!r} (CubaLIF): a synaptic current with tau_syn={n.tau_syn:g} s (dt={dt:g} s, "
                       f"{n.tau_syn / dt:.4g} steps) has no equivalent in NeuronSpec (one state per neuron)")
                if not approximate:
                    raise UserError(msg + "; exact only when tau_syn == dt; pass --approximate to drop the "
                                    "synaptic filter (keeping its DC gain)")
                notes.append(msg + "; approximated by its DC gain (filter dropped)")
            return _lif_spec(name, kind, n.tau, dt, n.v_threshold, spec_reset, n.r * n.w_in, n.v_leak - v_rest,
                             n.metadata)
        if kind == "LI":
            msg = (f"NIR node {name!r} (LI) is a non-spiking leaky integrator (a membrane readout); the runtime's "
                   "output is the spike rate of the last layer")
            if not approximate:
                raise UserError(msg + "; pass --approximate to replace it by a LIF with threshold 1 and hard reset 0")
            notes.append(msg + "; approximated by a LIF (threshold 1, hard reset 0): spike counts replace the membrane")
            return _lif_spec(name, kind, n.tau, dt, 1.0, 0.0, n.r, n.v_leak, n.metadata)
        return _lif_spec(name, kind, n.tau, dt, n.v_threshold, spec_reset, n.r, n.v_leak - v_rest, n.metadata)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"NIR node {name!r} ({kind}): {exc}") from None


def _snap(x: float) -> float:
    """Undo the float noise of tau = steps * dt round trips (2e-4 / 1e-4 = 2.0000000000000004)."""
    short = float(f"{x:.6g}")
    if abs(x - short) <= 1e-6 * abs(x):
        return short
    return float(x)


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
