"""The bundle format: round trip, verification failures, safe archive extraction."""
import io
import json
import tarfile

import numpy as np
import pytest

from edge_sdfa import bundle as bm
from edge_sdfa import float_net as fn
from edge_sdfa.errors import BundleError
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import mlp

pytestmark = pytest.mark.unit


@pytest.fixture()
def small_bundle(tmp_path):
    spec = mlp([12, 8, 6, 3], time_steps=4)
    params = fn.init_params(spec, 0)
    qnet, _ = qn.quantize(spec, params, trainable={1, 2})
    rng = np.random.default_rng(0)
    hold = ((rng.random((10, 4, 12)) < 0.3).astype(np.uint8), rng.integers(0, 3, 10))
    reh = ((rng.random((6, 4, 12)) < 0.3).astype(np.uint8), rng.integers(0, 3, 6))
    path = bm.write_bundle(tmp_path / "b", spec, qnet, 1, model_id="m", version=3, holdout=hold,
                           rehearsal=reh, feedback_seed=42)
    return path, spec, qnet, hold


def test_round_trip(small_bundle):
    path, spec, qnet, hold = small_bundle
    b = bm.read_bundle(path)
    assert b.spec == spec and b.cut == 1 and b.version == 3 and b.feedback_seed == 42
    for a, c in zip(b.qnet, qnet):
        if c.w8 is not None:
            assert np.array_equal(a.w8, c.w8) and a.exp == c.exp
    assert b.qnet[0].master is None and b.qnet[1].master is not None
    x, y = b.holdout()
    assert np.array_equal(x, hold[0]) and np.array_equal(y, hold[1])
    assert b.rehearsal()[0].shape == (6, 4, 12)
    assert bm.info(path)["trainable_parameters"] == 8 * 6 + 6 * 3


def test_writing_is_deterministic(tmp_path, small_bundle):
    path, spec, qnet, hold = small_bundle
    again = bm.write_bundle(tmp_path / "again", spec, qnet, 1, model_id="m", version=3, holdout=hold,
                            rehearsal=bm.read_bundle(path).rehearsal(), feedback_seed=42)
    for name in ("head.npz", "frozen.npz", "holdout.npz"):
        assert (path / name).read_bytes() == (again / name).read_bytes()


@pytest.mark.parametrize("name", ["head.npz", "frozen.npz", "holdout.npz", "rehearsal.npz"])
def test_any_flipped_byte_is_rejected(small_bundle, name):
    path = small_bundle[0]
    data = bytearray((path / name).read_bytes())
    for pos in (0, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        (path / name).write_bytes(bytes(flipped))
        with pytest.raises(BundleError, match="checksum"):
            bm.read_bundle(path)
    (path / name).write_bytes(bytes(data))
    bm.read_bundle(path)


def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("change,match", [
    ({"format_version": 99}, "format version"),
    ({"runtime_abi": 7}, "ABI"),
    ({"format": "zip"}, "not an edge-sdfa"),
    ({"partition": 9}, "partition"),
])
def test_manifest_problems_are_rejected(small_bundle, change, match):
    path = small_bundle[0]
    _edit_manifest(path, **change)
    with pytest.raises(BundleError, match=match):
        bm.read_bundle(path)


def test_shapes_must_match_the_manifest(small_bundle):
    path = small_bundle[0]
    m = json.loads((path / "manifest.json").read_text())
    m["network"]["layers"][1]["out_features"] = 7
    m["network"]["layers"][2]["in_features"] = 7
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="layer 1 weights"):
        bm.read_bundle(path)


def test_missing_file_and_not_a_bundle(small_bundle, tmp_path):
    path = small_bundle[0]
    (path / "holdout.npz").unlink()
    with pytest.raises(BundleError, match="missing file holdout.npz"):
        bm.read_bundle(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        bm.read_bundle(tmp_path / "empty")
    with pytest.raises(BundleError, match="no such bundle"):
        bm.read_bundle(tmp_path / "nope")


def test_pickled_arrays_are_refused(small_bundle):
    path = small_bundle[0]
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))
    (path / "holdout.npz").write_bytes(buf.getvalue())
    m = json.loads((path / "manifest.json").read_text())
    m["files"]["holdout.npz"]["sha256"] = bm.sha256_file(path / "holdout.npz")
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="holdout.npz"):
        bm.read_bundle(path)


