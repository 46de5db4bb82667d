"""``edge-sdfa monitor``: follow a device's telemetry live, optionally logging it as JSON lines."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, TextIO

from firmware_bridge.client import connect, status, watch


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


def monitor(port: str, *, log: str | None = None, duration: float | None = None, as_json: bool = False,
            out: TextIO | None = None, since: int | None = None,
            stop_when: Callable[[dict[str, Any]], bool] | None = None) -> int:
    """Print each event as it arrives (a JSON line with ``as_json``); return how many were seen.

    Runs until ``duration`` seconds pass, Ctrl-C, or ``stop_when(event)`` is true.
    """
    out = out or sys.stdout
    seen = 0
    logf = open(log, "a", encoding="utf-8") if log else None

    class _Stop(Exception):
        pass

    def on_event(ev: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        line = json.dumps(ev, default=str)
        if logf is not None:
            logf.write(line + "\n")
            logf.flush()
        out.write((line if as_json else event_line(ev)) + "\n")
        out.flush()
        if stop_when is not None and stop_when(ev):
            raise _Stop

    try:
        with connect(port) as dev:
            st = status(dev)
            sys.stderr.write(f"monitoring {port}: {st.get('model_id')} v{st.get('version')} "
                             f"r{st.get('revision')}, job {st.get('job', {}).get('state')}\n")
            watch(dev, on_event, since=since, until_done=False, duration=duration)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        if logf is not None:
            logf.close()
    return seen
