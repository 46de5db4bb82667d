"""The bad-input corpus (issue 14): every case ends in exit code 2 and one ``error:`` line, no
traceback, no file written outside the command's output, no temporary folder left behind, and a
store that existed is byte-identical afterwards. CLI cases run in-process through
``edge_sdfa.cli.main``; the memory bombs run in a subprocess under an address-space limit."""
from __future__ import annotations

import errno
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdfa import bundle as bm
from edge_sdfa import finetune as ft
from edge_sdfa import float_net as fn
from edge_sdfa import userdata
from edge_sdfa.cli import main as cli_main
from edge_sdfa.errors import BundleError, DataError, os_error_message
from edge_sdfa.int8 import net as qn
from edge_sdfa.manifest import MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, Manifest
from edge_sdfa.spec import mlp
from edge_sdfa.store import FileOps, Store

ROOT = Path(__file__).resolve().parents[1]
T, IN, CLASSES = 4, 12, 3


# ---------------------------------------------------------------------------------------------
# fixtures: a tiny real bundle, matching user data, an isolated home and temp folder


def make_bundle(out: Path, version: int = 1) -> Path:
    spec = mlp([IN, 8, 6, CLASSES], time_steps=T)
    qnet, _ = qn.quantize(spec, fn.init_params(spec, 0), trainable={1, 2})
    rng = np.random.default_rng(0)
    hold = ((rng.random((10, T, IN)) < 0.3).astype(np.uint8), rng.integers(0, CLASSES, 10))
    reh = ((rng.random((6, T, IN)) < 0.3).astype(np.uint8), rng.integers(0, CLASSES, 6))
    return bm.write_bundle(out, spec, qnet, 1, model_id="bad-inputs", version=version, holdout=hold,
                           rehearsal=reh, feedback_seed=7, finetune_defaults={"epochs": 1, "batch_size": 4})


