"""The inference API (``edge_sdfa.Runtime``) and ``edge-sdfa predict``: predictions equal eval's,
commits are seen between calls and never inside one, event windows, latency fields, CLI errors."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import edge_sdfa
from edge_sdfa import bundle as bundle_mod
from edge_sdfa.backend import NumpyBackend
from edge_sdfa.event_stream import END_OF_WINDOW, MARKER_ONLY, WindowSplitter, aligned_records, encode_records
from edge_sdfa.executors import open_executor, run_frozen
from edge_sdfa.finetune import DEFAULT_BUNDLE, DEFAULT_USER_TEST, evaluate, load_data
from edge_sdfa.int8 import net as qn
from edge_sdfa.runtime import Runtime, bin_window, predict_report
from edge_sdfa.store import Store
from edge_sdfa.userdata import save_user_data

CLI = [str(Path(sys.executable).parent / "edge-sdfa")]


@pytest.fixture(scope="module")
def user_test():
    b = bundle_mod.read_bundle(DEFAULT_BUNDLE)
    return load_data(DEFAULT_USER_TEST, b.spec.time_steps, b.spec.input_shape)


def _eval_labels(bundle_dir: Path, x: np.ndarray) -> np.ndarray:
    """Labels the way ``evaluate`` computes them: frozen executor, then the backend's forward."""
    b = bundle_mod.read_bundle(bundle_dir)
    be = NumpyBackend()
    be.program(b.head_spec(), b.head(), b.feedback_seed, qn.UpdateConfig())
    h = run_frozen(open_executor(b), x)
    return np.concatenate([be.forward(np.swapaxes(h[i:i + 256], 0, 1)).argmax(1) for i in range(0, len(h), 256)])


def _permuted_head(bundle_dir: Path, out: Path, revision: int) -> Path:
    """A candidate whose output classes are rolled by one: every sample's counts change."""
    b = bundle_mod.read_bundle(bundle_dir)
    head = list(b.head())
    last = head[-1]
    w8 = np.roll(last.w8, 1, axis=1)
    head[-1] = qn.QLayer(last.exp, np.ascontiguousarray(w8), None if last.bias is None else np.roll(last.bias, 1),
                         np.ascontiguousarray(np.roll(last.master, 1, axis=1)))
    return bundle_mod.with_head(b, head, out, revision=revision)


# ---------------------------------------------------------------------------------------------


def test_public_api_is_exported():
    assert edge_sdfa.Runtime is Runtime
    with pytest.raises(AttributeError):
        edge_sdfa.NoSuchThing  # noqa: B018


def test_predictions_equal_eval(tmp_path, user_test):
    x, y = user_test
    store = Store.init(tmp_path / "store", DEFAULT_BUNDLE)
    rt = Runtime.open(store.root, batch=50)
    p = rt.predict(x)
    assert np.array_equal(p.labels, _eval_labels(store.active_dir(), x))
    report = evaluate(store.root, f"npz:{DEFAULT_USER_TEST}")
    assert float(np.mean(p.labels == y)) == report["accuracy"]
    # rates are the output counts over T; every kernel set gives the same integers
    assert np.array_equal(p.rates * rt.time_steps, p.counts)
    assert np.array_equal(Runtime.open(DEFAULT_BUNDLE, kernels="numpy").predict(x).counts, p.counts)
    # one sample at a time gives the same answers as the batch
    assert [int(rt.predict(x[i]).labels[0]) for i in range(20)] == p.labels[:20].tolist()


def test_latency_fields_present(user_test):
    x, _ = user_test
    p = Runtime.open(DEFAULT_BUNDLE).predict(x[:7])
    assert len(p) == 7 and p.latency_s > 0 and p.latency_per_sample_s == pytest.approx(p.latency_s / 7)
    assert p.model.model_id == "digits-mlp-lif" and p.model.generation == 0
    report = predict_report(str(DEFAULT_BUNDLE), f"npz:{DEFAULT_USER_TEST}", latency_samples=20)
    assert report["latency_samples"] == 20
    for key in ("p50", "p90", "p99", "max"):
        assert report["latency_ms"][key] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["batch_ms_per_sample"] > 0 and report["peak_rss_mb"] > 0
    assert report["accuracy"] == pytest.approx(0.4979, abs=1e-4)


