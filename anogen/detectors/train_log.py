"""``train_log.csv`` of a detector job: one row per step, written while the losses are still on the
device until a flush copies them in one transfer; on resume, the rows after the checkpoint are dropped."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anogen.detectors.common import rows_to_host
from anogen.io import atomic_write_text


class PendingRows:
    """Log rows whose losses are still device tensors; ``flush`` copies them in one transfer,
    writes them to the log and returns the last step's values (without step and seconds)."""

    def __init__(self, csv_log: CsvLog):
        self.csv_log, self.rows, self.last = csv_log, [], {}

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def flush(self) -> dict[str, Any]:
        if self.rows:
            host = rows_to_host(self.rows)
            self.rows = []
            for row in host:
                self.csv_log.write(row)
            self.last = {k: v for k, v in host[-1].items() if k not in ("step", "seconds")}
        return self.last


def progress_text(last: dict[str, float]) -> str:
    losses = " ".join(
        f"{k} {v:.4f}"
        for k, v in last.items()
        if k not in ("lr", "phase") and not (isinstance(v, float) and math.isnan(v))
    )
    return losses + f" lr {last['lr']:.3g}"


class CsvLog:
    """train_log.csv, appended row by row; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, columns: Sequence[str], resume_step: int):
        self.path = path
        self.columns = ["step", *columns, "seconds"]
        rows: list[dict[str, str]] = []
        if resume_step > 0 and path.exists():
            rows = _complete_rows(path, resume_step)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=self.columns)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in self.columns})

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _complete_rows(path: Path, resume_step: int) -> list[dict[str, str]]:
    """Rows up to ``resume_step``; a row cut short by a kill (or a repeat) is dropped."""
    rows: list[dict[str, str]] = []
    seen: set[int] = set()
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            try:
                step = int(r["step"])
                float(r["seconds"])
            except (TypeError, ValueError, KeyError):
                continue
            if step <= resume_step and step not in seen and None not in r:
                seen.add(step)
                rows.append(r)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def last_logged_loss(path: Path) -> float | None:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return float(rows[-1]["loss"]) if rows else None
    except (OSError, ValueError, KeyError):
        return None
