"""CLI commands of the serial bridge: serve (device), deploy, remote ..., monitor, devices, keys.

Each command is a few lines over a function of ``firmware_bridge``, imported inside the command
so that nothing here loads until it is used. JSON on stdout (--json), progress on stderr.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

from edge_sdfa.cli.output import emit

PORT = typer.Option(..., "--port", help="serial device, socket://HOST:PORT, loop://, ...")
JSON = typer.Option(False, "--json", help="print one JSON object")
SIGN = typer.Option(None, "--sign", help="NAME.key: sign requests (needed by a device serving with --trust)")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("deploy")(deploy)
    app.command("monitor")(monitor)
    app.command("devices")(devices)
    remote = typer.Typer(help="Drive a device agent over a serial link.", no_args_is_help=True)
    remote.command("finetune")(remote_finetune)
    remote.command("eval")(remote_eval)
    remote.command("status")(remote_status)
    remote.command("commit")(remote_commit)
    remote.command("revert")(remote_revert)
    remote.command("reset")(remote_reset)
    remote.command("predict")(remote_predict)
    app.add_typer(remote, name="remote")
    keys = typer.Typer(help="Ed25519 keys for signed bundles.", no_args_is_help=True)
    keys.command("new")(keys_new)
    app.add_typer(keys, name="keys")


def serve(port: str = PORT,
          store: str = typer.Option(..., "--store", help="the device's store directory"),
          trust: Optional[str] = typer.Option(None, "--trust", help="NAME.pub: accept only bundles it signed"),
          insecure: bool = typer.Option(False, "--insecure", help="accept unsigned bundles (says so in HELLO)"),
          baud: int = typer.Option(115200, "--baud")):
    """Device agent: serve deploy / fine-tune / commit requests on a serial port."""
    from firmware_bridge.agent import serve as run

    run(port, store, trust=trust, insecure=insecure, baudrate=baud)


def _progress(label: str):
    shown = [-1]

    def show(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct >= shown[0] + 5 or done >= total:  # about 20 lines at most, on stderr
            shown[0] = pct
            end = "\n" if done >= total or not sys.stderr.isatty() else ""
            sys.stderr.write(f"\r{label}: {done}/{total} bytes ({pct}%){end}")
            sys.stderr.flush()
    return show


def deploy(bundle: str = typer.Argument(..., help="bundle directory or .tar"), port: str = PORT,
           sign: Optional[str] = typer.Option(None, "--sign", help="NAME.key: sign the manifest and the requests"),
           new_model: bool = typer.Option(False, "--new-model", help="replace the device's model by this "
                                          "bundle's (another model id); the old one stays active until commit"),
           as_json: bool = JSON):
    """Upload a bundle (resumable, only the files the device lacks); the device verifies it and
    installs it as the candidate."""
    from firmware_bridge.client import connect, deploy as run
    from firmware_bridge.packing import pack_bundle

    packed = pack_bundle(bundle, sign_key=sign)  # a bad bundle or key fails before the line is opened
    with connect(port, sign=sign) as dev:
        emit(run(dev, packed, new_model=new_model, on_progress=_progress("upload")), as_json)


def remote_finetune(port: str = PORT,
                    data: Optional[str] = typer.Option(None, "--data", help="npz:PATH sent from the host; "
                                                       "default: the data already on the device"),
                    epochs: Optional[int] = typer.Option(None, "--epochs"),
                    lr: Optional[float] = typer.Option(None, "--lr"),
                    sign: Optional[str] = SIGN, as_json: bool = JSON):
    """Fine-tune on the device, showing telemetry as it comes; the device gates the commit. The
    result is the job's outcome as the device holds it."""
    from firmware_bridge.client import connect, finetune as run
    from firmware_bridge.monitor import EventMirror, event_line

    config = {k: v for k, v in {"epochs": epochs, "lr": lr}.items() if v is not None}
    with connect(port, sign=sign) as dev:
        mirror = EventMirror(port)   # `monitor` on the same port follows the job through it

        def show(ev):
            mirror(ev)
            print(event_line(ev), file=sys.stderr)
        try:
            report = run(dev, data, config=config, on_event=show)
        finally:
            mirror.close()
    emit(report, as_json)


def remote_eval(port: str = PORT, data: Optional[str] = typer.Option(None, "--data"), sign: Optional[str] = SIGN,
                as_json: bool = JSON):
    """Accuracy of the device's active weights."""
    from firmware_bridge.client import connect, evaluate

    with connect(port, sign=sign) as dev:
        emit(evaluate(dev, data), as_json)


def remote_predict(port: str = PORT, data: str = typer.Option(..., "--data", help="npz:PATH with samples x"),
                   limit: int = typer.Option(16, "--limit"), sign: Optional[str] = SIGN, as_json: bool = JSON):
    """Labels and output rates of the device's active model on samples sent from the host."""
    from firmware_bridge.client import connect, predict, read_data_spec
    from firmware_bridge.inference import samples_of

    x = samples_of(read_data_spec(data))
    with connect(port, sign=sign) as dev:
        emit(predict(dev, x[:limit], limit=limit), as_json)


def remote_status(port: str = PORT, as_json: bool = JSON):
    """The device's HELLO and store status."""
    from firmware_bridge.client import connect, status

    with connect(port) as dev:
        emit({"device": dev.info, **status(dev)}, as_json)


def remote_commit(port: str = PORT, sign: Optional[str] = SIGN, as_json: bool = JSON):
    """Make the device's candidate active."""
    from firmware_bridge.client import commit, connect

    with connect(port, sign=sign) as dev:
        emit(commit(dev), as_json)


def remote_revert(port: str = PORT, sign: Optional[str] = SIGN, as_json: bool = JSON):
    """Drop the device's candidate, or go back to its last good weights (the previous model after
    a model change)."""
    from firmware_bridge.client import connect, revert

    with connect(port, sign=sign) as dev:
        emit(revert(dev), as_json)


def remote_reset(port: str = PORT, sign: Optional[str] = SIGN, as_json: bool = JSON):
    """Back to the factory bundle; fine-tuned weights and the user's data on the device are deleted."""
    from firmware_bridge.client import connect, reset

    with connect(port, sign=sign) as dev:
        emit(reset(dev), as_json)


def monitor(port: str = PORT, log: Optional[str] = typer.Option(None, "--log", help="append events to FILE.jsonl"),
            duration: Optional[float] = typer.Option(None, "--duration", help="stop after this many seconds"),
            follow: bool = typer.Option(False, "--follow", help="stay attached after the job ends"),
            as_json: bool = JSON):
    """Live view of the device's fine-tune telemetry: replays recent events, exits when the job ends."""
    from firmware_bridge.monitor import monitor as run

    run(port, log=log, duration=duration, as_json=as_json, follow=follow)


def devices(as_json: bool = JSON):
    """Serial ports found on this machine."""
    from firmware_bridge.ports import list_devices

    found = list_devices()
    emit({"devices": found} if as_json else {d["device"]: d["description"] for d in found} or {"devices": "none"},
         as_json)


def keys_new(name: str = typer.Argument(..., help="writes NAME.key (host, private) and NAME.pub (device)"),
             as_json: bool = JSON):
    """Create an Ed25519 key pair for signing bundles."""
    from firmware_bridge.signing import new_keypair

    key, pub = new_keypair(name)
    emit({"private_key": str(key), "public_key": str(pub)}, as_json)
