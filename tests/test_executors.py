"""Frozen-part export (ONNX, TFLite) and the device executors, against the numpy int8 reference.

Every executor must give the reference's output spikes bit for bit (no tolerance), and a fine-tune
through each executor must give the same report as through the numpy one.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edge_sdfa import float_net as fn
from edge_sdfa.errors import MissingDependency, UserError
from edge_sdfa.int8 import arith
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import Conv2d, Dense, Flatten, NetworkSpec, NeuronSpec, Pool2d, mlp

onnx_mod = pytest.importorskip("onnx")

pytest.importorskip("onnxruntime")


def _have_tflite() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        return True
    except ImportError:
        try:
            import tflite_runtime.interpreter  # noqa: F401
            return True
        except ImportError:
            return False


def _exporters():
    from edge_sdfa.executor_onnx import OnnxExecutor
    from host_tools import export_onnx

    out = [pytest.param((export_onnx, OnnxExecutor, ".onnx"), id="onnx")]
    if _have_tflite():
        from edge_sdfa.executor_tflite import TFLiteExecutor
        from host_tools import export_tflite

        out.append(pytest.param((export_tflite, TFLiteExecutor, ".tflite"), id="tflite"))
    else:  # pragma: no cover
        out.append(pytest.param(None, id="tflite", marks=pytest.mark.skip(reason="no TFLite runtime")))
    return out


EXPORTERS = _exporters()


def spiking_qnet(spec: NetworkSpec, gain, seed: int = 1):
    """PyTorch-default init scaled by ``gain`` (one number, or one per layer) so that the neurons
    actually fire, quantised."""
    params = fn.init_params(spec, seed)
    for i, p in enumerate(params):
        for k in p:
            p[k] = p[k] * (gain[i] if isinstance(gain, (list, tuple)) else gain)
    qnet, _ = qn.quantize(spec, params)
    return qnet


def spikes(rng, spec: NetworkSpec, n: int, density: float, max_count: int = 1) -> np.ndarray:
    x = rng.random((spec.time_steps, n, *spec.input_shape)) < density
    if max_count == 1:
        return x.astype(np.uint8)
    return (x * rng.integers(1, max_count + 1, x.shape)).astype(np.uint8)


def check_equal(exporter, spec, qnet, cut, x, tmp_path, input_max=1, name="m"):
    mod, executor_cls, suffix = exporter
    frozen = spec.split(cut)[0]
    ref = qn.output_spikes(frozen, qnet[:cut], x)
    path = mod.export_frozen(spec, qnet, cut, tmp_path / f"{name}{suffix}", input_max=input_max)
    ex = executor_cls(path=path, spec=frozen)
    out = ex.run(x)
    assert out.dtype == np.uint8 and out.shape == ref.shape
    assert np.array_equal(out, ref), f"{int(np.sum(out != ref))} of {ref.size} spikes differ"
    # a different batch size (the TFLite interpreter resizes) and back
    assert np.array_equal(ex.run(x[:, :3]), ref[:, :3])
    assert np.array_equal(ex.run(x), ref)
    return ref


CONV_FRONT = NetworkSpec((2, 32, 32), (
    Conv2d(2, 16), Pool2d(2),
    Conv2d(16, 16), Pool2d(2),
    Conv2d(16, 16), Pool2d(2),
    Flatten(), Dense(16 * 4 * 4, 10)), time_steps=8)


# ---------------------------------------------------------------------------------------------
# the integer plan


def test_decay_fraction_matches_reference_shift():
    from host_tools.export_onnx import _decay_fraction

    rng = np.random.default_rng(0)
    d = rng.integers(-10 ** 6, 10 ** 6, 2000)
    for tau in (1.5, 2.0, 3.0, 4.0, 10.0, 1000.0):
        decay = arith.neuron_constants(NeuronSpec(tau=tau), 5)["decay"]
        odd, shift = _decay_fraction(decay)
        assert odd * 2 ** (arith.DECAY_BITS - shift) == decay
        assert np.array_equal((d * decay) >> arith.DECAY_BITS, (d * odd) >> shift)


def test_plan_neuron_arithmetic_equals_reference():
    from host_tools.export_onnx import frozen_plan, reference_steps_int

    rng = np.random.default_rng(1)
    for neuron in (NeuronSpec(), NeuronSpec("if"), NeuronSpec(tau=3.0, decay_input=False, v_reset=None),
                   NeuronSpec(tau=1.7, v_reset=0.25, v_threshold=0.75)):
        spec = mlp([40, 30, 5], neuron=neuron, time_steps=7)
        qnet = spiking_qnet(spec, 3.0)
        step = frozen_plan(spec, qnet, 1, 1)[0]
        cur = rng.integers(-3 * step.neuron.vth, 3 * step.neuron.vth, (7, 6, 30))
        const = arith.neuron_constants(neuron, qnet[0].exp)
        v = np.full((6, 30), const["vreset"], np.int64)
        ref = []
        for t in range(7):
            _, s, v = arith.neuron_step_int(neuron, const, v, cur[t])
            ref.append(s)
        assert np.array_equal(reference_steps_int(step.neuron, cur), np.stack(ref))


def test_wide_membrane_bound_detected():
    from host_tools.export_onnx import frozen_plan

    spec = mlp([2048, 64, 4], neuron=NeuronSpec(tau=3.0), time_steps=10)  # odd decay 1365
    qnet = spiking_qnet(spec, 8.0)
    assert frozen_plan(spec, qnet, 1, input_max=255)[0].neuron.wide
    assert not frozen_plan(mlp([2312, 1000, 10]), spiking_qnet(mlp([2312, 1000, 10]), 10.0), 1, 1)[0].neuron.wide


def test_tflite_channel_groups_fit_int16():
    from host_tools.export_tflite import INT16_MAX, _channel_groups

    w8 = np.full((8, 64, 3, 3), 127, np.int8)
    w8[:, ::2] = -127
    groups = _channel_groups(w8, 1)
    assert groups[0][0] == 0 and groups[-1][1] == 64 and len(groups) == 2  # 28 channels of each sign fit
    for (a, b), (c, _) in zip(groups, groups[1:] + [(64, 64)]):
        assert b == c
        w = w8[:, a:b].astype(np.int64)
        assert np.clip(w, 0, None).sum(axis=(1, 2, 3)).max() <= INT16_MAX
        assert np.clip(-w, 0, None).sum(axis=(1, 2, 3)).max() <= INT16_MAX
    assert _channel_groups(np.ones((4, 2, 3, 3), np.int8), 1) == [(0, 2)]


def test_export_rejects_empty_front(tmp_path):
    from host_tools.export_onnx import export_frozen

    spec = mlp([8, 4, 2])
    with pytest.raises(UserError):
        export_frozen(spec, spiking_qnet(spec, 1.0), 0, tmp_path / "x.onnx")


# ---------------------------------------------------------------------------------------------
# bit-exact equivalence with the numpy int8 reference


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_nmnist_mlp_front_bit_exact(exporter, tmp_path):
    spec = mlp([2312, 1000, 10], time_steps=10)
    qnet = spiking_qnet(spec, 10.0)
    ref = check_equal(exporter, spec, qnet, 1, spikes(np.random.default_rng(2), spec, 8, 0.1), tmp_path)
    assert 0.01 < ref.mean() < 0.6  # neurons do fire


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_conv_front_bit_exact(exporter, tmp_path):
    qnet = spiking_qnet(CONV_FRONT, 10.0)
    ref = check_equal(exporter, CONV_FRONT, qnet, 6, spikes(np.random.default_rng(3), CONV_FRONT, 4, 0.15), tmp_path)
    assert ref.shape == (8, 4, 16, 4, 4) and 0.01 < ref.mean() < 0.7


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_neuron_variants_bias_and_counts_bit_exact(exporter, tmp_path):
    # IF with soft reset and bias; LIF without decay_input, tau=3 (odd decay); LIF with v_reset != 0;
    # inputs are counts up to 255 (TFLite splits them into two exact int8 matmuls)
    spec = NetworkSpec((96,), (
        Dense(96, 48, bias=True, neuron=NeuronSpec("if", v_reset=None)),
        Dense(48, 40, neuron=NeuronSpec(tau=3.0, decay_input=False)),
        Dense(40, 24, neuron=NeuronSpec(tau=1.5, v_reset=0.25, v_threshold=0.75)),
        Dense(24, 5)), time_steps=6)
    qnet = spiking_qnet(spec, [0.5, 6.0, 6.0, 1.0])
    x = spikes(np.random.default_rng(4), spec, 9, 0.3, max_count=255)
    ref = check_equal(exporter, spec, qnet, 3, x, tmp_path, input_max=255)
    assert 0.01 < ref.mean() < 0.9


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_conv_stride_padding_sumpool_flatten_bit_exact(exporter, tmp_path):
    # stride 2 / padding 2 (explicit PAD in TFLite), average (= sum) pooling with an odd size
    # (cropped), valid conv, IF soft reset with bias, front ending with Flatten
    spec = NetworkSpec((2, 19, 19), (
        Conv2d(2, 8, kernel_size=5, stride=2, padding=2, bias=True, neuron=NeuronSpec("if", v_reset=None)),
        Pool2d(3, "avg"),
        Conv2d(8, 12, padding=0),
        Flatten(), Dense(12, 4)), time_steps=5)
    qnet = spiking_qnet(spec, 6.0)
    ref = check_equal(exporter, spec, qnet, 4, spikes(np.random.default_rng(5), spec, 6, 0.3, max_count=3),
                      tmp_path, input_max=3)
    assert ref.shape == (5, 6, 12) and ref.mean() > 0.01


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_saturated_conv_weights_bit_exact(exporter, tmp_path):
    # worst-case weights: the TFLite export must split the channels so no int16 partial saturates
    spec = NetworkSpec((48, 8, 8), (Conv2d(48, 6), Flatten(), Dense(6 * 64, 2)), time_steps=3)
    qnet = spiking_qnet(spec, 1.0)
    rng = np.random.default_rng(6)
    qnet[0].w8 = np.where(rng.random(qnet[0].w8.shape) < 0.5, 127, -127).astype(np.int8)
    qnet[0].w8[0] = 127  # one channel fires on everything
    x = spikes(rng, spec, 2, 0.9)
    ref = check_equal(exporter, spec, qnet, 1, x, tmp_path)
    assert ref[:, :, 0].all()


def test_onnx_wide_membrane_int64_bit_exact(tmp_path):
    from edge_sdfa.executor_onnx import OnnxExecutor
    from host_tools import export_onnx

    spec = mlp([512, 32, 4], neuron=NeuronSpec(tau=3.0), time_steps=6)
    qnet = spiking_qnet(spec, 2.0)
    check_equal((export_onnx, OnnxExecutor, ".onnx"), spec, qnet, 1,
                spikes(np.random.default_rng(7), spec, 5, 0.5, max_count=255), tmp_path, input_max=255)
    model = onnx_mod.load(str(tmp_path / "m.onnx"))
    assert any(n.op_type == "Cast" and n.attribute[0].i == onnx_mod.TensorProto.INT64 for n in model.graph.node)


@pytest.mark.skipif(not _have_tflite(), reason="no TFLite runtime")
def test_tflite_refuses_wide_membrane(tmp_path):
    from host_tools import export_tflite

    spec = mlp([512, 32, 4], neuron=NeuronSpec(tau=3.0), time_steps=6)
    with pytest.raises(UserError, match="onnx or npz"):
        export_tflite.export_frozen(spec, spiking_qnet(spec, 2.0), 1, tmp_path / "m.tflite", input_max=255)


def test_onnx_model_is_integer_only(tmp_path):
    from host_tools.export_onnx import export_frozen

    qnet = spiking_qnet(CONV_FRONT, 10.0)
    model = onnx_mod.load(str(export_frozen(CONV_FRONT, qnet, 6, tmp_path / "c.onnx")))
    ops = {n.op_type for n in model.graph.node}
    assert {"ConvInteger", "MaxPool", "GreaterOrEqual", "Where"} <= ops
    float_types = {onnx_mod.TensorProto.FLOAT, onnx_mod.TensorProto.DOUBLE, onnx_mod.TensorProto.FLOAT16}
    assert not any(t.data_type in float_types for t in model.graph.initializer)


@pytest.mark.skipif(not _have_tflite(), reason="no TFLite runtime")
def test_tflite_file_is_int8(tmp_path):
    from ai_edge_litert import schema_py_generated as s

    from host_tools.export_tflite import export_frozen

    spec = mlp([2312, 1000, 10])
    path = export_frozen(spec, spiking_qnet(spec, 10.0), 1, tmp_path / "m.tflite", input_max=1)
    data = path.read_bytes()
    assert data[4:8] == b"TFL3"
    assert 2312 * 1000 < len(data) < 2312 * 1000 * 1.1  # int8 weights, one byte each
    m = s.ModelT.InitFromPackedBuf(data, 0)
    types = {t.type for t in m.subgraphs[0].tensors}
    assert s.TensorType.FLOAT32 not in types
    ops = {m.operatorCodes[o.opcodeIndex].builtinCode for o in m.subgraphs[0].operators}
    assert s.BuiltinOperator.BATCH_MATMUL in ops and s.BuiltinOperator.FULLY_CONNECTED not in ops


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_executor_rejects_wrong_shapes(exporter, tmp_path):
    mod, executor_cls, suffix = exporter
    spec = mlp([20, 10, 3], time_steps=4)
    frozen = spec.split(1)[0]
    ex = executor_cls(path=mod.export_frozen(spec, spiking_qnet(spec, 3.0), 1, tmp_path / f"m{suffix}"), spec=frozen)
    with pytest.raises(UserError, match="expects input"):
        ex.run(np.zeros((5, 2, 20), np.uint8))
    with pytest.raises(UserError, match="expects input"):
        ex.run(np.zeros((4, 2, 21), np.uint8))
    assert ex.run(np.zeros((4, 0, 20), np.uint8)).shape == (4, 0, 10)
    assert ex.input_max == 255
    ex1 = executor_cls(path=mod.export_frozen(spec, spiking_qnet(spec, 3.0), 1, tmp_path / f"m1{suffix}", input_max=1),
                       spec=frozen)
    assert ex1.input_max == 1
    with pytest.raises(UserError, match="input_max=1"):
        ex1.run(np.full((4, 2, 20), 2, np.uint8))
    assert np.array_equal(ex.run(np.ones((4, 2, 20), np.int64)), ex.run(np.ones((4, 2, 20), np.uint8)))


def test_missing_runtimes_name_the_extra(monkeypatch, tmp_path):
    from edge_sdfa.executor_onnx import OnnxExecutor
    from edge_sdfa.executor_tflite import TFLiteExecutor

    spec = mlp([20, 10, 3], time_steps=4).split(1)[0]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r"edge-sdfa\[onnx\]"):
        OnnxExecutor(path=tmp_path / "x.onnx", spec=spec)
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match=r"edge-sdfa\[tflite\]"):
        TFLiteExecutor(path=tmp_path / "x.tflite", spec=spec)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_corrupt_model_file_is_a_user_error(exporter, tmp_path):
    _, executor_cls, suffix = exporter
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(UserError):
        executor_cls(path=bad, spec=mlp([20, 10, 3]).split(1)[0])


# ---------------------------------------------------------------------------------------------
# bundles and fine-tuning through each executor


def _bundle_with(fmt: str, tmp_path):
    from edge_sdfa.bundle import read_bundle, write_bundle
    from edge_sdfa.finetune import DEFAULT_BUNDLE

    src = read_bundle(DEFAULT_BUNDLE)
    cut = max(src.cut, 1)  # the embedded default trains every layer; freeze the first one to have a frozen part
    files = None
    if fmt != "npz":
        mod = __import__(f"host_tools.export_{fmt}", fromlist=["export_frozen"])
        x_hold = src.holdout()[0]
        files = {f"frozen.{fmt}": mod.export_frozen(src.spec, src.qnet, cut, tmp_path / f"export.{fmt}",
                                                    input_max=int(x_hold.max()))}
    return write_bundle(tmp_path / f"bundle_{fmt}", src.spec, src.qnet, cut, model_id=src.model_id,
                        version=src.version, holdout=src.holdout(), rehearsal=src.rehearsal(),
                        feedback_seed=src.feedback_seed, frozen_files=files, frozen_format=fmt,
                        finetune_defaults=src.manifest.get("finetune"), metadata={"test": fmt})


@pytest.mark.integration
def test_bundle_executors_give_identical_head_inputs(tmp_path):
    from edge_sdfa.bundle import read_bundle
    from edge_sdfa.executors import open_executor, run_frozen

    formats = ["npz", "onnx"] + (["tflite"] if _have_tflite() else [])
    outs = {}
    for fmt in formats:
        b = read_bundle(_bundle_with(fmt, tmp_path))
        assert b.frozen_format == fmt
        ex = open_executor(b)
        assert ex.name == {"npz": "numpy"}.get(fmt, fmt)
        outs[fmt] = run_frozen(ex, b.holdout()[0], batch=64)
    for fmt in formats[1:]:
        assert np.array_equal(outs[fmt], outs["npz"])


@pytest.mark.integration
def test_finetune_through_each_executor_reaches_the_same_accuracy(tmp_path):
    from edge_sdfa.finetune import DEFAULT_USER_BATCH, DEFAULT_USER_TEST, FinetuneConfig, finetune

    formats = ["npz", "onnx"] + (["tflite"] if _have_tflite() else [])
    reports = {}
    for fmt in formats:
        bundle_dir = _bundle_with(fmt, tmp_path)
        reports[fmt] = finetune(bundle_dir, f"npz:{DEFAULT_USER_BATCH}", store=tmp_path / f"store_{fmt}",
                                test_data=f"npz:{DEFAULT_USER_TEST}", config=FinetuneConfig(epochs=30))
    keys = ("committed", "accuracy_before", "accuracy_after", "accuracy_candidate", "validation_after",
            "holdout_before", "holdout_after", "best_epoch", "updates")
    base = {k: reports["npz"][k] for k in keys}
    # the embedded default's model, first layer frozen, commits an improvement on the user's test digits
    assert base["committed"] and base["accuracy_after"] > base["accuracy_before"] + 0.05
    for fmt in formats[1:]:
        assert {k: reports[fmt][k] for k in keys} == base, fmt


@pytest.mark.parametrize("width", [8, 17, 24, 31, 32, 40])
def test_onnx_dense_widths_exact_every_run(width, tmp_path):
    # ONNX Runtime 1.23 computes MatMulInteger wrongly (and differently from run to run) for
    # 17-31 output columns on AVX512-VNNI CPUs; the exporter pads those widths.
    from edge_sdfa.executor_onnx import OnnxExecutor
    from host_tools import export_onnx

    spec = NetworkSpec((40,), (Dense(40, width), Dense(width, 3)), time_steps=4)
    qnet = spiking_qnet(spec, 6.0)
    x = spikes(np.random.default_rng(width), spec, 50, 0.3)
    ref = qn.output_spikes(spec.split(1)[0], qnet[:1], x)
    ex = OnnxExecutor(path=export_onnx.export_frozen(spec, qnet, 1, tmp_path / "m.onnx", input_max=1),
                      spec=spec.split(1)[0])
    for _ in range(4):
        assert np.array_equal(ex.run(x), ref)
