"""Per-epoch progress on stderr: a rich progress bar redrawn in place on a terminal, one plain line
per epoch otherwise (a log file or a pipe gets no carriage returns or escape codes)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class EpochProgress:
    """``with EpochProgress("finetune", epochs) as bar: bar.update(epoch, loss=..., val=...)``.

    ``enabled=False`` (or zero epochs) prints nothing. Values are shown as ``name value`` with
    floats to ``digits`` decimals, in the order given.
    """

    def __init__(self, label: str, total: int, enabled: bool = True, *, stream: TextIO | None = None,
                 digits: int = 3):
        self.label, self.total, self.digits = label, total, digits
        self.enabled = enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self._live = None
        self._task = None

    def __enter__(self) -> "EpochProgress":
        if self.enabled and _is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._live = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                                  TextColumn("epoch"), MofNCompleteColumn(), TextColumn("{task.fields[values]}"),
                                  TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self._task = self._live.add_task(self.label, total=self.total, values="")
            self._live.start()
        return self

    def update(self, epoch: int, **values: float) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k} {v:.{self.digits}f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        if self._live is not None:
            self._live.update(self._task, completed=epoch, values=text)
            return
        self.stream.write(f"{self.label} epoch {epoch}/{self.total} {text} {time.perf_counter() - self.t0:.1f}s\n")
        self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
