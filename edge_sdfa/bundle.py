"""The bundle: what a device receives and verifies before it trusts a byte.

A directory (or an uncompressed .tar of one) holding ``manifest.json``, ``frozen.*`` (the frozen
front: npz, ONNX or TFLite), ``head.npz`` (trainable int8 weights and their int16 masters),
``holdout.npz`` (a labelled original-task set the device never trains on) and optionally
``rehearsal.npz`` (original samples mixed into fine-tuning against forgetting). The manifest
(``edge_sdfa.manifest.Manifest``) lists the sha256 and size of every file and may carry an Ed25519
signature over its own canonical JSON (``signing_payload``).

Reading is bounded at every step (``docs/limits.md``): the manifest's size and depth before it is
parsed; a .tar's member count, names and sizes against the manifest before anything is written;
each file's size before it is hashed; each array's dtype and shape from its ``.npy`` header
against the network before anything is decompressed. Arrays are loaded with
``allow_pickle=False``; nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import weakref
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_sdfa import npz
from edge_sdfa.errors import BundleError, naming
from edge_sdfa.int8.net import QLayer, QNet
from edge_sdfa.manifest import (FORMAT, FORMAT_VERSION, FROZEN_FORMATS, MANIFEST, MAX_BUNDLE_BYTES, MAX_FILES,
                                MAX_MANIFEST_BYTES, RUNTIME_ABI, Manifest, file_name)
from edge_sdfa.spec import Dense, NetworkSpec, has_synapses

__all__ = ["FORMAT", "FORMAT_VERSION", "RUNTIME_ABI", "MANIFEST", "FROZEN_FORMATS", "Bundle", "Manifest",
           "read_bundle", "open_bundle", "unpacked", "read_manifest", "load_manifest", "verify_files",
           "safe_extract_tar", "load_npz", "write_bundle", "with_head", "pack_tar", "info", "sha256_file",
           "signing_payload", "qnet_arrays"]

MAX_TAR_BYTES = MAX_BUNDLE_BYTES + MAX_MANIFEST_BYTES + (1 << 20)   # files + manifest + tar headers
MAX_TAR_MEMBERS = MAX_FILES + 2                                     # files, manifest, one top folder


def sha256_file(path: Path, limit: int | None = None) -> str:
    """sha256 of a file; with ``limit``, of at most its first ``limit`` + 1 bytes."""
    h = hashlib.sha256()
    left = None if limit is None else limit + 1
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def signing_payload(manifest: dict) -> bytes:
    """Canonical JSON of the manifest without its ``signature``: what a signature covers."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Bundle:
    path: Path
    manifest: dict                 # the manifest as read (``meta`` is the checked, typed view)
    spec: NetworkSpec
    cut: int
    qnet: QNet                     # every layer; frozen layers filled only for npz frozen parts
    meta: Manifest | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.meta is None:
            self.meta = Manifest.from_dict(self.manifest)

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    @property
    def version(self) -> int:
        return self.meta.version

    @property
    def revision(self) -> int:
        return self.meta.revision

    @property
    def frozen_format(self) -> str:
        return self.meta.frozen_format

    @property
    def feedback_seed(self) -> int:
        return self.meta.feedback_seed

    def head_spec(self) -> NetworkSpec:
        return self.spec.split(self.cut)[1]

    def frozen_spec(self):
        return self.spec.split(self.cut)[0]

    def head(self) -> QNet:
        return self.qnet[self.cut:]

    def file(self, name: str) -> Path:
        return self.path / name

    def holdout(self) -> tuple[np.ndarray, np.ndarray]:
        return self._arrays("holdout.npz")

    def rehearsal(self) -> tuple[np.ndarray, np.ndarray] | None:
        if "rehearsal.npz" not in self.meta.files:
            return None
        return self._arrays("rehearsal.npz")

    def _arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._cache:
            _check_samples(self.path / name, npz.read_headers(self.path / name, BundleError), self.spec, name)
            arrays = npz.load_arrays(self.path / name, BundleError, ("x", "y"))
            x, y = arrays["x"], arrays["y"].astype(np.int64)
            classes = self.spec.num_classes
            if len(y) and (y.min() < 0 or y.max() >= classes):
                raise BundleError(f"{name}: labels must be in 0..{classes - 1}")
            self._cache[name] = (x, y)
        return self._cache[name]