def make_user_data(out: Path, n: int = 12, shape=(T, IN)) -> Path:
    rng = np.random.default_rng(1)
    userdata.save_user_data(str(out), y=rng.integers(0, CLASSES, n), x=(rng.random((n, *shape)) < 0.3))
    return out


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """A bundle, user data, and a sandbox: default store under ``home``, temp files under ``tmp``."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("EDGE_SDFA_HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    b = make_bundle(inputs / "bundle")
    data = make_user_data(inputs / "user.npz")
    return {"root": tmp_path, "home": home, "tmp": tmp, "bundle": b, "data": data, "in": inputs,
            "listing": sorted(os.listdir(tmp_path))}


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err


def tree(path: Path) -> dict:
    """Every file and folder under ``path`` with its mode and bytes (links by target)."""
    out = {}
    if not os.path.lexists(path):
        return out
    for p in sorted(Path(path).rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", p.stat().st_mode)
        else:
            out[rel] = ("file", p.stat().st_mode, p.read_bytes())
    return out


def sandbox_clean(w) -> None:
    """Nothing new outside the inputs: no store under home, no temp folder left, nothing in the
    working directory but a store the test made itself."""
    assert not w["home"].exists(), sorted(tree(w["home"]))[:5]
    assert sorted(set(os.listdir(w["root"])) - {"store"}) == w["listing"]
    assert list(w["tmp"].iterdir()) == [], list(w["tmp"].iterdir())


def edit_manifest(bundle: Path, change) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def set_path(m: dict, dotted: str, value) -> None:
    *parents, last = dotted.split("/" if "/" in dotted else ".")
    key = lambda obj, k: int(k) if isinstance(obj, list) else k
    for k in parents:
        m = m[key(m, k)]
    m[key(m, last)] = value


# ---------------------------------------------------------------------------------------------
# manifests


MANIFEST_CASES = {
    "quant is a list": ("quant", [], "quant"),
    "frozen is a string": ("frozen", "npz", "frozen"),
    "file entry is a string": ("files", {"head.npz": "x"}, "files"),
    "partition is a word": ("partition", "one", "partition"),
    "partition outside": ("partition", 9, "partition"),
    "exponent 10^6": ("quant.exps.1", 10 ** 6, "quant.exps.1"),
    "exponent float": ("quant.exps.2", 3.0, "quant.exps.2"),
    "version string": ("version", "2", "version"),
    "version float": ("version", 1.5, "version"),
    "version bool": ("version", True, "version"),
    "version zero": ("version", 0, "version"),
    "revision negative": ("revision", -1, "revision"),
    "feedback seed negative": ("feedback_seed", -1, "feedback_seed"),
    "model id empty": ("model_id", "", "model_id"),
    "model id number": ("model_id", 5, "model_id"),
    "format version 99": ("format_version", 99, "format version"),
    "format version string": ("format_version", "1", "format version"),
    "abi 7": ("runtime_abi", 7, "ABI"),
    "wrong bytes": ("files/head.npz/bytes", 12, "head.npz"),
    "bytes bool": ("files/head.npz/bytes", True, "bytes"),
    "bytes huge": ("files/head.npz/bytes", 1 << 40, "bytes"),
    "sha not hex": ("files/head.npz/sha256", "zz", "sha256"),
    "in_features string": ("network.layers.0.in_features", "12", "in_features"),
    "neuron tau nan": ("network.layers.1.neuron.tau", float("nan"), "tau"),
    "neuron kind": ("network.layers.1.neuron.kind", "izhikevich", "kind"),
    "layer type": ("network.layers.1.type", "lstm", "type"),
    "time steps huge": ("network.time_steps", 10 ** 9, "time_steps"),
    "input shape huge": ("network.input_shape", [1 << 30], "input_shape"),
    "finetune lr negative": ("finetune.lr", -1, "finetune.lr"),
    "finetune epochs string": ("finetune.epochs", "3", "finetune.epochs"),
    "finetune unknown": ("finetune.bogus", 1, "finetune.bogus"),
    "frozen file missing": ("frozen.file", "nope.npz", "frozen.file"),
    "frozen format none": ("frozen.format", "none", "frozen.format"),
    "signature not strings": ("signature", {"value": 3}, "signature"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifest_fields(world, capsys, case):
    key, value, fragment = MANIFEST_CASES[case]
    edit_manifest(world["bundle"], lambda m: set_path(m, key, value))
    before = tree(world["in"])
    code, out, err = run(capsys, "info", str(world["bundle"]))
    assert_one_line_error(code, err, fragment)
    code, out, err = run(capsys, "finetune", str(world["bundle"]), "--data", str(world["data"]), "--quiet")
    assert_one_line_error(code, err, fragment)
    assert tree(world["in"]) == before
    sandbox_clean(world)


def test_file_names_must_be_plain(world):
    for name in ("../x.npz", "/etc/passwd", ".hidden", "a/b.npz", "manifest.json", "x" * 100):
        m = json.loads((world["bundle"] / "manifest.json").read_text())
        m["files"][name] = dict(m["files"]["head.npz"])
        with pytest.raises(BundleError, match="plain file name"):
            Manifest.from_dict(m)


@pytest.mark.parametrize("text,fragment", [
    (b"[" * 100_000 + b"]" * 100_000, "nested 100000 deep"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested 100000 deep"),
    (b" " * (MAX_MANIFEST_BYTES + 1), "more than the limit"),
    (b'{"format": "edge-sdfa-bundle", "format": "x"}', "duplicate key"),
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b"[]", "not an edge-sdfa bundle manifest"),
])
def test_unparseable_manifests(world, capsys, text, fragment):
    (world["bundle"] / "manifest.json").write_bytes(text)
    code, out, err = run(capsys, "info", str(world["bundle"]))
    assert_one_line_error(code, err, fragment)
    sandbox_clean(world)


def test_depth_limit_is_exact():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    from edge_sdfa.manifest import json_depth, parse_json

    assert json_depth(ok) == MAX_JSON_DEPTH and json_depth('"[[[["') == 0
    parse_json(ok.encode(), "x")
    with pytest.raises(BundleError, match="nested"):
        parse_json(("[" + ok + "]").encode(), "x")


def test_manifest_round_trip(world):
    m = bm.load_manifest(world["bundle"])
    assert Manifest.from_dict(m.to_dict()) == m
    assert m.to_dict() == json.loads((world["bundle"] / "manifest.json").read_text())


def test_exponent_overflow_is_caught_before_a_store_exists(world, capsys):
    """10^6 is out of range; 24 is in range but puts a threshold of 1000 outside int32."""
    def big_threshold(m):
        m["network"]["layers"][1]["neuron"]["v_threshold"] = 1000.0
        m["quant"]["exps"]["1"] = 24

    edit_manifest(world["bundle"], big_threshold)
    code, out, err = run(capsys, "finetune", str(world["bundle"]), "--data", str(world["data"]), "--quiet")
    assert_one_line_error(code, err, "quant.exps.1", "int32")
    sandbox_clean(world)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                     max_leaves=6)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_manifests_give_a_bundle_or_a_bundle_error(tmp_path_factory, data):
    folder = _mutation_base(tmp_path_factory)
    original = json.loads((folder / "manifest.json").read_text())
    m = json.loads(json.dumps(original))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(m) if p]
        path = data.draw(st.sampled_from(paths))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_json)
    (folder / "manifest.json").write_text(json.dumps(m))
    try:
        b = bm.read_bundle(folder)
    except BundleError as exc:
        assert "\n" not in str(exc).strip()
    else:  # accepted: then it is self-consistent enough to run
        b.head()
        assert b.holdout()[0].shape[1:] == (b.spec.time_steps, *b.spec.input_shape)
    finally:
        (folder / "manifest.json").write_text(json.dumps(original))


def _mutation_base(factory) -> Path:
    base = factory.getbasetemp() / "mutation-bundle"
    if not base.exists():
        make_bundle(base)
    return base


# ---------------------------------------------------------------------------------------------
# archives


def _tar(out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(out, "w") as tf:
        for info, data in members:
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return out


def _bundle_members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    for f in sorted(bundle.iterdir()):
        info = tarfile.TarInfo(f.name)
        data = f.read_bytes()
        info.size = len(data)
        out.append((info, data))
    return out


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _extra(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


TAR_CASES = {
    "unlisted member": (lambda ms: ms + [_extra("notes.txt")], "does not list"),
    "symlink": (lambda ms: ms + [_special("evil", tarfile.SYMTYPE, "/etc/passwd")], "link or special"),
    "hard link": (lambda ms: ms + [_special("evil", tarfile.LNKTYPE, "head.npz")], "link or special"),
    "device": (lambda ms: ms + [_special("dev", tarfile.CHRTYPE)], "link or special"),
    "fifo": (lambda ms: ms + [_special("fifo", tarfile.FIFOTYPE)], "link or special"),
    "parent escape": (lambda ms: ms + [_extra("../evil.txt")], "escapes"),
    "absolute": (lambda ms: ms + [_extra("/abs.txt")], "escapes"),
    "sub folder": (lambda ms: ms + [_extra("sub/x.npz")], "sub-folders"),
    "duplicate": (lambda ms: ms + [ms[1]], "twice"),
    "missing file": (lambda ms: [m for m in ms if m[0].name != "holdout.npz"], "missing file holdout.npz"),
    "no manifest": (lambda ms: [m for m in ms if m[0].name != "manifest.json"], "no manifest.json"),
    "bigger than declared": (lambda ms: [(m if m[0].name != "head.npz" else _extra("head.npz", m[1] + b"\0" * 9))
                                         for m in ms], "the manifest declares"),
    "too many members": (lambda ms: ms + [_extra(f"f{i}.bin") for i in range(20_000)], "more than 18 archive members"),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_bad_tars(world, capsys, case):
    mutate, fragment = TAR_CASES[case]
    tar = _tar(world["in"] / "b.tar", mutate(_bundle_members(world["bundle"])))
    for argv in (("info", str(tar)), ("eval", str(tar)),
                 ("finetune", str(tar), "--data", str(world["data"]), "--quiet")):
        code, out, err = run(capsys, *argv)
        assert_one_line_error(code, err, fragment)
        sandbox_clean(world)
    assert not (world["root"] / "evil.txt").exists() and not (world["in"] / "evil.txt").exists()


def test_compressed_and_garbage_tars(world, capsys):
    gz = world["in"] / "b.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        for f in sorted(world["bundle"].iterdir()):
            tf.add(f, arcname=f.name)
    (world["in"] / "junk.tar").write_bytes(os.urandom(3000))
    for path in (gz, world["in"] / "junk.tar"):
        code, out, err = run(capsys, "info", str(path))
        assert_one_line_error(code, err, "tar archive")
        sandbox_clean(world)


def test_good_tars_leave_no_temp_folder(world, capsys):
    tar = bm.pack_tar(world["bundle"], world["in"] / "b.tar")
    code, out, err = run(capsys, "info", str(tar), "--json")
    assert code == 0, err and json.loads(out)["model_id"] == "bad-inputs"
    code, out, err = run(capsys, "eval", str(tar), "--data", str(world["data"]), "--json")
    assert code == 0, err
    sandbox_clean(world)
    store = world["root"] / "store"
    code, out, err = run(capsys, "finetune", str(tar), "--data", str(world["data"]), "--store", str(store),
                         "--quiet", "--json")
    assert code == 0, err
    assert list(world["tmp"].iterdir()) == []
    # a tar read without a workdir is cleaned up when the bundle goes away
    b = bm.read_bundle(tar)
    assert b.path.exists() and str(b.path).startswith(str(world["tmp"]))
    del b
    import gc

    gc.collect()
    assert list(world["tmp"].iterdir()) == []


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_tars_give_a_bundle_or_a_bundle_error(tmp_path_factory, data):
    base = _mutation_base(tmp_path_factory)
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    good = bm.pack_tar(base, work / "good.tar").read_bytes()
    raw = bytearray(good)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    else:
        name = data.draw(st.text(st.sampled_from("ab./_-x"), min_size=1, max_size=12))
        typ = data.draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                         tarfile.CHRTYPE, tarfile.FIFOTYPE]))
        ms = _bundle_members(base)
        info = tarfile.TarInfo(name)
        info.type = typ
        payload = b"z" * data.draw(st.integers(0, 600)) if typ == tarfile.REGTYPE else None
        info.size = len(payload) if payload else 0
        at = data.draw(st.integers(0, len(ms)))
        raw = bytearray(_tar(work / "m.tar", ms[:at] + [(info, payload)] + ms[at:]).read_bytes())
    tar = work / "b.tar"
    tar.write_bytes(bytes(raw))
    before = set(Path(tempfile.gettempdir()).glob("edge-sdfa-bundle-*"))
    try:
        with bm.open_bundle(tar) as b:
            b.holdout()
    except BundleError as exc:
        assert "\n" not in str(exc).strip()
    assert set(Path(tempfile.gettempdir()).glob("edge-sdfa-bundle-*")) == before


# ---------------------------------------------------------------------------------------------
# arrays


def _npy_header(shape, descr="|u1", fortran=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    return buf.getvalue()


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


def _array(a) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=True)
    return buf.getvalue()


def write_bomb(path: Path, shape, extra: dict[str, bytes] | None = None, descr: str = "|u1") -> Path:
    """A deflated npz whose member ``x`` expands to prod(shape) zero bytes (1 GiB -> ~1 MB)."""
    nbytes = int(np.prod(shape)) * np.dtype(descr).itemsize
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, descr))
            chunk = bytes(64 << 20)
            left = nbytes
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
        for name, data in (extra or {}).items():
            zf.writestr(name + ".npy", data)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    n = (1 << 30) // (T * IN)
    return {"user": write_bomb(d / "user-bomb.npz", (n, T, IN), {"y": _array(np.zeros(4, np.int64))}), "n": n}


N_USER = 12
NPZ_CASES = {
    "format version 99": ({"x": _array(np.zeros((N_USER, T, IN), np.uint8)), "y": _array(np.zeros(N_USER, np.int64)),
                           "format_version": _array(np.int64(99))}, "format_version 99"),
    "x float": ({"x": _array(np.zeros((N_USER, T, IN), np.float32)), "y": _array(np.zeros(N_USER, np.int64))},
                "uint8"),
    "x wrong shape": ({"x": _array(np.zeros((N_USER, T, IN + 1), np.uint8)), "y": _array(np.zeros(N_USER, np.int64))},
                      "the model expects"),
    "y 2-D": ({"x": _array(np.zeros((N_USER, T, IN), np.uint8)), "y": _array(np.zeros((N_USER, 2), np.int64))},
              "y must be"),
    "y too short": ({"x": _array(np.zeros((N_USER, T, IN), np.uint8)), "y": _array(np.zeros(3, np.int64))}, "N = 3"),
    "pickled object": ({"x": _array(np.array([{"a": 1}], dtype=object)), "y": _array(np.zeros(1, np.int64))},
                       "pickles are refused"),
    "labels out of range": ({"x": _array(np.zeros((N_USER, T, IN), np.uint8)), "y": _array(np.full(N_USER, 9))},
                            "labels must be in 0..2"),
    "forged header": ({"x": _npy_header((N_USER, T, IN)) + b"\0" * 10, "y": _array(np.zeros(N_USER, np.int64))},
                      "truncated or forged"),
    "no arrays": ({}, "missing array 'y'"),
    "too many members": ({f"a{i}": _array(np.zeros(1)) for i in range(100)}, "more than the limit of 64"),
    "events offsets": ({"events_t": _array(np.zeros(5, np.int64)), "events_x": _array(np.zeros(5, np.int16)),
                        "events_y": _array(np.zeros(5, np.int16)), "events_p": _array(np.zeros(5, np.int8)),
                        "offsets": _array(np.array([0, 9, 5])), "y": _array(np.zeros(2, np.int64)),
                        "sensor": _array(np.array([3, 4]))}, "offsets"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_user_data(world, capsys, case):
    members, fragment = NPZ_CASES[case]
    data = _npz(world["in"] / "bad.npz", members)
    code, out, err = run(capsys, "finetune", str(world["bundle"]), "--data", str(data), "--quiet")
    assert_one_line_error(code, err, fragment)
    sandbox_clean(world)


@pytest.mark.parametrize("raw", [b"not a zip", b"PK\x03\x04" + b"\0" * 40, b""])
def test_unreadable_user_data(world, capsys, raw):
    (world["in"] / "bad.npz").write_bytes(raw)
    code, out, err = run(capsys, "finetune", str(world["bundle"]), "--data", str(world["in"] / "bad.npz"), "--quiet")
    assert_one_line_error(code, err, "bad.npz")
    sandbox_clean(world)


def test_budget_is_checked_from_headers(bombs):
    with pytest.raises(DataError, match="memory budget"):
        userdata.load_user_data(str(bombs["user"]))
    # the file is small: the refusal came from the zip directory and headers, not the data
    assert bombs["user"].stat().st_size < 4 << 20


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(descr=st.sampled_from(["|u1", "<i8", "<f4", "|O", "<U3", "|V8", "|b1", ">i2", "<c8", "[('a', '<i4')]"]),
       shape=st.lists(st.integers(-3, 1 << 40), min_size=0, max_size=4),
       fortran=st.booleans(), extra=st.integers(-20, 20), header=st.none() | st.binary(max_size=300))
def test_mutated_npz_headers_give_data_or_a_data_error(tmp_path_factory, descr, shape, fortran, extra, header):
    d = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    if header is None:
        text = "{'descr': %s, 'fortran_order': %s, 'shape': %r, }" % (
            descr if descr.startswith("[") else repr(descr), fortran, tuple(shape))
        hb = text.encode() + b" " * (-(len(text) + 11) % 64) + b"\n"
        raw = b"\x93NUMPY\x01\x00" + len(hb).to_bytes(2, "little") + hb
    else:
        raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    size = max(0, min(int(np.prod([max(s, 0) for s in shape] or [1])), 4096) + extra)
    path = _npz(d / "u.npz", {"x": raw + b"\1" * size, "y": _array(np.zeros(max(shape[:1] or [0]) % 50, np.int64))})
    try:
        userdata.load_user_data(str(path))
    except DataError as exc:
        assert "\n" not in str(exc).strip()


# ---------------------------------------------------------------------------------------------
# memory bombs, in a subprocess under an address-space limit


AS_LIMIT = 512 << 20   # the bombs expand to 1 GiB; the CLI itself runs in well under 400 MiB


def _limited(*argv, cwd: Path) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "EDGE_SDFA_HOME": str(cwd / "home"), "TMPDIR": str(cwd / "tmp")}
    (cwd / "tmp").mkdir(exist_ok=True)
    code = "import sys; from edge_sdfa.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          preexec_fn=limit, timeout=300)


def _child_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


@pytest.mark.integration
def test_npz_bomb_is_refused_under_a_memory_limit(world, bombs):
    proc = _limited("finetune", str(world["bundle"]), "--data", str(bombs["user"]), "--quiet", cwd=world["root"])
    assert_one_line_error(proc.returncode, proc.stderr, "memory budget")
    assert list((world["root"] / "tmp").iterdir()) == [] and not (world["root"] / "home").exists()
    proc = _limited("eval", str(world["bundle"]), "--data", str(bombs["user"]), cwd=world["root"])
    assert_one_line_error(proc.returncode, proc.stderr, "memory budget")


@pytest.mark.integration
def test_bundle_array_bomb_is_refused_under_a_memory_limit(world, bombs, tmp_path):
    """holdout.npz replaced by the 1 GiB bomb, with a manifest whose sha256 and size match it."""
    hold = world["bundle"] / "holdout.npz"
    hold.write_bytes(bombs["user"].read_bytes())
    edit_manifest(world["bundle"], lambda m: m["files"]["holdout.npz"].update(
        sha256=bm.sha256_file(hold), bytes=hold.stat().st_size))
    tar = bm.pack_tar(world["bundle"], tmp_path / "bomb.tar")
    for target in (world["bundle"], tar):
        proc = _limited("info", str(target), cwd=world["root"])
        assert_one_line_error(proc.returncode, proc.stderr, "memory budget")
        assert list((world["root"] / "tmp").iterdir()) == []


@pytest.mark.integration
def test_tar_bomb_is_refused_under_a_memory_limit(world, tmp_path):
    """A 1 GiB (sparse) member: refused from the archive's size and headers, nothing extracted."""
    members = _bundle_members(world["bundle"])
    tar = _tar(tmp_path / "bomb.tar", members)
    big = tarfile.TarInfo("huge.bin")
    big.size = 1 << 30
    with open(tar, "r+b") as f:            # replace the end-of-archive blocks with a huge member
        data = f.read()
        end = len(data) - 1024
        while data[end - 512:end] == b"\0" * 512:
            end -= 512
        f.seek(end)
        f.write(big.tobuf(format=tarfile.GNU_FORMAT))
        f.truncate(end + 512 + (1 << 30) + 1024)   # sparse: no disk space used
    proc = _limited("info", str(tar), cwd=world["root"])
    assert_one_line_error(proc.returncode, proc.stderr, "more than the bundle limit")
    small = tmp_path / "declared.tar"          # the same 1 GiB header in a small file, without the data
    raw = _tar(small, members).read_bytes()
    end = len(raw) - 1024
    while raw[end - 512:end] == b"\0" * 512:
        end -= 512
    small.write_bytes(raw[:end] + big.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024)
    proc = _limited("info", str(small), cwd=world["root"])
    assert_one_line_error(proc.returncode, proc.stderr, str(small))
    assert list((world["root"] / "tmp").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# read-only commands write nothing


def test_read_only_commands_write_nothing(world, capsys):
    store = world["root"] / "store"
    code, out, err = run(capsys, "finetune", str(world["bundle"]), "--data", str(world["data"]), "--store", str(store),
                         "--quiet")
    assert code == 0, err
    before, inputs = tree(store), tree(world["in"])
    for argv in (("eval", "--store", str(store), "--data", str(world["data"])), ("eval", str(store)),
                 ("eval", str(world["bundle"])), ("info", str(world["bundle"])), ("store", "status", "--store", str(store)),
                 ("eval", str(world["bundle"]), "--store", str(store))):
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, err)
        assert tree(store) == before and tree(world["in"]) == inputs
        sandbox_clean(world)


