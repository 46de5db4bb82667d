"""Per-stage time of one int8 SDFA update (used by ``benchmarks/step.py``).

Runs the stages of ``edge_sdfa.int8.net.sdfa_update`` one kernel-set entry point at a time, in the
same order and on the same integers (dense MLPs), and times each with ``perf_counter``:

- ``spike_index``: the set's view of each layer's input spikes (``prepare_inputs``) and, for the C
  set, the per-(step, input) sample bitmap of the weight gradient (``SpikeIndex.bits``, built from the spikes when
  the update needs it; the numpy set has none);
- ``forward_gather`` and ``neuron_steps``: ``dense_current`` (the int8 weight rows of the active
  inputs, summed) and ``neuron_run`` (the fixed-point LIF over T, recording the surrogate bin); a
  set with ``dense_layer`` (the C set) does both in one pass, sample by sample, timed as
  ``forward`` (gather + neuron steps, fused) instead;
- ``output_error``: the output error (``arith.output_error_q``, running or final rate);
- ``local_errors``: ``local_deltas`` / ``exact_deltas``: error projection through B_l, surrogate
  LUT (or the exact rule's BPTT eligibility) and the per-step int8 shift, fused in the C set,
  written over the surrogate indices as ``sdfa_update`` does;
- ``weight_update``: ``dense_update`` in place: weight gradient ``sum_t x_t^T delta_t << shift_t``,
  stochastic rounding and int16/int8 write-back, fused in the C set (the int64 gradient is never
  materialised, so the three cannot be timed apart there).

The layers are updated last first, as ``sdfa_update`` does, on copies of the weights.
It also counts the integer work the update really does (``int_ops``): a forward gather adds M
int8 weights per non-zero input, the gradient multiplies-adds M deltas per non-zero input, the
neurons and local errors do a handful of ops per neuron-step (counted as 8).
"""
from __future__ import annotations

import time

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.int8 import arith
from edge_sdfa.int8 import net as qn

STAGES = ("spike_index", "forward_gather", "neuron_steps", "forward", "output_error", "local_errors", "weight_update")


def profile(spec, qnet, x, y, feedback, ks, mode: str, lr: float, repeats: int) -> dict:
    """Median seconds per stage over ``repeats`` updates (weights evolve as in training)."""
    t_steps, n = x.shape[:2]
    last = spec.synaptic_layers()[-1]
    qnet = [qn.QLayer(q.exp, None if q.w8 is None else q.w8.copy(), q.bias,
                      None if q.master is None else q.master.copy()) for q in qnet]
    per = {s: [] for s in STAGES}
    ops = 0
    fused_any = False
    for rep in range(repeats):
        acc = dict.fromkeys(STAGES, 0.0)
        rows = np.ascontiguousarray(x).reshape(t_steps, n, -1)
        prepared, sgs, inputs = {}, {}, {}
        ops = 0
        for i, layer in enumerate(spec.layers):
            q = qnet[i]
            const = arith.neuron_constants(layer.neuron, q.exp)
            sg_exp = q.exp if q.trainable else None
            t0 = time.perf_counter()
            p = ks.prepare_inputs(rows)
            t1 = time.perf_counter()
            fused = ks.dense_layer(p, q.w8, q.bias, layer.neuron, const, sg_exp) if hasattr(ks, "dense_layer") else None
            if fused is not None:
                spikes, sg = fused
                t3 = time.perf_counter()
                acc["forward"] += t3 - t1
                fused_any = True
            else:
                cur = ks.dense_current(p, q.w8, q.bias)
                t2 = time.perf_counter()
                spikes, sg = ks.neuron_run(layer.neuron, const, cur.reshape(t_steps, n, -1), sg_exp)
                del cur
                t3 = time.perf_counter()
                acc["forward_gather"] += t2 - t1
                acc["neuron_steps"] += t3 - t2
            acc["spike_index"] += t1 - t0
            nnz = int(np.count_nonzero(rows))
            ops += nnz * q.w8.shape[1] + 8 * spikes.size
            prepared[i], sgs[i], inputs[i] = p, sg, nnz
            rows = spikes
        t0 = time.perf_counter()
        counts = rows.sum(axis=0, dtype=np.int64)
        if mode == "exact":
            e = arith.output_error_q(counts, t_steps, y, spec.loss)
        else:
            e = qn.step_errors(np.cumsum(rows, axis=0, dtype=np.int64), y, spec.loss, mode)
        acc["output_error"] += time.perf_counter() - t0
        for i in reversed([j for j, q in enumerate(qnet) if q.trainable]):
            q = qnet[i]
            b = None if i == last else feedback[i]
            sg = sgs.pop(i)
            t0 = time.perf_counter()
            if mode == "exact":
                d, sh = ks.exact_deltas(sg, e, b, arith.carry_lut(spec.layers[i].neuron), out=sg.view(np.int8))
            else:
                d, sh = ks.local_deltas(sg, e, b, out=sg.view(np.int8))
            t1 = time.perf_counter()
            p = prepared.pop(i)
            if hasattr(p, "bits"):
                p.bits()
            t2 = time.perf_counter()
            m, k = arith.update_scale(lr, n, t_steps, spec.layers[i].neuron.input_gain, q.exp,
                                      None if i == last else fn.feedback_norm(spec), mode)
            key = arith.rounding_key(0, rep, i)
            ks.dense_update(p, d, sh, q.master, m, k, key, out=(q.master, q.w8))
            t3 = time.perf_counter()
            acc["local_errors"] += t1 - t0
            acc["spike_index"] += t2 - t1
            acc["weight_update"] += t3 - t2
            ops += 8 * d.size + inputs[i] * d.shape[-1] + 4 * q.master.size
        for s in STAGES:
            per[s].append(acc[s])
    drop = ("forward_gather", "neuron_steps") if fused_any else ("forward",)
    per = {s: v for s, v in per.items() if s not in drop}
    med = {s: float(np.median(v)) for s, v in per.items()}
    total = sum(med.values())
    return {"stages_s": {s: round(v, 6) for s, v in med.items()},
            "stages_share": {s: round(v / total, 3) for s, v in med.items()} if total else {},
            "stages_total_s": round(total, 6), "int_ops": ops}
