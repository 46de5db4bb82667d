"""Side-by-side breakdown plot of a bench report (matplotlib, imported lazily)."""
from __future__ import annotations

from pathlib import Path

from edge_sdfa.errors import UserError, require

from .ledger import COMPONENTS, PHASES


def plot_breakdown(report: dict, path: str | Path) -> Path:
    """Stacked bars: energy by phase x component, and serial busy time by phase, SDFA vs BP."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--plot needs a .png, .pdf or .svg file name, got {path}")
    if not path.parent.exists():
        raise UserError(f"no such directory: {path.parent}")
    matplotlib = require("matplotlib", "--plot", extra="host")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    systems = (("PipeSDFA", report["sdfa"]), ("PipeLayer BP", report["pipelayer"]))
    colors = plt.get_cmap("tab20").colors
    for k, (label, rep) in enumerate(systems):
        table = rep["breakdown"]["energy_j"]["table"]
        bottom = 0.0
        for p_i, phase in enumerate(PHASES):
            for c_i, comp in enumerate(COMPONENTS):
                v = table[phase][comp] * 1e3
                if v <= 0:
                    continue
                ax_e.bar(k, v, bottom=bottom, color=colors[(p_i * 5 + c_i) % len(colors)],
                         label=f"{phase}/{comp}")
                bottom += v
    handles, labels = ax_e.get_legend_handles_labels()
    seen = {}
    for h, l in zip(handles, labels):
        seen.setdefault(l, h)
    ax_e.legend(seen.values(), seen.keys(), fontsize=6, ncol=2, loc="upper left")
    ax_e.set_xticks([0, 1], [s[0] for s in systems])
    ax_e.set_ylabel("energy per update (mJ)")
    ax_e.set_title(f"{report['workload']}: energy ratio {report['energy_ratio']:.2f}x")
    for k, (label, rep) in enumerate(systems):
        by_phase = rep["breakdown"]["busy_s"]["by_phase"]
        bottom = 0.0
        for p_i, phase in enumerate(PHASES):
            v = by_phase[phase] * 1e3
            ax_t.bar(k, v, bottom=bottom, color=colors[p_i * 5 % len(colors)], label=phase if k == 0 else None)
            bottom += v
        ax_t.plot([k - 0.4, k + 0.4], [rep["latency_s"] * 1e3] * 2, "k--", lw=1.2,
                  label="pipelined latency" if k == 0 else None)
    ax_t.set_xticks([0, 1], [s[0] for s in systems])
    ax_t.set_ylabel("busy time per update (ms, serial)")
    ax_t.set_title(f"speedup {report['speedup']:.2f}x ({report['preset']})")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