def test_eval_refuses_missing_stores_and_mismatched_bundles(world, capsys):
    typo = world["root"] / "TYPO"
    code, out, err = run(capsys, "eval", "--store", str(typo))
    assert_one_line_error(code, err, "no store at")
    assert not typo.exists()
    code, out, err = run(capsys, "store", "status", "--store", str(typo))
    assert_one_line_error(code, err, "not an edge-sdfa store")
    assert not typo.exists()
    # eval BUNDLE evaluates the bundle, never the default store, and creates none
    code, out, err = run(capsys, "eval", str(world["bundle"]), "--json")
    assert code == 0 and json.loads(out)["weights"] == "bundle"
    sandbox_clean(world)
    # a store holding another model (or version) is not reported for a bundle
    store = world["root"] / "store"
    Store.init(store, world["bundle"])
    other = make_bundle(world["in"] / "v2", version=2)
    before = tree(store)
    code, out, err = run(capsys, "eval", str(other), "--store", str(store))
    assert_one_line_error(code, err, "holds bad-inputs v1, not the bundle's bad-inputs v2")
    code, out, err = run(capsys, "eval", str(world["bundle"]), "--store", str(store), "--json")
    assert code == 0 and json.loads(out)["weights"] == "store"
    assert tree(store) == before


def test_finetune_validates_everything_before_creating_a_store(world, capsys):
    store = world["root"] / "store"
    bad = _npz(world["in"] / "bad.npz", NPZ_CASES["x wrong shape"][0])
    for argv in (("finetune", str(world["bundle"]), "--data", str(bad)),
                 ("finetune", str(world["bundle"]), "--data", str(world["data"]), "--test-data", str(bad)),
                 ("finetune", str(world["bundle"])),                                       # no data
                 ("finetune", str(world["in"] / "nope"), "--data", str(world["data"]))):
        code, out, err = run(capsys, *argv, "--store", str(store), "--quiet")
        assert_one_line_error(code, err)
        assert not store.exists()
        sandbox_clean(world)


