"""Build the embedded default: a small pre-trained SNN bundle and a shifted "new user".

Real data: scikit-learn's bundled 8x8 digits, rate-coded over T=10 steps. The model is an MLP
64-128-128-10 of LIF neurons pretrained on the digits' train split with the device's own rule (float
SDFA online, with the bundle's feedback matrices), quantised to int8; all three layers are trainable.
Pretraining with the device's feedback matrices is what lets the device train the hidden layers:
forward weights pretrained with BPTT are not aligned with the random feedback, and SDFA updates of
their hidden layers then mostly cause forgetting (docs/personalisation.md).

The new user is a fixed shift of held-out test digits that the model never saw: every image is
rotated by 25 degrees, its strokes thickened (a horizontal 2-pixel grey dilation), and sensor noise
added (10% of pixels replaced by a value in 4..12), seeded. The user's fine-tuning batch is 10
+ 4 samples per class (the device splits them 10 train / 4 validation); the user's other shifted
digits are the user's test set, never seen by training or selection. The original
task's holdout (200 other test digits, unshifted) and a rehearsal buffer of 300 training digits
ship in the bundle.

    python -m host_tools.make_embedded [--out edge_sdfa/data] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.bundle import write_bundle
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import mlp
from edge_sdfa.train import TrainConfig, accuracy, train
from edge_sdfa.userdata import save_user_data
from host_tools.datasets.digits import load_digit_images, rate_code, split_indices

TIME_STEPS = 10
SIZES = (64, 128, 128, 10)
CUT = 0                    # every layer trainable on the device
HOLDOUT = 200
REHEARSAL = 300
USER_BATCH_PER_CLASS = 14  # 10 train + 4 validation (the device's val_fraction 0.3)
PRETRAIN = {"method": "sdfa_online", "epochs": 40, "batch_size": 32, "lr": 3e-3}
FEEDBACK_SEED_OFFSET = 1234
SHIFT = {"rotation_deg": 25.0, "dilate": (1, 2), "noise_fraction": 0.1, "noise_range": (4.0, 12.0), "seed": 5}
# adaptive rehearsal (up to 4 rehearsal samples per user sample, doubling after an epoch whose holdout fell by
# more than 2 margins) chosen on the digit users' validation parts: docs/personalisation.md
FINETUNE_DEFAULTS = {"epochs": 30, "batch_size": 8, "lr": 0.6, "rehearsal_ratio": 1.0, "mode": "exact",
                     "rehearsal_max": 4.0, "rehearsal_trigger": 2.0}


def shift_user(images: np.ndarray, rotation_deg: float, dilate, noise_fraction: float, noise_range, seed: int) -> np.ndarray:
    """The new user's writing and sensor: rotation, thicker strokes, noise (deterministic)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.empty_like(images, dtype=np.float32)
    for i, img in enumerate(images):
        b = ndimage.rotate(img, rotation_deg, reshape=False, order=1, mode="constant")
        b = np.maximum(b, ndimage.grey_dilation(b, size=tuple(dilate)))
        b = np.clip(b, 0, 16)
        noisy = rng.random(b.shape) < noise_fraction
        b = np.where(noisy, np.maximum(b, rng.uniform(*noise_range, size=b.shape)), b)
        out[i] = b
    return out


def pretrain(spec, x_train: np.ndarray, y_train: np.ndarray, seed: int = 0, method: str | None = None):
    """The float model: trained from scratch with the device's rule and feedback seed (``method``
    overrides the rule, e.g. ``bptt`` for the ablation)."""
    params = fn.init_params(spec, seed)
    cfg = dict(PRETRAIN, method=method or PRETRAIN["method"])
    return train(spec, params, x_train, y_train,
                 TrainConfig(seed=seed, feedback_seed=seed + FEEDBACK_SEED_OFFSET, **cfg), progress=True)


