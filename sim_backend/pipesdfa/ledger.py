"""Energy and latency tables broken down by phase (rows) and component (columns)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PHASES = ("forward", "error", "gradient", "write")
COMPONENTS = ("array", "adc", "drivers", "buffers", "interconnect", "digital")
_P = {p: i for i, p in enumerate(PHASES)}
_C = {c: i for i, c in enumerate(COMPONENTS)}


@dataclass(frozen=True)
class Breakdown:
    """An immutable phase x component table of joules (or seconds)."""

    table: np.ndarray = field(default_factory=lambda: np.zeros((len(PHASES), len(COMPONENTS))))

    def __post_init__(self):
        self.table.setflags(write=False)

    @classmethod
    def of(cls, phase: str, **components: float) -> "Breakdown":
        t = np.zeros((len(PHASES), len(COMPONENTS)))
        for comp, value in components.items():
            t[_P[phase], _C[comp]] += float(value)
        return cls(t)

    def __add__(self, other: "Breakdown") -> "Breakdown":
        return Breakdown(self.table + other.table)

    def __mul__(self, k: float) -> "Breakdown":
        return Breakdown(self.table * float(k))

    __rmul__ = __mul__

    def total(self) -> float:
        return float(self.table.sum())

    def phase(self, name: str) -> float:
        return float(self.table[_P[name]].sum())

    def component(self, name: str) -> float:
        return float(self.table[:, _C[name]].sum())

    def get(self, phase: str, component: str) -> float:
        return float(self.table[_P[phase], _C[component]])

    def to_dict(self) -> dict:
        return {
            "by_phase": {p: self.phase(p) for p in PHASES},
            "by_component": {c: self.component(c) for c in COMPONENTS},
            "table": {p: {c: float(self.table[_P[p], _C[c]]) for c in COMPONENTS} for p in PHASES},
        }


def zero() -> Breakdown:
    return Breakdown()


def total(items) -> Breakdown:
    out = zero()
    for item in items:
        out = out + item
    return out
