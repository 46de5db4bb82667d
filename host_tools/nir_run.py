"""Simulate a NIR graph in float on given input spikes, with the semantics of the framework that
wrote it (``edge-sdfa nir run``).

NIR 1.0 fixes the equations (continuous time, forward Euler at ``dt``) but not the discrete rules
each framework applies: the reset (to ``v_reset``, by subtraction, or snnTorch's subtraction one
step late), the spike condition (``v > v_th`` or ``v >= v_th``), the decay form (Euler's
``1 - dt/tau`` or Rockpool's ``exp(-dt/tau)``), multi-spike steps and how ``dt`` is meant
(Norse writes ``tau = dt/tau_mem_inv``). :func:`semantics` reads them from the exporter's
fingerprint (``nir_graph.detect_framework``) and every flag overrides. The network is the one
chain that ``nir_graph.walk`` reads (the walker the import and the Lava runner share).

Per layer, with per-output coefficients from the neuron node:

- LIF (Euler): ``v = (1 - dt/tau) v + dt/tau r I + dt/tau v_leak``; (exp, Rockpool): ``v = a v + I``
  with ``a = exp(-dt/tau)``; (exp-norm, Sinabs' ``norm_input``): ``v = a v + (1 - a) I``.
- IF: ``v = v + dt r I`` (Norse: ``v = v + r I``).
- CubaLIF (Euler): ``I_syn = (1 - dt/tau_syn) I_syn + dt/tau_syn w_in I``, then the LIF step on ``I_syn``;
  (Rockpool): ``I_syn = exp(-dt/tau_syn) (I_syn + I)``, ``v = exp(-dt/tau_mem) v + I_syn``;
  (Norse LIFCell): ``J = I_syn + w_in I``, the LIF step on ``J``, then ``I_syn = (1 - dt/tau_syn) J``.
- spike ``s = v > v_th`` (or ``>=``); multi-spike: ``s = floor(v / v_th)`` where ``v >= v_th``.
- reset ``hard``: ``v = v_reset``; ``subtract``: ``v -= s v_th``; ``subtract-delayed`` (snnTorch's
  ``reset_delay``): nothing now, ``v_th`` subtracted after the next step's decay.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdfa import nir_graph
from edge_sdfa.errors import UserError

RESETS = ("auto", "hard", "subtract", "subtract-delayed")
SPIKE_IF = (">", ">=")
DECAYS = ("euler", "exp", "exp-norm")
NORSE_DT = 1e-3  # Norse's own default step (its exporter's dt)


@dataclass(frozen=True)
class Semantics:
    framework: str
    why: str
    dt: float | None            # Euler dt of LIF/CubaLIF (None: per node, Rockpool's r)
    if_dt: float                # dt of IF (Norse: 1, its IF ignores dt)
    decay: str                  # euler | exp
    spike_if: str               # > | >=
    reset: str                  # auto (node metadata) | hard | subtract | subtract-delayed
    multi_spike: bool
    synaptic: str = "euler"     # euler (NIR) | rockpool | norse

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FRAMEWORK_RULES = {  # what each exporter's own simulator does (checked against tests/golden/nir)
    "edge-sdfa": dict(decay="euler", spike_if=">=", reset="auto", multi_spike=False),
    "spikingjelly": dict(decay="euler", spike_if=">=", reset="hard", multi_spike=False),
    "snntorch": dict(decay="euler", spike_if=">", reset="subtract-delayed", multi_spike=False),
    "norse": dict(decay="euler", spike_if=">", reset="hard", multi_spike=False, synaptic="norse"),
    "rockpool": dict(decay="exp", spike_if=">=", reset="subtract", multi_spike=True, synaptic="rockpool"),
    "sinabs": dict(decay="exp-norm", spike_if=">=", reset="subtract", multi_spike=True),
    "nir": dict(decay="euler", spike_if=">", reset="auto", multi_spike=False),  # auto: node metadata, else hard
}


# `export-nir --for T` writes the model in the form T's importer runs; read back with T's rules
EXPORT_TARGET_RULES = {
    "snntorch": dict(spike_if=">"),   # thresholds one float32 below the model's
    "norse": dict(spike_if=">"),
    "rockpool": dict(decay="exp", synaptic="rockpool"),   # CubaLIF, synaptic filter a pass-through
    "sinabs": dict(decay="exp"),      # LIF, tau in steps
}


def semantics(graph, *, framework: str | None = None, dt: float | None = None, reset: str | None = None,
              spike_if: str | None = None, decay: str | None = None, multi_spike: bool | None = None,
              notes: list[str] | None = None) -> Semantics:
    """The discrete rules to run ``graph`` with: the exporter's (detected or ``framework``), then the flags."""
    notes = [] if notes is None else notes
    if framework is None or framework == "auto":
        framework, why = nir_graph.detect_framework(graph)
    else:
        if framework not in FRAMEWORK_RULES:
            raise UserError(f"unknown framework {framework!r} (expected auto, {', '.join(FRAMEWORK_RULES)})")
        why = "--framework"
    rules = dict(FRAMEWORK_RULES[framework])
    target = str(dict(graph.metadata or {}).get("target", "nir"))
    if framework == "edge-sdfa" and target == "nir" and str(dict(graph.metadata).get("spike_if")) in SPIKE_IF:
        rules["spike_if"] = str(graph.metadata["spike_if"])  # the exported model's own condition
    if framework == "edge-sdfa" and target in EXPORT_TARGET_RULES:  # our export for one importer (docs/nir.md)
        rules.update(EXPORT_TARGET_RULES[target])
        notes.append(f"exported for {target}: read with the rules its importer runs ({EXPORT_TARGET_RULES[target]})")
    for key, value, allowed in (("reset", reset, RESETS), ("spike_if", spike_if, SPIKE_IF), ("decay", decay, DECAYS)):
        if value is not None:
            if value not in allowed:
                raise UserError(f"{key.replace('_', '-')} {value!r} must be one of {', '.join(allowed)}")
            rules[key] = value
    if multi_spike is not None:
        rules["multi_spike"] = bool(multi_spike)
    if framework == "norse":
        ndt = NORSE_DT if dt is None else float(dt)
        if not ndt > 0:
            raise UserError(f"dt must be > 0, got {ndt}")
        notes.append(f"Norse writes tau = dt/tau_mem_inv: LIF run with Euler dt = (Norse dt {ndt:g})^2 = {ndt * ndt:g}, "
                     "IF with v += r I")
        return Semantics(framework, why, ndt * ndt, 1.0, **rules)
    if framework == "sinabs":
        d = 1.0 if dt is None else float(dt)
        notes.append(f"Sinabs writes tau in time steps: dt = {d:g}")
        return Semantics(framework, why, d, d, **rules)
    if framework == "rockpool" and dt is None:
        return Semantics(framework, why, None, 1.0, **rules)
    if framework == "edge-sdfa" and target == "sinabs":
        return Semantics(framework, why, 1.0, 1.0, **rules)  # tau written in steps
    d = nir_graph.resolve_dt(graph, dt, notes)
    if_dt = 1.0 if framework == "edge-sdfa" and target == "snntorch" else d  # IF written with r = 1 for snnTorch
    return Semantics(framework, why, d, if_dt, **rules)


