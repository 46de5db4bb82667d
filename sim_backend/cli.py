"""CLI command: ``edge-sdfa bench`` -- latency and energy of SDFA fine-tuning on a simulated accelerator."""
from __future__ import annotations

from typing import Optional

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
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        plot: Optional[str] = typer.Option(None, "--plot", help="Draw the energy and latency breakdown to FILE.png."),
    ) -> None:
        """Per-update latency and energy of PipeSDFA against a PipeLayer-style BP baseline."""
        if backend not in BACKENDS:
            raise UserError(f"unknown bench backend {backend!r} (available: {', '.join(BACKENDS)})")
        from sim_backend.pipesdfa.costs import Activity
        from sim_backend.pipesdfa.report import bench as run_bench

        report = run_bench(workload, preset=preset, batch=batch, activity=Activity(update_mode=update_mode),
                           adc_bits=adc_bits, endurance=endurance)
        if plot:
            from sim_backend.pipesdfa.plot import plot_breakdown

            report["plot"] = str(plot_breakdown(report, plot))
        if not as_json:
            report = {k: report[k] for k in ("workload", "preset", "batch", "speedup", "energy_ratio")} | {
                "sdfa_latency_s": report["sdfa"]["latency_s"], "sdfa_energy_j": report["sdfa"]["energy_j"],
                "pipelayer_latency_s": report["pipelayer"]["latency_s"],
                "pipelayer_energy_j": report["pipelayer"]["energy_j"],
                "pulses_per_cell_per_update": report["wear"]["pulses_per_cell_per_update"],
                "lifetime_updates": report["wear"]["lifetime_updates"]} | (
                {"plot": report["plot"]} if "plot" in report else {})
        emit(report, as_json)