# ---------------------------------------------------------------------------------------------
# npz without pickle, headers first


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, after its headers passed the memory budget (``edge_sdfa.npz``)."""
    return npz.load_arrays(path, BundleError)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # np.savez_compressed stamps zip entries with the current time; write with a fixed date so
    # the same weights always give the same bytes (and the same sha256).
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def qnet_arrays(qnet: QNet, indices) -> dict[str, np.ndarray]:
    out = {}
    for i in indices:
        q = qnet[i]
        if q.w8 is None:
            continue
        out[f"l{i}.w8"] = q.w8
        if q.bias is not None:
            out[f"l{i}.bias"] = q.bias
        if q.master is not None:
            out[f"l{i}.master"] = q.master
    return out


def _expected_w8_shape(layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[0]) if isinstance(layer, Dense) else shape


def _check_weights(name: str, headers: dict[str, npz.ArrayHeader], spec: NetworkSpec, indices,
                   trainable: bool) -> None:
    """The weight arrays' headers against the network: names, dtypes and shapes, nothing extra."""
    expected = set()
    for i in indices:
        layer = spec.layers[i]
        if not has_synapses(layer):
            continue
        shapes = layer.param_shapes()
        want = _expected_w8_shape(layer, shapes["weight"])
        w8 = headers.get(f"l{i}.w8")
        if w8 is None or w8.dtype != np.int8 or w8.shape != want:
            got = "missing" if w8 is None else f"{w8.dtype} {w8.shape}"
            raise BundleError(f"{name}: layer {i} weights are {got}, the manifest says int8 {want}")
        expected.add(f"l{i}.w8")
        bias = headers.get(f"l{i}.bias")
        if layer.bias:
            if bias is None or bias.shape != shapes["bias"] or bias.dtype.kind != "i" or bias.dtype.itemsize > 4:
                raise BundleError(f"{name}: layer {i} bias missing or of the wrong shape or type "
                                  f"(want int32 {shapes['bias']})")
            expected.add(f"l{i}.bias")
        master = headers.get(f"l{i}.master")
        if trainable or master is not None:
            if master is None or master.dtype != np.int16 or master.shape != want:
                raise BundleError(f"{name}: layer {i} needs an int16 master copy of shape {want}")
            expected.add(f"l{i}.master")
    extra = sorted(set(headers) - expected)
    if extra:
        raise BundleError(f"{name}: unexpected array {extra[0]!r} (the manifest's network has no place for it)")


def _check_samples(path: Path, headers: dict[str, npz.ArrayHeader], spec: NetworkSpec, name: str) -> None:
    """holdout/rehearsal headers: uint8 ``x[N, T, *input_shape]`` and integer ``y[N]``, N >= 1."""
    expect = (spec.time_steps, *spec.input_shape)
    x, y = headers.get("x"), headers.get("y")
    if x is None or y is None:
        raise BundleError(f"{name} must hold arrays 'x' and 'y'")
    extra = sorted(set(headers) - {"x", "y"})
    if extra:
        raise BundleError(f"{name}: unexpected array {extra[0]!r} (only 'x' and 'y')")
    if x.dtype != np.uint8 or len(x.shape) < 2 or x.shape[1:] != expect:
        raise BundleError(f"{name}: x is {x.dtype} {x.shape}, expected uint8 (N, {', '.join(map(str, expect))})")
    if y.dtype.kind not in "iu" or len(y.shape) != 1 or y.shape[0] != x.shape[0]:
        raise BundleError(f"{name}: y is {y.dtype} {y.shape}, expected {x.shape[0]} integer labels")
    if x.shape[0] < 1:
        raise BundleError(f"{name}: holds no samples")


def _fill_qnet(spec: NetworkSpec, qnet: QNet, arrays: dict[str, np.ndarray], indices, exps: dict[int, int],
               trainable: bool) -> None:
    for i in indices:
        if not has_synapses(spec.layers[i]):
            continue
        bias = arrays.get(f"l{i}.bias")
        qnet[i] = QLayer(int(exps[i]), arrays[f"l{i}.w8"], None if bias is None else bias.astype(np.int32),
                         arrays[f"l{i}.master"] if trainable else None)


# ---------------------------------------------------------------------------------------------
# read


