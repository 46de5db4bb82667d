"""Every loader on small files written in its exact on-disk layout: events, labels, subjects,
splits, frames, and errors that name the file."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from edge_sdfa.errors import DataError
from host_tools.datasets import describe, iter_batches, load_arrays, open_dataset, synth
from edge_sdfa.binning import events_to_frames

pytestmark = pytest.mark.unit


# --- N-MNIST --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmnist")
    written = synth.write_nmnist(str(root), n_per_class=2)
    return str(root), written


def test_nmnist_events_labels_and_frames(nmnist_root):
    root, written = nmnist_root
    ds = open_dataset(f"nmnist:{root}?split=test")
    assert len(ds) == 20
    for s in ds:
        assert np.array_equal(s.events, written[s.source])
        assert s.label == int(os.path.basename(os.path.dirname(s.source)))
        assert s.subject is None
    x, y, subj = load_arrays(f"nmnist:{root}?split=test", time_steps=10)
    assert x.shape == (20, 10, 2312) and x.dtype == np.uint8 and subj is None
    assert y.tolist() == sorted(y.tolist())
    s0 = ds[0]
    assert np.array_equal(x[0], events_to_frames(s0.events, (34, 34), 10).reshape(10, 2312))
    info = describe(f"nmnist:{root}")
    assert info["samples"] == 20 and info["classes"] == 10 and info["subjects"] is None
    assert info["sensor"] == [34, 34, 2] and info["input_shape"] == [2312]
    mean = np.mean([len(e) for p, e in written.items() if "/Train/" in p])
    assert info["events_per_sample_mean"] == pytest.approx(mean)
    assert len(open_dataset(f"nmnist:{root}?split=all")) == 40


def test_nmnist_errors(nmnist_root, tmp_path):
    root, written = nmnist_root
    with pytest.raises(DataError, match="no such N-MNIST directory: /does/not/exist"):
        open_dataset("nmnist:/does/not/exist")
    with pytest.raises(DataError, match=str(tmp_path)):
        open_dataset(f"nmnist:{tmp_path}")
    bad = tmp_path / "Train" / "3"
    bad.mkdir(parents=True)
    (bad / "x.bin").write_bytes(b"\x01\x02\x03")
    ds = open_dataset(f"nmnist:{tmp_path}")
    with pytest.raises(DataError, match=r"Train/3/x\.bin.*truncated"):
        ds[0]
    with pytest.raises(DataError, match="unknown option 'frame'"):
        open_dataset(f"nmnist:{root}?frame=10")


# --- N-Caltech101 ---------------------------------------------------------------------------------
def test_ncaltech_split_and_frames(tmp_path):
    written = synth.write_atis_tree(str(tmp_path / "Caltech101"), {"": ["accordion", "airplanes", "ant"]},
                                    10, hw=(180, 240))
    tr = open_dataset(f"ncaltech101:{tmp_path}?split=train")
    te = open_dataset(f"ncaltech101:{tmp_path}?split=test")
    assert len(tr) == 24 and len(te) == 6
    assert not {e.source for e in tr.entries} & {e.source for e in te.entries}
    assert te.info()["class_names"] == ["accordion", "airplanes", "ant"]
    s = te[0]
    assert np.array_equal(s.events, written[s.source])
    x, y, _ = load_arrays(f"ncaltech101:{tmp_path}?split=test", time_steps=4)
    assert x.shape == (6, 4, 2, 180, 240)
    assert sorted(np.bincount(y).tolist()) == [2, 2, 2]


# --- SHD ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shd") / "hdspikes"
    root.mkdir()
    tr = synth.write_shd(str(root / "shd_train.h5"), 40, speakers=(0, 1, 2, 3), seed=1)
    te = synth.write_shd(str(root / "shd_test.h5"), 12, speakers=(4, 5), seed=2)
    return str(root.parent), tr, te


def test_shd_events_labels_speakers(shd_root):
    root, tr, te = shd_root
    ds = open_dataset(f"shd:{root}")
    assert len(ds) == 40
    for i in (0, 17, 39):
        s = ds[i]
        assert s.label == tr["labels"][i] and s.subject == tr["speakers"][i]
        assert np.array_equal(s.events["channel"], tr["units"][i])
        assert np.array_equal(s.events["t"], np.rint(tr["times"][i].astype(np.float64) * 1e6).astype(np.int64))
    x, y, subj = load_arrays(f"shd:{root}?split=test")
    assert x.shape == (12, 100, 700) and y.tolist() == te["labels"].tolist()
    assert subj.tolist() == te["speakers"].tolist()
    assert x[:, 0].sum() == 0  # the reference's digitize never uses bin 0
    assert int(x.sum()) == sum(len(u) for u in te["units"])  # all synthetic times < 1.4 s
    info = describe(f"shd:{root}?split=all")
    assert info["samples"] == 52 and info["subjects"] == 6 and info["sensor"] == [700]


def test_shd_subject_split(shd_root):
    root, tr, _ = shd_root
    x, y, subj = load_arrays(f"shd:{root}?subject=1,3")
    assert set(subj.tolist()) <= {1, 3} and len(y) == int(np.isin(tr["speakers"], [1, 3]).sum())
    _, _, subj = load_arrays(f"shd:{root}?split=all&exclude_subject=0,1,2,3")
    assert set(subj.tolist()) == {4, 5}


def test_shd_corrupt(tmp_path):
    p = tmp_path / "shd_train.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(DataError, match="shd_train.h5"):
        open_dataset(f"shd:{tmp_path}")
    with pytest.raises(DataError, match="shd_test.h5"):
        open_dataset(f"shd:{tmp_path}?split=test")
    good = tmp_path / "good.h5"
    synth.write_shd(str(good), 3)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="trunc.h5"):
        ds = open_dataset(f"shd:{trunc}")
        [ds[i] for i in range(len(ds))]


# --- DVS128 Gesture -------------------------------------------------------------------------------
def test_dvs_npy_layout(tmp_path):
    written = synth.write_dvs_npy(str(tmp_path))
    ds = open_dataset(f"dvsgesture:{tmp_path}")
    assert len(ds) == 22
    assert {(e.subject, e.condition) for e in ds.entries} == {(1, "fluorescent"), (2, "led")}
    s = ds[3]
    arr = written[s.source]
    assert s.label == int(os.path.basename(s.source)[:-4])
    assert np.array_equal(s.events["x"], arr[:, 0]) and np.array_equal(s.events["p"], arr[:, 2])
    assert np.array_equal(s.events["t"], np.rint(arr[:, 3] * 1000).astype(np.int64))
    x, y, subj = load_arrays(f"dvsgesture:{tmp_path}?split=test&downsample=4&frames=5")
    assert x.shape == (11, 5, 2, 32, 32) and set(subj.tolist()) == {24}
    assert len(open_dataset(f"dvsgesture:{tmp_path}?condition=led")) == 11
    info = describe(f"dvsgesture:{tmp_path}?split=all")
    assert info["subjects"] == 3 and info["conditions"] == ["fluorescent", "led", "natural"]
    assert info["sensor"] == [128, 128, 2] and info["classes"] == 11


def test_dvs_aedat_layout(tmp_path):
    recs = synth.write_dvs_aedat(str(tmp_path), recordings=("user01_fluorescent", "user02_lab", "user26_led"))
    tr = open_dataset(f"dvsgesture:{tmp_path}?split=train")
    te = open_dataset(f"dvsgesture:{tmp_path}?split=test")
    assert len(tr) == 6 and len(te) == 3
    for ds in (tr, te):
        for i, e in enumerate(ds.entries):
            rec = f"user{e.subject:02d}_{e.condition}"
            ev, rows = recs[rec]
            cls, start, end = rows[i % 3]
            s = ds[i]
            assert s.label == cls - 1
            assert np.array_equal(s.events, ev[(ev["t"] >= start) & (ev["t"] < end)])
    # without trial lists the official user split applies
    os.remove(tmp_path / "trials_to_train.txt")
    os.remove(tmp_path / "trials_to_test.txt")
    assert {e.subject for e in open_dataset(f"dvsgesture:{tmp_path}?split=test").entries} == {26}


def test_dvs_aedat_truncated(tmp_path):
    synth.write_dvs_aedat(str(tmp_path), recordings=("user01_led",))
    p = tmp_path / "user01_led.aedat"
    p.write_bytes(p.read_bytes()[:-13])
    ds = open_dataset(f"dvsgesture:{tmp_path}")
    with pytest.raises(DataError, match="user01_led.aedat.*truncated"):
        ds[0]


# --- Braille --------------------------------------------------------------------------------------
def test_braille_reference_preprocessing(tmp_path):
    p = str(tmp_path / "tutorial5_braille_spiking_data.pkl.gz")
    records = synth.write_braille(p, reps=4)
    x, y, subj = load_arrays(f"braille:{p}?split=all&encoding=analog")
    L = min(len(r["taxel_data"]) for r in records)
    data = np.stack([1.0 - r["taxel_data"][:L, [1, 2, 6, 10]] / 255 for r in records])
    flat = data.reshape(-1, 4)
    z = (data - flat.mean(0)) / (flat.std(0, ddof=1) + 1e-6)
    assert x.shape == (108, 2 * L, 4) and x.dtype == np.float32 and subj is None
    assert np.allclose(x, np.repeat(z, 2, axis=1), atol=1e-5)
    assert y.tolist() == [i // 4 for i in range(108)]
    xs, ys, _ = load_arrays(f"braille:{tmp_path}")  # directory, default delta spikes, train split
    assert xs.dtype == np.uint8 and xs.shape == (86, 2 * L, 8) and xs.sum() > 0
    order = np.arange(108)
    np.random.RandomState(0).shuffle(order)
    assert ys.tolist() == (order[:86] // 4).tolist()
    info = describe(f"braille:{p}")
    assert info["classes"] == 27 and info["class_names"][0] == "Space"


def test_braille_dict_layout(tmp_path):
    p = str(tmp_path / "b.pkl.gz")
    synth.write_braille(p, reps=2, as_dict=True)
    assert len(open_dataset(f"braille:{p}?split=all")) == 54


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/edge_sdfa_pwned",))


def test_braille_restricted_unpickler(tmp_path):
    p = tmp_path / "evil.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump([{"taxel_data": Evil()}], f)
    with pytest.raises(DataError, match="evil.pkl.gz.*not allowed"):
        open_dataset(f"braille:{p}")
    assert not os.path.exists("/tmp/edge_sdfa_pwned")
    t = tmp_path / "trunc.pkl.gz"
    good = tmp_path / "good.pkl.gz"
    synth.write_braille(str(good), reps=1)
    raw = gzip.decompress(good.read_bytes())
    t.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="trunc.pkl.gz.*truncated or corrupt"):
        open_dataset(f"braille:{t}")


# --- IDX ------------------------------------------------------------------------------------------
def test_idx_loader(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 28, 28)).astype(np.uint8)
    synth.write_idx_pair(str(tmp_path), "train", imgs, np.arange(12) % 10, gz=True)
    synth.write_idx_pair(str(tmp_path), "t10k", imgs[:4], np.arange(4), gz=False)
    x, y, _ = load_arrays(f"idx:{tmp_path}", 10)
    assert x.shape == (12, 10, 2312) and y.tolist() == (np.arange(12) % 10).tolist()
    x2, _, _ = load_arrays(f"idx:{tmp_path}/train-images-idx3-ubyte.gz", 10)
    assert np.array_equal(x, x2)
    xr, yr, _ = load_arrays(f"idx:{tmp_path}?split=test&encoding=rate", 6)
    assert xr.shape == (4, 6, 784) and yr.tolist() == [0, 1, 2, 3]
    raw = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        open_dataset(f"idx:{tmp_path}?split=test")


# --- batches --------------------------------------------------------------------------------------
def test_iter_batches_matches_load_arrays(shd_root):
    root, _, _ = shd_root
    x, y, _ = load_arrays(f"shd:{root}", time_steps=20)
    got = list(iter_batches(f"shd:{root}", 16, time_steps=20))
    assert [len(b[1]) for b in got] == [16, 16, 8]
    assert np.array_equal(np.concatenate([b[0] for b in got]), x)
    assert np.array_equal(np.concatenate([b[1] for b in got]), y)
    xs, ys, ss = next(iter_batches(f"shd:{root}?subject=2", 4, with_subject=True))
    assert set(ss.tolist()) == {2}


def test_bad_specs():
    for spec, msg in [("foo:/x", "unknown data set kind 'foo'"), ("nmnist", "needs a path"),
                      ("digits:/x", "takes no path"), ("digits?split=val", "split='val'"),
                      ("digits?frames=abc", "not an integer"), ("digits?mode=max", "mode='max'")]:
        with pytest.raises(DataError, match=msg):
            load_arrays(spec)
