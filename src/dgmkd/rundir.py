"""Run directories: where an experiment writes its resolved config, metric tables, plots and
``report.md``. Everything in a run directory is written by code from the run itself."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Iterable

__all__ = ["create", "write_json", "write_csv"]


def create(experiment: str, out: str | Path | None = None) -> Path:
    """``out`` if given (created), else ``runs/<experiment>-<timestamp>``."""
    path = Path(out) if out else Path("runs") / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    rows = list(rows)
    path = Path(path)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path
