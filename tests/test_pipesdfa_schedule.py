"""The event-driven schedule against the closed forms, and hand-computed cases of the dW
accumulator and of PipeLayer's weight replication."""
from __future__ import annotations

import dataclasses
import math

import pytest

from edge_sdfa.spec import Conv2d, NetworkSpec, mlp
from sim_backend.pipesdfa import pipeline as P
from sim_backend.pipesdfa import schedule as S
from sim_backend.pipesdfa.accounting import layer_cost, layer_geometries, workload_costs
from sim_backend.pipesdfa.costs import Activity
from sim_backend.pipesdfa.params import load_preset
from sim_backend.pipesdfa.workloads import Workload, load_workload
from test_pipesdfa_costs import tiny_hw  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name,batch", [("nmnist-mlp2", 16), ("braille-mlpb", 8), ("dvs-convnet", 2)])
@pytest.mark.parametrize("mode", ["row-serial", "parallel"])
@pytest.mark.parametrize("preset", ["neurosim32", "isaac"])
def test_schedule_agrees_with_closed_form(name, batch, mode, preset):
    wl, hw, act = load_workload(name, batch), load_preset(preset), Activity(update_mode=mode)
    layers = workload_costs(wl, hw, act)
    st, _ = P.sdfa_stages(layers, wl, hw, act)
    sim = S.run(st, 3, "sdfa", "wait")
    assert sim["latency_s"] == pytest.approx(P.sdfa_closed_form(st, 3, "wait")["latency_s"], rel=0.02)
    st, _ = P.pipelayer_stages(layers, wl, hw, act)
    sim = S.run(st, 3, "pipelayer")
    assert sim["latency_s"] == pytest.approx(P.pipelayer_closed_form(st, 3)["latency_s"], rel=0.02)


def test_schedule_waits_for_the_previous_batch_write():
    """With read-after-write enforced, batch 1 starts only after batch 0's first-layer write."""
    wl, hw, act = load_workload("nmnist-mlp2", 4), load_preset("neurosim32"), Activity()
    st, _ = P.sdfa_stages(workload_costs(wl, hw, act), wl, hw, act)
    g, ends = S.sdfa_graph(st, 2, "wait")
    r = S.simulate(g)
    first_write = ends[0][0]
    batch1_entry = max(g.entries)
    assert r["start"][batch1_entry] >= r["end"][first_write]
    assert r["raw_wait_s"] > 0
    stale = S.run(st, 2, "sdfa", "stale")
    assert stale["latency_s"] < S.run(st, 2, "sdfa", "wait")["latency_s"]


def test_dw_accumulator_by_hand():
    """x^T delta over the batch: T*rho*N_out*N_in adds per sample on the layer's lanes, the sample's
    spikes and int8 deltas kept in the buffer, each accumulator written once per weight per batch."""
    hw = tiny_hw()
    act = Activity(spike_rate=0.5, level_fraction=0.0)
    for B in (3, 6):
        wl = Workload("tiny", mlp([4, 4], time_steps=2), batch=B)
        (g,) = layer_geometries(wl, hw)
        c = layer_cost(g, wl, hw, act, propagates_error=False)
        adds = 2 * 0.5 * 4 * 4                                      # T rho N_out N_in = 16 per sample
        history = 2 * (4 + 4 * 8)                                   # T (N_in spikes + N_out 8-bit deltas)
        assert c.batch_history_bits == history
        assert c.dw.get("gradient", "digital") == pytest.approx(B * adds * 1e-13)
        assert c.dw.get("gradient", "buffers") == pytest.approx((B * history + 16 * 16) * 1e-15)
        # 2 arrays on 2 one-array tiles with one lane each, 1 GHz
        assert c.dw_s == pytest.approx(B * adds / 2 * 1e-9)
    # the accumulator term (16 weights x 16 bits, once per batch) does not grow with the batch
    per_batch = [layer_cost(layer_geometries(w, hw)[0], w, hw, act, False).dw.get("gradient", "buffers")
                 for w in (Workload("t", mlp([4, 4], time_steps=2), batch=b) for b in (3, 6))]
    assert per_batch[1] - per_batch[0] == pytest.approx(3 * 72 * 1e-15)


def test_pipelayer_replication_by_hand():
    """A 3x3 conv on a 6x6 input, 4 in / 4 out channels, on 128x128 arrays: im2col, 36 rows, 1 tile,
    16 positions. PipeLayer with G = 4 keeps 4 replicas and 4 W^T copies (8x the arrays), splits the
    16 positions into 4 cycles per step, and programs all 8 copies."""
    hw = load_preset("neurosim32")
    hw = dataclasses.replace(hw, baseline=dataclasses.replace(hw.baseline, granularity=4, backward_arrays=1))
    hw = hw.replace(write={"parallel_arrays": 1})
    spec = NetworkSpec((4, 6, 6), (Conv2d(4, 4, 3, 1, 1),), 1, "mse")
    wl = Workload("conv", spec, batch=1)
    (g,) = layer_geometries(wl, hw)
    m = g.mapping
    c = layer_cost(g, wl, hw, Activity(), propagates_error=True)
    assert m.cycles_per_step > 1
    assert c.bp_replicas == 4 and c.bp_arrays == 8 * m.arrays
    assert c.bp_step_s < c.step_s
    from sim_backend.pipesdfa import costs as C

    neuron_ops = m.outputs_per_step * 3
    assert c.bp_step_s == pytest.approx(math.ceil(m.cycles_per_step / 4) * C.cycle_time(hw, m.cols_used)
                                        + C.digital_time(hw, neuron_ops, 4 * m.arrays))
    # one write engine, one array at a time: 8 copies take 8x the pulse time of one
    master = C.digital_time(hw, 3 * m.weights, m.arrays)
    assert c.bp_write_s - master == pytest.approx(8 * (c.write_s - master))
    assert c.bp_write.get("write", "array") == pytest.approx(8 * c.write.get("write", "array"))


def test_pipelayer_keeps_history_in_every_mode():
    wl, hw = load_workload("nmnist-mlp3", 8), load_preset("neurosim32")
    online = workload_costs(wl, hw, Activity(temporal_mode="online"))
    assert all(c.history_bits == 0 for c in online)
    assert all(c.bp_history_bits > 0 for c in online if c.geometry.trainable)
