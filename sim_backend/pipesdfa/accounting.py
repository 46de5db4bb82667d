"""Per-layer cost of one training sample and one update, for SDFA and for BP on the same device.

Phases: ``forward`` (T time steps of MVMs + neurons), ``error`` (SDFA: the B_l e projection on the
random-conductance arrays, once per sample, all layers at once; BP: transposed MVMs through the
weights, bit-serial, every time step, layer after layer), ``gradient`` (surrogate deltas, the
intra-layer recurrence, and the digital accumulation of dW = sum_t delta_t^T x_t), ``write``
(programming the changed int8 weights once per batch, in one of three modes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from edge_sdfa.spec import Conv2d, Dense, Pool2d

from . import costs as C
from .ledger import Breakdown, zero
from .mapping import LayerMapping, map_conv, map_dense
from .params import HardwareParams
from .workloads import Workload

NEURON_OPS = 3          # leak, integrate, compare/reset per neuron per step
DELTA_OPS = 4           # surrogate, mask, recurrence multiply-add per neuron per step


@dataclass(frozen=True)
class LayerGeometry:
    index: int                  # index in spec.layers
    mapping: LayerMapping
    features_out: int           # features after the layer's pooling (what the next layer sees)
    pooled: bool
    trainable: bool
    is_output: bool


@dataclass(frozen=True)
class LayerCost:
    """Costs of one layer: per sample (``*_s`` seconds, Breakdowns in joules) and per batch (write).

    Fields without prefix are PipeSDFA's (and, where the work is the same, both designs'); ``bp_*``
    fields are the PipeLayer baseline's own (replicated and backward arrays, their writes)."""

    geometry: LayerGeometry
    step_s: float               # one forward time step on this layer's arrays
    forward: Breakdown
    proj_s: float               # SDFA error projection (0 for the output layer or frozen layers)
    error_sdfa: Breakdown
    back_s: float               # BP transposed MVMs on the backward arrays (0 where no error goes down)
    error_bp: Breakdown
    grad_s: float               # per sample: surrogate deltas through the layer's own recurrence
    gradient: Breakdown         # per sample: deltas, and the dW history written to the buffers
    history_bits: float         # PipeSDFA: state a sample keeps from its forward until its deltas
    batch_history_bits: float   # both: spikes and deltas a sample keeps until its batch's dW pass
    dw_s: float                 # per batch: the dW pass (x^T delta over B*T, once per weight)
    dw: Breakdown               # per batch
    write_s: float              # per batch: the time this layer's arrays are busy being written
    write: Breakdown            # per batch
    pulses_per_cell: float      # per update, mean over the layer's cells
    feedback_arrays: int        # arrays holding this layer's B_l
    busy_forward: Breakdown     # seconds per sample, split by component (serial, not pipelined)
    busy_error_sdfa: Breakdown
    busy_error_bp: Breakdown
    busy_gradient: Breakdown
    busy_write: Breakdown       # seconds per batch
    bp_replicas: int = 1        # PipeLayer: copies of the forward weights (G for conv layers)
    bp_step_s: float = 0.0      # PipeLayer forward time step (positions split over the replicas)
    bp_arrays: int = 0          # PipeLayer arrays: replicas + backward copies
    bp_history_bits: float = 0.0
    bp_write_s: float = 0.0
    bp_write: Breakdown = zero()
    bp_busy_write: Breakdown = zero()

    @property
    def arrays(self) -> int:
        return self.geometry.mapping.arrays


def layer_geometries(wl: Workload, hw: HardwareParams) -> list[LayerGeometry]:
    spec = wl.spec
    shapes = spec.shapes()
    synaptic = spec.synaptic_layers()
    out = []
    for i in synaptic:
        layer = spec.layers[i]
        if isinstance(layer, Dense):
            m = map_dense(layer, hw.crossbar.rows, hw.crossbar.cols, hw.slices)
        elif isinstance(layer, Conv2d):
            m = map_conv(layer, shapes[i], hw.crossbar.rows, hw.crossbar.cols, hw.slices)
        else:  # pragma: no cover - synaptic_layers only returns the two
            continue
        pooled = i + 1 < len(spec.layers) and isinstance(spec.layers[i + 1], Pool2d)
        features_out = math.prod(shapes[i + 2] if pooled else shapes[i + 1])
        out.append(LayerGeometry(i, m, int(features_out), pooled, i >= wl.trainable_from, i == synaptic[-1]))
    return out