def test_bad_data_leaves_an_existing_store_byte_identical(world, capsys):
    store = world["root"] / "store"
    Store.init(store, world["bundle"])
    before = tree(store)
    for members, fragment in NPZ_CASES.values():
        data = _npz(world["in"] / "bad.npz", members)
        code, out, err = run(capsys, "finetune", str(store), "--data", str(data), "--quiet")
        assert_one_line_error(code, err, fragment)
        assert tree(store) == before


# ---------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("argv,fragment", [
    (("--rehearsal-ratio", "-1"), "--rehearsal-ratio must be a finite number in [0, 100]"),
    (("--rehearsal-ratio", "nan"), "--rehearsal-ratio must be a finite number in [0, 100], got nan"),
    (("--rehearsal-ratio", "inf"), "--rehearsal-ratio"),
    (("--seed", "-1"), "--seed must be an integer in 0.."),
    (("--seed", "x"), "--seed"),
    (("--epochs", "-1"), "--epochs must be an integer in 0..10000"),
    (("--batch", "0"), "--batch must be an integer in 1..65536"),
    (("--lr", "0"), "--lr must be a finite number in (0, 1e+06]"),
    (("--lr", "nan"), "--lr"),
    (("--margin", "2"), "--margin must be a finite number in [0, 1]"),
    (("--mode", "fast"), "--mode must be one of online, exact"),
    (("--backend", "nope"), "unknown backend 'nope'"),
    (("--backend-opt", "foo=1"), "backend 'numpy' has no such option (its options: kernels)"),
    (("--backend-opt", "noequals"), "KEY=VALUE"),
    (("--bogus",), "No such option"),
])
def test_bad_options(world, capsys, argv, fragment):
    code, out, err = run(capsys, "finetune", str(world["bundle"]), "--data", str(world["data"]), "--quiet", *argv)
    assert_one_line_error(code, err, fragment)
    sandbox_clean(world)


