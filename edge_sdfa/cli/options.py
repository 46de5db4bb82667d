"""Option checks at the CLI boundary: each bad value is one ``error:`` line naming the option and
its allowed range, raised before any command does work. Ranges shared with the bundle's own
fine-tuning defaults come from ``edge_sdfa.manifest.FINETUNE_FIELDS``."""
from __future__ import annotations

import inspect
import json
import math

from edge_sdfa.errors import UserError
from edge_sdfa.manifest import FINETUNE_FIELDS

MAX_SEED = (1 << 63) - 1


def int_option(flag: str, value: int | None, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise UserError(f"{flag} must be an integer in {low}..{high}, got {value}")
    return value


def float_option(flag: str, value: float | None, low: float, high: float, *, low_open: bool = False) -> float | None:
    if value is None:
        return None
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise UserError(f"{flag} must be a finite number in {bracket}{low:g}, {high:g}], got {value}")
    return value


def choice_option(flag: str, value: str, choices) -> str:
    if value not in choices:
        raise UserError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def finetune_options(*, epochs, batch, lr, mode, seed, margin, rehearsal) -> None:
    """The ``finetune`` options' ranges (the same as a bundle's ``finetune`` defaults may hold)."""
    int_option("--epochs", epochs, *FINETUNE_FIELDS["epochs"][1:])
    int_option("--batch", batch, *FINETUNE_FIELDS["batch_size"][1:])
    float_option("--lr", lr, *FINETUNE_FIELDS["lr"][1:], low_open=True)
    float_option("--rehearsal-ratio", rehearsal, *FINETUNE_FIELDS["rehearsal_ratio"][1:])
    if mode is not None:
        choice_option("--mode", mode, FINETUNE_FIELDS["mode"][1])
    int_option("--seed", seed, 0, MAX_SEED)
    float_option("--margin", margin, 0.0, 1.0)


def backend_options(backend: str, items: list[str]) -> dict:
    """``KEY=VALUE`` items (VALUE parsed as JSON when it is JSON, else kept as text), each KEY a
    keyword the backend's constructor accepts."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--backend-opt expects KEY=VALUE with KEY a name, got {item!r}")
        if key in out:
            raise UserError(f"--backend-opt {key} given twice")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    if out:
        accepted = _constructor_keywords(backend)
        if accepted is not None:
            unknown = sorted(set(out) - accepted)
            if unknown:
                known = ", ".join(sorted(accepted)) or "none"
                raise UserError(f"--backend-opt {unknown[0]}: backend {backend!r} has no such option "
                                f"(its options: {known})")
    return out


def _constructor_keywords(backend: str) -> set[str] | None:
    """Keyword parameters of the backend's constructor; None if it takes ``**kwargs`` (or the
    backend is unknown: ``load_backend`` reports that)."""
    from edge_sdfa import plugins
    from edge_sdfa.backend import available_backends

    found = available_backends()
    if backend not in found:
        return None
    try:
        cls = plugins.load_object(found[backend])
        params = inspect.signature(cls).parameters.values()
    except (ImportError, UserError, TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
