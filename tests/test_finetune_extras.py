"""The fine-tune's extras around the int8 rule (edge_sdfa/augment.py, finetune's schedule and
adaptive rehearsal): integer results worked out by hand, the bundle fields' validation, and the
same weights from every int8 kernel set."""
import copy
import json
import shutil

import numpy as np
import pytest

from edge_sdfa import augment
from edge_sdfa.bundle import read_bundle
from edge_sdfa.errors import BundleError, UserError
from edge_sdfa.finetune import DEFAULT_BUNDLE, DEFAULT_USER_BATCH, FinetuneConfig, epoch_lr
from edge_sdfa.manifest import Manifest

pytestmark = pytest.mark.unit


def test_shift_moves_the_image_and_fills_zeros():
    img = np.arange(1, 17, dtype=np.uint8).reshape(4, 4)
    x = np.stack([img, img])[None].reshape(1, 2, 16)          # one sample, T = 2, flat
    x = np.repeat(x, 40, axis=0)
    out = augment.shift_samples(x, (4, 4), 1, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.uint8
    def shifted(dy, dx):  # content moved down by dy, right by dx
        ref = np.zeros((4, 4), np.uint8)
        ref[max(dy, 0):4 + min(dy, 0), max(dx, 0):4 + min(dx, 0)] = \
            img[max(-dy, 0):4 + min(-dy, 0), max(-dx, 0):4 + min(-dx, 0)]
        return ref

    seen = set()
    for o in out.reshape(40, 2, 4, 4):
        assert np.array_equal(o[0], o[1])                     # the same shift at every step
        match = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if np.array_equal(o[0], shifted(dy, dx))]
        assert len(match) == 1, "not a shift of the image by at most 1 px"
        seen.add(match[0])
    assert len(seen) == 9                                     # every shift is drawn
    again = augment.shift_samples(x, (4, 4), 1, np.random.default_rng(0))
    assert np.array_equal(out, again)                         # seeded


def test_shift_of_channel_images_moves_only_the_last_two_axes():
    x = np.zeros((1, 1, 2 * 3 * 3), np.uint8)
    x[0, 0, 0 * 9 + 4] = 1                                    # channel 0, centre
    x[0, 0, 1 * 9 + 4] = 2                                    # channel 1, centre
    out = augment.shift_samples(x, (2, 3, 3), 1, np.random.default_rng(3)).reshape(2, 3, 3)
    (r0, c0), = np.argwhere(out[0] == 1)
    (r1, c1), = np.argwhere(out[1] == 2)
    assert (r0, c0) == (r1, c1)


def test_pull_is_the_integer_step_worked_out_by_hand():
    master0 = np.array([0, 100, -100, 300, 32767], np.int16)
    master = np.array([1000, 100, -300, -300, -32768], np.int16)
    m = augment.pull_fraction(0.1)                            # 6554 / 65536
    assert m == 6554
    out = augment.pull_master(master, master0, m)
    # delta 1000 -> 1000 * 6554 / 65536 = 100.006 -> 100; 0 -> 0; -200 -> -20.001 -> -20;
    # -600 -> -60.004 -> -60; -65535 -> -6553.9 -> -6554
    assert out.tolist() == [900, 100, -280, -240, -32768 + 6554]
    assert out.dtype == np.int16
    full = augment.pull_master(master, master0, augment.pull_fraction(1.0))
    assert np.array_equal(full, master0)


def test_pull_towards_keeps_w8_derived_from_the_master():
    from edge_sdfa.int8 import arith

    b = read_bundle(DEFAULT_BUNDLE)
    anchor = b.head()
    moved = [copy.copy(q) for q in anchor]
    rng = np.random.default_rng(1)
    for q in moved:
        if q.master is not None:
            q.master = np.clip(q.master.astype(np.int32) + rng.integers(-3000, 3000, q.master.shape),
                               -32768, 32767).astype(np.int16)
    out = augment.pull_towards(moved, anchor, augment.pull_fraction(0.5))
    for q, q0, q1 in zip(out, anchor, moved):
        if q.master is None:
            continue
        assert np.array_equal(q.w8, arith.w8_from_master(q.master))
        d_before = np.abs(q1.master.astype(np.int32) - q0.master)
        d_after = np.abs(q.master.astype(np.int32) - q0.master)
        assert np.all(d_after <= d_before) and d_after.sum() < 0.6 * d_before.sum()


def test_cosine_schedule():
    cfg = FinetuneConfig(epochs=11, lr=1.0, lr_schedule="cosine").resolved({})
    assert epoch_lr(cfg, 1) == pytest.approx(1.0)
    assert epoch_lr(cfg, 6) == pytest.approx(0.55)
    assert epoch_lr(cfg, 11) == pytest.approx(0.1)
    const = FinetuneConfig(epochs=11, lr=1.0).resolved({})
    assert {epoch_lr(const, e) for e in range(1, 12)} == {1.0}


def _manifest(finetune_fields: dict) -> dict:
    raw = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    raw["finetune"] = finetune_fields
    return raw