def test_version(capsys):
    from edge_sdfa import __version__

    code, out, err = run(capsys, "--version")
    assert code == 0 and out.startswith(f"edge-sdfa {__version__} (bundle format 1, runtime ABI 1)")


# ---------------------------------------------------------------------------------------------
# OS errors: a fault-injecting file layer at every store operation of a fine-tune and a deploy


class Faults:
    """Counts the store's file operations; raises ``OSError(code)`` at operation ``at``."""

    def __init__(self, at: int = -1, code: int = errno.ENOSPC):
        self.at, self.code, self.n = at, code, 0

    def __call__(self, op, path, *extra):
        i, self.n = self.n, self.n + 1
        if i == self.at:
            raise OSError(self.code, os.strerror(self.code), str(path))


def _finetune_argv(w, store):
    return ("finetune", str(store), "--data", str(w["data"]), "--quiet", "--epochs", "1")


@pytest.mark.integration
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_faults_at_every_store_operation_of_a_finetune(world, capsys, monkeypatch, code):
    store = world["root"] / "store"
    Store.init(store, world["bundle"])
    monkeypatch.setattr(ft, "gate", lambda training, margin: [])   # always commit: the store is written
    counter = Faults()
    monkeypatch.setattr(FileOps, "_hook", counter)
    old = tree(store)
    ok, out, err = run(capsys, *_finetune_argv(world, store))
    assert ok == 0, err
    n_ops = counter.n
    assert n_ops > 10
    new_revision = Store(store).status()["revision"]
    Store(store).reset()
    _restore(store, old)
    outcomes = []
    for at in range(n_ops):
        monkeypatch.setattr(FileOps, "_hook", Faults(at, code))
        rc, out, err = run(capsys, *_finetune_argv(world, store))
        if rc == 0:  # the fault hit after the commit point: the new weights are complete
            assert Store(store).status()["revision"] == new_revision
            assert all(v == "ok" for v in Store(store).verify().values() if v is not None)
            outcomes.append("new")
            _restore(store, old)
        else:
            assert_one_line_error(rc, err, str(store), os_error_message(OSError(code, "", "x")).split(": ", 1)[1])
            assert tree(store) == old, f"fault at operation {at}"
            outcomes.append("old")
    # before the single state change every fault leaves the old store; after it, the new one
    assert outcomes[0] == "old" and outcomes == sorted(outcomes, key=("old", "new").index), outcomes
    sandbox_clean(world)


