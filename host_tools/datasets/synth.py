"""Small synthetic data sets written in each exact on-disk layout: for tests and benchmarks.

The events are random (seeded); only the formats are real. ``write_*`` return what they wrote so a
test can compare it with what the readers give back.
"""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np

from . import formats
from edge_sdfa.binning import EVENT_DTYPE, make_events


def random_events(rng: np.random.Generator, n: int, hw: tuple[int, int], duration_us: int = 300_000,
                  dtype=EVENT_DTYPE) -> np.ndarray:
    t = np.sort(rng.integers(0, duration_us, n))
    return make_events(t, rng.integers(0, hw[1], n), rng.integers(0, hw[0], n), rng.integers(0, 2, n))


def write_atis_tree(root: str, parts: dict[str, list[str]], n_per_class: int, hw=(34, 34), seed=0,
                    events=(50, 400)) -> dict[str, np.ndarray]:
    """``root/<part>/<class>/<k>.bin`` for every part and class; returns {path: events}."""
    rng = np.random.default_rng(seed)
    written = {}
    for part, classes in parts.items():
        for cls in classes:
            d = os.path.join(root, part, cls) if part else os.path.join(root, cls)
            os.makedirs(d, exist_ok=True)
            for k in range(n_per_class):
                ev = random_events(rng, int(rng.integers(*events)), hw)
                p = os.path.join(d, f"{k:05d}.bin")
                with open(p, "wb") as f:
                    f.write(formats.encode_nmnist_bin(ev))
                written[p] = ev
    return written


def write_nmnist(root: str, n_per_class: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    digits = [str(d) for d in range(10)]
    return write_atis_tree(root, {"Train": digits, "Test": digits}, n_per_class, seed=seed)


def write_shd(path: str, n: int, speakers=(0, 1, 2), seed: int = 0, events=(20, 300),
              chunk: int = 1000) -> dict:
    """An SHD-layout HDF5 file (vlen float32 times in s, vlen uint16 units)."""
    import h5py

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, n).astype(np.uint16)
    spk = np.asarray(speakers)[rng.integers(0, len(speakers), n)].astype(np.uint16)
    keep_times, keep_units = [], []
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float32))
        units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            tb = np.empty(k, object)
            ub = np.empty(k, object)
            for j in range(k):
                m = int(rng.integers(*events))
                tb[j] = np.sort(rng.random(m) * 1.3).astype(np.float32)
                ub[j] = rng.integers(0, 700, m).astype(np.uint16)
            times[start:start + k] = tb
            units[start:start + k] = ub
            if n <= 10_000:
                keep_times += list(tb)
                keep_units += list(ub)
        f.create_dataset("labels", data=labels)
        f.create_dataset("extra/speaker", data=spk)
        f.create_dataset("extra/keys", data=np.array([b"zero", b"one"]))
    return {"labels": labels.astype(np.int64), "speakers": spk.astype(np.int64),
            "times": keep_times, "units": keep_units}


def write_dvs_npy(root: str, recordings=("user01_fluorescent", "user02_led"), test=("user24_natural",),
                  labels=range(11), seed: int = 0) -> dict[str, np.ndarray]:
    """tonic's preprocessed layout; every .npy is [n, 4] float64 columns x, y, p, t(ms)."""
    rng = np.random.default_rng(seed)
    written = {}
    for part, recs in (("ibmGestureTrain", recordings), ("ibmGestureTest", test)):
        for rec in recs:
            d = os.path.join(root, part, rec)
            os.makedirs(d, exist_ok=True)
            for lab in labels:
                n = int(rng.integers(100, 600))
                t_ms = np.sort(rng.integers(0, 6_000_000, n)) / 1000.0
                arr = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), t_ms], 1)
                p = os.path.join(d, f"{lab}.npy")
                np.save(p, arr.astype(np.float64))
                written[p] = arr
    return written


def write_dvs_aedat(root: str, recordings=("user01_fluorescent", "user25_led"), gestures: int = 3,
                    seed: int = 0, trial_lists: bool = True) -> dict:
    """IBM layout: ``<rec>.aedat`` + ``<rec>_labels.csv`` (+ trials_to_train/test.txt)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    for rec in recordings:
        ev = random_events(rng, 3000, (128, 128), duration_us=gestures * 1_000_000 + 500_000)
        ev["t"] += 1_000_000  # recordings do not start at 0
        with open(os.path.join(root, rec + ".aedat"), "wb") as f:
            f.write(formats.encode_aedat3(ev, packet_size=700))
        rows = []
        for g in range(gestures):
            start = 1_000_000 + g * 1_000_000 + 100_000
            rows.append((int(rng.integers(1, 12)), start, start + 800_000))
        with open(os.path.join(root, rec + "_labels.csv"), "w") as f:
            f.write("class,startTime_usec,endTime_usec\n")
            for r in rows:
                f.write(f"{r[0]},{r[1]},{r[2]}\n")
        out[rec] = (ev, rows)
    if trial_lists:
        users = {rec: int(rec[4:6]) for rec in recordings}
        with open(os.path.join(root, "trials_to_train.txt"), "w") as f:
            f.writelines(f"{r}.aedat\n" for r, u in users.items() if u < 24)
        with open(os.path.join(root, "trials_to_test.txt"), "w") as f:
            f.writelines(f"{r}.aedat\n" for r, u in users.items() if u >= 24)
    return out


def write_braille(path: str, reps: int = 4, seed: int = 0, length=(20, 30), as_dict: bool = False) -> list:
    """The reference's pickle layout: 27 letters x reps records with taxel_data [L, 12] uint8."""
    rng = np.random.default_rng(seed)
    records = []
    for letter in range(27):
        for _ in range(reps):
            L = int(rng.integers(*length))
            base = np.linspace(0, 1, L)[:, None] * (letter + 1) * 4
            taxel = np.clip(200 - base - rng.integers(0, 20, (L, 12)), 0, 255).astype(np.uint8)
            records.append({"taxel_data": taxel, "letter": "Space" if letter == 0 else chr(64 + letter)})
    obj = {i: r for i, r in enumerate(records)} if as_dict else records
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f)
    return records


def write_idx_pair(root: str, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    os.makedirs(root, exist_ok=True)
    ext = ".gz" if gz else ""
    formats.write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images.astype(np.uint8))
    formats.write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels.astype(np.uint8))
