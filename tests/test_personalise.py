"""Personalisation that a user can trust: the user's test part never reaches training or selection,
accuracy_* is only ever measured on unseen data, --seed seeds training only, the rounding stream
continues across fine-tunes, and a poisoned fine-tune is not committed."""
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_sdfa.finetune import (DEFAULT_BUNDLE, DEFAULT_USER_BATCH, DEFAULT_USER_TEST, FinetuneConfig, finetune,
                                prepare)
from edge_sdfa.store import Store
from edge_sdfa.userdata import load_user_data, save_user_data

ROOT = Path(__file__).resolve().parent.parent


def _head(store):
    return (Store(store).active_dir() / "head.npz").read_bytes()


def _recording(monkeypatch):
    """Record every batch the backend trains on."""
    from edge_sdfa import finetune as ft

    seen = []
    real = ft.load_backend

    def load(name, **opts):
        be = real(name, **opts)
        update = be.update

        def rec(x, y, index):
            seen.append(np.swapaxes(np.asarray(x), 0, 1).copy())
            return update(x, y, index)

        be.update = rec
        return be

    monkeypatch.setattr(ft, "load_backend", load)
    return seen


@pytest.mark.integration
def test_test_samples_never_reach_training_or_selection(tmp_path, monkeypatch):
    """Every trained sample comes from the batch's train part; the test data changes nothing but
    the accuracy figure (same candidate, same epoch, same validation and holdout scores)."""
    seen = _recording(monkeypatch)
    batch, test = load_user_data(str(DEFAULT_USER_BATCH)), load_user_data(str(DEFAULT_USER_TEST))
    cfg = FinetuneConfig(epochs=6)
    a = finetune(None, str(DEFAULT_USER_BATCH), store=tmp_path / "a", test_data=str(DEFAULT_USER_TEST), config=cfg)
    trained = np.concatenate(seen).reshape(-1, *batch.x.shape[1:])
    prep = prepare(None, str(DEFAULT_USER_BATCH), store=tmp_path / "p", test_data=str(DEFAULT_USER_TEST), config=cfg)
    rows = lambda arr: {r.tobytes() for r in arr}
    test_rows, val_rows = rows(test.x), rows(batch.x[prep.val_idx])
    reh = prep.bundle.rehearsal()[0]
    allowed = rows(batch.x[prep.train_idx]) | rows(reh)
    assert not rows(trained) & test_rows, "a test sample was trained on"
    assert not rows(trained) & val_rows, "a validation sample was trained on"
    assert rows(trained) <= allowed
    assert not test_rows & (rows(batch.x))  # the files themselves are disjoint
    # a different (here: wrongly labelled) test set must not change what is selected or committed
    wrong = tmp_path / "wrong_test.npz"
    save_user_data(str(wrong), (test.y + 1) % 10, x=test.x)
    seen.clear()
    b = finetune(None, str(DEFAULT_USER_BATCH), store=tmp_path / "b", test_data=str(wrong), config=cfg)
    for key in ("best_epoch", "validation_after", "holdout_after", "committed"):
        assert a[key] == b[key], key
    assert _head(tmp_path / "a") == _head(tmp_path / "b")
    assert a["accuracy_after"] != b["accuracy_after"]


def test_benchmark_split_is_disjoint_and_holdout_has_its_own_images():
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import personalise as bench
    finally:
        sys.path.pop(0)
    from host_tools.make_embedded import digit_pools

    pools = digit_pools(0)
    assert not set(pools["holdout"]) & set(pools["user"])
    assert not (set(pools["holdout"]) | set(pools["user"])) & set(pools["train"])
    y = pools["labels"][pools["user"]]
    for seed in range(3):
        parts = bench.user_parts({"y": y}, seed)
        bench.check_disjoint(parts, pools["user"], pools["holdout"])
        assert len(parts["train"]) == 100 and len(parts["val"]) == 40
    # and the check does fail on a leak
    leaky = dict(parts, val=np.concatenate([parts["val"], parts["test"][:1]]))
    with pytest.raises(AssertionError):
        bench.check_disjoint(leaky, pools["user"])


@pytest.mark.integration
def test_no_test_data_means_no_accuracy_figure(tmp_path):
    report = finetune(None, str(DEFAULT_USER_BATCH), store=tmp_path / "s", config=FinetuneConfig(epochs=3))
    assert report["accuracy_before"] is None and report["accuracy_after"] is None
    assert "no test data" in report["accuracy_note"]
    assert report["validation_after"] is not None and report["user_test_samples"] == 0


@pytest.mark.integration
def test_seed_moves_training_only_and_the_split_has_its_own_seed(tmp_path):
    p0 = prepare(None, str(DEFAULT_USER_BATCH), store=tmp_path / "a", config=FinetuneConfig(seed=0))
    p1 = prepare(None, str(DEFAULT_USER_BATCH), store=tmp_path / "b", config=FinetuneConfig(seed=5))
    p2 = prepare(None, str(DEFAULT_USER_BATCH), store=tmp_path / "c", config=FinetuneConfig(split_seed=5))
    assert np.array_equal(p0.val_idx, p1.val_idx)
    assert not np.array_equal(p0.val_idx, p2.val_idx)


@pytest.mark.integration
def test_rounding_counter_continues_across_finetunes(tmp_path):
    store = tmp_path / "s"
    cfg = FinetuneConfig(epochs=2)
    first = finetune(None, store=store, config=cfg)
    assert first["rounding_offset"] == 0
    second = finetune(None, store=store, config=cfg)
    assert second["rounding_offset"] == first["updates"]
    assert Store(store).rounding_counter() == first["updates"] + second["updates"]


@pytest.mark.integration
def test_poisoned_finetune_with_shuffled_labels_and_huge_lr_is_not_committed(tmp_path):
    """Shuffled labels and 1000x the bundle's learning rate, the bundle's full schedule."""
    store = tmp_path / "store"
    Store.init(store, DEFAULT_BUNDLE)
    before = _head(store)
    data = load_user_data(str(DEFAULT_USER_BATCH))
    path = tmp_path / "poison.npz"
    save_user_data(str(path), np.random.default_rng(0).permutation(data.y), x=data.x)
    from edge_sdfa.bundle import read_manifest

    lr = 1000.0 * float(read_manifest(DEFAULT_BUNDLE)["finetune"]["lr"])
    report = finetune(store, str(path), test_data=str(DEFAULT_USER_TEST), config=FinetuneConfig(lr=lr))
    assert report["committed"] is False and report["reasons"]
    assert _head(store) == before