def layer_cost(g: LayerGeometry, wl: Workload, hw: HardwareParams, act: C.Activity,
               propagates_error: bool) -> LayerCost:
    m, T = g.mapping, wl.spec.time_steps
    p, rho, sram = hw.periph, act.spike_rate, hw.periph.sram_j_per_bit

    # forward: one time step, then T of them
    cyc = C.mvm_cycle(hw, act, "forward", m.tiles, m.rows_used, m.cols_used, m.slices, rho)
    neuron_ops = m.outputs_per_step * (NEURON_OPS + (1 if g.pooled else 0))
    step_s = m.cycles_per_step * C.cycle_time(hw, m.cols_used) + C.digital_time(hw, neuron_ops, m.arrays)
    in_bits = m.cycles_per_step * m.tiles * m.rows_used
    state_bits = m.outputs_per_step * 2 * hw.membrane_bits + g.features_out
    step = cyc * m.cycles_per_step + Breakdown.of(
        "forward", digital=neuron_ops * p.e_digital_op_j, buffers=(in_bits + state_bits) * sram,
        interconnect=C.transfer_energy(hw, g.features_out))
    forward = step * T
    busy_forward = (C.cycle_busy(hw, "forward", m.cols_used) * m.cycles_per_step
                    + Breakdown.of("forward", digital=C.digital_time(hw, neuron_ops, m.arrays))) * T

    # PipeLayer: G replicas of a conv layer's weights split its window positions (dense: one copy)
    replicas = max(1, hw.baseline.granularity) if m.kind == "conv2d" else 1
    bp_cycles = math.ceil(m.cycles_per_step / replicas)
    bp_step_s = bp_cycles * C.cycle_time(hw, m.cols_used) + C.digital_time(hw, neuron_ops, m.arrays * replicas)
    backward_copies = replicas if hw.baseline.backward_arrays else 0

    if not g.trainable:
        return LayerCost(g, step_s, forward, 0.0, zero(), 0.0, zero(), 0.0, zero(), 0.0, 0.0, 0.0, zero(), 0.0,
                         zero(), 0.0, 0, busy_forward, zero(), zero(), zero(), zero(),
                         bp_replicas=replicas, bp_step_s=bp_step_s, bp_arrays=m.arrays * replicas)

    classes = wl.num_classes
    # SDFA: B_l e on a classes x features_out array of random conductances, bit-serial e, once
    proj_s, error_sdfa, feedback_arrays, busy_error_sdfa = 0.0, zero(), 0, zero()
    if g.is_output:
        error_sdfa = Breakdown.of("error", digital=classes * DELTA_OPS * p.e_digital_op_j)
    else:
        rt, ct = math.ceil(classes / hw.crossbar.rows), math.ceil(g.features_out / hw.crossbar.cols)
        rows_used, cols_used = classes / rt, g.features_out / ct
        # fold: B_l has only `classes` rows, so floor(R / classes) column blocks share one array's
        # rows, driven one block per cycle (fewer arrays, `fold` cycles per error bit)
        fold = max(1, min(hw.crossbar.rows // max(1, math.ceil(rows_used)), ct)) if rt == 1 else 1
        feedback_arrays = rt * math.ceil(ct / fold) * 2
        pcyc = C.mvm_cycle(hw, act, "error", rt * ct, rows_used, cols_used, 1, act.error_bit_density)
        proj_s = hw.error_bits * fold * C.cycle_time(hw, math.ceil(cols_used))
        busy_error_sdfa = C.cycle_busy(hw, "error", math.ceil(cols_used)) * (hw.error_bits * fold)
        error_sdfa = pcyc * hw.error_bits + Breakdown.of(
            "error", buffers=g.features_out * hw.membrane_bits * sram,
            interconnect=C.transfer_energy(hw, classes * hw.error_bits))

    # BP: the error of this layer's input, by transposed MVMs (on W^T arrays when the baseline keeps
    # them, replicated like the forward copy), every time step
    back_s, error_bp = 0.0, (Breakdown.of("error", digital=classes * DELTA_OPS * p.e_digital_op_j)
                             if g.is_output else zero())
    busy_error_bp = zero()
    if propagates_error:
        tcyc = C.mvm_cycle(hw, act, "error", m.tiles, m.cols_used, m.rows_used, m.slices,
                           act.error_bit_density)
        pulses = hw.error_bits * m.cycles_per_step
        split = replicas if backward_copies else 1
        back_s = T * hw.error_bits * math.ceil(m.cycles_per_step / split) * C.cycle_time(hw, math.ceil(m.rows_used))
        busy_error_bp = C.cycle_busy(hw, "error", math.ceil(m.rows_used)) * (T * pulses)
        delta_bits = m.inputs_per_step * hw.membrane_bits
        error_bp = error_bp + tcyc * (T * pulses) + Breakdown.of(
            "error", buffers=T * 2 * delta_bits * sram, interconnect=C.transfer_energy(hw, T * delta_bits),
            digital=T * m.inputs_per_step * p.e_digital_op_j)

    # gradient, per sample: deltas through the layer's own recurrence; the sample's input spikes and
    # int8 deltas are kept until its batch's dW pass (same rule for both designs)
    delta_ops = T * m.outputs_per_step * (DELTA_OPS + (1 if g.pooled else 0))
    forward_history = T * (m.inputs_per_step + m.outputs_per_step * hw.membrane_bits)
    history_bits = forward_history if act.temporal_mode == "exact" else 0.0
    dw_history = T * (m.inputs_per_step + m.outputs_per_step * hw.error_bits)
    adds = T * rho * m.outputs_per_step * m.in_features          # contributions x_t,i * delta_t,j
    if act.update_mode == "parallel":
        # rank-1 pulse trains per (sample, step) straight from the history: no dW pass
        batch_history, dw_s, dw = 0.0, 0.0, zero()
        history_bits += dw_history
        grad_buffers = 2 * history_bits + g.features_out * hw.membrane_bits
    else:
        # the dW pass: x^T delta over the batch's B*T rows, one accumulator per weight held in a lane
        # register while the history streams past, written once per weight per batch
        batch_history = dw_history
        B = wl.batch
        dw_s = C.digital_time(hw, B * adds, m.arrays)
        dw = Breakdown.of("gradient", digital=B * adds * p.e_digital_op_j,
                          buffers=(B * dw_history + m.weights * hw.membrane_bits) * sram)
        grad_buffers = 2 * history_bits + g.features_out * hw.membrane_bits + dw_history
    grad_s = C.digital_time(hw, delta_ops, m.arrays)
    gradient = Breakdown.of("gradient", digital=delta_ops * p.e_digital_op_j, buffers=grad_buffers * sram)

    write_s, write, pulses_per_cell, busy_write = _layer_write(m, wl, hw, act)
    # PipeLayer programs every copy it keeps: G forward replicas and their W^T twins
    copies = replicas + backward_copies
    if act.update_mode == "parallel":     # all copies take the same pulse trains at once
        bp_write_s, bp_write, bp_busy_write = write_s, write * copies, busy_write
    else:
        bp_write_s, bp_write, bp_busy_write = _copies_write(m, hw, act, copies)
    return LayerCost(g, step_s, forward, proj_s, error_sdfa, back_s, error_bp, grad_s, gradient,
                     history_bits, batch_history, dw_s, dw, write_s, write, pulses_per_cell, feedback_arrays,
                     busy_forward, busy_error_sdfa, busy_error_bp, Breakdown.of("gradient", digital=grad_s),
                     busy_write, bp_replicas=replicas, bp_step_s=bp_step_s, bp_arrays=m.arrays * copies,
                     bp_history_bits=forward_history, bp_write_s=bp_write_s, bp_write=bp_write,
                     bp_busy_write=bp_busy_write)


def _copies_write(m: LayerMapping, hw: HardwareParams, act: C.Activity,
                  copies: int) -> tuple[float, Breakdown, Breakdown]:
    """Write of ``copies`` identical copies of a layer's arrays through the shared write engine."""
    arrays_time, longest, energy = 0.0, 0.0, zero()
    verify = act.update_mode == "write-verify"
    if act.update_mode == "parallel":
        raise ValueError("parallel writes are scaled by the caller")
    for s in range(m.slices):
        aw = C.expected_row_serial(hw, act, m.rows_used, m.cols_used, s, verify)
        n = m.tiles * 2 * copies
        energy = energy + aw.energy * n
        arrays_time += aw.latency_s * n
        longest = max(longest, aw.latency_s)
    pulse_time = max(longest, arrays_time / hw.write.parallel_arrays)
    p = hw.periph
    master_ops = 3 * m.weights
    master_time = C.digital_time(hw, master_ops, m.arrays)
    energy = energy + Breakdown.of(
        "write", digital=master_ops * p.e_digital_op_j,
        buffers=m.weights * 3 * hw.membrane_bits * p.sram_j_per_bit,
        interconnect=C.transfer_energy(hw, copies * m.stored_weights * act.update_density * hw.membrane_bits))
    return pulse_time + master_time, energy, Breakdown.of("write", array=pulse_time, digital=master_time)


def _layer_write(m: LayerMapping, wl: Workload, hw: HardwareParams,
                 act: C.Activity) -> tuple[float, Breakdown, float, Breakdown]:
    """Per batch: busy time of this layer's arrays, energy, mean pulses per cell, busy split."""
    p = hw.periph
    T, B = wl.spec.time_steps, wl.batch
    if act.update_mode == "parallel":
        # aihwkit / PANTHER stochastic outer products, one per (sample, time step), on the LSB slice
        w = hw.write
        terms = B * T
        latency = terms * 2 * w.stochastic_bl * w.t_pulse_s
        coincidences = w.stochastic_bl * act.spike_rate * act.error_bit_density
        cell_pulses = terms * m.stored_weights * coincidences
        lines_rows = m.tiles * 2 * m.rows_used * act.spike_rate * w.stochastic_bl
        lines_cols = m.tiles * 2 * m.cols_used * act.error_bit_density * w.stochastic_bl
        slot = p.p_driver_w * w.t_pulse_s
        drivers = terms * (lines_rows * (slot + C.wordline_cap(hw) * w.v_write ** 2)
                           + lines_cols * (slot + C.bitline_cap(hw) * w.v_write ** 2))
        energy = Breakdown.of("write", array=cell_pulses * C.write_pulse_energy(hw, act), drivers=drivers,
                              interconnect=C.transfer_energy(hw, terms * (m.inputs_per_step + m.outputs_per_step)))
        return latency, energy, cell_pulses / m.cells, Breakdown.of("write", array=latency)
    verify = act.update_mode == "write-verify"
    energy, array_time, longest, pulses = zero(), 0.0, 0.0, 0.0
    for s in range(m.slices):
        aw = C.expected_row_serial(hw, act, m.rows_used, m.cols_used, s, verify)
        n = m.tiles * 2
        energy = energy + aw.energy * n
        array_time += aw.latency_s * n
        longest = max(longest, aw.latency_s)
        pulses += aw.pulses * n
    master_ops = 3 * m.weights
    pulse_time = max(longest, array_time / hw.write.parallel_arrays)
    master_time = C.digital_time(hw, master_ops, m.arrays)
    latency = pulse_time + master_time
    # with verify, the share of each step spent reading back and converting is ADC busy time
    verify_share = 0.0
    if verify:
        step = hw.write.t_pulse_s + C.cycle_time(hw, int(math.ceil(m.cols_used)))
        verify_share = 1.0 - hw.write.t_pulse_s / step
    busy = Breakdown.of("write", array=pulse_time * (1 - verify_share), adc=pulse_time * verify_share,
                        digital=master_time)
    energy = energy + Breakdown.of(
        "write", digital=master_ops * p.e_digital_op_j,
        buffers=m.weights * 3 * hw.membrane_bits * p.sram_j_per_bit,
        interconnect=C.transfer_energy(hw, m.stored_weights * act.update_density * hw.membrane_bits))
    return latency, energy, pulses / m.cells, busy


def workload_costs(wl: Workload, hw: HardwareParams, act: C.Activity) -> list[LayerCost]:
    geoms = layer_geometries(wl, hw)
    first_trainable = next((k for k, g in enumerate(geoms) if g.trainable), len(geoms))
    return [layer_cost(g, wl, hw, act, propagates_error=k > first_trainable) for k, g in enumerate(geoms)]