def _restore(store: Path, snapshot: dict) -> None:
    """Put a store back to a snapshot taken by ``tree`` (test set-up only)."""
    import shutil

    for p in sorted(store.rglob("*"), reverse=True):
        os.chmod(p.parent, 0o755)
    shutil.rmtree(store)
    store.mkdir()
    for rel, entry in snapshot.items():
        p = store / rel
        if entry[0] == "dir":
            p.mkdir(parents=True, exist_ok=True)
    for rel, entry in snapshot.items():
        p = store / rel
        if entry[0] == "file":
            p.write_bytes(entry[2])
            os.chmod(p, entry[1] & 0o7777)
        elif entry[0] == "link":
            os.symlink(entry[1], p)
    for rel, entry in sorted(snapshot.items(), reverse=True):
        if entry[0] == "dir":
            os.chmod(store / rel, entry[1] & 0o7777)


@pytest.mark.integration
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("step", ["install", "commit"])
def test_faults_at_every_store_operation_of_a_deploy(world, monkeypatch, code, step):
    """A deploy on the device: install the new bundle as the candidate, then (on the host's word)
    commit it. A fault at any operation of either step is an OSError whose one-line message names
    the store, and leaves the store exactly as it was before that step."""
    store = world["root"] / "store"
    Store.init(store, world["bundle"])
    v2 = make_bundle(world["in"] / "v2", version=2)
    if step == "commit":
        Store(store).install_candidate(v2)
    do = (lambda st: st.install_candidate(v2)) if step == "install" else (lambda st: st.commit())
    old = tree(store)
    counter = Faults()
    monkeypatch.setattr(FileOps, "_hook", counter)
    do(Store(store))
    n_ops = counter.n
    assert n_ops >= 4
    _restore(store, old)
    outcomes = []
    for at in range(n_ops):
        monkeypatch.setattr(FileOps, "_hook", Faults(at, code))
        try:
            do(Store(store))
        except OSError as exc:
            message = os_error_message(exc)
            assert "\n" not in message and str(store) in message
            assert tree(store) == old, f"fault at operation {at}"
            outcomes.append("old")
        else:
            monkeypatch.setattr(FileOps, "_hook", Faults())
            s = Store(store).status()
            assert (s["candidate"] or s["active"])["version"] == 2
            outcomes.append("new")
            _restore(store, old)
    assert outcomes[0] == "old" and outcomes == sorted(outcomes, key=("old", "new").index), outcomes