def test_runtime_follows_commits_and_reverts(tmp_path, user_test):
    x, _ = user_test
    store = Store.init(tmp_path / "store", DEFAULT_BUNDLE)
    rt = Runtime.open(store.root)
    old = rt.predict(x[:40])
    cand = _permuted_head(store.active_dir(), tmp_path / "cand", revision=1)
    store.install_candidate(cand, allow_same_version=True)
    assert rt.predict(x[:40]).model.revision == 0          # a candidate is not active
    store.commit()
    new = rt.predict(x[:40])
    assert new.model.revision == 1 and new.model.generation > old.model.generation
    assert np.array_equal(new.counts, np.roll(old.counts, 1, axis=1))
    store.revert()
    assert rt.predict(x[:40]).model.revision == 0
    frozen = Runtime.open(store.root, watch=False)
    store.install_candidate(cand, allow_same_version=True)
    store.commit()
    assert frozen.predict(x[:2]).model.revision == 0 and frozen.reload() and frozen.info.revision == 1


def test_commit_during_a_stream_switches_between_windows_never_inside_one(tmp_path, user_test):
    """Reader threads decide windows of 48 samples, each run in chunks of 8 (batch=8); a writer
    commits a candidate whose counts differ on every sample, then reverts it. Every window must
    equal the old or the new weights' answer as a whole, and say which."""
    x, _ = user_test
    windows = [x[i:i + 48] for i in range(0, 48 * 4, 48)]
    store = Store.init(tmp_path / "store", DEFAULT_BUNDLE)
    ref_old = Runtime.open(DEFAULT_BUNDLE)
    cand = _permuted_head(store.active_dir(), tmp_path / "cand", revision=1)
    ref_new = Runtime.open(cand)
    want = {0: [ref_old.predict(w).counts for w in windows], 1: [ref_new.predict(w).counts for w in windows]}
    for a, b in zip(want[0], want[1]):   # the test can see a mix: every chunk of 8 differs
        assert all(not np.array_equal(a[i:i + 8], b[i:i + 8]) for i in range(0, 48, 8))
    rt = Runtime.open(store.root, batch=8)
    seen: list[list[tuple[int, int, bool]]] = [[] for _ in range(3)]
    stop = threading.Event()
    errors = []

    def reader(k):
        try:
            i = 0
            while not stop.is_set():
                w = i % len(windows)
                p = rt.predict(windows[w])
                seen[k].append((p.model.generation, p.model.revision, bool(np.array_equal(p.counts, want[p.model.revision][w]))))
                i += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        def wait_for(rev):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(s and s[-1][1] == rev for s in seen):
                time.sleep(0.01)
        wait_for(0)
        Store(store.root).install_candidate(cand, allow_same_version=True)
        Store(store.root).commit()
        wait_for(1)
        Store(store.root).revert()
        wait_for(0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for s in seen:
        assert all(ok for _, _, ok in s), "a window mixed two sets of weights"
        revs = [r for _, r, _ in s]
        changes = [revs[i] for i in range(1, len(revs)) if revs[i] != revs[i - 1]]
        assert changes == [1, 0]                                # old -> new -> old, once each
        gens = [g for g, _, _ in s]
        assert gens == sorted(gens)                              # never back to an older state


def test_predict_events_bins_like_the_user_data_path(tmp_path):
    from edge_sdfa.binning import make_events

    rng = np.random.default_rng(3)
    spec_b = bundle_mod.read_bundle(DEFAULT_BUNDLE)
    # channel events (one channel per input of the 64-input embedded model)
    samples = []
    for _ in range(5):
        n = int(rng.integers(50, 400))
        ev = np.empty(n, [("t", "<i8"), ("channel", "<i2")])
        ev["t"] = np.sort(rng.integers(0, 100_000, n))
        ev["channel"] = rng.integers(0, 64, n)
        samples.append(ev)
    path = tmp_path / "ev.npz"
    save_user_data(str(path), np.arange(5), events=np.concatenate(samples),
                   offsets=np.cumsum([0] + [len(s) for s in samples]), sensor=(64,))
    x, _ = load_data(f"npz:{path}", spec_b.spec.time_steps, spec_b.spec.input_shape)
    rt = Runtime.open(DEFAULT_BUNDLE)
    assert np.array_equal(rt.predict_events(samples).counts, rt.predict(x).counts)
    assert np.array_equal(rt.predict_events(samples[0]).counts, rt.predict(x[0]).counts)
    # camera events: the sensor comes from a (2, H, W)-like square input, or must be given
    cam = make_events(np.arange(100), rng.integers(0, 34, 100), rng.integers(0, 34, 100), rng.integers(0, 2, 100))
    assert bin_window(cam, 10, (2312,)).shape == (10, 2312)
    from edge_sdfa.errors import DataError
    with pytest.raises(DataError, match="sensor size"):
        bin_window(cam, 10, (64,))


# ---------------------------------------------------------------------------------------------
# decision windows of the binary record stream


def _records(n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 1_000_000, n))
    return t, rng.integers(0, 64, n)


