"""NIR (Neuromorphic Intermediate Representation) import and export.

Export writes a NetworkSpec and its float parameters as a ``nir.NIRGraph`` in SpikingJelly's
convention (NIR time constants in seconds with ``dt`` in the graph metadata):

- Dense -> ``Linear`` (or ``Affine`` with a bias), Conv2d -> ``Conv2d``, Flatten -> ``Flatten``,
  avg Pool2d -> ``AvgPool2d``, max Pool2d -> ``AvgPool2d`` followed by ``IF(r=1/dt, v_threshold=
  0.5/k^2, v_reset=0)`` (exact for binary spikes: it spikes where the window holds one and is back
  at 0 after every step; NIR has no max-pool node, and importers read this; the older
  ``SumPool2d -> Threshold(0.5)`` still imports).
- ``target`` (``export-nir --for``): the form one framework's importer runs (docs/nir.md, "Export").
- LIF(tau, v_th, v_reset, decay_input) -> ``LIF(tau=tau*dt, r=1 (decay_input) or tau,
  v_leak=v_reset, v_threshold, v_reset)``; IF -> ``IF(r=1/dt, v_threshold, v_reset)``.
- What NIR does not store goes into metadata: graph ``metadata`` holds ``dt``, ``time_steps``,
  ``encoding``, ``loss``, ``readout`` and ``edge_sdfa`` (JSON: the full NetworkSpec, reset modes,
  ``decay_input``, quantisation exponents of a fine-tuned export); every neuron node's metadata has
  ``reset_mode`` (``hard`` | ``subtract``) and ``decay_input``.

Import reads the file with the rules of the framework that wrote it (``nir_run.semantics``:
detected from the file, flags override; docs/nir.md) and accepts the node types other frameworks write (Input, Output, Affine, Linear, Flatten,
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
from host_tools import nir_run
from host_tools.nir_run import read_graph  # noqa: F401  (part of this module's API)

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


EXPORT_TARGETS = ("nir", "snntorch", "norse", "rockpool", "sinabs")
# the spike condition each target's importer builds (None: NIR's own file, the rule is in node metadata)
TARGET_SPIKE_IF = {"nir": None, "snntorch": ">", "norse": ">", "rockpool": ">=", "sinabs": ">="}
SNNTORCH_DT = 1e-4        # snntorch.import_nir hard-codes dt = 1e-4 for LIF/CubaLIF
HUGE = 2.0 ** 100         # tau / dt of a LIF whose decay rounds to exactly 1 (an IF where only LIF imports)
ROCKPOOL_SYN = 2.0 ** -64  # Rockpool's synaptic decay exp(-dt/tau_syn) made a pass-through: 1/(that) in the weights

# where each target's importer cannot express the model, one line naming its code path
_SUBTRACT_ONLY = ("{t}'s importer builds neurons that reset by subtraction and emit floor(v/v_th) spikes per step "
                  "({where}); a hard reset has no equivalent: export a reset=subtract model, or use the nir target")
_SUBTRACT_WHERE = {"rockpool": "rockpool.nn.modules.torch.nir._convert_nir_to_rockpool -> LIFTorch: "
                               "'vmem = vmem - spikes * self.threshold'",
                   "sinabs": "sinabs.nir._import_sinabs_module -> LIFSqueeze with the defaults "
                             "spike_fn=MultiSpike, reset_fn=MembraneSubtract()"}


def _check_target(spec: NetworkSpec, target: str) -> None:
    """One-line refusals for what ``target``'s importer cannot run as this model."""
    for i, layer in enumerate(spec.layers):
        if has_synapses(layer):
            n = layer.neuron
            if target in ("snntorch", "norse") and n.v_reset is None:
                raise UserError(f"layer {i}: reset by subtraction; the {target} importer resets to zero "
                                "(NIR 1.0 has no reset mode); export with the nir target and import by hand")
            if target in ("snntorch", "norse") and n.v_reset:
                raise UserError(f"layer {i}: v_reset={n.v_reset:g}; the {target} importer resets to 0 "
                                "(snntorch: reset_mechanism='zero'; norse: LIFBoxParameters/IAFParameters default)")
            if target in ("rockpool", "sinabs") and n.v_reset is not None:
                raise UserError(f"layer {i}: " + _SUBTRACT_ONLY.format(t=target, where=_SUBTRACT_WHERE[target]))
        if target == "rockpool" and not isinstance(layer, Dense):
            raise UserError(f"layer {i} ({layer.type}): rockpool's importer converts only Linear/Affine and "
                            "CubaLIF/LI nodes (rockpool.nn.modules.torch.nir._convert_nir_to_rockpool raises "
                            "NotImplementedError on Conv2d, pooling and Flatten)")
        if target == "sinabs" and isinstance(layer, Pool2d) and layer.mode == "max":
            raise UserError(f"layer {i}: max pooling; sinabs' importer has no max-pool or Threshold node and maps "
                            "IF/LIF to MultiSpike neurons (floor(v/v_th) spikes), so a window with several spikes "
                            "cannot give one")


