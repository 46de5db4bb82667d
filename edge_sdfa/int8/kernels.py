"""The registry of int8 kernel sets: the one place that lists them.

A kernel set is a module with ``NAME`` and the entry points ``ENTRY_POINTS`` (documented in
``edge_sdfa.int8.reference``, the numpy set and the spec). ``c`` is the C set, built at install
time (``setup.py``) into a shared library shipped in the package; where no build was possible
``auto`` runs the numpy set. Sets are imported lazily, so this module imports no set and no set
imports it.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from edge_sdfa.errors import UserError

ENTRY_POINTS = ("prepare_inputs", "dense_current", "conv_current", "neuron_run", "local_deltas", "exact_deltas", "dense_update")
SETS = {
    "numpy": "edge_sdfa.int8.reference",
    "c": "edge_sdfa.int8.c_kernels",
}
ENV = "EDGE_SDFA_KERNELS"


def _load(name: str) -> ModuleType:
    module = importlib.import_module(SETS[name])
    check = getattr(module, "available", None)
    if check is not None:
        check()  # UserError (one line) when the set cannot run here
    return module


def get(name: str | None = None) -> ModuleType:
    """A kernel set by name: ``numpy``, ``c`` or ``auto`` (c where its library was built at
    install time and loads, else numpy). None: ``$EDGE_SDFA_KERNELS`` or ``auto``."""
    name = name or os.environ.get(ENV) or "auto"
    if name == "auto":
        try:
            return _load("c")
        except UserError as exc:
            if getattr(exc, "warn_on_fallback", False):
                _warn_once(f"warning: {exc}; running the numpy kernels")
            return _load("numpy")
    if name not in SETS:
        raise UserError(f"unknown kernel set {name!r} (expected {', '.join(SETS)} or auto)")
    return _load(name)


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


def resolve(kernels: ModuleType | str | None) -> ModuleType:
    """A kernel set given as a module, a name, or None (the numpy reference)."""
    if kernels is None:
        return _load("numpy")
    if isinstance(kernels, str):
        return get(kernels)
    return kernels
