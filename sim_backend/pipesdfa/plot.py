"""Breakdown plots of a bench report (matplotlib, imported lazily): energy by phase x component,
serial busy time by phase, and per-layer latency, energy and area of both designs, area by component."""
from __future__ import annotations

from pathlib import Path

from edge_sdfa.errors import UserError, require

from .ledger import COMPONENTS, PHASES

SYSTEMS = (("PipeSDFA", "sdfa"), ("PipeLayer", "pipelayer"))


def plot_breakdown(report: dict, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--plot needs a .png, .pdf or .svg file name, got {path}")
    if not path.parent.exists():
        raise UserError(f"no such directory: {path.parent}")
    matplotlib = require("matplotlib", "--plot", extra="host")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.4))
    colors = plt.get_cmap("tab20").colors
    _energy(axes[0, 0], report, colors)
    _busy(axes[0, 1], report, colors)
    _area(axes[0, 2], report, colors)
    for ax, key, unit, scale in ((axes[1, 0], "latency_s", "busy time per update (ms)", 1e3),
                                 (axes[1, 1], "energy_j", "dynamic energy per update (mJ)", 1e3),
                                 (axes[1, 2], "area_mm2", "area (mm$^2$)", 1.0)):
        _per_layer(ax, report, key, unit, scale)
    fig.suptitle(f"{report['workload']} ({report['preset']}): speedup {report['speedup']:.2f}x, "
                 f"energy ratio {report['energy_ratio']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _energy(ax, report, colors):
    for k, (label, key) in enumerate(SYSTEMS):
        rep = report[key]
        table = rep["breakdown"]["energy_j"]["table"]
        bottom = 0.0
        for p_i, phase in enumerate(PHASES):
            for c_i, comp in enumerate(COMPONENTS):
                v = table[phase][comp] * 1e3
                if v <= 0:
                    continue
                ax.bar(k, v, bottom=bottom, color=colors[(p_i * 5 + c_i) % len(colors)], label=f"{phase}/{comp}")
                bottom += v
        leak = rep.get("leakage_j", 0.0) * 1e3
        if leak > 0:
            ax.bar(k, leak, bottom=bottom, color="0.6", hatch="//", label="leakage")
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    ax.legend(seen.values(), seen.keys(), fontsize=5.5, ncol=2, loc="upper left")
    ax.set_xticks([0, 1], [s[0] for s in SYSTEMS])
    ax.set_ylabel("energy per update (mJ)")
    ax.set_title("energy: phase x component, leakage")


def _busy(ax, report, colors):
    for k, (label, key) in enumerate(SYSTEMS):
        rep = report[key]
        by_phase = rep["breakdown"]["busy_s"]["by_phase"]
        bottom = 0.0
        for p_i, phase in enumerate(PHASES):
            v = by_phase[phase] * 1e3
            ax.bar(k, v, bottom=bottom, color=colors[p_i * 5 % len(colors)], label=phase if k == 0 else None)
            bottom += v
        ax.plot([k - 0.4, k + 0.4], [rep["latency_s"] * 1e3] * 2, "k--", lw=1.2,
                label="pipelined latency" if k == 0 else None)
    ax.set_xticks([0, 1], [s[0] for s in SYSTEMS])
    ax.set_ylabel("busy time per update (ms, serial)")
    ax.set_title("time: serial busy vs pipelined")
    ax.legend(fontsize=7)


def _area(ax, report, colors):
    for k, (label, key) in enumerate(SYSTEMS):
        comps = report[key]["area_mm2"]["by_component"]
        bottom = 0.0
        for c_i, comp in enumerate(COMPONENTS):
            v = comps[comp]
            ax.bar(k, v, bottom=bottom, color=colors[c_i * 2 % len(colors)], label=comp if k == 0 else None)
            bottom += v
    ax.set_xticks([0, 1], [s[0] for s in SYSTEMS])
    ax.set_ylabel("area (mm$^2$)")
    ax.set_title("area by component")
    ax.legend(fontsize=7)


def _per_layer(ax, report, key, unit, scale):
    rows = report["layers"]
    xs = range(len(rows))
    w = 0.4
    for k, (label, side) in enumerate(SYSTEMS):
        ax.bar([x + (k - 0.5) * w for x in xs], [r[side][key] * scale for r in rows], w, label=label)
    ax.set_xticks(list(xs), [f"{r['layer']}{'' if r['trainable'] else '*'}" for r in rows], fontsize=7)
    ax.set_xlabel("layer (* frozen)")
    ax.set_ylabel(unit)
    ax.set_title(f"per layer: {unit.split(' (')[0]}")
    ax.legend(fontsize=7)
