"""The bundle manifest as one typed value, and the bounded JSON reader it is parsed with.

``Manifest.from_dict`` is total: for any JSON value it returns a ``Manifest`` or raises
``BundleError`` naming the offending field (``manifest.json: field 'quant.exps.2' ...``). Every
reader of a bundle (``edge_sdfa.bundle``, and through it the store and the serial bridge's agent)
goes through it, so code past this point can trust types, ranges and cross-field consistency.
Checks that need the files (sizes, checksums, array headers) are in ``edge_sdfa.bundle``.
Every limit here is listed in ``docs/limits.md``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_sdfa.errors import BundleError, UserError
from edge_sdfa.spec import LAYER_TYPES, TEMPORAL_MODES, NetworkSpec, NeuronSpec, has_synapses

FORMAT = "edge-sdfa-bundle"
FORMAT_VERSION = 1
RUNTIME_ABI = 1
MANIFEST = "manifest.json"
FROZEN_FORMATS = ("none", "npz", "onnx", "tflite")

# ---- limits (docs/limits.md) -------------------------------------------------------------------
MAX_MANIFEST_BYTES = 1 << 20          # manifest.json (and any other JSON we parse) on disk
MAX_JSON_DEPTH = 32                   # nesting of arrays/objects
MAX_FILES = 16                        # files listed in a manifest
MAX_FILE_BYTES = 256 << 20            # one bundle file
MAX_BUNDLE_BYTES = 256 << 20          # all of a bundle's files together
MAX_LAYERS = 256
MAX_DIM = 1 << 20                     # any size in the network spec (features, channels, H, W)
MAX_TIME_STEPS = 10_000
MAX_PARAMETERS = 64 << 20             # synaptic weights in the whole network
EXP_RANGE = (-16, 24)                 # quantisation exponents; see _check_exponent
INT32_MAX = (1 << 31) - 1
MAX_ID_CHARS = 128
MAX_VERSION = (1 << 31) - 1
MAX_SEED = (1 << 63) - 1

FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")

FINETUNE_FIELDS = {  # the bundle's fine-tuning defaults: name -> (kind, low, high)
    "epochs": ("int", 0, 10_000),
    "batch_size": ("int", 1, 65_536),
    "lr": ("number", 0.0, 1e6),
    "rehearsal_ratio": ("number", 0.0, 100.0),
    "rehearsal_max": ("number", 0.0, 100.0),      # adaptive rehearsal's ceiling
    "rehearsal_trigger": ("number", 0.0, 100.0),  # ... and its trigger, in holdout margins
    "mode": ("choice", TEMPORAL_MODES, None),
    "augment_shift": ("int", 0, 8),               # px; needs image_shape and partition 0
    "augment_copies": ("int", 0, 16),
    "pull": ("number", 0.0, 1.0),                 # L2-SP fraction per epoch
    "augment_rehearsal": ("bool", None, None),
    "lr_schedule": ("choice", ("constant", "cosine"), None),
    "image_shape": ("shape", 2, 3),               # the network's input as (H, W) or (C, H, W)
}
MAX_IMAGE_SIDE = 65_536


# ---------------------------------------------------------------------------------------------
# bounded JSON


def parse_json(data: bytes, what: str, *, max_bytes: int = MAX_MANIFEST_BYTES,
               max_depth: int = MAX_JSON_DEPTH, error: type[UserError] = BundleError) -> Any:
    """``json.loads`` with the size and nesting depth checked first, duplicate keys refused.

    The depth is measured on the text with its strings removed, so a 100,000-deep document is
    refused with one line before the (recursive) parser sees it."""
    if len(data) > max_bytes:
        raise error(f"{what}: {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{what}: nested {depth} deep, more than the limit of {max_depth}")

    def no_duplicates(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what}: not valid JSON ({str(exc).splitlines()[0]})") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside strings (linear time, no recursion)."""
    bare = _STRING.sub("", text).encode("utf-8", "replace")
    if not bare:
        return 0
    b = np.frombuffer(bare, np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    return int(max(0, np.cumsum(step).max()))


# ---------------------------------------------------------------------------------------------
# field checkers: each raises BundleError naming the field


def _fail(where: str, name: str, message: str) -> BundleError:
    return BundleError(f"{where}: field {name!r} {message}")


def _int(where: str, name: str, value: Any, low: int, high: int) -> int:
    if type(value) is not int:  # not bool, not float, not str
        raise _fail(where, name, f"must be an integer in {low}..{high}, got {_show(value)}")
    if not low <= value <= high:
        raise _fail(where, name, f"must be in {low}..{high}, got {value}")
    return value


def _number(where: str, name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _fail(where, name, f"must be a finite number, got {_show(value)}")
    if not (low < value if low_open else low <= value) or value > high:
        bracket = "(" if low_open else "["
        raise _fail(where, name, f"must be in {bracket}{low}, {high}], got {value}")
    return float(value)


def _bool(where: str, name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _fail(where, name, f"must be true or false, got {_show(value)}")
    return value


def _str(where: str, name: str, value: Any, max_chars: int = MAX_ID_CHARS) -> str:
    if type(value) is not str or not 0 < len(value) <= max_chars or not value.isprintable():
        raise _fail(where, name, f"must be a non-empty printable string of at most {max_chars} characters, "
                                 f"got {_show(value)}")
    return value


def _dict(where: str, name: str, value: Any) -> dict:
    if type(value) is not dict:
        raise _fail(where, name, f"must be an object, got {_show(value)}")
    return value


def _list(where: str, name: str, value: Any, low: int, high: int) -> list:
    if type(value) is not list or not low <= len(value) <= high:
        raise _fail(where, name, f"must be a list of {low}..{high} entries, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
            list: "list", dict: "object"}.get(type(value), type(value).__name__)
    return f"{kind} {text[:40]}" if kind not in ("list", "object") else kind


def file_name(where: str, name: str, value: Any) -> str:
    """A plain file name: no folders, no leading dot, not the manifest itself."""
    if type(value) is not str or not FILE_NAME.fullmatch(value) or value == MANIFEST or value in (".", ".."):
        raise _fail(where, name, f"must be a plain file name (letters, digits, '.', '_', '-'; no folders), "
                                 f"got {_show(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# the manifest


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, every field checked. ``raw`` is the dict exactly as read (signatures
    cover its canonical JSON); ``extra`` holds top-level fields this runtime does not know."""

    model_id: str
    version: int
    revision: int
    network: NetworkSpec
    partition: int
    frozen_format: str
    frozen_file: str | None
    exps: dict[int, int]
    feedback_seed: int
    files: dict[str, FileEntry]
    finetune: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    signature: dict | None = None
    extra: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    KNOWN = ("format", "format_version", "runtime_abi", "model_id", "version", "revision", "network",
             "partition", "frozen", "quant", "feedback_seed", "files", "finetune", "metadata", "signature")

    @classmethod
    def from_json(cls, data: bytes, where: str = MANIFEST) -> "Manifest":
        return cls.from_dict(parse_json(data, where), where)

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST) -> "Manifest":
        if type(d) is not dict or d.get("format") != FORMAT:
            raise BundleError(f"{where}: not an edge-sdfa bundle manifest")
        fv = d.get("format_version")
        if type(fv) is not int or fv != FORMAT_VERSION:
            raise BundleError(f"{where}: unknown format version {fv!r} (this runtime reads version {FORMAT_VERSION})")
        abi = d.get("runtime_abi")
        if type(abi) is not int or abi != RUNTIME_ABI:
            raise BundleError(f"{where}: runtime ABI {abi!r} is not compatible with this runtime (ABI {RUNTIME_ABI})")
        for key in ("model_id", "version", "network", "partition", "files", "frozen", "quant", "feedback_seed"):
            if key not in d:
                raise BundleError(f"{where}: missing field {key!r}")

        model_id = _str(where, "model_id", d["model_id"])
        version = _int(where, "version", d["version"], 1, MAX_VERSION)
        revision = _int(where, "revision", d.get("revision", 0), 0, MAX_VERSION)
        feedback_seed = _int(where, "feedback_seed", d["feedback_seed"], 0, MAX_SEED)
        network = _network(where, d["network"])
        n_layers = len(network.layers)
        partition = _int(where, "partition", d["partition"], 0, n_layers - 1)
        files = _files(where, d["files"])

        frozen = _dict(where, "frozen", d["frozen"])
        unknown = sorted(set(frozen) - {"format", "file"})
        if unknown:
            raise _fail(where, f"frozen.{unknown[0]}", "is not a known field (known: format, file)")
        fmt = frozen.get("format")
        if fmt not in FROZEN_FORMATS:
            raise _fail(where, "frozen.format", f"must be one of {', '.join(FROZEN_FORMATS)}, got {_show(fmt)}")
        if (partition == 0) != (fmt == "none"):
            raise _fail(where, "frozen.format", f"{fmt!r} does not fit partition point {partition} "
                                                "(format 'none' exactly when nothing is frozen)")
        ffile = frozen.get("file")
        if fmt == "none":
            if ffile is not None:
                raise _fail(where, "frozen.file", "must be null when nothing is frozen")
        else:
            file_name(where, "frozen.file", ffile)
            if ffile not in files:
                raise _fail(where, "frozen.file", f"names {ffile!r}, which 'files' does not list")
            if fmt == "npz" and not ffile.endswith(".npz"):
                raise _fail(where, "frozen.file", f"must be an .npz file for format npz, got {ffile!r}")

        exps = _exps(where, d["quant"], network, partition, fmt)
        finetune = _finetune(where, d.get("finetune", {}), network, partition)
        metadata = _dict(where, "metadata", d.get("metadata", {}))
        signature = d.get("signature")
        if signature is not None:
            sig = _dict(where, "signature", signature)
            for k, v in sig.items():
                if type(v) is not str or len(v) > 4096:
                    raise _fail(where, f"signature.{k}", "must be a string of at most 4096 characters")
        extra = {k: v for k, v in d.items() if k not in cls.KNOWN}
        return cls(model_id=model_id, version=version, revision=revision, network=network,
                   partition=partition, frozen_format=fmt, frozen_file=ffile, exps=exps,
                   feedback_seed=feedback_seed, files=files, finetune=finetune, metadata=metadata,
                   signature=signature, extra=extra, raw=d)

    def to_dict(self) -> dict:
        """The manifest as JSON-able data; ``from_dict(m.to_dict()) == m``."""
        out = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "runtime_abi": RUNTIME_ABI,
            "model_id": self.model_id, "version": self.version, "revision": self.revision,
            "network": self.network.to_dict(), "partition": self.partition,
            "frozen": {"format": self.frozen_format, "file": self.frozen_file},
            "quant": {"exps": {str(i): e for i, e in sorted(self.exps.items())}},
            "feedback_seed": self.feedback_seed, "finetune": dict(self.finetune),
            "metadata": self.metadata,
            "files": {n: {"sha256": f.sha256, "bytes": f.bytes} for n, f in sorted(self.files.items())},
            **self.extra,
        }
        if self.signature is not None:
            out["signature"] = dict(self.signature)
        return out

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())


def _files(where: str, value: Any) -> dict[str, FileEntry]:
    files = _dict(where, "files", value)
    if not 1 <= len(files) <= MAX_FILES:
        raise _fail(where, "files", f"must list 1..{MAX_FILES} files, lists {len(files)}")
    out, total = {}, 0
    for name, meta in files.items():
        file_name(where, f"files.{name}", name)
        meta = _dict(where, f"files.{name}", meta)
        unknown = sorted(set(meta) - {"sha256", "bytes"})
        if unknown:
            raise _fail(where, f"files.{name}.{unknown[0]}", "is not a known field (known: sha256, bytes)")
        digest = meta.get("sha256")
        if type(digest) is not str or not SHA256.fullmatch(digest):
            raise _fail(where, f"files.{name}.sha256", f"must be 64 lowercase hex digits, got {_show(digest)}")
        size = _int(where, f"files.{name}.bytes", meta.get("bytes"), 0, MAX_FILE_BYTES)
        total += size
        out[name] = FileEntry(name, digest, size)
    if total > MAX_BUNDLE_BYTES:
        raise _fail(where, "files", f"add up to {total} bytes, more than the limit of {MAX_BUNDLE_BYTES}")
    for required in ("head.npz", "holdout.npz"):
        if required not in out:
            raise _fail(where, "files", f"does not list {required}")
    return out


_LAYER_INTS = {"in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding"}


def _network(where: str, value: Any) -> NetworkSpec:
    net = _dict(where, "network", value)
    unknown = sorted(set(net) - {"input_shape", "layers", "time_steps", "loss"})
    if unknown:
        raise _fail(where, f"network.{unknown[0]}", "is not a known field")
    shape = _list(where, "network.input_shape", net.get("input_shape"), 1, 4)
    for k, dim in enumerate(shape):
        _int(where, f"network.input_shape.{k}", dim, 1, MAX_DIM)
    _int(where, "network.time_steps", net.get("time_steps", 10), 1, MAX_TIME_STEPS)
    if net.get("loss", "ce") not in ("ce", "mse"):
        raise _fail(where, "network.loss", f"must be 'ce' or 'mse', got {_show(net.get('loss'))}")
    layers = _list(where, "network.layers", net.get("layers"), 1, MAX_LAYERS)
    for i, layer in enumerate(layers):
        _layer(where, f"network.layers.{i}", layer)
    try:
        spec = NetworkSpec.from_dict(net)
    except UserError as exc:
        raise _fail(where, "network", f"is not a valid network: {exc}") from None
    params = sum(math.prod(layer.param_shapes()["weight"]) for layer in spec.layers if has_synapses(layer))
    if params > MAX_PARAMETERS:
        raise _fail(where, "network", f"has {params} weights, more than the limit of {MAX_PARAMETERS}")
    if any(math.prod(s) > MAX_DIM * 64 for s in spec.shapes()):
        raise _fail(where, "network", f"has a layer with more than {MAX_DIM * 64} neurons")
    return spec


def _layer(where: str, name: str, value: Any) -> None:
    layer = _dict(where, name, value)
    kind = layer.get("type")
    if type(kind) is not str or kind not in LAYER_TYPES:
        raise _fail(where, f"{name}.type", f"must be one of {', '.join(LAYER_TYPES)}, got {_show(kind)}")
    allowed = {f.name for f in dataclasses.fields(LAYER_TYPES[kind])}
    for key, v in layer.items():
        if key not in allowed:
            raise _fail(where, f"{name}.{key}", f"is not a field of a {kind} layer")
        if key in _LAYER_INTS:
            _int(where, f"{name}.{key}", v, 0 if key == "padding" else 1, MAX_DIM)
        elif key == "bias":
            _bool(where, f"{name}.bias", v)
        elif key == "mode" and v not in ("max", "avg"):
            raise _fail(where, f"{name}.mode", f"must be 'max' or 'avg', got {_show(v)}")
        elif key == "neuron":
            _neuron(where, f"{name}.neuron", v)


def _neuron(where: str, name: str, value: Any) -> None:
    n = _dict(where, name, value)
    allowed = {f.name for f in dataclasses.fields(NeuronSpec)}
    for key in n:
        if key not in allowed:
            raise _fail(where, f"{name}.{key}", "is not a field of a neuron")
    if n.get("kind", "lif") not in ("lif", "if"):
        raise _fail(where, f"{name}.kind", f"must be 'lif' or 'if', got {_show(n.get('kind'))}")
    if "tau" in n:
        _number(where, f"{name}.tau", n["tau"], 1.0, 1e6, low_open=True)
    if "v_threshold" in n:
        _number(where, f"{name}.v_threshold", n["v_threshold"], 0.0, 1e6, low_open=True)
    if n.get("v_reset") is not None:
        _number(where, f"{name}.v_reset", n["v_reset"], -1e6, 1e6)
    if "decay_input" in n:
        _bool(where, f"{name}.decay_input", n["decay_input"])


def _exps(where: str, value: Any, spec: NetworkSpec, partition: int, frozen_format: str) -> dict[int, int]:
    quant = _dict(where, "quant", value)
    unknown = sorted(set(quant) - {"exps"})
    if unknown:
        raise _fail(where, f"quant.{unknown[0]}", "is not a known field (known: exps)")
    raw = _dict(where, "quant.exps", quant.get("exps"))
    synaptic = set(spec.synaptic_layers())
    out = {}
    for key, exp in raw.items():
        if not (key.isascii() and key.isdigit() and key == str(int(key)) and int(key) in synaptic):
            raise _fail(where, f"quant.exps.{key}", f"must name a layer with weights (one of "
                                                    f"{', '.join(map(str, sorted(synaptic)))})")
        i = int(key)
        out[i] = _int(where, f"quant.exps.{key}", exp, *EXP_RANGE)
        _check_exponent(where, f"quant.exps.{key}", spec.layers[i], out[i])
    need = {i for i in synaptic if i >= partition or frozen_format == "npz"}
    missing = sorted(need - set(out))
    if missing:
        raise _fail(where, f"quant.exps.{missing[0]}", "is missing (every layer with int8 weights needs one)")
    return out


def _check_exponent(where: str, name: str, layer, exp: int) -> None:
    """The layer's threshold and reset in its fixed point (``v * 2**exp``) must be int32 values."""
    neuron = layer.neuron
    vth = round(neuron.v_threshold * 2.0 ** exp)
    vreset = round((neuron.v_reset or 0.0) * 2.0 ** exp)
    if abs(vth) > INT32_MAX or abs(vreset) > INT32_MAX:
        raise _fail(where, name, f"= {exp} puts the neuron threshold {neuron.v_threshold} at {vth} in fixed "
                                 f"point, outside the int32 range")


def _finetune(where: str, value: Any, network: NetworkSpec, partition: int) -> dict:
    ft = _dict(where, "finetune", value)
    out = {}
    for key, v in ft.items():
        if key not in FINETUNE_FIELDS:
            raise _fail(where, f"finetune.{key}", f"is not a known field (known: {', '.join(FINETUNE_FIELDS)})")
        kind, low, high = FINETUNE_FIELDS[key]
        if kind == "shape":
            dims = [_int(where, f"finetune.{key}[{i}]", d, 1, MAX_IMAGE_SIDE)
                    for i, d in enumerate(_list(where, f"finetune.{key}", v, low, high))]
            if math.prod(dims) != math.prod(network.input_shape):
                raise _fail(where, f"finetune.{key}", f"{dims} does not hold the network's input "
                                                      f"{list(network.input_shape)}")
            out[key] = dims
        elif kind == "bool":
            out[key] = _bool(where, f"finetune.{key}", v)
        elif kind == "int":
            out[key] = _int(where, f"finetune.{key}", v, low, high)
        elif kind == "number":
            out[key] = _number(where, f"finetune.{key}", v, low, high, low_open=key == "lr")
        elif v not in low:
            raise _fail(where, f"finetune.{key}", f"must be one of {', '.join(low)}, got {_show(v)}")
        else:
            out[key] = v
    if out.get("augment_shift"):
        if "image_shape" not in out:
            raise _fail(where, "finetune.augment_shift", "needs finetune.image_shape (the input as an image)")
        if partition != 0:
            raise _fail(where, "finetune.augment_shift", "shifts the network's input: needs partition 0")
    return out
