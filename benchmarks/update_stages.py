"""Per-stage time of one int8 SDFA update (used by ``benchmarks/step.py``).

Runs the stages of ``edge_sdfa.int8.net.sdfa_update`` one kernel-set entry point at a time, in the
same order and on the same integers (dense MLPs), and times each with ``perf_counter``:

- ``spike_index``: the set's view of each layer's input spikes (``prepare_inputs``: the C set's
  padded CSR, reused by the forward gather and the weight gradient);
- ``forward_gather``: ``dense_current`` (the int8 weight rows of the active inputs, summed);
- ``neuron_steps``: ``neuron_run`` (the fixed-point LIF over T, recording the surrogate bin);
- ``output_error``: the output error (``arith.output_error_q``, running or final rate);
- ``local_errors``: ``local_deltas`` / ``exact_deltas``: error projection through B_l, surrogate
  LUT (or the exact rule's BPTT eligibility) and the per-step int8 shift, fused in the C set;
- ``weight_update``: ``dense_update``: weight gradient ``sum_t x_t^T delta_t << shift_t``,
  stochastic rounding and int16/int8 write-back, fused in the C set (the int64 gradient is never
  materialised, so the three cannot be timed apart there).

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

STAGES = ("spike_index", "forward_gather", "neuron_steps", "output_error", "local_errors", "weight_update")


def profile(spec, qnet, x, y, feedback, ks, mode: str, lr: float, repeats: int) -> dict:
    """Median seconds per stage over ``repeats`` updates (weights evolve as in training)."""
    t_steps, n = x.shape[:2]
    last = spec.synaptic_layers()[-1]
    per = {s: [] for s in STAGES}
    ops = 0
    for rep in range(repeats):
        acc = dict.fromkeys(STAGES, 0.0)
        rows = np.ascontiguousarray(x).reshape(t_steps, n, -1)
        prepared, sgs, inputs = {}, {}, {}
        ops = 0
        for i, layer in enumerate(spec.layers):
            q = qnet[i]
            t0 = time.perf_counter()
            p = ks.prepare_inputs(rows)
            t1 = time.perf_counter()
            cur = ks.dense_current(p, q.w8, q.bias)
            t2 = time.perf_counter()
            const = arith.neuron_constants(layer.neuron, q.exp)
            spikes, sg = ks.neuron_run(layer.neuron, const, cur.reshape(t_steps, n, -1),
                                       q.exp if q.trainable else None)
            t3 = time.perf_counter()
            acc["spike_index"] += t1 - t0
            acc["forward_gather"] += t2 - t1
            acc["neuron_steps"] += t3 - t2
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
        new = list(qnet)
        for i in [j for j, q in enumerate(qnet) if q.trainable]:
            q = qnet[i]
            b = None if i == last else feedback[i]
            t0 = time.perf_counter()
            if mode == "exact":
                d, sh = ks.exact_deltas(sgs[i], e, b, arith.carry_lut(spec.layers[i].neuron))
            else:
                d, sh = ks.local_deltas(sgs[i], e, b)
            t1 = time.perf_counter()
            m, k = arith.update_scale(lr, n, t_steps, spec.layers[i].neuron.input_gain, q.exp,
                                      None if i == last else fn.feedback_norm(spec), mode)
            key = arith.rounding_key(0, rep, i)
            master, w8, _, _ = ks.dense_update(prepared[i], d, sh, q.master, m, k, key)
            t2 = time.perf_counter()
            new[i] = qn.QLayer(q.exp, w8, q.bias, master)
            acc["local_errors"] += t1 - t0
            acc["weight_update"] += t2 - t1
            ops += 8 * d.size + inputs[i] * d.shape[-1] + 4 * q.master.size
        qnet = new
        for s in STAGES:
            per[s].append(acc[s])
    med = {s: float(np.median(v)) for s, v in per.items()}
    total = sum(med.values())
    return {"stages_s": {s: round(v, 6) for s, v in med.items()},
            "stages_share": {s: round(v / total, 3) for s, v in med.items()} if total else {},
            "stages_total_s": round(total, 6), "int_ops": ops}
