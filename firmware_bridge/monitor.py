"""``edge-sdfa monitor``: a device's telemetry, live.

On attach it replays the device's recent events, then follows the job; it exits when that job
ends (``follow=True``: stay until Ctrl-C or ``duration``). The port is locked by whichever host
process has it open: while ``remote finetune`` holds it, ``monitor`` follows the events that
process mirrors to a local file (``mirror_path``), so both can run side by side.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from firmware_bridge.client import connect, status, telemetry, watch

REPLAY = 20          # events shown from before the attach


def mirror_path(url: str) -> Path:
    """Where a host process holding ``url`` mirrors the events it receives."""
    real = os.path.realpath(url) if os.path.exists(url) else url
    tag = hashlib.sha256(real.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"edge-sdfa-events-{os.getuid()}-{tag}.jsonl"


class EventMirror:
    """Appends each event (JSON line) for monitors beside the process that owns the port."""

    def __init__(self, url: str):
        self.path = mirror_path(url)
        self.fh = open(self.path, "w", encoding="utf-8")   # one job per file: a monitor replays it
        os.chmod(self.path, 0o600)

    def __call__(self, ev: dict[str, Any]) -> None:
        self.fh.write(json.dumps(ev, default=str) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def event_line(ev: dict[str, Any]) -> str:
    """One human-readable line for a telemetry event."""
    kind = ev.get("event")
    if kind in ("update", "epoch"):
        nan = float("nan")
        parts = [f"epoch {ev.get('epoch')}/{ev.get('epochs')}", f"loss {ev.get('loss', nan):.4f}",
                 f"acc {ev.get('accuracy', nan):.3f}", f"holdout {ev.get('holdout', nan):.3f}",
                 f"{1000 * ev.get('seconds_per_update', 0.0):.2f} ms/update", f"saturation {ev.get('saturation', 0.0):.3f}"]
        cost = ev.get("cost")
        if cost:
            parts.append(f"latency {cost.get('latency_s', 0):.3g} s, energy {cost.get('energy_j', 0):.3g} J")
        return "  ".join(parts)
    if kind == "done":
        r = ev.get("report") or {}
        return (f"done: committed={r.get('committed')}  accuracy {r.get('accuracy_before')} -> "
                f"{r.get('accuracy_after')}  holdout {r.get('holdout_before')} -> {r.get('holdout_after')}")
    if kind == "failed":
        return f"failed: {ev.get('error')}"
    return f"{kind}: job {ev.get('job')}"


class _View:
    """Lines on ``out``; on a terminal, a rich.live status line under them."""

    def __init__(self, out: TextIO, as_json: bool, header: str):
        self.out, self.as_json = out, as_json
        self.live = None
        if not as_json and out.isatty():
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._text = Text
            self.console = Console(file=out)
            self.live = Live(Text(header), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        else:
            sys.stderr.write(header + "\n")

    def show(self, ev: dict[str, Any]) -> None:
        line = json.dumps(ev, default=str) if self.as_json else event_line(ev)
        if self.live is not None:
            self.console.print(line)
            self.live.update(self._text(f"job {ev.get('job')}: {ev.get('event')}  (Ctrl-C to leave)"))
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def monitor(port: str, *, log: str | None = None, duration: float | None = None, as_json: bool = False,
            out: TextIO | None = None, since: int | None = None, follow: bool = False,
            stop_when: Callable[[dict[str, Any]], bool] | None = None) -> int:
    """Show the device's events; return how many were shown.

    Replays the last REPLAY events (or from ``since``), then follows; returns when the job being
    followed ends, unless ``follow``; or after ``duration`` seconds, or on Ctrl-C.
    """
    from edge_sdfa.errors import UserError

    out = out or sys.stdout
    seen = 0
    logf = open(log, "a", encoding="utf-8") if log else None
    view: _View | None = None

    class _Stop(Exception):
        pass

    def on_event(ev: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if logf is not None:
            logf.write(json.dumps(ev, default=str) + "\n")
            logf.flush()
        view.show(ev)
        if stop_when is not None and stop_when(ev):
            raise _Stop

    try:
        try:
            with connect(port) as dev:
                st = status(dev)
                cursor = since if since is not None else max(0, int(telemetry(dev, 1 << 60)["next"]) - REPLAY)
                view = _View(out, as_json, f"monitoring {port}: {st.get('model_id')} v{st.get('version')} "
                                           f"r{st.get('revision')}, job {st.get('job', {}).get('state')}")
                watch(dev, on_event, since=cursor, until_done=not follow, duration=duration)
        except UserError as exc:
            if "in use" not in str(exc) or not mirror_path(port).exists():
                raise
            view = _View(out, as_json, f"monitoring {port} through the process that holds it")
            _tail(mirror_path(port), on_event, follow=follow, duration=duration)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        if view is not None:
            view.close()
        if logf is not None:
            logf.close()
    return seen


def _tail(path: Path, on_event: Callable[[dict[str, Any]], None], *, follow: bool, duration: float | None) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    t_end = None if duration is None else time.monotonic() + duration
    job = None
    with open(path, encoding="utf-8") as fh:
        fh.seek(0, os.SEEK_END)
        for line in lines[-REPLAY:]:
            ev = json.loads(line)
            job = ev.get("job", job)
            on_event(ev)
        if not follow and lines and json.loads(lines[-1]).get("event") in ("done", "failed"):
            return
        while t_end is None or time.monotonic() < t_end:
            line = fh.readline()
            if not line:
                time.sleep(0.1)
                continue
            ev = json.loads(line)
            on_event(ev)
            if not follow and ev.get("event") in ("done", "failed") and ev.get("job", job) == job:
                return
