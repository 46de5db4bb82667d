"""The full host flow on real data through the CLI: pretrain on digits -> partition (npz, onnx,
tflite where their exporters exist) -> finetune on the result -> export-nir; every step's --json."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("nir")

pytestmark = pytest.mark.integration


def _cli(*args, cwd, expect=0):
    proc = subprocess.run([sys.executable, "-c", "from edge_sdfa.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr
    if expect:
        return proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostflow")
    pre = _cli("pretrain", "--data", "digits", "--arch", "mlp:64-128-128-10", "--method", "bptt", "--epochs", "12",
               "--lr", "3e-3", "--batch", "32", "--out", "model.nir", "--json", cwd=d)
    _cli("data", "export", "digits?split=test&user=3", "user.npz", "-T", "10", "--per-class", "14",
         "--test-out", "user_test.npz", "--json", cwd=d)
    return d, pre


def test_pretrain_json(flow):
    d, pre = flow
    for key in ("train_accuracy", "test_accuracy", "epochs", "seconds", "out"):
        assert key in pre
    assert pre["epochs"] == 12 and pre["out"] == "model.nir" and (d / "model.nir").is_file()
    assert 0.85 <= pre["test_accuracy"] <= 1.0 and 0.85 <= pre["train_accuracy"] <= 1.0


def test_pretrain_sdfa_and_progress(flow):
    d, _ = flow
    proc = subprocess.run([sys.executable, "-c", "from edge_sdfa.cli import main; main()", "pretrain", "--data",
                           "digits", "--arch", "mlp:64-128-10", "--method", "sdfa", "--epochs", "5", "--lr", "1e-2",
                           "--batch", "32",
                           "--out", "sdfa.nir", "--json"], cwd=d, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["method"] == "sdfa_exact" and rep["test_accuracy"] > 0.8
    assert "epoch 5/5" in proc.stderr


@pytest.mark.parametrize("fmt", ["npz", "onnx", "tflite"])
def test_partition_then_finetune(flow, fmt):
    d, pre = flow
    if fmt != "npz":
        if importlib.util.find_spec(f"host_tools.export_{fmt}") is None:
            pytest.skip(f"the {fmt} exporter is not in this checkout")
        if fmt == "onnx":
            pytest.importorskip("onnxruntime")
        else:
            if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tflite_runtime") is None:
                pytest.skip("no TFLite runtime installed")
    part = _cli("partition", "model.nir", "--out", f"bundle_{fmt}", "--trainable-layers", "2", "--calib", "digits",
                "--frozen-format", fmt, "--json", cwd=d)
    assert part["cut"] == 1 and part["frozen_format"] == fmt
    assert abs(part["float_accuracy"] - pre["test_accuracy"]) < 1e-9
    assert part["int8_accuracy"] >= part["float_accuracy"] - 0.03
    assert [p["cut"] for p in part["plans"]] == [0, 1, 2]
    assert all(r["status"] != "fail" for r in part["design_rules"])
    assert {"holdout.npz", "rehearsal.npz", "head.npz", "manifest.json", f"frozen.{fmt}"} <= set(part["files"])
    ft = _cli("finetune", f"bundle_{fmt}", "--data", "npz:user.npz", "--test-data", "npz:user_test.npz",
              "--store", f"store_{fmt}", "--epochs", "8", "--rehearsal-max", "4", "--json", "--quiet", cwd=d)
    assert ft["committed"] and ft["accuracy_after"] > ft["accuracy_before"]
    assert ft["holdout_after"] >= ft["holdout_before"] - 0.02
    extra = [] if fmt == "npz" else ["--frozen-from", "model.nir"]
    exp = _cli("export-nir", f"store_{fmt}", "--out", f"ft_{fmt}.nir", *extra, "--json", cwd=d)
    assert exp["revision"] == 1 and (d / f"ft_{fmt}.nir").is_file()
    imp = _cli("import-nir", f"ft_{fmt}.nir", "--json", cwd=d)
    assert imp["layers"] == ["dense(64,)->(128,)", "dense(128,)->(128,)", "dense(128,)->(10,)"]


def test_fine_tuned_nir_matches_the_store(flow):
    d, _ = flow
    if not (d / "ft_npz.nir").exists():
        pytest.skip("runs after the npz flow")
    from edge_sdfa.bundle import read_bundle
    from edge_sdfa.store import Store
    from host_tools import nir_io

    b = read_bundle(Store(d / "store_npz").active_dir())
    imp = nir_io.import_graph(d / "ft_npz.nir")
    want = nir_io.params_from_qnet(b.spec, b.qnet)
    for p, q in zip(want, imp.params):
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])


def test_partition_memory_budget_and_errors(flow):
    d, _ = flow
    part = _cli("partition", "model.nir", "--out", "bundle_budget", "--memory-budget", "1GB", "--calib", "digits",
                "--json", cwd=d)
    assert part["trainable_layers"] == 3 and part["frozen_format"] == "none"
    err = _cli("partition", "model.nir", "--out", "bundle_small", "--memory-budget", "1MB", "--calib", "digits",
               cwd=d, expect=2)
    last = err.strip().splitlines()[-1]  # stderr may hold progress lines before the one error line
    assert last.startswith("error: design rule memory_budget failed") and "error" not in err.replace(last, "")
    default = _cli("partition", "model.nir", "--out", "bundle_default", "--calib", "digits", "--json", cwd=d)
    assert default["trainable_layers"] == 3  # default: every dense layer trains (docs/personalisation.md)
    err = _cli("partition", "model.nir", "--out", "bundle_x", "--trainable-layers", "1", "--memory-budget", "1GB",
               "--calib", "digits", cwd=d, expect=2)
    assert "at most one of --trainable-layers" in err
    err = _cli("pretrain", "--data", "digits", "--arch", "mlp:784-10", "--out", "x.nir", cwd=d, expect=2)
    assert err.startswith("error:") and "does not match" in err
