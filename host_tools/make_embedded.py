"""Build the embedded default: a small pre-trained SNN bundle and a shifted "new user".

Real data: scikit-learn's bundled 8x8 digits, rate-coded over T=10 steps. The model is an MLP
64-128-128-10 of LIF neurons pretrained with BPTT on the digits' train split, quantised to int8;
the first layer is frozen and the last two are the trainable head.

The new user is a fixed shift of held-out test digits that the model never saw: every image is
rotated by 25 degrees, its strokes thickened (a horizontal 2-pixel grey dilation), and sensor noise
added (10% of pixels replaced by a value in 4..12), seeded. The user's fine-tuning batch is 10
samples per class; the user's other shifted digits are kept as the user's test set. The original
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
CUT = 1
HOLDOUT = 200
REHEARSAL = 300
USER_BATCH_PER_CLASS = 10
SHIFT = {"rotation_deg": 25.0, "dilate": (1, 2), "noise_fraction": 0.1, "noise_range": (4.0, 12.0), "seed": 5}
FINETUNE_DEFAULTS = {"epochs": 30, "batch_size": 16, "lr": 1.0, "rehearsal_ratio": 1.0, "mode": "online"}


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


def build(out_dir: Path, seed: int = 0) -> dict:
    images, labels = load_digit_images()
    train_idx, test_idx = split_indices(labels, "train"), split_indices(labels, "test")
    rng = np.random.default_rng(seed)
    test_idx = rng.permutation(test_idx)
    hold_idx, user_idx = test_idx[:HOLDOUT], test_idx[HOLDOUT:]

    spec = mlp(list(SIZES), time_steps=TIME_STEPS)
    x_train = rate_code(images[train_idx], TIME_STEPS, seed=seed + 1)
    params = fn.init_params(spec, seed)
    params, history = train(spec, params, x_train, labels[train_idx],
                            TrainConfig(method="bptt", epochs=40, batch_size=32, lr=3e-3, seed=seed), progress=True)
    trainable = set(range(CUT, len(spec.layers)))
    qnet, _ = qn.quantize(spec, params, trainable=trainable)

    x_hold = rate_code(images[hold_idx], TIME_STEPS, seed=seed + 2)
    reh_idx = rng.choice(len(train_idx), REHEARSAL, replace=False)
    x_reh = rate_code(images[train_idx[reh_idx]], TIME_STEPS, seed=seed + 4)

    shifted = shift_user(images[user_idx], **SHIFT)
    y_user = labels[user_idx]
    batch_sel = np.concatenate([np.flatnonzero(y_user == c)[:USER_BATCH_PER_CLASS] for c in range(10)])
    test_sel = np.setdiff1d(np.arange(len(y_user)), batch_sel)
    x_user = rate_code(shifted, TIME_STEPS, seed=seed + 3)

    out_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = out_dir / "default_bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    write_bundle(bundle_dir, spec, qnet, CUT, model_id="digits-mlp-lif", version=1,
                 holdout=(x_hold, labels[hold_idx]), rehearsal=(x_reh, labels[train_idx[reh_idx]]),
                 feedback_seed=seed + 1234, finetune_defaults=FINETUNE_DEFAULTS,
                 metadata={"source": "sklearn digits, rate-coded", "made_by": "make embedded",
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
