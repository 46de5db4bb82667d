"""Every kernel set's entry points against int64 oracles and the numpy set, at the edges of their
integer bounds (the golden vectors in test_conformance.py cover whole networks), and the registry.

One suite, parametrised over ``kernels.SETS``: the numpy set runs as ``unit``, the C set
(built at install time) as ``integration``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith, kernels, reference
from edge_sdfa.spec import NeuronSpec

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


def _spikes(rng, shape, density, counts):
    x = (rng.random(shape) < density).astype(np.uint8)
    if counts:
        x = x * rng.integers(1, 256, shape).astype(np.uint8)
    return x


def _int8(rng, shape, extremes):
    w = rng.integers(-127, 128, shape).astype(np.int8)
    if extremes:
        w[rng.random(shape) < 0.5] = rng.choice(np.array([-127, 127], np.int8))
    return w


def _shifts(rng, t, runs):
    return np.sort(rng.choice(np.array([0, 3, 3, 9]), t)) if runs else rng.integers(0, 12, t)


def _oracle_update(x, d, shifts, master, m, k, key):
    grad = np.zeros((x.shape[-1], d.shape[-1]), object)
    for t in range(x.shape[0]):
        grad += (x[t].astype(np.int64).T @ d[t].astype(np.int64)).astype(object) << int(shifts[t])
    rows = np.flatnonzero(x.reshape(-1, x.shape[-1]).any(axis=0))
    r = arith.random_bits(key, np.arange(master.size, dtype=np.int64), k).reshape(master.shape).astype(object)
    new = master.astype(object)
    new[rows] = new[rows] - ((grad[rows] * m + r[rows]) >> k)
    sat = int(sum(1 for v in new.ravel() if v > 32767 or v < -32767))
    new = np.clip(new, -32767, 32767).astype(np.int16)
    w8 = arith.w8_from_master(new)
    return new, w8, sat, int(np.count_nonzero(np.abs(w8) == 127))


# ---------------------------------------------------------------------------------------------
# dense_current


@SETTINGS
@given(t=st.integers(1, 3), n=st.integers(1, 20), k=st.integers(1, 70), m=st.integers(1, 300),
       density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), counts=st.booleans(), extremes=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dense_current_matches_int64_oracle(ks, t, n, k, m, density, counts, extremes, bias, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (t, n, k), density, counts)
    w = _int8(rng, (k, m), extremes)
    b = rng.integers(-5000, 5000, m).astype(np.int32) if bias else None
    want = (x.reshape(t * n, k).astype(np.int64) @ w.astype(np.int64)).reshape(t, n, m) + (0 if b is None else b)
    got = ks.dense_current(ks.prepare_inputs(x), w, b)
    assert got.shape == (t, n, m) and got.dtype in (np.int32, np.int64)
    np.testing.assert_array_equal(got, want)


def _conv_oracle(x, w, b, stride, pad):
    """Direct loops in int64: out[r, oy, ox, o] = sum_{c,ky,kx} x[r, c, oy*s+ky-p, ox*s+kx-p] w[o, c, ky, kx]."""
    r_n, c_n, h, wd = x.shape
    o_n, _, k, _ = w.shape
    xp = np.zeros((r_n, c_n, h + 2 * pad, wd + 2 * pad), np.int64)
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((r_n, oh, ow, o_n), np.int64)
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, :, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]   # [R, C, OH, OW]
            out += np.einsum("rcyx,oc->ryxo", patch, w[:, :, ky, kx].astype(np.int64))
    return out + (0 if b is None else b.astype(np.int64))


@SETTINGS
@given(r=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(1, 9), wd=st.integers(1, 9), o=st.integers(1, 40),
       k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3), pad=st.integers(0, 2),
       density=st.sampled_from([0.0, 0.2, 1.0]), counts=st.booleans(), extremes=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_conv_current_matches_int64_oracle(ks, r, c, h, wd, o, k, stride, pad, density, counts, extremes, bias, seed):
    if h + 2 * pad < k or wd + 2 * pad < k:
        return
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (r, c, h, wd), density, counts)
    w = _int8(rng, (o, c, k, k), extremes)
    b = rng.integers(-5000, 5000, o).astype(np.int32) if bias else None
    got = ks.conv_current(x, w, b, stride, pad)
    assert got.dtype in (np.int32, np.int64)
    np.testing.assert_array_equal(got, _conv_oracle(x, w, b, stride, pad))


def test_dense_current_no_int16_wraparound_and_wide_values(ks):
    x = np.ones((1, 3, 600), np.uint8)  # past the int16 chunk of the binary path
    for v in (-127, 127):
        w = np.full((600, 40), v, np.int8)
        np.testing.assert_array_equal(ks.dense_current(ks.prepare_inputs(x), w, None), np.full((1, 3, 40), 600 * v))
    xc = np.full((1, 2, 600), 255, np.uint8)
    w = np.full((600, 17), -127, np.int8)
    big_bias = np.full(17, 1 << 31, np.int64)  # past int32: int64 currents
    got = ks.dense_current(ks.prepare_inputs(xc), w, big_bias)
    np.testing.assert_array_equal(got, np.full((1, 2, 17), 600 * 255 * -127 + (1 << 31)))
    wide = np.arange(-6, 6, dtype=np.int64).reshape(1, 2, 6) * 1000  # counts outside uint8: the reference
    w2 = np.ones((6, 3), np.int8)
    np.testing.assert_array_equal(ks.dense_current(ks.prepare_inputs(wide), w2, None), wide @ w2.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# neuron_run


@pytest.mark.parametrize("neuron", [NeuronSpec(), NeuronSpec(decay_input=False), NeuronSpec(kind="if"),
                                    NeuronSpec(v_reset=None), NeuronSpec(tau=3.0, v_threshold=0.5, v_reset=-0.25),
                                    NeuronSpec(kind="if", v_reset=None)])
@pytest.mark.parametrize("exp", [2, 6])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_neuron_run_matches_stepping(ks, neuron, exp, dtype):
    rng = np.random.default_rng(0)
    const = arith.neuron_constants(neuron, exp)
    cur = rng.integers(-200, 300, (6, 5, 37)).astype(dtype)
    v = np.full(cur.shape[1:], const["vreset"], np.int64)
    spikes, sg = ks.neuron_run(neuron, const, cur, exp)
    for t in range(cur.shape[0]):
        h, s, v = arith.neuron_step_int(neuron, const, v, cur[t].astype(np.int64))
        np.testing.assert_array_equal(spikes[t], s)
        np.testing.assert_array_equal(sg[t], arith.surrogate_index(h, const["vth"], exp))
    assert spikes.any() and not spikes.all()
    s0, none = ks.neuron_run(neuron, const, cur, None)
    assert none is None
    np.testing.assert_array_equal(s0, spikes)


# ---------------------------------------------------------------------------------------------
# local_deltas


@SETTINGS
@given(t=st.integers(1, 4), n=st.integers(1, 9), m=st.integers(1, 40), classes=st.integers(1, 10),
       project=st.booleans(), broadcast=st.booleans(), big=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_local_deltas_match_the_definition(ks, t, n, m, classes, project, broadcast, big, seed):
    rng = np.random.default_rng(seed)
    sg = rng.integers(0, len(arith.SG_LUT), (t, n, m)).astype(np.uint8)
    width = classes if project else m
    lim = 2**40 if big else 4096  # big: past the int32 projection (int64 path)
    e = rng.integers(-lim, lim + 1, (1 if broadcast else t, n, width))
    if broadcast:
        e = np.broadcast_to(e[0], (t, n, width))
    b = _int8(rng, (classes, m), True) if project else None
    deltas, shifts = ks.local_deltas(sg, e, b)
    for i in range(t):
        g = e[i] @ b.astype(np.int64) if project else e[i]
        want, shift = arith.to_int8_dynamic(g * arith.SG_LUT[sg[i]])
        np.testing.assert_array_equal(deltas[i], want)
        assert shifts[i] == shift


def test_local_deltas_huge_errors(ks):
    sg = np.full((2, 3, 4), 64, np.uint8)
    e = np.full((2, 3, 4), 2**52, np.int64)  # g * LUT past 2**62: the C set hands it to the reference
    with np.errstate(over="ignore"):
        want = reference.local_deltas(sg, e, None)
        got = ks.local_deltas(sg, e, None)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------------------
# dense_update


@SETTINGS
@given(t=st.integers(1, 4), n=st.integers(1, 20), k_in=st.integers(1, 40), m_out=st.integers(1, 270),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), counts=st.booleans(), extremes=st.booleans(),
       mult=st.sampled_from([0, 1, 37, 40000, 2**20]), kbits=st.sampled_from([0, 1, 15, 30, 62]),
       near_limit=st.booleans(), runs=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dense_update_matches_exact_oracle(ks, t, n, k_in, m_out, density, counts, extremes, mult, kbits,
                                           near_limit, runs, seed):
    rng = np.random.default_rng(seed)
    x = _spikes(rng, (t, n, k_in), density, counts)
    d = _int8(rng, (t, n, m_out), extremes)
    shifts = _shifts(rng, t, runs)
    master = rng.integers(-32767, 32768, (k_in, m_out)).astype(np.int16)
    if near_limit:
        master[rng.random(master.shape) < 0.5] = rng.choice(np.array([-32767, 32767, 32512, -32512], np.int16))
    key = int(rng.integers(0, 2**63)) * 2 + 1
    before = master.copy()
    got = ks.dense_update(ks.prepare_inputs(x), d, shifts, master, mult, kbits, key)
    want = _oracle_update(x, d, shifts, master, mult, kbits, key)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int16 and got[1].dtype == np.int8
    assert tuple(got[2:]) == tuple(want[2:])
    np.testing.assert_array_equal(master, before)


@pytest.mark.parametrize("shifts", [[5, 5], [2, 7], [0, 40]])
def test_dense_update_many_samples_and_large_shifts(ks, shifts):
    # 300 samples fire one input at each step (> 255 per int16 chunk); shift 40: int64 path
    rng = np.random.default_rng(4)
    x = np.ones((2, 300, 3), np.uint8)
    d = _int8(rng, (2, 300, 40), True)
    master = rng.integers(-30000, 30000, (3, 40)).astype(np.int16)
    got = ks.dense_update(ks.prepare_inputs(x), d, shifts, master, 3, 62, 123)
    want = _oracle_update(x, d, shifts, master, 3, 62, 123)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_dense_update_saturation_and_silent_rows(ks):
    x = np.zeros((1, 4, 3), np.uint8)
    x[0, :, :2] = 1
    d = np.full((1, 4, 5), -127, np.int8)
    master = np.full((3, 5), 32700, np.int16)
    new, _, sat, sat8 = ks.dense_update(ks.prepare_inputs(x), d, np.zeros(1, np.int64), master, 1 << 10, 0, 7)
    assert sat == 10 and (new[:2] == 32767).all() and (new[2] == 32700).all() and sat8 == 15
    assert (master == 32700).all()


def test_dense_update_beyond_int64_uses_exact_integers(ks):
    x = np.full((1, 2, 3), 255, np.uint8)
    d = np.full((1, 2, 4), 127, np.int8)
    master = np.zeros((3, 4), np.int16)
    # grad = 2 * 255 * 127 << 40 fits int64, grad * m does not: exact integers decide
    got = ks.dense_update(ks.prepare_inputs(x), d, np.array([40]), master, 1 << 20, 62, 5)
    want = _oracle_update(x, d, [40], master, 1 << 20, 62, 5)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# the registry


@pytest.mark.unit
def test_registry_names_and_errors(monkeypatch):
    assert kernels.get("numpy") is reference
    assert kernels.resolve(None) is reference and kernels.resolve("numpy") is reference
    assert kernels.resolve(reference) is reference
    for name in kernels.SETS:
        try:
            ks = kernels.get(name)
        except UserError:
            continue
        assert ks.NAME == name and all(callable(getattr(ks, e)) for e in kernels.ENTRY_POINTS)
    with pytest.raises(UserError, match="unknown kernel set 'cuda'"):
        kernels.get("cuda")
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert kernels.get() is reference


@pytest.mark.unit
def test_auto_falls_back_to_numpy_without_the_c_library(monkeypatch):
    from edge_sdfa.int8 import c_kernels

    monkeypatch.setattr(c_kernels, "_LIB", None)
    monkeypatch.setattr(c_kernels, "_ERROR", None)
    monkeypatch.setattr(c_kernels, "library_path", lambda: None)
    assert kernels.get("auto") is reference
    with pytest.raises(UserError, match="not built when edge-sdfa was installed"):
        kernels.get("c")


@pytest.mark.unit
def test_a_library_built_for_features_this_cpu_lacks_falls_back_to_numpy_with_one_warning(monkeypatch, capsys):
    """A +dotprod (Pi 5) build on a Pi 4: refused before any of its code runs, never a SIGILL."""
    from edge_sdfa.int8 import c_kernels

    opened = []
    monkeypatch.setattr(c_kernels, "_LIB", None)
    monkeypatch.setattr(c_kernels, "_ERROR", None)
    monkeypatch.setattr(kernels, "_WARNED", set())
    monkeypatch.setattr(c_kernels, "library_path", lambda: "/pkg/_c_kernels.so")
    monkeypatch.setattr(c_kernels.ctypes, "CDLL", lambda path: opened.append(path) or object())
    monkeypatch.setattr(c_kernels, "built_features", lambda lib: ["asimddp"])
    monkeypatch.setattr(c_kernels, "cpu_features", lambda: {"fp", "asimd", "crc32"})  # a Cortex-A72
    assert kernels.get("auto") is reference
    assert kernels.get("auto") is reference
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the C int8 kernels (_c_kernels.so) were built for CPU "
                                               "features this CPU lacks (asimddp)")
    with pytest.raises(UserError, match="lacks"):
        kernels.get("c")
    assert opened == ["/pkg/_c_kernels.so"]  # loaded once, nothing of it called
    # the same build where the CPU has the feature gets past the check (to the ABI call)
    monkeypatch.setattr(c_kernels, "_ERROR", None)
    monkeypatch.setattr(c_kernels, "cpu_features", lambda: {"fp", "asimd", "asimddp"})
    with pytest.raises(UserError, match="loading the C int8 kernels"):
        kernels.get("c")
    # unknown CPU features refuse nothing
    monkeypatch.setattr(c_kernels, "cpu_features", lambda: None)
    assert c_kernels.missing_cpu_features(["asimddp"]) == []


@pytest.mark.unit
def test_cpu_features_name_what_this_cpu_has():
    import platform

    from edge_sdfa.int8 import c_kernels

    have = c_kernels.cpu_features()
    if platform.machine() == "x86_64":
        assert have is not None and "sse2" in have
    elif platform.machine() == "aarch64":
        assert have is not None


# ---------------------------------------------------------------------------------------------
# the fused dense stack (inference)


@pytest.mark.integration
@pytest.mark.parametrize("neuron", [NeuronSpec(), NeuronSpec(decay_input=False), NeuronSpec(kind="if"),
                                    NeuronSpec(v_reset=None), NeuronSpec(tau=3.0, v_threshold=0.5, v_reset=-0.25)])
@pytest.mark.parametrize("counts", [False, True])
def test_c_dense_stack_equals_the_numpy_forward(c_set, monkeypatch, neuron, counts):
    from edge_sdfa.int8 import net as qn
    from edge_sdfa.spec import mlp

    rng = np.random.default_rng(int(counts))
    spec = mlp([40, 33, 17, 5], neuron=neuron, time_steps=6)
    exps = [11 if counts else 7, 7, 7]  # thresholds that keep every layer partly active
    qnet = [qn.QLayer(exps[i], rng.integers(-60, 100, (layer.in_features, layer.out_features)).astype(np.int8),
                      rng.integers(-300, 300, layer.out_features).astype(np.int32) if i != 1 else None)
            for i, layer in enumerate(spec.layers)]
    calls = []
    real = c_set.dense_stack
    monkeypatch.setattr(c_set, "dense_stack", lambda plan, x: calls.append(x.shape) or real(plan, x))
    for n in (1, 3, 70):
        x = _spikes(rng, (6, n, 40), 0.3, counts)
        got = qn.forward(spec, qnet, x, c_set)
        want = qn.forward(spec, qnet, x, reference)
        np.testing.assert_array_equal(got.out_spikes, want.out_spikes)
        np.testing.assert_array_equal(got.counts, want.counts)
        assert calls[-1] == (6, n, 40)
    assert want.out_spikes.any() and not want.out_spikes.all()  # the 70-sample batch: the stack is alive
    # outside the int32 bound of the currents: the layer-by-layer path, the same answer
    qnet[0].bias[0] = 1 << 30
    x = _spikes(rng, (6, 2, 40), 0.3, counts)
    n_calls = len(calls)
    np.testing.assert_array_equal(qn.forward(spec, qnet, x, c_set).counts, qn.forward(spec, qnet, x, reference).counts)
    assert len(calls) == n_calls + 1  # tried, refused by the C bound check (an in-place edit)


# ---------------------------------------------------------------------------------------------
# the C set's thread pool


@pytest.mark.integration
def test_c_call_threads_are_per_calling_thread_and_change_no_result(c_set):
    import threading

    lib = c_set.load()
    rng = np.random.default_rng(5)
    x, w = _spikes(rng, (4, 300, 50), 0.2, False), _int8(rng, (50, 64), True)
    pooled = c_set.dense_current(c_set.prepare_inputs(x), w, None)
    assert lib.esd_set_call_threads(1) == 0
    try:
        seen = []
        t = threading.Thread(target=lambda: seen.append(lib.esd_set_call_threads(0)))
        t.start()
        t.join()
        assert seen == [0]  # another thread still uses the pool
        np.testing.assert_array_equal(c_set.dense_current(c_set.prepare_inputs(x), w, None), pooled)
    finally:
        assert lib.esd_set_call_threads(0) == 1


@pytest.fixture()
def c_set():
    try:
        return kernels.get("c")
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_c_kernels_from_several_python_threads_and_after_fork(c_set):
    """ctypes releases the GIL: concurrent calls share one pool (one loop at a time); a forked
    child (Lava forks) starts its own workers instead of waiting for its parent's."""
    import os
    import threading

    rng = np.random.default_rng(9)
    x = _spikes(rng, (4, 64, 300), 0.2, False)
    w = _int8(rng, (300, 200), True)
    want = reference.dense_current(x, w, None)
    c_set.dense_current(c_set.prepare_inputs(x), w, None)  # the pool is running before the fork
    errors = []

    def run():
        for _ in range(20):
            if not np.array_equal(c_set.dense_current(c_set.prepare_inputs(x), w, None), want):
                errors.append("mismatch")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = np.array_equal(c_set.dense_current(c_set.prepare_inputs(x), w, None), want)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.integration
def test_c_kernels_change_no_environment(c_set):
    import os
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); from edge_sdfa.int8 import kernels; "
            "kernels.get('c').info(); assert dict(os.environ) == before, set(os.environ) ^ set(before)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