def export_graph(spec: NetworkSpec, params, *, dt: float = DEFAULT_DT, metadata: dict | None = None,
                 target: str = "nir"):
    """A ``nir.NIRGraph`` of ``spec`` with float ``params`` (Dense weights ``[out, in]``).

    ``target`` fills the room NIR leaves for one framework's importer (docs/nir.md, "Export"):
    ``nir`` writes NIR's own reading (SpikingJelly imports it exactly); ``snntorch``, ``norse``,
    ``rockpool`` and ``sinabs`` write what that importer maps onto the model's dynamics, or
    refuse in one line where it cannot (``_check_target``)."""
    nir = _nir()
    if not dt > 0:
        raise UserError(f"dt must be > 0, got {dt}")
    if target not in EXPORT_TARGETS:
        raise UserError(f"export target {target!r} must be one of {', '.join(EXPORT_TARGETS)}")
    _check_target(spec, target)
    if target == "snntorch":
        dt = SNNTORCH_DT  # the importer's fixed dt; the discrete model does not depend on it
    shapes = spec.shapes()
    nodes: dict = {"input": nir.Input(input_type=np.array(spec.input_shape))}
    order = ["input"]
    scale = 1.0  # a pool written as a sum: 1/k^2 goes into the next synaptic layer
    for i, layer in enumerate(spec.layers):
        out_shape = shapes[i + 1]
        if has_synapses(layer):
            gain = scale * _synapse_gain(layer.neuron, target)
            scale = 1.0
            w = np.asarray(params[i]["weight"], np.float64) * gain
            bias = np.asarray(params[i]["bias"], np.float64) * gain if layer.bias else None
        if isinstance(layer, Dense):
            if bias is not None or target == "sinabs":  # sinabs' importer maps Affine only
                b = bias if bias is not None else np.zeros(w.shape[0])
                nodes[f"fc{i}"] = nir.Affine(weight=w.astype(np.float32), bias=b.astype(np.float32))
            else:
                nodes[f"fc{i}"] = nir.Linear(weight=w.astype(np.float32))
            order.append(f"fc{i}")
        elif isinstance(layer, Conv2d):
            b = bias if bias is not None else np.zeros(w.shape[0])
            nodes[f"conv{i}"] = nir.Conv2d(input_shape=tuple(shapes[i][1:]), weight=w.astype(np.float32),
                                           stride=layer.stride, padding=layer.padding, dilation=1, groups=1,
                                           bias=b.astype(np.float32))
            order.append(f"conv{i}")
        elif isinstance(layer, Pool2d):
            k = layer.kernel_size
            kk = np.array([k, k])
            pool_meta = {"edge_sdfa": f"{layer.mode} pool"}
            as_sum = target in ("norse", "sinabs")  # their importers have no AvgPool2d (it maps to None)
            pool = nir.SumPool2d if as_sum else nir.AvgPool2d
            nodes[f"pool{i}"] = pool(kernel_size=kk, stride=kk, padding=np.array([0, 0]), metadata=pool_meta)
            order.append(f"pool{i}")
            unit = 1.0 if as_sum else 1.0 / (k * k)  # what one spike in the window adds
            if layer.mode == "avg":
                scale *= 1.0 / (k * k) if as_sum else 1.0
            else:
                nodes[f"pool{i}_max"] = _maxpool_neuron(nir, out_shape, unit, dt, target)
                order.append(f"pool{i}_max")
        elif isinstance(layer, Flatten):
            nodes[f"flatten{i}"] = nir.Flatten(input_type={"input": np.array(shapes[i])},
                                               start_dim=0 if target == "nir" else -len(shapes[i]), end_dim=-1)
            order.append(f"flatten{i}")
        if has_synapses(layer):
            nodes[f"{layer.neuron.kind}{i}"] = _neuron_node(nir, layer.neuron, out_shape, dt, target)
            order.append(f"{layer.neuron.kind}{i}")
    nodes["output"] = nir.Output(output_type=np.array(shapes[-1]))
    order.append("output")
    meta = {"dt": float(dt), "time_steps": int(spec.time_steps), "loss": spec.loss, "readout": "spike_rate",
            "encoding": "spike frames (uint8 counts per step)", "producer": "edge-sdfa", "target": target}
    rules = {layer.neuron.spike_if for layer in spec.layers if has_synapses(layer)}
    if target == "nir" and len(rules) == 1:
        meta["spike_if"] = rules.pop()  # the model's condition (a targeted export has its importer's)
    extra = dict(metadata or {})
    for key in ("encoding",):
        if key in extra:
            meta[key] = str(extra.pop(key))
    meta["edge_sdfa"] = json.dumps({"network": spec.to_dict(), **extra}, sort_keys=True, default=_json_default)
    # sinabs' neuron parameters are per channel [C, 1, 1]: NIR's type check compares shapes literally
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata=meta,
                        type_check=target != "sinabs")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _synapse_gain(neuron: NeuronSpec, target: str) -> float:
    """The factor a target's neuron needs in its synapses: what its importer drops from the node."""
    if target == "norse" and neuron.kind == "lif" and not neuron.decay_input:
        return neuron.tau  # Norse's LIFBox ignores r (r = tau here)
    if target == "sinabs":
        return 1.0 / neuron.tau if neuron.kind == "lif" and neuron.decay_input else 1.0
    if target == "rockpool":
        g = 1.0 / neuron.tau if neuron.kind == "lif" and neuron.decay_input else 1.0
        return g / ROCKPOOL_SYN
    return 1.0


