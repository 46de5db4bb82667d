"""The Backend interface: where the trainable head runs and learns.

A backend is programmed with the head's int8 layers, runs the forward pass of a batch, applies
one SDFA update, reads the weights back, and may report the cost of each update (simulated
hardware fills it in). Backends are found through the entry-point group ``edge_sdfa.backends``;
``numpy`` (this module) is the built-in default and the reference every other backend is tested
against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from edge_sdfa import plugins
from edge_sdfa.errors import UserError
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import NetworkSpec



@dataclass
class CostReport:
    """Cost of one update on a (simulated) device. Breakdowns map names to seconds or joules."""

    latency_s: float
    energy_j: float
    breakdown: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "energy_j": self.energy_j, "breakdown": self.breakdown}


@runtime_checkable
class Backend(Protocol):
    name: str

    def program(self, spec: NetworkSpec, layers: qn.QNet, feedback_seed: int, config: qn.UpdateConfig) -> None:
        """Load the head: its spec, int8 layers (with int16 masters), feedback seed, update config."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Output spike counts ``[N, classes]`` for a batch ``x[T, N, ...]``."""

    def update(self, x: np.ndarray, y: np.ndarray, update_index: int) -> qn.UpdateStats:
        """Apply one SDFA update on the batch; ``update_index`` keys the stochastic rounding."""

    def read_weights(self) -> qn.QNet:
        """The head's current int8 layers (with masters)."""

    def cost(self) -> CostReport | None:
        """Cost of the last update, or None for backends that do not model hardware."""

    # Optional: ``close()`` releases processes or devices; callers use getattr(b, "close", None).


class NumpyBackend:
    """The int8 runtime on the CPU with a kernel set (``kernels``: numpy, c or auto; default auto:
    the C set where it was built at install time, bit-identical to the numpy one)."""

    name = "numpy"

    def __init__(self, kernels: str | None = None):
        from edge_sdfa.int8 import kernels as kernel_sets

        self.kernels = kernel_sets.get(kernels)
        self.spec: NetworkSpec | None = None

    @property
    def kernel_set(self) -> str:
        """The name of the kernel set that runs (for reports: ``"kernels": "c"``)."""
        return self.kernels.NAME

    def program(self, spec, layers, feedback_seed, config):
        self.spec, self.layers, self.config = spec, list(layers), config
        self.feedback = qn.feedback_int8(spec, feedback_seed)

    def forward(self, x):
        return qn.forward(self.spec, self.layers, x, self.kernels).counts

    def update(self, x, y, update_index):
        self.layers, stats = qn.sdfa_update(self.spec, self.layers, x, y, self.feedback, self.config,
                                            update_index, self.kernels)
        return stats

    def read_weights(self):
        return list(self.layers)

    def cost(self):
        return None


def available_backends() -> dict[str, str]:
    """Backend names and where they come from (``module:attr``)."""
    found = {"numpy": "edge_sdfa.backend:NumpyBackend"}
    for name, ep in plugins.entry_points(plugins.BACKENDS).items():
        found.setdefault(name, ep.value)
    return found


def load_backend(name: str, **options) -> Backend:
    """Instantiate a backend by name, or by ``module:Class`` for one that no distribution
    registers (a backend under development is then one module and no packaging); a one-line
    UserError names the available ones."""
    found = available_backends()
    if name not in found and ":" not in name:
        raise UserError(f"unknown backend {name!r} (available: {', '.join(sorted(found))}, or module:Class)")
    try:
        cls = plugins.load_object(found.get(name, name))
    except UserError:
        raise
    except (ImportError, AttributeError) as exc:
        raise UserError(f"backend {name!r} cannot be loaded: {exc} (available: {', '.join(sorted(found))})") from None
    return cls(**options)
