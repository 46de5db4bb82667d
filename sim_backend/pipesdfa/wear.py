"""Wear: write pulses per cell per update, and the lifetime they leave at a given endurance."""
from __future__ import annotations

from .accounting import LayerCost


def wear_report(layers: list[LayerCost], endurance: float, seconds_per_update: float) -> dict:
    trainable = [c for c in layers if c.geometry.trainable]
    if not trainable:
        return {"pulses_per_cell_per_update": 0.0, "lifetime_updates": None}
    cells = sum(c.geometry.mapping.cells for c in trainable)
    mean = sum(c.pulses_per_cell * c.geometry.mapping.cells for c in trainable) / cells
    worst = max(trainable, key=lambda c: c.pulses_per_cell)
    updates = endurance / worst.pulses_per_cell if worst.pulses_per_cell > 0 else float("inf")
    return {
        "pulses_per_cell_per_update": mean,
        "worst_layer": worst.geometry.index,
        "worst_layer_pulses_per_cell_per_update": worst.pulses_per_cell,
        "endurance_pulses": endurance,
        "lifetime_updates": updates,
        "lifetime_s_continuous": updates * seconds_per_update,
        "note": "mean pulses of the most-written layer; a hot cell can wear faster (the functional "
                "backend reports the per-cell maximum from real updates)",
    }