# ---------------------------------------------------------------------------------------------
# one neuron layer


@dataclass
class _Coeffs:
    a: np.ndarray               # v decay
    g: np.ndarray               # input gain
    off: np.ndarray             # constant drive per step
    a_syn: np.ndarray | None    # CubaLIF
    g_syn: np.ndarray | None
    v_th: float
    v_reset: float
    reset: str


def neuron_coeffs(n: nir_graph.Neuron, sem: Semantics) -> _Coeffs:
    """Per-step coefficients of a neuron node under ``sem`` (see the module doc)."""
    name, kind = n.name, n.kind
    reset = n.reset if sem.reset == "auto" else sem.reset
    ones = np.ones_like(n.r)
    if kind == "LI":
        raise UserError(f"NIR node {name!r} (LI) is a non-spiking leaky integrator: `nir run` writes spikes, and an "
                        "LI output is a membrane (use a spiking output layer)")
    dt = sem.dt
    if dt is None:  # Rockpool: its dt is in r = tau exp(-dt/tau)/dt
        try:
            dt = nir_graph.rockpool_dt(n.tau, n.r)
        except UserError as exc:
            raise UserError(f"NIR node {name!r} ({kind}): {exc}; pass --dt") from None
    a_syn = g_syn = None
    if kind == "IF":
        return _Coeffs(ones, sem.if_dt * n.r, 0 * ones, None, None, n.v_threshold, n.v_reset, reset)
    if sem.decay in ("exp", "exp-norm"):
        a = np.exp(-dt / n.tau) * ones
        g, off = (1 - a) if sem.decay == "exp-norm" else ones, 0 * ones
        if np.any(n.v_leak != 0):
            raise UserError(f"NIR node {name!r} ({kind}): v_leak != 0 has no meaning in the exp-decay form used "
                            f"for {sem.framework}")
    else:
        k = dt / n.tau
        if not 0 < k <= 1:
            raise UserError(f"NIR node {name!r} ({kind}): dt/tau = {k:g} (dt={dt:g} s, tau={n.tau:g} s) is not a "
                            "stable Euler step; check --dt / --framework")
        a, g, off = (1 - k) * ones, k * n.r, k * n.v_leak
    if kind == "CubaLIF":
        if sem.synaptic == "rockpool":
            b = np.exp(-dt / n.tau_syn)
            a_syn, g_syn, g = b * ones, b * ones, ones
        elif sem.synaptic == "norse":  # LIFCell: I_syn += I, v steps on it, then I_syn decays
            ks = dt / n.tau_syn
            a_syn, g_syn = (1 - ks) * ones, n.w_in
        else:
            ks = dt / n.tau_syn
            if not 0 < ks <= 1:
                raise UserError(f"NIR node {name!r} (CubaLIF): dt/tau_syn = {ks:g} is not a stable Euler step")
            a_syn, g_syn = (1 - ks) * ones, ks * n.w_in
    return _Coeffs(a, g, off, a_syn, g_syn, n.v_threshold, n.v_reset, reset)