def digit_pools(seed: int = 0) -> dict:
    """Images and the disjoint index sets: ``train`` (pretraining), ``rehearsal`` (a subset of train),
    ``holdout`` (original task, test split) and ``user`` (the rest of the test split: the source
    images of every shifted user; never in the holdout)."""
    images, labels = load_digit_images()
    train_idx, test_idx = split_indices(labels, "train"), split_indices(labels, "test")
    rng = np.random.default_rng(seed)
    test_idx = rng.permutation(test_idx)
    reh = train_idx[rng.choice(len(train_idx), REHEARSAL, replace=False)]
    return {"images": images, "labels": labels, "train": train_idx, "rehearsal": reh,
            "holdout": test_idx[:HOLDOUT], "user": test_idx[HOLDOUT:]}


def user_partition(y: np.ndarray, per_class: int = USER_BATCH_PER_CLASS, seed: int | None = None):
    """Positions of the user's batch (``per_class`` samples of each class: the first ones, or a
    seeded draw) and of the user's test part (all the others)."""
    rng = None if seed is None else np.random.default_rng([seed, 4242])
    batch = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        batch.extend((idx if rng is None else rng.permutation(idx))[:per_class])
    batch = np.sort(np.asarray(batch, np.int64))
    return batch, np.setdiff1d(np.arange(len(y)), batch)


def build(out_dir: Path, seed: int = 0, *, method: str | None = None, cut: int = CUT,
          finetune_defaults: dict | None = None) -> dict:
    """Write ``default_bundle`` and the default user's batch and test files into ``out_dir``
    (``method``, ``cut`` and ``finetune_defaults`` vary the recipe for the ablation)."""
    pools = digit_pools(seed)
    images, labels = pools["images"], pools["labels"]
    train_idx, hold_idx, user_idx = pools["train"], pools["holdout"], pools["user"]

    spec = mlp(list(SIZES), time_steps=TIME_STEPS)
    x_train = rate_code(images[train_idx], TIME_STEPS, seed=seed + 1)
    params, history = pretrain(spec, x_train, labels[train_idx], seed, method)
    trainable = set(range(cut, len(spec.layers)))
    qnet, _ = qn.quantize(spec, params, trainable=trainable)

    x_hold = rate_code(images[hold_idx], TIME_STEPS, seed=seed + 2)
    x_reh = rate_code(images[pools["rehearsal"]], TIME_STEPS, seed=seed + 4)

    shifted = shift_user(images[user_idx], **SHIFT)
    y_user = labels[user_idx]
    batch_sel, test_sel = user_partition(y_user)
    x_user = rate_code(shifted, TIME_STEPS, seed=seed + 3)

    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "default_bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    write_bundle(bundle_dir, spec, qnet, cut, model_id="digits-mlp-lif", version=1,
                 holdout=(x_hold, labels[hold_idx]), rehearsal=(x_reh, labels[pools["rehearsal"]]),
                 feedback_seed=seed + FEEDBACK_SEED_OFFSET, finetune_defaults=finetune_defaults or FINETUNE_DEFAULTS,
                 metadata={"source": "sklearn digits, rate-coded", "pretrain": dict(PRETRAIN, method=method or PRETRAIN["method"]), "made_by": "make embedded",
                           "shift": {k: (list(v) if isinstance(v, tuple) else v) for k, v in SHIFT.items()}})
    save_user_data(str(out_dir / "default_user_batch.npz"), y_user[batch_sel], x=x_user[batch_sel])
    save_user_data(str(out_dir / "default_user_test.npz"), y_user[test_sel], x=x_user[test_sel])
    return {
        "float_train_accuracy": history[-1]["train_accuracy"],
        "float_holdout": accuracy(spec, params, x_hold, labels[hold_idx]),
        "int8_holdout": float(np.mean(qn.predict(spec, qnet, x_hold) == labels[hold_idx])),
        "int8_user_test": float(np.mean(qn.predict(spec, qnet, x_user[test_sel]) == y_user[test_sel])),
        "user_batch": int(len(batch_sel)), "user_test": int(len(test_sel)), "out": str(out_dir),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "edge_sdfa" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = build(Path(args.out), args.seed)
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
