"""Write the int8 golden known-answer vectors, tests/golden/int8/<case>.npz, from the numpy set.

    python tools/make_int8_golden.py            # (re)write every case
    python tools/make_int8_golden.py --check    # exit 1 if a committed file differs

Each case is a small network with fixed seeds: its spec, the quantised layers, the inputs of a
forward pass and of a few SDFA updates, and the integers the spec produces (output counts, every
trainable layer's master and int8 weights after each update, the update statistics). The
committed files are the answers every kernel set and backend must reproduce
(tests/test_conformance.py); regenerate them only for a deliberate change of the int8 spec, and
say so in the commit. Cases cover hard and soft reset, LIF with and without input decay, IF,
bias, input counts above 1, both temporal modes and a frozen conv front.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from edge_sdfa import float_net as fn
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d, mlp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "int8")
UPDATES = 3


def _mlp(neuron, bias=False, loss="ce"):
    return mlp([24, 16, 12, 4], neuron=neuron, time_steps=5, loss=loss, bias=bias)


def _conv():
    n = NeuronSpec(tau=2.0, v_threshold=0.5)
    return NetworkSpec((2, 6, 6), (Conv2d(2, 3, 3, 1, 1, bias=True, neuron=n), Pool2d(2, "avg"), Flatten(),
                                   Dense(27, 10, neuron=n), Dense(10, 4, neuron=n)), time_steps=4)


# name: (spec, gain on the default init, max input count, temporal mode, layers left frozen)
CASES = {
    "lif_hard_online": (lambda: _mlp(NeuronSpec()), 12.0, 1, "online", ()),
    "lif_hard_exact": (lambda: _mlp(NeuronSpec()), 8.0, 1, "exact", ()),
    "lif_soft_bias_counts_online": (lambda: _mlp(NeuronSpec(v_reset=None), bias=True), 6.0, 3, "online", ()),
    "lif_soft_bias_counts_exact": (lambda: _mlp(NeuronSpec(v_reset=None), bias=True), 6.0, 3, "exact", ()),
    "lif_nodecay_reset_mse_online": (lambda: _mlp(NeuronSpec(tau=3.0, v_reset=-0.25, decay_input=False), loss="mse"),
                                     6.0, 1, "online", ()),
    "if_soft_counts_exact": (lambda: _mlp(NeuronSpec("if", v_reset=None)), 3.0, 2, "exact", ()),
    "conv_front_online": (_conv, 6.0, 1, "online", (0,)),
    # the exact rule's carry table for a non-zero reset, no input decay (tau 3) and MSE; IF hard reset
    "lif_nodecay_reset_mse_exact": (lambda: _mlp(NeuronSpec(tau=3.0, v_reset=-0.25, decay_input=False), loss="mse"),
                                    6.0, 1, "exact", ()),
    "if_hard_exact": (lambda: _mlp(NeuronSpec("if")), 3.0, 1, "exact", ()),
}


def build(name: str) -> dict[str, np.ndarray]:
    make_spec, gain, max_count, mode, frozen = CASES[name]
    spec = make_spec()
    seed = sum(map(ord, name))
    params = [{k: v * gain for k, v in p.items()} for p in fn.init_params(spec, seed)]
    trainable = set(spec.synaptic_layers()) - set(frozen)
    qnet, _ = qn.quantize(spec, params, trainable=trainable)
    rng = np.random.default_rng(seed)
    t_steps, n = spec.time_steps, 6

    def batch():
        x = (rng.random((t_steps, n, *spec.input_shape)) < 0.35).astype(np.uint8)
        if max_count > 1:
            x = x * rng.integers(1, max_count + 1, x.shape).astype(np.uint8)
        return x, rng.integers(0, spec.num_classes, n)

    config = qn.UpdateConfig(lr=0.5, mode=mode, seed=seed % 97, feedback_seed=seed % 89)
    out: dict[str, np.ndarray] = {
        "spec": np.array(json.dumps(spec.to_dict())),
        "config": np.array(json.dumps({"lr": config.lr, "mode": config.mode, "seed": config.seed,
                                       "feedback_seed": config.feedback_seed, "updates": UPDATES})),
    }
    for i, q in enumerate(qnet):
        if q.w8 is None:
            continue
        out[f"layer{i}_exp"] = np.int64(q.exp)
        out[f"layer{i}_w8"] = q.w8
        if q.bias is not None:
            out[f"layer{i}_bias"] = q.bias
        if q.master is not None:
            out[f"layer{i}_master"] = q.master
    x, _ = batch()
    out["forward_x"] = x
    trace = qn.forward(spec, qnet, x)
    out["forward_counts"] = trace.counts
    feedback = qn.feedback_int8(spec, config.feedback_seed)
    for u in range(UPDATES):
        x, y = batch()
        out[f"update{u}_x"], out[f"update{u}_y"] = x, y
        qnet, stats = qn.sdfa_update(spec, qnet, x, y, feedback, config, u)
        out[f"update{u}_stats"] = np.array([stats.correct, stats.saturated_master, stats.saturated_w8], np.int64)
        out[f"update{u}_loss"] = np.float64(stats.loss)
        for i in trainable:
            out[f"update{u}_layer{i}_master"] = qnet[i].master
            out[f"update{u}_layer{i}_w8"] = qnet[i].w8
            out[f"update{u}_layer{i}_shifts"] = np.array(stats.shifts[i], np.int64)
    _check_informative(name, spec, out, trainable)
    return out


def _check_informative(name, spec, out, trainable) -> None:
    """A golden case that never spikes or never moves a weight tests nothing."""
    if out["forward_counts"].sum() == 0:
        raise SystemExit(f"error: case {name}: the output never spikes; raise its gain")
    for i in trainable:
        moved = any((out[f"update{u}_layer{i}_master"] != out[f"layer{i}_master"]).any() for u in range(UPDATES))
        if not moved:
            raise SystemExit(f"error: case {name}: layer {i} never changes; raise lr or gain")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    differ = []
    for name in CASES:
        arrays = build(name)
        path = os.path.join(OUT, f"{name}.npz")
        if args.check:
            with np.load(path) as z:
                same = set(z.files) == set(arrays) and all(np.array_equal(z[k], arrays[k]) for k in arrays)
            if not same:
                differ.append(name)
            continue
        np.savez_compressed(path, **arrays)
        print(f"wrote {os.path.relpath(path)}")
    if differ:
        print(f"differ from the committed answers: {', '.join(differ)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