def _tar_members(tf: tarfile.TarFile, tar_path: Path) -> dict[str, tarfile.TarInfo]:
    """The archive's regular files by bundle-relative name (an optional single top folder is
    dropped); refuses links, devices, escaping or nested names, duplicates, too many members."""
    members = []
    while True:
        m = tf.next()
        if m is None:
            break
        members.append(m)
        if len(members) > MAX_TAR_MEMBERS:
            raise BundleError(f"{tar_path}: more than {MAX_TAR_MEMBERS} archive members (a bundle has at most "
                              f"{MAX_FILES} files and its manifest)")
    for m in members:
        parts = Path(m.name).parts
        if os.path.isabs(m.name) or ".." in parts:
            raise BundleError(f"archive member {m.name[:80]!r} escapes the bundle folder")
        if not (m.isfile() or m.isdir()):
            raise BundleError(f"archive member {m.name[:80]!r} is a link or special file")
    tops = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
    prefix = None
    if len(tops) == 1 and any(m.isdir() or len(Path(m.name).parts) > 1 for m in members):
        prefix = tops.pop()
    files: dict[str, tarfile.TarInfo] = {}
    for m in members:
        parts = Path(m.name).parts
        if prefix is not None:
            parts = parts[1:]
        if m.isdir():
            if parts:
                raise BundleError(f"archive member {m.name[:80]!r}: a bundle has no sub-folders")
            continue
        if len(parts) != 1:
            raise BundleError(f"archive member {m.name[:80]!r}: a bundle has no sub-folders")
        name = parts[0]
        if name != MANIFEST:
            file_name(str(tar_path), "archive member", name)
        if name in files:
            raise BundleError(f"{tar_path}: archive member {name!r} appears twice")
        files[name] = m
    return files


def safe_extract_tar(tar_path: Path, dest: Path) -> Path:
    """Extract a bundle archive (uncompressed .tar) into ``dest`` and return the bundle folder.

    Before anything is written, the members are checked against the archive's own manifest:
    exactly the manifest's files plus ``manifest.json``, each a regular file no larger than the
    manifest declares, no links, devices, sub-folders or names escaping ``dest``, the archive no
    larger than ``MAX_TAR_BYTES``. The caller owns ``dest`` (see ``unpacked`` for a folder that is
    always removed)."""
    tar_path, dest = Path(tar_path), Path(dest)
    try:
        size = tar_path.stat().st_size
    except FileNotFoundError:
        raise BundleError(f"no such bundle: {tar_path}") from None
    if size > MAX_TAR_BYTES:
        raise BundleError(f"{tar_path}: {size} bytes, more than the bundle limit of {MAX_TAR_BYTES}")
    try:
        with tarfile.open(tar_path, "r:") as tf:
            files = _tar_members(tf, tar_path)
            if MANIFEST not in files:
                raise BundleError(f"{tar_path}: no {MANIFEST} in the archive")
            m = files[MANIFEST]
            if m.size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{tar_path}: {MANIFEST} is {m.size} bytes, more than the limit of "
                                  f"{MAX_MANIFEST_BYTES}")
            manifest_bytes = tf.extractfile(m).read(MAX_MANIFEST_BYTES + 1)
            meta = Manifest.from_json(manifest_bytes, f"{tar_path}:{MANIFEST}")
            unlisted = sorted(set(files) - set(meta.files) - {MANIFEST})
            if unlisted:
                raise BundleError(f"{tar_path}: the archive holds {', '.join(unlisted[:3])}, which the manifest "
                                  "does not list")
            for name, entry in meta.files.items():
                if name not in files:
                    raise BundleError(f"{tar_path}: missing file {name}")
                if files[name].size > entry.bytes:
                    raise BundleError(f"{tar_path}: archive member {name} is {files[name].size} bytes, the "
                                      f"manifest declares {entry.bytes}")
            dest.mkdir(parents=True, exist_ok=True)
            for name, m in files.items():
                src = tf.extractfile(m)
                with naming(dest / name), open(dest / name, "xb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{tar_path}: not a readable (uncompressed) tar archive ({exc})") from None
    return dest


