"""Data set spec strings: ``kind[:PATH][?key=value&key=value]``.

Examples: ``digits``, ``digits-events?split=test``, ``nmnist:/data/NMNIST?split=train&frames=10``,
``shd:/data/hdspikes?split=test&subject=4,5``, ``npz:/home/pi/user.npz``.
Options are validated against the kind's list; an unknown one is a DataError naming it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from edge_sdfa.errors import DataError

# Options every kind accepts (see docs/datasets.md).
COMMON_OPTIONS = {
    "split": "train | test | all",
    "subject": "keep only these subject ids (comma separated)",
    "exclude_subject": "drop these subject ids (comma separated)",
    "frames": "time steps T of the dense frames",
    "split_by": "number | time | fixed: how events are cut into T frames (SpikingJelly semantics; fixed = bin_us bins)",
    "bin_us": "bin width in µs for split_by=fixed (default 1000)",
    "mode": "count | binary: event counts per bin (clipped to 255) or 0/1",
    "downsample": "integer spatial pooling factor for camera data",
    "flatten": "1 | 0: flatten each frame to a vector (default: as the reference)",
    "limit": "use only the first N samples (after filtering)",
    "user": "synthetic user id: apply that user's deterministic shift (see shifts.py)",
    "shift": "which shift kinds to apply with user= (comma separated; default all that apply)",
    "seed": "seed of the encoding (rate coding, emulator noise)",
}

@dataclass(frozen=True)
class Kind:
    """One data set kind: its reader class (``module:Class`` in this package, imported only when a
    spec of the kind is opened), its own options (``COMMON_OPTIONS`` apply to every kind) and
    whether its spec needs a path (``kind:PATH``). A new format is its reader module plus one entry
    in ``KINDS``."""

    reader: str
    options: dict[str, str] = field(default_factory=dict)
    path: bool = False


KINDS: dict[str, Kind] = {
    "digits": Kind("offline:Digits", {"encoding": "rate | events"}),
    "digits-events": Kind("offline:Digits"),
    "nmnist": Kind("atis:NMNIST", {"first_saccade_only": "1: keep only events of the first 100 ms"}, path=True),
    "shd": Kind("shd:SHD", {"max_time": "seconds covered by the T bins (default 1.4)",
                            "binning": "reference | uniform"}, path=True),
    "dvsgesture": Kind("dvsgesture:DVSGesture", {"condition": "lighting condition(s) to keep (comma separated)"},
                       path=True),
    "ncaltech101": Kind("atis:NCaltech101", {"test_fraction": "fraction held out for split=test (default 0.2)"},
                        path=True),
    "braille": Kind("braille:Braille", {"encoding": "delta | analog",
                                        "threshold": "delta threshold in std units (default 0.1)",
                                        "taxels": "comma separated taxel indices or 'all' (default 1,2,6,10)"},
                    path=True),
    "idx": Kind("offline:Idx", {"encoding": "events | rate"}, path=True),
    "npz": Kind("npzdata:NpzUserData", path=True),
}

KIND_OPTIONS: dict[str, dict[str, str]] = {name: kind.options for name, kind in KINDS.items()}
KINDS_WITH_PATH = {name for name, kind in KINDS.items() if kind.path}


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def get(self, key: str, default=None):
        return self.options.get(key, default)

    def get_int(self, key: str, default: int | None = None) -> int | None:
        value = self.options.get(key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise DataError(f"option {key}={value!r} in {self.text!r} is not an integer") from None

    def get_float(self, key: str, default: float | None = None) -> float | None:
        value = self.options.get(key)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except ValueError:
            raise DataError(f"option {key}={value!r} in {self.text!r} is not a number") from None

    def get_list(self, key: str) -> list[str] | None:
        value = self.options.get(key)
        if value is None or value == "":
            return None
        return [v.strip() for v in value.split(",") if v.strip()]

    def with_options(self, **options) -> "DataSpec":
        merged = dict(self.options)
        for key, value in options.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = str(value)
        return DataSpec(self.kind, self.path, merged, self.text)


def parse_spec(text: str) -> DataSpec:
    """Parse a spec string; raise DataError for an unknown kind, a missing path or an unknown option."""
    if not isinstance(text, str) or not text.strip():
        raise DataError("empty data set spec")
    text = text.strip()
    head, _, query = text.partition("?")
    kind, colon, path = head.partition(":")
    kind = kind.strip().lower()
    if kind not in KIND_OPTIONS:
        raise DataError(f"unknown data set kind {kind!r} in {text!r} "
                        f"(known: {', '.join(sorted(KIND_OPTIONS))}; e.g. 'nmnist:PATH')")
    if kind in KINDS_WITH_PATH:
        if not path:
            raise DataError(f"data set spec {text!r} needs a path: '{kind}:PATH'")
        path = os.path.expanduser(path)
    elif colon:
        raise DataError(f"data set kind {kind!r} takes no path (got {text!r})")
    else:
        path = None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(f"cannot parse options {query!r} in {text!r} (expected key=value&key=value)") from None
    allowed = {**COMMON_OPTIONS, **KIND_OPTIONS[kind]}
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise DataError(f"unknown option {key!r} for {kind} data in {text!r} "
                            f"(known: {', '.join(sorted(allowed))})")
        options[key] = value
    split = options.get("split")
    if split is not None and split not in ("train", "test", "all"):
        raise DataError(f"option split={split!r} in {text!r} must be train, test or all")
    if options.get("split_by") not in (None, "number", "time", "fixed"):
        raise DataError(f"option split_by={options['split_by']!r} in {text!r} must be number, time or fixed")
    if options.get("mode") not in (None, "count", "binary"):
        raise DataError(f"option mode={options['mode']!r} in {text!r} must be count or binary")
    return DataSpec(kind, path, options, text)
