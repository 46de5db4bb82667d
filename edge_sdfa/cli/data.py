"""CLI commands: ``edge-sdfa data info|export``: inspect a data set spec, or write it as user data.

Data-set specs other than ``npz:`` come from the installed data source (``edge_sdfa.plugins``, the host
tools register one); ``data info npz:PATH`` works on a device with numpy only.
"""
from __future__ import annotations

import sys

import typer

from edge_sdfa import plugins
from edge_sdfa.cli.output import emit
from edge_sdfa.errors import UserError


def info(spec: str) -> dict:
    """Summary of a data set spec: samples, classes, subjects, sensor, events_per_sample_mean, ..."""
    source = plugins.data_source()
    if source is None:
        if spec.startswith("npz:") and "?" not in spec:
            from edge_sdfa import userdata

            return {"spec": spec, "kind": "npz", **userdata.describe(spec[4:])}
        raise UserError(f"data set {spec!r} needs the host tools (only npz:PATH works on a device)")
    return source.describe(spec)


def export(spec: str, out: str, time_steps: int | None = None, limit: int | None = None) -> dict:
    """Bin a data set spec to dense spikes and write them as a user-data ``.npz``."""
    from edge_sdfa import userdata

    source = plugins.data_source()
    if source is None:
        raise UserError(f"data export needs the host tools (pip install 'edge-sdfa[host]'), got {spec!r}")
    x, y, subject = source.load_arrays(spec, time_steps=time_steps, limit=limit)
    if x.dtype != "uint8":
        from edge_sdfa.errors import DataError

        raise DataError(f"{spec}: analog (non-spike) data cannot be exported as user data")
    userdata.save_user_data(out, y=y, x=x, subject=subject)
    return {"out": out, "samples": int(len(y)), "time_steps": int(x.shape[1]),
            "input_shape": list(x.shape[2:]), "subjects": None if subject is None else int(len(set(subject.tolist())))}


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(name="data", help="Data sets: inspect specs, export user data.",
                           no_args_is_help=True, add_completion=False)

    @data_app.command("info")
    def info_cmd(spec: str = typer.Argument(..., help="data set spec, e.g. digits, nmnist:PATH?split=test"),
                 as_json: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
        """Summarise a data set: samples, classes, subjects, sensor, events per sample."""
        emit(info(spec), as_json)

    @data_app.command("export")
    def export_cmd(spec: str = typer.Argument(..., help="data set spec"),
                   out: str = typer.Argument(..., help="output .npz (user-data format)"),
                   frames: int = typer.Option(None, "--frames", "-T", help="time steps (default: the data set's)"),
                   limit: int = typer.Option(None, "--limit", help="first N samples only"),
                   as_json: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
        """Bin a data set to spikes and write it in the device's npz user-data format."""
        print(f"exporting {spec} ...", file=sys.stderr)
        emit(export(spec, out, frames, limit), as_json)

    app.add_typer(data_app, name="data")