@contextmanager
def unpacked(path: str | Path) -> Iterator[Path]:
    """A bundle folder for ``path``: the folder itself, or a .tar extracted into a temporary
    folder that is removed when the block ends, whatever happens inside it."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="edge-sdfa-bundle-"))
    try:
        yield safe_extract_tar(path, tmp / "bundle")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def open_bundle(path: str | Path, verify_signature: Callable[[dict], None] | None = None) -> Iterator["Bundle"]:
    """``read_bundle`` whose temporary extraction (for a .tar) is removed when the block ends."""
    with unpacked(path) as folder:
        yield read_bundle(folder, verify_signature)


def load_manifest(path: str | Path) -> Manifest:
    """The checked manifest of a bundle folder (size and depth bounded before parsing)."""
    mpath = Path(path) / MANIFEST
    try:
        st = os.stat(mpath)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{mpath} is not a regular file")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: {st.st_size} bytes, more than the limit of {MAX_MANIFEST_BYTES}")
        with open(mpath, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError(f"{path}: no {MANIFEST} (not a bundle)") from None
    return Manifest.from_json(data, str(mpath))


def read_manifest(path: str | Path) -> dict:
    """The manifest of a bundle folder as a dict, after ``Manifest.from_dict`` accepted it."""
    return load_manifest(path).raw


def verify_files(path: Path, manifest: Manifest | dict) -> None:
    """Every listed file exists as a regular file (not a link) of the declared size and sha256."""
    meta = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    for name, entry in meta.files.items():
        fpath = Path(path) / name
        try:
            st = os.lstat(fpath)
        except FileNotFoundError:
            raise BundleError(f"{path}: missing file {name}") from None
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: {name} is not a regular file (links and devices are refused)")
        if st.st_size != entry.bytes:
            raise BundleError(f"{path}: {name} is {st.st_size} bytes, the manifest declares {entry.bytes} "
                              "(file corrupt or tampered)")
        if sha256_file(fpath, limit=entry.bytes) != entry.sha256:
            raise BundleError(f"{path}: checksum mismatch for {name} (file corrupt or tampered)")


def _check_arrays(path: Path, meta: Manifest) -> dict[str, dict[str, npz.ArrayHeader]]:
    """Every array's header against the network and one memory budget for the whole bundle."""
    spec, cut = meta.network, meta.partition
    headers = {"head.npz": npz.read_headers(path / "head.npz", BundleError)}
    _check_weights("head.npz", headers["head.npz"], spec, range(cut, len(spec.layers)), True)
    if meta.frozen_format == "npz":
        headers[meta.frozen_file] = npz.read_headers(path / meta.frozen_file, BundleError)
        _check_weights(meta.frozen_file, headers[meta.frozen_file], spec, range(cut), False)
    for name in ("holdout.npz", "rehearsal.npz"):
        if name in meta.files:
            headers[name] = npz.read_headers(path / name, BundleError)
            _check_samples(path / name, headers[name], spec, name)
    total = sum(h.nbytes for hs in headers.values() for h in hs.values())
    if total > npz.MAX_ARRAY_BYTES:
        raise BundleError(f"{path}: the bundle's arrays hold {total} bytes, more than the memory budget of "
                          f"{npz.MAX_ARRAY_BYTES} bytes")
    return headers