def _windows(data: bytes, pieces, **kw):
    s = WindowSplitter(**kw)
    out = []
    cuts = [0, *sorted(pieces), len(data)]
    for a, b in zip(cuts[:-1], cuts[1:]):
        out += s.feed(data[a:b], 0.0)
    out += s.finish(0.0)
    return [w.records["t"].tolist() for w in out]


@pytest.mark.parametrize("kw", [{"window_us": 100_000}, {"window_events": 37}, {"window_us": 50_000, "window_events": 20}])
def test_window_splitter_cuts_by_time_and_count_whatever_the_read_sizes(kw):
    t, c = _records()
    data = encode_records(t, c)
    whole = _windows(data, [], **kw)
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert _windows(data, rng.integers(0, len(data), 7).tolist(), **kw) == whole
    flat = [v for w in whole for v in w]
    assert flat == t.tolist()
    if "window_events" in kw:
        assert all(len(w) <= kw["window_events"] for w in whole)
    if "window_us" in kw:
        assert all(w[-1] - w[0] < kw["window_us"] for w in whole)
    if kw == {"window_us": 100_000}:  # a new window starts exactly at the first late event
        starts = [w[0] for w in whole]
        for prev, nxt in zip(whole[:-1], starts[1:]):
            assert nxt >= prev[0] + 100_000


def test_window_splitter_end_flags_and_markers():
    t = np.arange(10) * 10
    flags = np.zeros(10, np.uint8)
    flags[3] = END_OF_WINDOW
    flags[6] = MARKER_ONLY | END_OF_WINDOW      # a bare end marker
    data = encode_records(t, np.zeros(10), flags=flags)
    assert _windows(data, [17, 33]) == [[0, 10, 20, 30], [40, 50], [70, 80, 90]]


def test_records_realign_on_the_sync_word():
    t, c = _records(50)
    data = encode_records(t, c)
    assert aligned_records(data)[0]["t"].tolist() == t.tolist()
    # joined mid-record, a corrupted record in the middle, a partial record at the end
    bad = bytearray(data)
    bad[16 * 20 + 14] ^= 0xFF
    rec, tail, dropped = aligned_records(b"\x01\x02\x03" + bytes(bad[5:-3]))
    want = t[1:-1].tolist()
    del want[19]
    assert rec["t"].tolist() == want and dropped == 3 + 11 + 16 and len(tail) == 13
    rec, tail, dropped = aligned_records(tail + data[-3:])
    assert rec["t"].tolist() == [t[-1]] and tail == b"" and dropped == 0


# ---------------------------------------------------------------------------------------------
# the command


def run_cli(*args, stdin=None, timeout=300):
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=timeout)


