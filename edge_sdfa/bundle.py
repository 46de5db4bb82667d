"""The bundle: what a device receives and verifies before it trusts a byte.

A directory (or a .tar of one) holding ``manifest.json``, ``frozen.*`` (the frozen front: npz,
ONNX or TFLite), ``head.npz`` (trainable int8 weights and their int16 masters), ``holdout.npz``
(a labelled original-task set the device never trains on) and optionally ``rehearsal.npz``
(original samples mixed into fine-tuning against forgetting). The manifest lists the sha256 of
every file and may carry an Ed25519 signature over its own canonical JSON (``signing_payload``).
Arrays are loaded with ``allow_pickle=False``; nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_sdfa.errors import BundleError
from edge_sdfa.int8.net import QLayer, QNet
from edge_sdfa.spec import Dense, NetworkSpec, has_synapses

FORMAT = "edge-sdfa-bundle"
FORMAT_VERSION = 1
RUNTIME_ABI = 1
MANIFEST = "manifest.json"
FROZEN_FORMATS = ("none", "npz", "onnx", "tflite")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def signing_payload(manifest: dict) -> bytes:
    """Canonical JSON of the manifest without its ``signature``: what a signature covers."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Bundle:
    path: Path
    manifest: dict
    spec: NetworkSpec
    cut: int
    qnet: QNet                     # every layer; frozen layers filled only for npz frozen parts
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def revision(self) -> int:
        return int(self.manifest.get("revision", 0))

    @property
    def frozen_format(self) -> str:
        return self.manifest["frozen"]["format"]

    @property
    def feedback_seed(self) -> int:
        return int(self.manifest["feedback_seed"])

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
        if "rehearsal.npz" not in self.manifest["files"]:
            return None
        return self._arrays("rehearsal.npz")

    def _arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._cache:
            arrays = load_npz(self.path / name)
            if "x" not in arrays or "y" not in arrays:
                raise BundleError(f"{name} must hold arrays 'x' and 'y'")
            x, y = arrays["x"], arrays["y"].astype(np.int64)
            expect = (self.spec.time_steps, *self.spec.input_shape)
            if x.ndim < 2 or tuple(x.shape[1:]) != expect or len(x) != len(y):
                raise BundleError(f"{name}: x has shape {x.shape}, expected (N, {', '.join(map(str, expect))}) "
                                  f"with {len(y)} labels")
            self._cache[name] = (x, y)
        return self._cache[name]


# ---------------------------------------------------------------------------------------------
# npz without pickle


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise BundleError(f"missing file {path}") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"{path.name}: not a readable npz file ({exc})") from None


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


def _fill_qnet(spec: NetworkSpec, qnet: QNet, arrays: dict[str, np.ndarray], indices, exps: dict[int, int],
               name: str, trainable: bool) -> None:
    for i in indices:
        layer = spec.layers[i]
        if not has_synapses(layer):
            continue
        shapes = layer.param_shapes()
        w8 = arrays.get(f"l{i}.w8")
        want = _expected_w8_shape(layer, shapes["weight"])
        if w8 is None or w8.dtype != np.int8 or tuple(w8.shape) != want:
            got = "missing" if w8 is None else f"{w8.dtype} {tuple(w8.shape)}"
            raise BundleError(f"{name}: layer {i} weights are {got}, the manifest says int8 {want}")
        bias = arrays.get(f"l{i}.bias")
        if layer.bias and (bias is None or bias.shape != shapes["bias"]):
            raise BundleError(f"{name}: layer {i} bias missing or of the wrong shape")
        master = arrays.get(f"l{i}.master")
        if trainable:
            if master is None or master.dtype != np.int16 or master.shape != w8.shape:
                raise BundleError(f"{name}: layer {i} needs an int16 master copy of shape {w8.shape}")
        if i not in exps:
            raise BundleError(f"manifest has no quantisation exponent for layer {i}")
        qnet[i] = QLayer(int(exps[i]), w8, None if bias is None else bias.astype(np.int32),
                         master if trainable else None)


# ---------------------------------------------------------------------------------------------
# read


def safe_extract_tar(tar_path: Path, dest: Path) -> Path:
    """Extract a bundle archive, refusing members that escape ``dest`` (absolute paths, ``..``,
    links, devices). Returns the bundle directory (``dest`` or its single top-level folder)."""
    dest = Path(dest)
    try:
        with tarfile.open(tar_path) as tf:
            members = tf.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if os.path.isabs(m.name) or ".." in Path(m.name).parts or not str(target).startswith(str(dest.resolve())):
                    raise BundleError(f"archive member {m.name!r} escapes the bundle folder")
                if not (m.isfile() or m.isdir()):
                    raise BundleError(f"archive member {m.name!r} is a link or special file")
            for m in members:
                if m.isdir():
                    (dest / m.name).mkdir(parents=True, exist_ok=True)
                    continue
                (dest / m.name).parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                with open(dest / m.name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except tarfile.TarError as exc:
        raise BundleError(f"{tar_path}: not a readable tar archive ({exc})") from None
    if (dest / MANIFEST).exists():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST).exists():
        return subdirs[0]
    raise BundleError(f"{tar_path}: no {MANIFEST} in the archive")