def read_bundle(path: str | Path, verify_signature: Callable[[dict], None] | None = None,
                workdir: Path | None = None) -> Bundle:
    """Read and verify a bundle directory or .tar; raises BundleError, loads nothing on failure.

    ``verify_signature(manifest)`` (the serial bridge passes an Ed25519 check) raises if the signature is
    missing or wrong. A .tar is extracted into ``workdir`` (the caller's), or else into a temporary
    folder that is removed when extraction fails, when the returned bundle is garbage collected, or
    at exit; ``open_bundle`` removes it at the end of a ``with`` block.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"no such bundle: {path}")
    if path.is_dir():
        return _read_folder(path, verify_signature)
    if workdir is not None:
        return _read_folder(safe_extract_tar(path, Path(workdir)), verify_signature)
    tmp = Path(tempfile.mkdtemp(prefix="edge-sdfa-bundle-"))
    try:
        bundle = _read_folder(safe_extract_tar(path, tmp / "bundle"), verify_signature)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(bundle, shutil.rmtree, str(tmp), True)
    return bundle


def _read_folder(path: Path, verify_signature: Callable[[dict], None] | None) -> Bundle:
    meta = load_manifest(path)
    if verify_signature is not None:
        verify_signature(meta.raw)
    verify_files(path, meta)
    _check_arrays(path, meta)
    spec, cut = meta.network, meta.partition
    qnet: QNet = [QLayer() for _ in spec.layers]
    _fill_qnet(spec, qnet, load_npz(path / "head.npz"), range(cut, len(spec.layers)), meta.exps, True)
    if meta.frozen_format == "npz":
        _fill_qnet(spec, qnet, load_npz(path / meta.frozen_file), range(cut), meta.exps, False)
    bundle = Bundle(path, meta.raw, spec, cut, qnet, meta)
    bundle.holdout()
    return bundle


# ---------------------------------------------------------------------------------------------
# write


@contextmanager
def _staging(out: Path):
    """Build a bundle in a sibling temp dir; it replaces ``out`` only if the block succeeds."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with naming(tmp):
            yield tmp
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_bundle(out: str | Path, spec: NetworkSpec, qnet: QNet, cut: int, *, model_id: str, version: int,
                 holdout: tuple[np.ndarray, np.ndarray], feedback_seed: int = 0, revision: int = 0,
                 rehearsal: tuple[np.ndarray, np.ndarray] | None = None, frozen_files: dict[str, Path] | None = None,
                 frozen_format: str | None = None, metadata: dict | None = None,
                 finetune_defaults: dict | None = None) -> Path:
    """Write a bundle directory atomically (built in a sibling temp dir, then renamed into place).

    ``frozen_files`` maps names (e.g. ``frozen.onnx``) to files made by an exporter; without it the
    frozen layers are written as ``frozen.npz``.
    """
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging(out) as tmp:
        frozen_format = frozen_format or ("none" if cut == 0 else "npz")
        frozen_entry = {"format": frozen_format, "file": None}
        if cut > 0 and frozen_format == "npz":
            _save_npz(tmp / "frozen.npz", qnet_arrays(qnet, range(cut)))
            frozen_entry["file"] = "frozen.npz"
        for name, src in (frozen_files or {}).items():
            shutil.copyfile(src, tmp / name)
            frozen_entry["file"] = frozen_entry["file"] or name
        _save_npz(tmp / "head.npz", qnet_arrays(qnet, range(cut, len(spec.layers))))
        _save_npz(tmp / "holdout.npz", {"x": holdout[0].astype(np.uint8), "y": holdout[1].astype(np.int64)})
        if rehearsal is not None:
            _save_npz(tmp / "rehearsal.npz", {"x": rehearsal[0].astype(np.uint8), "y": rehearsal[1].astype(np.int64)})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "runtime_abi": RUNTIME_ABI,
            "model_id": model_id,
            "version": int(version),
            "revision": int(revision),
            "network": spec.to_dict(),
            "partition": int(cut),
            "frozen": frozen_entry,
            "quant": {"exps": {str(i): int(q.exp) for i, q in enumerate(qnet) if q.w8 is not None}},
            "feedback_seed": int(feedback_seed),
            "finetune": finetune_defaults or {},
            "metadata": metadata or {},
            "files": {},
        }
        for f in sorted(tmp.iterdir()):
            manifest["files"][f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        Manifest.from_dict(manifest, str(out / MANIFEST))  # never write a bundle no reader accepts
        _write_manifest(tmp, manifest)
    return out


def with_head(bundle: Bundle, head: QNet, out: str | Path, revision: int | None = None) -> Path:
    """A copy of ``bundle`` with new trainable weights (a fine-tune candidate)."""
    out = Path(out)
    with _staging(out) as tmp:
        for name in bundle.manifest["files"]:
            if name != "head.npz":
                shutil.copyfile(bundle.path / name, tmp / name)
        qnet = list(bundle.qnet[: bundle.cut]) + list(head)
        _save_npz(tmp / "head.npz", qnet_arrays(qnet, range(bundle.cut, len(qnet))))
        manifest = dict(bundle.manifest)
        manifest.pop("signature", None)
        manifest["revision"] = bundle.revision + 1 if revision is None else int(revision)
        manifest["files"] = dict(manifest["files"])
        manifest["files"]["head.npz"] = {"sha256": sha256_file(tmp / "head.npz"),
                                        "bytes": (tmp / "head.npz").stat().st_size}
        Manifest.from_dict(manifest, str(out / MANIFEST))
        _write_manifest(tmp, manifest)
    return out


def pack_tar(bundle_dir: str | Path, out: str | Path) -> Path:
    """A .tar of a bundle directory, members relative to it, deterministic order and times."""
    bundle_dir, out = Path(bundle_dir), Path(out)
    with tarfile.open(out, "w") as tf:
        for f in sorted(bundle_dir.iterdir()):
            info = tf.gettarinfo(str(f), arcname=f.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(f, "rb") as fh:
                tf.addfile(info, fh)
    return out


def info(path: str | Path) -> dict:
    """What ``edge-sdfa info`` prints: identity, network, partition, sizes. Writes nothing that
    outlives the call (a .tar is extracted into a temporary folder, then removed)."""
    with open_bundle(path) as b:
        shapes = b.spec.shapes()
        return {
            "path": str(path),
            "model_id": b.model_id,
            "version": b.version,
            "revision": b.revision,
            "runtime_abi": RUNTIME_ABI,
            "input_shape": list(b.spec.input_shape),
            "time_steps": b.spec.time_steps,
            "classes": b.spec.num_classes,
            "layers": [f"{l.type}{tuple(shapes[i])}->{tuple(shapes[i + 1])}" for i, l in enumerate(b.spec.layers)],
            "partition": b.cut,
            "frozen_format": b.frozen_format,
            "trainable_parameters": int(sum(q.w8.size for q in b.head() if q.w8 is not None)),
            "holdout_samples": int(len(b.holdout()[1])),
            "signed": b.meta.signature is not None,
            "files": {k: v.bytes for k, v in b.meta.files.items()},
        }
