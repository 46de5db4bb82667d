"""CLI command: ``edge-sdfa bench`` -- latency and energy of SDFA fine-tuning on a simulated accelerator."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edge_sdfa.cli.output import emit
from edge_sdfa.errors import UserError

BACKENDS = ("pipesdfa",)


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        backend: str = typer.Option("pipesdfa", "--backend", help="Simulated accelerator (pipesdfa)."),
        workload: str = typer.Option(..., "--workload", help="nmnist-mlp2..5, shd-mlpb, braille-mlpb, dvs-convnet, "
                                     "dvs-vgg11, ncaltech-vgg11, or bundle:PATH"),
        preset: str = typer.Option("neurosim32", "--preset", help="Hardware preset (neurosim32, isaac) or a JSON file."),
        batch: Optional[int] = typer.Option(None, "--batch", help="Batch size (default: the workload's)."),
        update_mode: str = typer.Option("row-serial", "--update-mode", help="row-serial, parallel or write-verify."),
        adc_bits: Optional[int] = typer.Option(None, "--adc-bits", help="Override the preset's ADC bits (1 = sense amp)."),
        endurance: Optional[float] = typer.Option(None, "--endurance", help="Write pulses a cell survives "
                                                  "(default: the preset's, 1e6)."),
        raw: str = typer.Option("wait", "--raw", help="Read-after-write between batches: wait (default) or stale."),
        sweep: Optional[List[str]] = typer.Option(None, "--sweep", help="KEY=V1,V2,... (repeat for a grid): "
                                                  "section.field of the preset, activity.FIELD, or batch."),
        csv_path: Optional[str] = typer.Option(None, "--csv", help="With --sweep: also write the rows to FILE.csv."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        plot: Optional[str] = typer.Option(None, "--plot", help="Draw the energy and latency breakdown to FILE.png."),
    ) -> None:
        """Per-update latency, energy and area of PipeSDFA against the PipeLayer baseline."""
        if backend not in BACKENDS:
            raise UserError(f"unknown bench backend {backend!r} (available: {', '.join(BACKENDS)})")
        from sim_backend.pipesdfa.costs import Activity

        activity = Activity(update_mode=update_mode)
        if sweep:
            _sweep(workload, preset, batch, activity, sweep, csv_path, as_json)
            return
        if csv_path:
            raise UserError("--csv needs --sweep")
        from sim_backend.pipesdfa.report import bench as run_bench

        report = run_bench(workload, preset=preset, batch=batch, activity=activity,
                           adc_bits=adc_bits, endurance=endurance, raw=raw)
        if plot:
            from sim_backend.pipesdfa.plot import plot_breakdown

            report["plot"] = str(plot_breakdown(report, plot))
        if not as_json:
            report = {k: report[k] for k in ("workload", "preset", "batch", "speedup", "energy_ratio")} | {
                "sdfa_latency_s": report["sdfa"]["latency_s"], "sdfa_energy_j": report["sdfa"]["energy_j"],
                "pipelayer_latency_s": report["pipelayer"]["latency_s"],
                "pipelayer_energy_j": report["pipelayer"]["energy_j"],
                "sdfa_area_mm2": report["sdfa"]["area_mm2"]["total"],
                "pipelayer_area_mm2": report["pipelayer"]["area_mm2"]["total"],
                "pulses_per_cell_per_update": report["wear"]["pulses_per_cell_per_update"],
                "lifetime_updates": report["wear"]["lifetime_updates"]} | (
                {"plot": report["plot"]} if "plot" in report else {})
        emit(report, as_json)


def _sweep(workload, preset, batch, activity, items, csv_path, as_json) -> None:
    from sim_backend.pipesdfa.sweep import parse_sweep, run_sweep, to_csv

    if csv_path:
        path = Path(csv_path)
        if not path.parent.exists():
            raise UserError(f"no such directory: {path.parent}")
    rows = run_sweep(workload, parse_sweep(items), preset=preset, activity=activity, batch=batch)
    if csv_path:
        Path(csv_path).write_text(to_csv(rows))
    if as_json:
        emit({"workload": workload, "preset": preset, "rows": rows} | ({"csv": csv_path} if csv_path else {}), True)
    else:
        typer.echo(to_csv(rows), nl=False)