def test_bundle_fields_are_typed_and_bounded():
    ok = {"augment_shift": 1, "augment_copies": 2, "image_shape": [8, 8], "pull": 0.05, "rehearsal_max": 4.0,
          "rehearsal_trigger": 2.0, "augment_rehearsal": False, "lr_schedule": "cosine"}
    assert Manifest.from_dict(_manifest(ok)).finetune == ok
    bad = [
        {"image_shape": [8, 9]},                              # does not hold the 64 inputs
        {"image_shape": [64]},                                # not an image
        {"image_shape": [8, "8"]},
        {"augment_shift": 1},                                 # no image shape
        {"augment_shift": 9, "image_shape": [8, 8]},
        {"augment_shift": True, "image_shape": [8, 8]},
        {"pull": 1.5}, {"pull": -0.1}, {"pull": "0.1"},
        {"rehearsal_trigger": -1}, {"rehearsal_max": float("inf")},
        {"augment_rehearsal": 1}, {"lr_schedule": "step"},
    ]
    for fields in bad:
        with pytest.raises(BundleError, match="finetune"):
            Manifest.from_dict(_manifest(fields))


def test_augment_shift_needs_partition_0():
    raw = _manifest({"augment_shift": 1, "image_shape": [8, 8]})
    m = Manifest.from_dict(raw)
    assert m.partition == 0
    from edge_sdfa.manifest import _finetune

    with pytest.raises(BundleError, match="partition 0"):
        _finetune("m", {"augment_shift": 1, "image_shape": [8, 8]}, m.network, 1)


def test_bad_overrides_are_user_errors():
    with pytest.raises(UserError):
        FinetuneConfig(augment_shift=1).resolved({})          # no image shape
    with pytest.raises(UserError):
        FinetuneConfig(rehearsal_trigger=-1.0).resolved({})
    with pytest.raises(UserError):
        FinetuneConfig(lr_schedule="step").resolved({})


EXTRAS = {"augment_shift": 1, "augment_copies": 1, "image_shape": [8, 8], "augment_rehearsal": True,
          "pull": 0.05, "lr_schedule": "cosine", "rehearsal_max": 4.0, "rehearsal_trigger": 0.5}


def _extras_bundle(tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, out)
    raw = json.loads((out / "manifest.json").read_text())
    raw["finetune"] = {**raw["finetune"], **EXTRAS, "epochs": 3}
    (out / "manifest.json").write_text(json.dumps(raw))
    return out


def _final_weights(bundle, kernels, tmp_path):
    from edge_sdfa.backend import NumpyBackend
    from edge_sdfa.finetune import prepare, train

    backend = NumpyBackend(kernels=kernels)
    prep = prepare(bundle, str(DEFAULT_USER_BATCH), store=tmp_path / f"store-{kernels}-{bundle.name}")
    training = train(backend, prep)
    assert len(training.history) == prep.config.epochs
    return [q for q in backend.read_weights() if q.master is not None]


def test_extras_give_the_same_weights_on_every_kernel_set(tmp_path, ks):
    """Every extra on, a few epochs: the numpy reference and the kernel set under test end with the
    same integers (the extras act outside the kernels), and the extras change the result."""
    bundle = _extras_bundle(tmp_path)
    ref = _final_weights(bundle, "numpy", tmp_path)
    got = _final_weights(bundle, ks.NAME, tmp_path)
    for a, b in zip(ref, got):
        assert np.array_equal(a.master, b.master) and np.array_equal(a.w8, b.w8)
    plain = tmp_path / "plain"
    shutil.copytree(DEFAULT_BUNDLE, plain)
    raw = json.loads((plain / "manifest.json").read_text())
    raw["finetune"] = {**raw["finetune"], "epochs": 3}
    (plain / "manifest.json").write_text(json.dumps(raw))
    assert any(not np.array_equal(a.master, b.master) for a, b in zip(ref, _final_weights(plain, "numpy", tmp_path)))


@pytest.mark.parametrize("trigger", [2.0, 0.5])
def test_adaptive_rehearsal_doubles_only_after_an_epoch_past_the_trigger(tmp_path, trigger):
    from edge_sdfa.backend import NumpyBackend
    from edge_sdfa.finetune import prepare, train

    prep = prepare(DEFAULT_BUNDLE, str(DEFAULT_USER_BATCH), store=tmp_path / "store",
                   config=FinetuneConfig(epochs=12, rehearsal_trigger=trigger))
    assert prep.config.rehearsal_max == 4.0                      # the embedded bundle's default
    n_user, n_reh = len(prep.train_idx), prep.rehearsal_per_epoch
    n_max = min(len(prep.rehearsal[1]), 4 * n_user)
    training = train(NumpyBackend(kernels="numpy"), prep)
    updates = [training.history[0].updates] + [b.updates - a.updates for a, b in zip(training.history, training.history[1:])]
    bs = prep.config.batch_size
    doubled = 0
    for i, report in enumerate(training.history):
        assert updates[i] == -(-(n_user + n_reh) // bs)          # this epoch ran with n_reh rehearsal samples
        past = report.scores.holdout < training.before.holdout - trigger * prep.config.margin - 1e-9
        if past and n_reh < n_max:
            n_reh, doubled = min(2 * n_reh, n_max), doubled + 1
    if trigger == 0.5:
        assert doubled >= 1                                     # the default user's holdout does fall
