"""The NIR -> bundle pipeline for conv nets: a TFLite frozen front of a conv net calibrated on
spikes (the exporter gets the calibration's input range, not an assumed 255)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nir")
pytest.importorskip("ai_edge_litert.interpreter")

from edge_sdfa import bundle as bundle_mod  # noqa: E402
from edge_sdfa import float_net as fn  # noqa: E402
from edge_sdfa.executors import open_executor  # noqa: E402
from host_tools import nir_io  # noqa: E402
from host_tools.archs import parse_arch  # noqa: E402
from host_tools.partition import partition  # noqa: E402

pytestmark = pytest.mark.integration  # a whole partition run (data set, calibration, exports)


def test_tflite_conv_front_calibrated_on_spikes_is_bit_exact(tmp_path):
    spec = parse_arch("convnet:c=4,fc=16,blocks=1,in=1x8x8", (1, 8, 8), 10)
    rng = np.random.default_rng(3)
    # weights of one magnitude (+-0.6, mostly positive): they fire on digits spikes and quantise exactly
    params = [{k: (np.where(rng.random(v.shape) < 0.7, 0.6, -0.6)).astype(np.float32) for k, v in p.items()}
              for p in fn.init_params(spec, 0)]
    model = nir_io.export_nir(spec, params, tmp_path / "m.nir")
    kw = dict(calib="digits", trainable_layers=2, calib_samples=64, holdout_samples=20, rehearsal_samples=20)
    rep = partition(model, tmp_path / "b_tfl", frozen_format="tflite", **kw)
    partition(model, tmp_path / "b_npz", frozen_format="npz", **kw)
    assert rep["frozen_format"] == "tflite" and rep["cut"] > 0
    tfl, ref = bundle_mod.read_bundle(tmp_path / "b_tfl"), bundle_mod.read_bundle(tmp_path / "b_npz")
    xh, _ = ref.holdout()  # [N, T, ...] spikes of the digits test split
    x = np.ascontiguousarray(np.swapaxes(xh, 0, 1)).reshape(spec.time_steps, len(xh), *spec.input_shape)
    assert x.max() == 1
    want = open_executor(ref).run(x)
    got = open_executor(tfl).run(x)
    assert want.sum() > 0
    np.testing.assert_array_equal(got, want)


def test_finetune_data_reshapes_flat_frames_for_a_conv_model():
    """`finetune --data digits` on a conv bundle: the data set's flat 64-frames take the model's
    (1, 8, 8) shape, as `partition --calib digits` does; a size that does not fit is still refused."""
    from edge_sdfa.errors import DataError
    from edge_sdfa.finetune import load_data

    x, y = load_data("digits", 10, (1, 8, 8))
    assert x.shape[1:] == (10, 1, 8, 8) and len(x) == len(y) > 0
    with pytest.raises(DataError, match="the model expects"):
        load_data("digits", 10, (1, 9, 8))
