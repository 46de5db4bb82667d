"""Entry-point plug-ins: how packages that depend on ``edge_sdfa`` extend it without it knowing them.

Three groups, each declared by the package that provides the plug-in (``pyproject.toml``):
- ``edge_sdfa.backends``: name -> a Backend class (``edge_sdfa.backend``);
- ``edge_sdfa.commands``: name -> ``register(app: typer.Typer)``, which adds a CLI command group;
- ``edge_sdfa.data_sources``: name -> a module with ``load_arrays(spec, time_steps=None, limit=None)``
  returning ``(x[N, T, ...], y[N], subject or None)`` and ``describe(spec) -> dict``.

The arrows point down: ``edge_sdfa`` never imports the packages that register here, so a device
install that has none of them simply has fewer commands and only ``npz:`` data.
"""
from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points as _entry_points

BACKENDS = "edge_sdfa.backends"
COMMANDS = "edge_sdfa.commands"
DATA_SOURCES = "edge_sdfa.data_sources"


def entry_points(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of ``group`` by name (empty when metadata is unavailable)."""
    try:
        eps = _entry_points()
        found = eps.select(group=group) if hasattr(eps, "select") else eps.get(group, [])
    except Exception:  # broken or missing distribution metadata: no plug-ins
        return {}
    return {ep.name: ep for ep in found}


def load_object(value: str):
    """``module:attr`` (or ``module``) -> the object."""
    module_name, _, attr = value.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def data_source():
    """The first installed data-set source (host tools), or None on a device install."""
    for _, ep in sorted(entry_points(DATA_SOURCES).items()):
        try:
            return load_object(ep.value)
        except ImportError:
            continue
    return None