def test_os_errors_name_the_path_and_what_to_do():
    for code, words in ((errno.EROFS, "read-only"), (errno.ENOSPC, "no space left"), (errno.EACCES, "permission"),
                        (errno.ENXIO, "reconnect")):
        msg = os_error_message(OSError(code, os.strerror(code), "/some/where"))
        assert msg.startswith("/some/where: ") and words in msg and "\n" not in msg


@pytest.mark.integration
def test_real_full_disk_and_read_only_file_system(tmp_path):
    """The same, on a real 2 MB tmpfs filled up, then remounted read-only (needs root and mount;
    skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a small tmpfs")
    try:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "EDGE_SDFA_HOME": str(tmp_path / "home")}
        cli = [sys.executable, "-c", "import sys; from edge_sdfa.cli import main; main(sys.argv[1:])"]
        store = mnt / "store"
        b = make_bundle(tmp_path / "b")
        data = make_user_data(tmp_path / "u.npz")
        monkey_gate = "import edge_sdfa.finetune as f; f.gate = lambda t, m: []; "   # force a commit: it writes
        cli_commit = [sys.executable, "-c", monkey_gate + "import sys; from edge_sdfa.cli import main; main(sys.argv[1:])"]
        ok = subprocess.run([*cli_commit, "finetune", str(b), "--data", str(data), "--store", str(store), "--quiet"],
                            capture_output=True, text=True, env=env)
        assert ok.returncode == 0, ok.stderr
        old = tree(store)
        with open(mnt / "filler", "wb") as f:       # fill the disk
            with pytest.raises(OSError):
                while True:
                    f.write(bytes(64 << 10))
                    f.flush()
        r = subprocess.run([*cli_commit, "finetune", str(store), "--data", str(data), "--quiet"],
                           capture_output=True, text=True, env=env)
        assert_one_line_error(r.returncode, r.stderr, str(store), "no space left")
        assert tree(store) == old
        os.unlink(mnt / "filler")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for argv in ([*cli_commit, "finetune", str(store), "--data", str(data), "--quiet"],
                     [*cli, "store", "revert", "--store", str(store)], [*cli, "store", "reset", "--store", str(store)]):
            r = subprocess.run(argv, capture_output=True, text=True, env=env)
            assert_one_line_error(r.returncode, r.stderr, str(store), "read-only")
            assert tree(store) == old
        r = subprocess.run([*cli, "eval", "--store", str(store), "--data", str(data)], capture_output=True, text=True,
                           env=env)
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.integration
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_faults_while_a_finetune_creates_its_store(world, capsys, monkeypatch, code):
    """A fine-tune that has to create the store and hits a fault at any operation of that leaves
    no store folder behind."""
    store = world["root"] / "store"
    argv = ("finetune", str(world["bundle"]), "--data", str(world["data"]), "--store", str(store), "--quiet",
            "--epochs", "0")
    counter = Faults()
    monkeypatch.setattr(FileOps, "_hook", counter)
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert [e["event"] for e in Store(store).events()] == ["init"]   # 0 epochs: creating is all it wrote
    n_init = counter.n
    import shutil

    shutil.rmtree(store)
    for at in range(n_init):
        monkeypatch.setattr(FileOps, "_hook", Faults(at, code))
        rc, out, err = run(capsys, *argv)
        if rc == 0:
            shutil.rmtree(store)
            continue
        assert_one_line_error(rc, err, str(store))
        assert not store.exists(), f"fault at operation {at}"
        sandbox_clean(world)