def _neuron_run(c: _Coeffs, cur: np.ndarray, sem: Semantics) -> np.ndarray:
    """Spikes [T, N, *out] of one neuron layer for input currents cur [T, N, *out]."""
    shape = (-1,) + (1,) * (cur.ndim - 3)  # per output row / channel
    a, g, off = (np.asarray(v, np.float64).reshape(shape) for v in (c.a, c.g, c.off))
    v = np.zeros(cur.shape[1:])
    isyn = np.zeros(cur.shape[1:])
    prev = np.zeros(cur.shape[1:])
    out = np.empty_like(cur)
    for t in range(cur.shape[0]):
        x = cur[t]
        if c.a_syn is not None and sem.synaptic == "norse":
            x = isyn + np.asarray(c.g_syn).reshape(shape) * x   # the input jumps into I_syn, v steps on it,
            isyn = np.asarray(c.a_syn).reshape(shape) * x       # then I_syn decays
        elif c.a_syn is not None:
            isyn = np.asarray(c.a_syn).reshape(shape) * isyn + np.asarray(c.g_syn).reshape(shape) * x
            x = isyn
        v = a * v + g * x + off
        if c.reset == "subtract-delayed":
            v = v - c.v_th * prev
        fired = v >= c.v_th if sem.spike_if == ">=" else v > c.v_th
        s = np.where(fired, np.floor(v / c.v_th), 0.0) if sem.multi_spike else fired.astype(np.float64)
        if c.reset == "hard":
            v = np.where(fired, c.v_reset, v)
        elif c.reset == "subtract":
            v = v - s * c.v_th
        prev = s
        out[t] = s
    return out


# ---------------------------------------------------------------------------------------------
# the network


