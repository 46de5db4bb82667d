"""`edge-sdfa finetune` end to end: the embedded default, the commit gate, poisoned fine-tunes,
errors, and the device-only (Python 3.11+, numpy 2, core dependencies) install."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_sdfa.finetune import DEFAULT_BUNDLE, DEFAULT_USER_BATCH, FinetuneConfig, finetune
from edge_sdfa.store import Store
from edge_sdfa.userdata import load_user_data, save_user_data

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "edge-sdfa")]


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.integration
def test_default_finetune_meets_the_goals(tmp_path):
    proc = run_cli("finetune", "--json", "--store", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("accuracy_before", "accuracy_after", "holdout_before", "holdout_after", "committed", "updates",
                "seconds_per_update", "peak_rss_mb", "backend", "store"):
        assert key in report
    assert report["holdout_before"] - report["accuracy_before"] >= 0.15   # the shift is real
    assert report["accuracy_after"] - report["accuracy_before"] >= 0.10
    assert report["holdout_before"] - report["holdout_after"] <= 0.02 + 1e-9  # 200 samples: 0.92 - 0.90 in floats
    assert report["committed"] is True and report["backend"] == "numpy"
    st = Store(tmp_path / "store")
    assert st.status()["revision"] == 1
    # the committed weights are what eval now sees
    proc = run_cli("eval", "--json", "--store", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accuracy"] == pytest.approx(report["accuracy_after"])
    # revert goes back to the last good (here: factory) weights, byte for byte
    proc = run_cli("store", "revert", "--json", "--store", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["revision"] == 0
    assert _active_head(tmp_path / "store") == (DEFAULT_BUNDLE / "head.npz").read_bytes()
    proc = run_cli("store", "reset", "--json", "--store", str(tmp_path / "store"))
    assert proc.returncode == 0 and json.loads(proc.stdout)["active_is_factory"] is True
    proc = run_cli("store", "status", "--store", str(tmp_path / "nostore"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")


def _active_head(store_dir):
    return (Store(store_dir).active_dir() / "head.npz").read_bytes()


@pytest.mark.integration
@pytest.mark.parametrize("poison", ["shuffled_labels", "huge_lr"])
def test_poisoned_finetune_is_not_committed(tmp_path, poison):
    store = tmp_path / "store"
    Store.init(store, DEFAULT_BUNDLE)
    before = _active_head(store)
    data = load_user_data(str(DEFAULT_USER_BATCH))
    cfg = FinetuneConfig(epochs=8)
    path = DEFAULT_USER_BATCH
    if poison == "shuffled_labels":
        y = np.random.default_rng(0).permutation(data.y)
        path = tmp_path / "poison.npz"
        save_user_data(str(path), y, x=data.x)
    else:
        cfg = FinetuneConfig(epochs=8, lr=1000.0)
    report = finetune(store, str(path), config=cfg)
    assert report["committed"] is False and report["reasons"]
    assert _active_head(store) == before
    assert Store(store).status()["revision"] == 0


@pytest.mark.integration
def test_cli_errors_are_one_line_exit_2(tmp_path):
    bad_bundle = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, bad_bundle)
    raw = bytearray((bad_bundle / "head.npz").read_bytes())
    raw[100] ^= 1
    (bad_bundle / "head.npz").write_bytes(bytes(raw))
    cases = [
        ("finetune", "--backend", "nope", "--store", str(tmp_path / "s1")),
        ("finetune", str(bad_bundle), "--store", str(tmp_path / "s2")),
        ("finetune", "--data", str(tmp_path / "missing.npz"), "--store", str(tmp_path / "s3")),
        ("info", str(tmp_path / "nothing")),
        ("finetune", "--mode", "sideways", "--store", str(tmp_path / "s4")),
        ("finetune", "--no-such-flag"),
    ]
    for args in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("finetune [")]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
    assert not (tmp_path / "s2").exists() or not any((tmp_path / "s2").iterdir())


@pytest.mark.integration
def test_wrong_shapes_are_rejected(tmp_path):
    path = tmp_path / "wrong.npz"
    save_user_data(str(path), np.zeros(4, np.int64), x=np.zeros((4, 10, 63), np.uint8))
    proc = run_cli("finetune", "--data", str(path), "--store", str(tmp_path / "s"))
    assert proc.returncode == 2 and "expects" in proc.stderr


DEVICE_VENV = ROOT / ".venv-device"


def _device_python() -> str | None:
    for cand in ("python3.13", "python3.12", "python3.11"):
        path = shutil.which(cand)
        if path and subprocess.run([path, "-c", "import venv"], capture_output=True).returncode == 0:
            return path
    for base in sorted(Path.home().glob(".pyenv/versions/3.1[1-9]*/bin/python3"), reverse=True):
        return str(base)
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_device_only_install_runs_the_main_job(tmp_path):
    """The Raspberry Pi install: Python 3.11+, numpy 2, only the core dependencies."""
    py = _device_python()
    if py is None:
        pytest.skip("no Python 3.11+ interpreter on this machine")
    vpy = DEVICE_VENV / "bin" / "python"
    stamp = DEVICE_VENV / ".stamp"
    want = (ROOT / "pyproject.toml").read_text()
    if not vpy.exists() or not stamp.exists() or stamp.read_text() != want:
        shutil.rmtree(DEVICE_VENV, ignore_errors=True)
        subprocess.run([py, "-m", "venv", str(DEVICE_VENV)], check=True, timeout=300)
        subprocess.run([str(vpy), "-m", "pip", "install", "-q", str(ROOT)], check=True, timeout=900)
        stamp.write_text(want)
    else:  # refresh the project's code (not its dependencies)
        subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)],
                       check=True, timeout=600)
    probe = subprocess.run([str(vpy), "-c",
                            "import sys, numpy, importlib.util as u; print(sys.version_info[:2] >= (3, 11), "
                            "numpy.__version__.split('.')[0], u.find_spec('lava') is None, "
                            "u.find_spec('sklearn') is None, u.find_spec('numba') is None, "
                            "u.find_spec('host_tools') is None, u.find_spec('sim_backend') is None)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert probe.stdout.split() == ["True", "2", "True", "True", "True", "True", "True"], probe.stdout
    exe = DEVICE_VENV / "bin" / "edge-sdfa"
    listing = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    commands = {line.split()[1] for line in listing.splitlines() if line.startswith("│ ") and len(line.split()) > 1}
    assert {"finetune", "serve", "store"} <= commands and not commands & {"pretrain", "partition", "bench", "import-nir"}
    proc = subprocess.run([str(exe), "finetune", "--json", "--store", str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["committed"] is True
    assert report["accuracy_after"] - report["accuracy_before"] >= 0.10


@pytest.mark.integration
def test_finetune_accepts_user_events_binned_on_the_device(tmp_path):
    """An npz of camera events (N-MNIST-shaped, from the DVS emulator) is binned by the device."""
    from edge_sdfa import float_net as fn
    from edge_sdfa.bundle import write_bundle
    from edge_sdfa.int8 import net as qn
    from edge_sdfa.spec import mlp
    from host_tools.datasets import open_dataset

    ds = open_dataset("digits-events?split=test&limit=40")
    samples = list(ds)
    events = np.concatenate([s.events for s in samples])
    offsets = np.cumsum([0] + [len(s.events) for s in samples])
    y = np.array([s.label for s in samples])
    path = tmp_path / "ev.npz"
    save_user_data(str(path), y, events=events, offsets=offsets, sensor=(34, 34))
    spec = mlp([2312, 32, 10], time_steps=5)
    qnet, _ = qn.quantize(spec, [{k: v * 4 for k, v in p.items()} for p in fn.init_params(spec, 0)], trainable={1})
    hold = (np.zeros((4, 5, 2312), np.uint8), np.arange(4))
    bundle = write_bundle(tmp_path / "b", spec, qnet, 1, model_id="ev", version=1, holdout=hold)
    report = finetune(bundle, f"npz:{path}", store=tmp_path / "st", config=FinetuneConfig(epochs=1, batch_size=8))
    assert report["user_train_samples"] + report["user_validation_samples"] == 40


@pytest.mark.integration
def test_device_runtime_loads_no_host_code():
    """DESIGN boundary: edge_sdfa imports no host, bridge or simulator code; building the CLI loads
    only the plug-ins' thin command modules, never their heavy dependencies."""
    heavy = "{'sklearn','lava','h5py','nir','onnx','matplotlib'}"
    code = ("import sys, edge_sdfa.cli, edge_sdfa.finetune, edge_sdfa.store, edge_sdfa.binning;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'host_tools','firmware_bridge','sim_backend'}));"
            "edge_sdfa.cli.build_app();"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]"]