def _threshold_for(neuron: NeuronSpec, target: str) -> float:
    """The threshold that gives the model's spike condition under the target importer's own."""
    rule = TARGET_SPIKE_IF[target]
    v_th = neuron.v_threshold
    if rule == ">" and neuron.spike_if == ">=":  # float32 membranes: v > prev(v_th) is v >= v_th
        return float(np.nextafter(np.float32(v_th), np.float32(0)))
    if rule == ">=" and neuron.spike_if == ">":  # v >= next(v_th) is v > v_th
        return float(np.nextafter(np.float32(v_th), np.float32(np.inf)))
    return float(v_th)


def _maxpool_neuron(nir, shape, unit: float, dt: float, target: str):
    """A max pool of binary spikes as the pool's sum/average driving a neuron with threshold half a
    spike and a hard reset to 0: it spikes once where the window holds a spike, and is back at 0
    after every step (no leak to speak of). Every importer that has the pool reads this; NIR has
    no max-pool node. snnTorch's IF import is broken (r must be 1, leaks by 0.9, returns a tuple):
    there it is a LIF whose decay rounds to 1."""
    full = lambda v: np.full(shape, v, np.float64)
    meta = {"edge_sdfa": "max pool (binary spikes): spikes where the window has one", "reset_mode": "hard"}
    if target == "snntorch":
        return nir.LIF(tau=full(dt * HUGE), r=full(HUGE), v_leak=full(0.0), v_threshold=full(0.5 * unit),
                       v_reset=full(0.0), metadata=meta)
    return nir.IF(r=full(1.0 / dt), v_threshold=full(0.5 * unit), v_reset=full(0.0), metadata=meta)


