"""Device commands: finetune, eval, info, store status|revert|reset, backends."""
from __future__ import annotations

from typing import Optional

import typer

from edge_sdfa.cli.output import emit
from edge_sdfa.spec import TEMPORAL_MODES


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
    app.command("eval")(eval_)
    app.command("info")(info)
    app.command("backends")(backends)
    store_app = typer.Typer(help="The device's A/B weight store.", no_args_is_help=True)
    store_app.command("status")(store_status)
    store_app.command("revert")(store_revert)
    store_app.command("reset")(store_reset)
    app.add_typer(store_app, name="store")


def finetune(
    source: Optional[str] = typer.Argument(None, help="bundle (dir or .tar) or store dir; default: the embedded bundle"),
    data: Optional[str] = typer.Option(None, "--data", help="the user's batch: npz:PATH or a data set spec"),
    test_data: Optional[str] = typer.Option(None, "--test-data", help="the user's unseen samples for the report"),
    backend: str = typer.Option("numpy", "--backend", help="numpy | pipesdfa | lava | any installed backend"),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch: Optional[int] = typer.Option(None, "--batch"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    mode: Optional[str] = typer.Option(None, "--mode", help=" | ".join(TEMPORAL_MODES) + " (default: the bundle's)"),
    store: Optional[str] = typer.Option(None, "--store", help="store dir (default: the user's data dir)"),
    seed: int = typer.Option(0, "--seed", help="seeds training only (order, rehearsal, rounding stream)"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the user's train/validation split"),
    margin: float = typer.Option(0.02, "--margin", help="allowed holdout accuracy drop"),
    rehearsal: Optional[float] = typer.Option(None, "--rehearsal-ratio",
                                              help="rehearsal samples per user sample each epoch (bundle default)"),
    rehearsal_max: Optional[float] = typer.Option(None, "--rehearsal-max",
                                                  help="adaptive rehearsal: the ratio doubles up to this when the "
                                                       "holdout falls (bundle default)"),
    backend_opt: list[str] = typer.Option([], "--backend-opt", help="KEY=VALUE passed to the backend"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
):
    """Fine-tune the head on the user's batch with SDFA; commit only if it does no harm."""
    from edge_sdfa.cli import options
    from edge_sdfa.finetune import FinetuneConfig, finetune as run

    options.finetune_options(epochs=epochs, batch=batch, lr=lr, mode=mode, seed=seed, margin=margin,
                             rehearsal=rehearsal)
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch, lr=lr, mode=mode, backend=backend, seed=seed,
                         split_seed=split_seed, margin=margin, rehearsal_ratio=rehearsal, rehearsal_max=rehearsal_max,
                         backend_options=options.backend_options(backend, backend_opt))
    report = run(source, data, store=store, test_data=test_data, config=cfg, progress=not quiet)
    emit(report, as_json)


def eval_(
    source: Optional[str] = typer.Argument(None, help="store dir (its active weights) or bundle (its own weights); "
                                                      "default: the default store, else the embedded bundle"),
    data: Optional[str] = typer.Option(None, "--data"),
    store: Optional[str] = typer.Option(None, "--store", help="an existing store; with a bundle, the store's "
                                                              "weights for that bundle's model and version"),
    backend: str = typer.Option("numpy", "--backend"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Accuracy of the active weights on user data and on the bundle's holdout. Writes nothing."""
    from edge_sdfa.finetune import evaluate

    emit(evaluate(source, data, store=store, backend=backend), as_json)


def info(bundle: str = typer.Argument(..., help="bundle dir or .tar"),
         as_json: bool = typer.Option(False, "--json")):
    """Verify a bundle and describe it."""
    from edge_sdfa.bundle import info as bundle_info

    emit(bundle_info(bundle), as_json)


def backends(as_json: bool = typer.Option(False, "--json")):
    """Backends found through the edge_sdfa.backends entry points."""
    from edge_sdfa.backend import available_backends

    emit(available_backends(), as_json)


def _store(path: Optional[str]):
    from edge_sdfa.finetune import default_store_dir
    from edge_sdfa.store import Store

    return Store(path or default_store_dir())


def store_status(store: Optional[str] = typer.Option(None, "--store"), as_json: bool = typer.Option(False, "--json")):
    """Active model, slots and recent events."""
    emit(_store(store).status(), as_json)


def store_revert(store: Optional[str] = typer.Option(None, "--store"), as_json: bool = typer.Option(False, "--json")):
    """Go back to the last good weights."""
    st = _store(store)
    st.revert()
    emit(st.status(), as_json)


def store_reset(store: Optional[str] = typer.Option(None, "--store"), as_json: bool = typer.Option(False, "--json")):
    """Go back to the factory weights."""
    st = _store(store)
    st.reset()
    emit(st.status(), as_json)