def test_tar_round_trip_and_escaping_members(small_bundle, tmp_path):
    path = small_bundle[0]
    tar = bm.pack_tar(path, tmp_path / "b.tar")
    b = bm.read_bundle(tar, workdir=tmp_path / "x")
    assert b.model_id == "m"
    for evil in ("../evil.txt", "/abs.txt"):
        bad = tmp_path / f"bad{len(evil)}.tar"
        with tarfile.open(bad, "w") as tf:
            info = tarfile.TarInfo(evil)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"bad"))
        with pytest.raises(BundleError, match="escapes"):
            bm.read_bundle(bad, workdir=tmp_path / f"w{len(evil)}")
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("manifest.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(BundleError, match="link"):
        bm.read_bundle(link, workdir=tmp_path / "wl")


def test_with_head_makes_a_new_revision(small_bundle, tmp_path):
    path = small_bundle[0]
    b = bm.read_bundle(path)
    head = [qn.QLayer(q.exp, q.w8.copy(), q.bias, q.master.copy()) for q in b.head()]
    head[0].master[0, 0] += 256
    out = bm.with_head(b, head, tmp_path / "cand")
    c = bm.read_bundle(out)
    assert c.revision == b.revision + 1
    assert int(c.qnet[1].master[0, 0]) == int(b.qnet[1].master[0, 0]) + 256
    assert (out / "frozen.npz").read_bytes() == (path / "frozen.npz").read_bytes()
    assert (out / "holdout.npz").read_bytes() == (path / "holdout.npz").read_bytes()


def test_signing_payload_ignores_the_signature(small_bundle):
    m = bm.read_manifest(small_bundle[0])
    assert bm.signing_payload(m) == bm.signing_payload({**m, "signature": {"value": "x"}})
    assert bm.signing_payload(m) != bm.signing_payload({**m, "version": 4})


def test_tar_with_one_top_folder_is_accepted(small_bundle, tmp_path):
    path = small_bundle[0]
    tar = tmp_path / "top.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(path, arcname="mybundle")
    with bm.open_bundle(tar) as b:
        assert b.model_id == "m" and b.path.exists()
        folder = b.path
    assert not folder.exists()


def test_open_bundle_removes_its_folder_when_reading_fails(small_bundle, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    path = small_bundle[0]
    m = json.loads((path / "manifest.json").read_text())
    m["files"]["head.npz"]["sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(m))
    tar = bm.pack_tar(path, tmp_path / "bad.tar")
    for read in (lambda: bm.read_bundle(tar), lambda: bm.open_bundle(tar).__enter__(), lambda: bm.info(tar)):
        with pytest.raises(BundleError, match="checksum"):
            read()
        assert list((tmp_path / "t").iterdir()) == []


def test_manifest_errors_name_the_field(small_bundle):
    path = small_bundle[0]
    original = (path / "manifest.json").read_text()
    for key, value, field in (("version", "3", "'version'"), ("quant", {"exps": {"1": 99}}, "'quant.exps.1'"),
                              ("files", {"head.npz": {"sha256": "0" * 64}}, "'files.head.npz.bytes'")):
        _edit_manifest(path, **{key: value})
        with pytest.raises(BundleError, match=field):
            bm.read_bundle(path)
        (path / "manifest.json").write_text(original)


def test_arrays_the_network_has_no_place_for_are_refused(small_bundle):
    path = small_bundle[0]
    arrays = bm.load_npz(path / "head.npz")
    arrays["l9.w8"] = np.zeros((2, 2), np.int8)
    bm._save_npz(path / "head.npz", arrays)
    m = json.loads((path / "manifest.json").read_text())
    m["files"]["head.npz"] = {"sha256": bm.sha256_file(path / "head.npz"), "bytes": (path / "head.npz").stat().st_size}
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="unexpected array 'l9.w8'"):
        bm.read_bundle(path)