@pytest.mark.integration
def test_cli_predict_json_and_errors(tmp_path):
    proc = run_cli("predict", str(DEFAULT_BUNDLE), "--data", f"npz:{DEFAULT_USER_TEST}", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["samples"] == 239 and report["accuracy"] == pytest.approx(0.4979, abs=1e-4)
    assert {"p50", "p99"} <= set(report["latency_ms"])
    bad = tmp_path / "bad.npz"
    save_user_data(str(bad), np.zeros(2, np.int64), x=np.zeros((2, 10, 63), np.uint8))
    for args in (["--data", f"npz:{bad}"], ["--data", f"npz:{tmp_path / 'none.npz'}"], ["--batch", "0"],
                 ["--stream", "--sensor", "3y4"]):
        proc = run_cli("predict", str(DEFAULT_BUNDLE), *args)
        lines = proc.stderr.decode().strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert proc.stdout == b""


@pytest.mark.integration
def test_cli_stream_records_and_npz_on_stdin(tmp_path, user_test):
    x, y = user_test
    # records: 6 windows of channel events, each ended by a flag
    rng = np.random.default_rng(5)
    wins, parts = [], []
    for k in range(6):
        n = int(rng.integers(80, 300))
        t = np.sort(rng.integers(0, 50_000, n)) + k * 100_000
        c = rng.integers(0, 64, n)
        flags = np.zeros(n, np.uint8)
        flags[-1] = END_OF_WINDOW
        parts.append(encode_records(t, c, flags=flags))
        ev = np.empty(n, [("t", "<i8"), ("channel", "<i2")])
        ev["t"], ev["channel"] = t, c
        wins.append(ev)
    proc = run_cli("predict", str(DEFAULT_BUNDLE), "--stream", stdin=b"".join(parts))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(v) for v in proc.stdout.decode().splitlines()]
    want = Runtime.open(DEFAULT_BUNDLE).predict_events(wins)
    assert [d["label"] for d in lines] == want.labels.tolist()
    assert all(d["latency_ms"] > 0 and d["events"] == len(w) for d, w in zip(lines, wins))
    # the npz layout: one window per sample, accuracy in the summary
    proc = run_cli("predict", str(DEFAULT_BUNDLE), "--stream", stdin=Path(DEFAULT_USER_TEST).read_bytes())
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(v) for v in proc.stdout.decode().splitlines()]
    assert len(lines) == len(y) and [d["true"] for d in lines] == y.tolist()
    summary = json.loads(proc.stderr.decode().strip().splitlines()[-1])["summary"]
    assert summary["windows"] == len(y) and summary["accuracy"] == pytest.approx(0.4979, abs=1e-4)
    assert summary["decision_latency_ms"]["p99"] > 0


@pytest.mark.integration
def test_cli_stream_reads_a_serial_url():
    """--port takes any pyserial URL: records arrive over socket://, the stream ends when the
    sender hangs up."""
    import socket

    rng = np.random.default_rng(9)
    t = np.sort(rng.integers(0, 400_000, 600))
    c = rng.integers(0, 64, 600)
    data = encode_records(t, c)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def send():
        conn, _ = srv.accept()
        time.sleep(0.3)   # pyserial's socket:// discards what is already waiting when it opens
        for i in range(0, len(data), 1000):   # partial records across writes
            conn.sendall(data[i:i + 1000])
            time.sleep(0.01)
        time.sleep(0.3)   # pyserial's socket:// drops the bytes of a read() that a hang-up interrupts
        conn.close()

    th = threading.Thread(target=send)
    th.start()
    proc = run_cli("predict", str(DEFAULT_BUNDLE), "--stream", "--port", f"socket://127.0.0.1:{port}",
                   "--window-us", "100000", timeout=120)
    th.join(10)
    srv.close()
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(v) for v in proc.stdout.decode().splitlines()]
    ev = np.empty(len(t), [("t", "<i8"), ("channel", "<i2")])
    ev["t"], ev["channel"] = t, c
    starts = [d["t_start_us"] for d in lines]
    assert sum(d["events"] for d in lines) == len(t) and starts[0] == t[0]
    assert all(b - a >= 100_000 for a, b in zip(starts, starts[1:]))
    want = Runtime.open(DEFAULT_BUNDLE).predict_events(
        [ev[(t >= d["t_start_us"]) & (t <= d["t_end_us"])] for d in lines])
    assert [d["label"] for d in lines] == want.labels.tolist()


@pytest.mark.parametrize("kernels", ["numpy", "c"])
def test_conv_layers_run_channels_last_with_the_same_spikes(kernels):
    """Unrecorded conv layers run their neurons in the gather's channels-last order (the
    inference fast path); recorded ones keep channels-first. Same spikes either way."""
    from edge_sdfa import float_net as fn
    from edge_sdfa.int8 import kernels as kernel_sets
    from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, Pool2d

    try:
        ks = kernel_sets.get(kernels)
    except Exception as exc:  # the C set where it was not built
        pytest.skip(str(exc))
    spec = NetworkSpec((2, 12, 12), (Conv2d(2, 6), Pool2d(2), Conv2d(6, 5, bias=True), Pool2d(2, mode="avg"),
                                     Flatten(), Dense(5 * 3 * 3, 4)), time_steps=6)
    params = [{k: v * 20 for k, v in p.items()} for p in fn.init_params(spec, 2)]
    q, _ = qn.quantize(spec, params)
    x = (np.random.default_rng(4).random((6, 3, 2, 12, 12)) < 0.3).astype(np.uint8)
    fast = qn.forward(spec, q, x, ks)
    recorded = qn.forward(spec, q, x, ks, keep={0, 2})
    assert fast.out_spikes.any() and np.array_equal(fast.out_spikes, recorded.out_spikes)