class _CostingBackend:
    """The numpy backend plus a simulated cost per update whose breakdown grows every update, as
    a hardware simulator's does."""

    name = "costing"

    def __init__(self):
        from edge_sdfa.backend import NumpyBackend

        self.inner, self.n = NumpyBackend(kernels="numpy"), 0

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def update(self, x, y, update_index):
        self.n += 1
        return self.inner.update(x, y, update_index)

    def cost(self):
        from edge_sdfa.backend import CostReport

        return CostReport(latency_s=1e-3, energy_j=2e-6, breakdown={"adc_j": 1e-6 * self.n, "note": "sim"})


def test_telemetry_events_are_snapshots(tmp_path, monkeypatch):
    """An epoch's event never changes after it was emitted (the bridge agent serialises events on
    another thread while training goes on), and the report's cost is the final total."""
    import json

    from edge_sdfa import finetune as ft

    monkeypatch.setattr(ft, "load_backend", lambda name, **options: _CostingBackend())
    emitted, at_emit = [], []

    def on_event(event):
        emitted.append(event)
        at_emit.append(json.dumps(event, sort_keys=True))

    report = finetune(store=tmp_path / "store", config=FinetuneConfig(epochs=3), on_event=on_event)
    epochs = [e for e in emitted if e["event"] == "epoch"]
    assert len(epochs) == 3
    assert [json.dumps(e, sort_keys=True) for e in emitted] == at_emit   # nothing changed after emission
    adc = [e["cost"]["breakdown"]["adc_j"] for e in epochs]
    assert adc[0] < adc[1] < adc[2]                                       # cumulative, one snapshot each
    assert report["cost"]["breakdown"]["adc_j"] == pytest.approx(adc[-1])
    assert report["cost"]["energy_j"] == pytest.approx(2e-6 * report["updates"])
    report["cost"]["breakdown"]["adc_j"] = -1.0                           # the caller's copy is its own
    assert epochs[-1]["cost"]["breakdown"]["adc_j"] == pytest.approx(adc[-1])


def test_a_backend_given_as_module_and_class_needs_no_packaging(tmp_path, monkeypatch):
    """Adding a backend is one module: `--backend module:Class` loads it without an entry point."""
    (tmp_path / "my_backend.py").write_text(
        "from edge_sdfa.backend import NumpyBackend\n\n"
        "class Mine(NumpyBackend):\n    name = 'mine'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from edge_sdfa.backend import load_backend
    from edge_sdfa.errors import UserError

    assert load_backend("my_backend:Mine").name == "mine"
    report = finetune(store=tmp_path / "st", config=FinetuneConfig(epochs=1, backend="my_backend:Mine"))
    ref = finetune(store=tmp_path / "ref", config=FinetuneConfig(epochs=1))
    assert report["accuracy_candidate"] == ref["accuracy_candidate"]
    for bad in ("my_backend:Nope", "no_such_module:X", "nope"):
        with pytest.raises(UserError):
            load_backend(bad)