def _neuron_node(nir, neuron: NeuronSpec, shape, dt: float, target: str = "nir"):
    full = lambda v: np.full(shape, v, np.float64)
    v_reset = 0.0 if neuron.v_reset is None else float(neuron.v_reset)
    meta = {"reset_mode": "subtract" if neuron.v_reset is None else "hard", "decay_input": int(neuron.decay_input),
            "spike_condition": f"v {neuron.spike_if} v_threshold"}
    v_th = neuron.v_threshold
    if target != "nir":
        v_th = _threshold_for(neuron, target)
        if v_th != neuron.v_threshold:
            meta["v_threshold_model"] = float(neuron.v_threshold)
    is_if = neuron.kind == "if"
    # per-step membrane decay of the model (1 for IF), written in the target's decay form
    decay = 1.0 if is_if else 1.0 - 1.0 / neuron.tau
    if target == "rockpool":
        # CubaLIF (its importer's only LIF): tau_mem with exp(-dt/tau_mem) = the model's decay, the
        # synaptic filter a pass-through (decay 2^-64, undone in the weights), r so that the
        # importer's dt = tau_mem / (1 + r) is dt
        tau_mem = dt * HUGE if is_if else -dt / np.log(decay)
        tau_syn = dt / (64 * np.log(2.0))
        return nir.CubaLIF(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / dt - 1.0),
                           v_leak=full(0.0), v_threshold=full(v_th), v_reset=full(0.0), w_in=full(1.0),
                           metadata=meta)
    if target == "sinabs":
        # LIF with tau in steps, exp(-1/tau) = the model's decay; v_reset dropped when written (nir 1.0.4);
        # parameters per channel [C, 1, 1] after a conv (its importer's `any(node.v_leak)` fails on [C, H, W])
        full = lambda v: np.full((shape[0],) + (1,) * (len(shape) - 1), v, np.float64)
        tau = HUGE if is_if else -1.0 / np.log(decay)
        return nir.LIF(tau=full(tau), r=full(1.0), v_leak=full(0.0), v_threshold=full(v_th), v_reset=full(0.0),
                       metadata=meta)
    if is_if:
        if target == "snntorch":  # its IF import needs r == 1, leaks by 0.9 and returns a tuple: a LIF with decay 1
            return nir.LIF(tau=full(dt * HUGE), r=full(HUGE), v_leak=full(0.0), v_threshold=full(v_th),
                           v_reset=full(v_reset), metadata=meta)
        return nir.IF(r=full(1.0 / dt), v_threshold=full(v_th), v_reset=full(v_reset), metadata=meta)
    r = 1.0 if (neuron.decay_input or target == "norse") else neuron.tau
    return nir.LIF(tau=full(neuron.tau * dt), r=full(r), v_leak=full(v_reset), v_threshold=full(v_th),
                   v_reset=full(v_reset), metadata=meta)


def export_nir(spec: NetworkSpec, params, out: str | Path, *, dt: float = DEFAULT_DT,
               metadata: dict | None = None, target: str = "nir") -> Path:
    """Write ``spec``/``params`` as a .nir file (hdf5) and return its path."""
    nir = _nir()
    graph = export_graph(spec, params, dt=dt, metadata=metadata, target=target)
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        nir.write(str(tmp), graph)
        if target == "sinabs":
            _drop_v_reset(tmp)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _drop_v_reset(path: Path) -> None:
    """Sinabs 3.1.3 needs nir <= 1.0.4, whose LIF/IF have no v_reset (its ``nir.read`` raises on the
    key): drop it; reset to 0 is what nir 1.0.8 reads for a missing v_reset, and Sinabs' own."""
    import h5py

    with h5py.File(path, "r+") as f:
        for node in f["node/nodes"].values():
            if "v_reset" in node and node["type"][()] in (b"LIF", b"IF"):
                del node["v_reset"]


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
    semantics: dict = field(default_factory=dict)   # the exporter's rules it was read with (nir_run.Semantics)