def simulate(graph, x: np.ndarray, sem: Semantics, notes: list[str] | None = None) -> np.ndarray:
    """Output spikes [T, N, n_out] of ``graph`` for input x [T, N, *input_shape]."""
    from edge_sdfa import ops
    from edge_sdfa.spec import Conv2d, Dense, Pool2d

    notes = [] if notes is None else notes
    walked = nir_graph.walk(graph, dt=sem.dt or 1.0, reset="auto" if sem.reset == "auto" else "hard", notes=notes,
                            input_has_time=sem.framework == "sinabs")
    x = np.asarray(x, np.float64)
    if x.ndim < 3:
        raise UserError(f"input must be [T, N, *shape] (shape {walked.input_shape} for node {walked.order[0]!r}), "
                        f"got {x.shape}")
    t_steps, n = x.shape[:2]
    if x.shape[2:] != tuple(walked.input_shape):
        if int(np.prod(x.shape[2:])) != int(np.prod(walked.input_shape)):
            raise UserError(f"input frames have shape {x.shape[2:]}, NIR node {walked.order[0]!r} takes "
                            f"{tuple(walked.input_shape)}")
        x = x.reshape(t_steps, n, *walked.input_shape)
    rows = x.reshape(t_steps * n, *x.shape[2:])
    for stage in walked.stages:
        if isinstance(stage, nir_graph.FlattenStage):
            rows = rows.reshape(rows.shape[0], -1)
        elif isinstance(stage, nir_graph.PoolStage):
            rows = ops.pool_forward(Pool2d(stage.kernel, stage.mode), rows)
        else:
            syn = stage.synapse
            params = {"weight": syn.weight, "bias": syn.bias}
            if syn.is_conv:
                layer = Conv2d(syn.weight.shape[1], syn.weight.shape[0], syn.kernel, syn.stride, syn.padding, bias=True)
            else:
                layer = Dense(syn.weight.shape[1], syn.weight.shape[0], bias=True)
                rows = rows.reshape(rows.shape[0], -1)
            cur = ops.synapse_forward(layer, params, rows)
            spikes = _neuron_run(neuron_coeffs(stage.neuron, sem), cur.reshape(t_steps, n, *cur.shape[1:]), sem)
            rows = spikes.reshape(t_steps * n, *spikes.shape[2:])
    return rows.reshape(t_steps, n, -1)


def read_graph(source):
    """A NIRGraph from a path (or the graph itself); an unreadable file is a UserError."""
    try:
        import nir
    except ImportError:
        raise UserError("NIR support needs the nir package (pip install 'edge-sdfa[host]')") from None
    if not isinstance(source, (str, Path)):
        return source
    path = Path(source)
    if not path.is_file():
        raise UserError(f"no such NIR file: {path}")
    try:
        # nir.read's type check refuses graphs every exporter writes (a batch dim in Input, Rockpool's
        # Output); the walker checks the shapes itself and names the node
        try:
            return nir.read(str(path), type_check=False)
        except TypeError:  # nir < 1.0.5 has no type_check
            return nir.read(str(path))
    except Exception as exc:  # h5py / nir raise many kinds on a bad file
        raise UserError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


def load_input(path: str | Path) -> np.ndarray:
    """The input spikes of an .npz: its ``x`` array, or its only array."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such input file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise UserError(f"{path}: holds {', '.join(keys)}; name the input array x")
            return np.asarray(z[key])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None


def run_file(model: str | Path, input_path: str | Path, out: str | Path, **flags) -> dict:
    """``edge-sdfa nir run``: simulate, write ``spikes`` [T, N, n_out] to ``out``, return a report."""
    graph = read_graph(model)
    x = load_input(input_path)
    notes: list[str] = []
    sem = semantics(graph, notes=notes, **flags)
    spikes = simulate(graph, x, sem, notes)
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out {out}: must end in .npz")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such directory {out.parent}")
    tmp = out.with_name(out.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, spikes=spikes.astype(np.uint8 if spikes.max(initial=0) < 256 else np.float32))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"model": str(model), "input": str(input_path), "out": str(out), "semantics": sem.to_dict(),
            "time_steps": int(spikes.shape[0]), "samples": int(spikes.shape[1]), "outputs": int(spikes.shape[2]),
            "spikes": int(spikes.sum()), "rate": float(spikes.mean()), "notes": notes}
