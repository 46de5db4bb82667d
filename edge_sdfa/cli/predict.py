"""CLI command ``edge-sdfa predict``: inference with the active weights (``edge_sdfa.runtime``)."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from edge_sdfa.cli.output import emit


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    source: Optional[str] = typer.Argument(None, help="store dir or bundle (dir or .tar); default: the default store"),
    data: Optional[str] = typer.Option(None, "--data", help="samples: npz:PATH or a data set spec "
                                                            "(default: the embedded new user's test set)"),
    store: Optional[str] = typer.Option(None, "--store", help="store dir (instead of SOURCE)"),
    kernels: Optional[str] = typer.Option(None, "--kernels", help="numpy | c | auto"),
    batch: int = typer.Option(256, "--batch", help="samples per inference call"),
    stream_mode: bool = typer.Option(False, "--stream", help="decide live windows of events, one JSON line each"),
    input_path: str = typer.Option("-", "--input", help="--stream: a file of records or an npz ('-' = stdin)"),
    port: Optional[str] = typer.Option(None, "--port", help="--stream: a serial port or pyserial URL instead of --input"),
    baud: int = typer.Option(115200, "--baud"),
    fmt: str = typer.Option("auto", "--format", help="--stream: auto | records | npz"),
    window_us: Optional[int] = typer.Option(None, "--window-us", help="--stream: window length in µs"),
    window_events: Optional[int] = typer.Option(None, "--window-events", help="--stream: events per window"),
    sensor: Optional[str] = typer.Option(None, "--sensor", help="camera size HxW (default: from the model input)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (--stream: always JSON lines)"),
):
    """Predict with the active weights: accuracy (when labelled) and per-sample latency, or a live stream."""
    from edge_sdfa.runtime import Runtime, predict_report

    hw = _parse_sensor(sensor)
    if not stream_mode:
        emit(predict_report(source, data, store=store, kernels=kernels, batch=batch), as_json)
        return
    from edge_sdfa.event_stream import open_input, stream

    rt = Runtime.open(source, store=store, kernels=kernels, batch=batch)
    reader = open_input(input_path, port, baud)

    def line(d: dict) -> None:
        sys.stdout.write(json.dumps(d) + "\n")
        sys.stdout.flush()

    try:
        summary = stream(rt, reader, line, fmt=fmt, window_us=window_us, window_events=window_events, sensor=hw)
    finally:
        reader.close()
    print(json.dumps({"summary": summary}), file=sys.stderr)


def _parse_sensor(text: Optional[str]):
    from edge_sdfa.errors import UserError

    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--sensor expects HxW, e.g. 34x34, got {text!r}") from None
    return h, w