def import_graph(source, *, dt: float | None = None, reset: str | None = "auto", approximate: bool = False,
                 time_steps: int | None = None, loss: str | None = None, framework: str | None = None,
                 spike_if: str | None = None, decay: str | None = None, multi_spike: bool | None = None) -> Imported:
    """Map a NIR graph (or .nir path) onto a NetworkSpec and float parameters. See the module doc.

    The discrete rules (reset and its timing, spike condition, decay form, multi-spike, dt
    convention) are those of the exporter that wrote the file (``nir_run.semantics``: detected,
    or ``framework``); the other keywords override them. What NeuronSpec cannot express is a
    UserError naming the node."""
    graph = read_graph(source)
    gmeta = nir_graph.graph_metadata(graph)
    notes: list[str] = []
    sem = nir_run.semantics(graph, framework=framework, dt=dt, reset=None if reset in (None, "auto") else reset,
                            spike_if=spike_if, decay=decay, multi_spike=multi_spike, notes=notes)
    if time_steps is None:
        if "time_steps" in gmeta:
            time_steps = int(gmeta["time_steps"])
        else:
            time_steps = 10
            notes.append("the graph does not say how many time steps it runs; assumed T=10 (pass --time-steps)")
    loss = loss or str(gmeta.get("loss", "ce"))
    if loss not in ("ce", "mse"):
        loss = "ce"
    walked = nir_graph.walk(graph, dt=sem.dt or 1.0, reset="auto" if sem.reset == "auto" else "hard", notes=notes,
                            input_has_time=sem.framework == "sinabs")
    layers: list = []
    params: list = []
    for stage in walked.stages:
        if isinstance(stage, nir_graph.FlattenStage):
            layer, p = Flatten(), {}
        elif isinstance(stage, nir_graph.PoolStage):
            layer, p = Pool2d(stage.kernel, stage.mode), {}
        else:
            layer, p = _spiking_layer(stage, sem, approximate, notes)
        layers.append(layer)
        params.append(p)
    try:
        spec = NetworkSpec(walked.input_shape, tuple(layers), int(time_steps), loss)
    except UserError as exc:
        raise UserError(f"NIR graph does not form a network this runtime can run: {exc}") from None
    # the dt that, passed back as dt=, reads the graph the same way (Norse: its own dt, not the Euler dt^2)
    back_dt = float(dt) if dt is not None else (nir_run.NORSE_DT if sem.framework == "norse" else float(sem.dt or walked.dt))
    return Imported(spec, params, back_dt, gmeta, notes, walked.order, sem.to_dict())


def _spiking_layer(stage: nir_graph.SpikingLayer, sem, approximate: bool, notes: list):
    """A Dense/Conv2d layer with its NeuronSpec and float parameters: the neuron's gain per output
    row folded into the weights and bias, its offset added to the bias."""
    syn = stage.synapse
    neuron, gain, offset = _neuron_spec(stage.neuron, sem, approximate, notes)
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


