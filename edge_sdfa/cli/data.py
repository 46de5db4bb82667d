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


def split_batch_test(y, per_class: int, seed: int = 0):
    """Positions of the user's batch (``per_class`` samples of each class, a seeded draw) and of
    the user's test part (every other sample): disjoint, with their own seed."""
    import numpy as np

    rng = np.random.default_rng([seed, 4242])
    batch = []
    for c in np.unique(y):
        batch.extend(rng.permutation(np.flatnonzero(y == c))[:per_class])
    batch = np.sort(np.asarray(batch, np.int64))
    return batch, np.setdiff1d(np.arange(len(y)), batch)


def export(spec: str, out: str, time_steps: int | None = None, limit: int | None = None, *,
           test_out: str | None = None, per_class: int | None = None, split_seed: int = 0) -> dict:
    """Bin a data set spec to dense spikes and write them as a user-data ``.npz``. With
    ``test_out``, ``out`` gets ``per_class`` samples of each class (the batch the device trains and
    selects on) and ``test_out`` all the others (the user's unseen test part)."""
    if (test_out is None) != (per_class is None):
        raise UserError("--test-out and --per-class go together")
    if per_class is not None and per_class < 2:
        raise UserError("--per-class must be >= 2 (the device keeps some of each class for validation)")
    from edge_sdfa import userdata

    source = plugins.data_source()
    if source is None:
        raise UserError(f"data export needs the host tools (pip install 'edge-sdfa[host]'), got {spec!r}")
    x, y, subject = source.load_arrays(spec, time_steps=time_steps, limit=limit)
    if x.dtype != "uint8":
        from edge_sdfa.errors import DataError

        raise DataError(f"{spec}: analog (non-spike) data cannot be exported as user data")
    report = {"out": out, "samples": int(len(y)), "time_steps": int(x.shape[1]), "input_shape": list(x.shape[2:]),
              "subjects": None if subject is None else int(len(set(subject.tolist())))}
    if test_out is None:
        userdata.save_user_data(out, y=y, x=x, subject=subject)
        return report
    batch, test = split_batch_test(y, per_class, split_seed)
    if len(test) == 0:
        raise UserError(f"{spec}: no samples left for the test part with --per-class {per_class}")
    pick = lambda a, idx: None if a is None else a[idx]
    userdata.save_user_data(out, y=y[batch], x=x[batch], subject=pick(subject, batch))
    userdata.save_user_data(test_out, y=y[test], x=x[test], subject=pick(subject, test))
    report.update({"samples": int(len(batch)), "test_out": test_out, "test_samples": int(len(test)),
                   "split_seed": split_seed})
    return report


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
                   test_out: str = typer.Option(None, "--test-out",
                                                help="also write the user's unseen test part here (needs --per-class)"),
                   per_class: int = typer.Option(None, "--per-class",
                                                 help="samples per class in OUT (the batch); the rest go to --test-out"),
                   split_seed: int = typer.Option(0, "--split-seed", help="seed of the batch/test split"),
                   as_json: bool = typer.Option(False, "--json", help="print JSON on stdout")) -> None:
        """Bin a data set to spikes and write it in the device's npz user-data format."""
        print(f"exporting {spec} ...", file=sys.stderr)
        emit(export(spec, out, frames, limit, test_out=test_out, per_class=per_class, split_seed=split_seed), as_json)

    app.add_typer(data_app, name="data")