def read_manifest(path: Path) -> dict:
    mpath = Path(path) / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: no {MANIFEST} (not a bundle)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not an edge-sdfa bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: unknown format version {manifest.get('format_version')!r} "
                          f"(this runtime reads version {FORMAT_VERSION})")
    if manifest.get("runtime_abi") != RUNTIME_ABI:
        raise BundleError(f"{mpath}: runtime ABI {manifest.get('runtime_abi')!r} is not compatible "
                          f"with this runtime (ABI {RUNTIME_ABI})")
    for key in ("model_id", "version", "network", "partition", "files", "frozen", "quant", "feedback_seed"):
        if key not in manifest:
            raise BundleError(f"{mpath}: missing field {key!r}")
    return manifest


def verify_files(path: Path, manifest: dict) -> None:
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError("manifest 'files' must map names to digests")
    for name, meta in files.items():
        if "/" in name or name.startswith(".") or name == MANIFEST:
            raise BundleError(f"manifest lists an invalid file name {name!r}")
        fpath = Path(path) / name
        if not fpath.is_file():
            raise BundleError(f"{path}: missing file {name}")
        digest = sha256_file(fpath)
        if digest != meta.get("sha256"):
            raise BundleError(f"{path}: checksum mismatch for {name} (file corrupt or tampered)")
    for required in ("head.npz", "holdout.npz"):
        if required not in files:
            raise BundleError(f"manifest does not list {required}")


def read_bundle(path: str | Path, verify_signature: Callable[[dict], None] | None = None,
                workdir: Path | None = None) -> Bundle:
    """Read and verify a bundle directory or .tar; raises BundleError, loads nothing on failure.

    ``verify_signature(manifest)`` (the serial bridge passes an Ed25519 check) raises if the signature is
    missing or wrong.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"no such bundle: {path}")
    if path.is_file():
        workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-sdfa-bundle-"))
        path = safe_extract_tar(path, workdir)
    manifest = read_manifest(path)
    if verify_signature is not None:
        verify_signature(manifest)
    verify_files(path, manifest)
    spec = NetworkSpec.from_dict(manifest["network"])
    cut = int(manifest["partition"])
    if not 0 <= cut < len(spec.layers):
        raise BundleError(f"partition point {cut} outside the network's {len(spec.layers)} layers")
    fmt = manifest["frozen"].get("format")
    if fmt not in FROZEN_FORMATS or (cut == 0) != (fmt == "none"):
        raise BundleError(f"frozen format {fmt!r} does not fit partition point {cut}")
    exps = {int(k): int(v) for k, v in manifest["quant"].get("exps", {}).items()}
    qnet: QNet = [QLayer() for _ in spec.layers]
    _fill_qnet(spec, qnet, load_npz(path / "head.npz"), range(cut, len(spec.layers)), exps, "head.npz", True)
    if fmt == "npz":
        _fill_qnet(spec, qnet, load_npz(path / manifest["frozen"]["file"]), range(cut), exps,
                   manifest["frozen"]["file"], False)
    bundle = Bundle(path, manifest, spec, cut, qnet)
    bundle.holdout()
    return bundle


# ---------------------------------------------------------------------------------------------
# write


@contextmanager
def _staging(out: Path):
    """Build a bundle in a sibling temp dir; it replaces ``out`` only if the block succeeds."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
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
    """What ``edge-sdfa info`` prints: identity, network, partition, sizes."""
    b = read_bundle(path)
    shapes = b.spec.shapes()
    return {
        "path": str(b.path),
        "model_id": b.model_id,
        "version": b.version,
        "revision": b.revision,
        "runtime_abi": b.manifest["runtime_abi"],
        "input_shape": list(b.spec.input_shape),
        "time_steps": b.spec.time_steps,
        "classes": b.spec.num_classes,
        "layers": [f"{l.type}{tuple(shapes[i])}->{tuple(shapes[i + 1])}" for i, l in enumerate(b.spec.layers)],
        "partition": b.cut,
        "frozen_format": b.frozen_format,
        "trainable_parameters": int(sum(q.w8.size for q in b.head() if q.w8 is not None)),
        "holdout_samples": int(len(b.holdout()[1])),
        "signed": "signature" in b.manifest,
        "files": {k: v["bytes"] for k, v in b.manifest["files"].items()},
    }