def _neuron_spec(n: nir_graph.Neuron, sem, approximate: bool, notes: list):
    """(NeuronSpec, gain per output row, offset per output row) for a NIR neuron under ``sem``."""
    name, kind = n.name, n.kind
    reset = n.reset if sem.reset == "auto" else sem.reset
    if reset == "subtract-delayed":
        raise UserError(f"NIR node {name!r} ({kind}): reset by subtraction one step late (snnTorch's default "
                        "reset_delay=True) has no NeuronSpec equivalent (it subtracts v_th/beta with threshold v_th); "
                        "`edge-sdfa nir run` simulates it, or pass --reset hard|subtract to import another rule")
    if sem.multi_spike:
        raise UserError(f"NIR node {name!r} ({kind}): {sem.framework} emits several spikes per step "
                        "(floor(v/v_th)); NeuronSpec spikes once per step: `edge-sdfa nir run` simulates it, or pass "
                        "--single-spike to import one spike per step")
    if reset == "subtract":
        if n.v_reset:
            notes.append(f"{name}: reset by subtraction ignores v_reset={n.v_reset:g}")
        v_rest, spec_reset = 0.0, None
    else:
        v_rest, spec_reset = n.v_reset, n.v_reset
    if kind == "LI":
        msg = (f"NIR node {name!r} (LI) is a non-spiking leaky integrator (a membrane readout); the runtime's "
               "output is the spike rate of the last layer")
        if not approximate:
            raise UserError(msg + "; pass --approximate to replace it by a LIF with threshold 1 and hard reset 0")
        notes.append(msg + "; approximated by a LIF (threshold 1, hard reset 0): spike counts replace the membrane")
        n = nir_graph.Neuron(name, "LIF", 1.0, 0.0, "hard", n.r, n.tau, n.v_leak, metadata=n.metadata)
        spec_reset, v_rest = 0.0, 0.0
    try:
        c = nir_run.neuron_coeffs(n, sem)
        if kind == "IF":
            return (NeuronSpec("if", 2.0, n.v_threshold, spec_reset, spike_if=sem.spike_if), _snap_arr(c.g),
                    np.zeros_like(n.r))
        gain = np.asarray(c.g, np.float64)
        if kind == "CubaLIF":
            # an instantaneous synaptic filter: Euler with tau_syn = dt, or an exp decay below 1e-9
            # (our Rockpool export's 2^-64: what it carries over is 2^-64 of the last step's current)
            exact = sem.synaptic in ("euler", "rockpool") and np.all(np.abs(c.a_syn) <= 1e-9)
            if not exact:
                msg = (f"NIR node {name!r} (CubaLIF): a synaptic current with tau_syn={n.tau_syn:g} s ({sem.framework}, "
                       f"dt={sem.dt if sem.dt else 'per node'}) is a second state per neuron: NeuronSpec has no "
                       "equivalent; `edge-sdfa nir run` simulates it exactly")
                if not approximate:
                    raise UserError(msg + "; pass --approximate to drop the synaptic filter (keeping its DC gain)")
                notes.append(msg + "; approximated by its DC gain (filter dropped)")
                gain = gain * np.asarray(c.g_syn) / (1 - np.asarray(c.a_syn))
            else:
                gain = gain * np.asarray(c.g_syn)
        a = float(np.asarray(c.a).ravel()[0])
        if a == 1.0 and np.all(np.asarray(c.off) == 0):  # a decay that rounds to 1 (our IF for LIF-only importers)
            return (NeuronSpec("if", 2.0, n.v_threshold, spec_reset, spike_if=sem.spike_if), _snap_arr(gain),
                    np.zeros_like(n.r))
        steps = _snap(1.0 / (1.0 - a)) if a < 1 else float("inf")
        if not steps > 1.0:
            raise UserError(f"NIR node {name!r} ({kind}): decay {a:g} per step is not a LIF this runtime runs "
                            "(needs 1 - 1/tau with tau > 1 step; check --dt / --framework)")
        # NIR step v' = a v + g I + off; NeuronSpec (decay_input) h = (1 - 1/tau) v + (x + v_rest)/tau
        # with 1/tau = 1 - a, so x = tau g I + (tau off - v_rest)
        offset = steps * np.asarray(c.off, np.float64) - v_rest
        r_fold = _snap_arr(steps * gain)
        decay_input = True
        if int(n.metadata.get("decay_input", 1)) == 0 and np.all(np.abs(r_fold - steps) <= 1e-9 * steps):
            decay_input, r_fold = False, np.ones_like(r_fold)  # our own export of decay_input=False
            offset = offset / steps
        neuron = NeuronSpec("lif", steps, n.v_threshold, spec_reset, decay_input, spike_if=sem.spike_if)
        return neuron, r_fold, offset
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


# ---------------------------------------------------------------------------------------------
# fine-tuned model back to NIR


def export_finetuned(source: str | Path, out: str | Path, *, frozen_from: str | Path | None = None,
                     dt: float | None = None, target: str = "nir") -> dict:
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
    path = export_nir(spec, params, out, dt=dt, metadata=extra, target=target)
    return {"out": str(path), "model_id": b.model_id, "version": b.version, "revision": b.revision,
            "layers": len(spec.layers), "partition": cut, "dt": dt, "target": target,
            "parameters": int(sum(p["weight"].size for p in params if "weight" in p))}
