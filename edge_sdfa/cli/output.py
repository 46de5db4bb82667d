"""Small helpers shared by the CLI modules: JSON on stdout, progress on stderr."""
from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def emit(report: Any, as_json: bool) -> None:
    """Print a report: JSON on stdout with --json, else ``key: value`` lines."""
    if as_json:
        sys.stdout.write(json.dumps(report, default=_default, indent=None) + "\n")
        return
    if isinstance(report, dict):
        for key, value in report.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, (dict, list)):
                value = json.dumps(value, default=_default)
            sys.stdout.write(f"{key}: {value}\n")
    else:
        sys.stdout.write(json.dumps(report, default=_default, indent=2) + "\n")
