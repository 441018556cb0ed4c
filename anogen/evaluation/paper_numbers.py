"""The paper's printed numbers (``paper_numbers.yaml``), loaded once and validated.

Every value is a percentage as printed, a mean over the 15 MVTec AD categories; the paper
prints no per-category values. :func:`paper_value` gives ``None`` where the paper prints no
number (a detector or metric a table does not show, e.g. AUPRO).
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import yaml

from anogen.errors import AnogenError, DataError
from anogen.evaluation.summary import METRICS

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
TABLE_KEYS = {"title": str, "source": str, "metrics": list, "columns": dict, "note": str}
REQUIRED_KEYS = ("title", "source", "metrics", "columns")

__all__ = ["PAPER_NUMBERS", "paper_tables", "paper_table", "paper_value", "load_paper_numbers"]


def _check_table(path: Path, table_id: str, table: Any) -> None:
    """One table's layout; DataError naming the file and the entry at the first problem."""
    if not isinstance(table, dict):
        raise DataError(path, f"'{table_id}' is not a mapping")
    for key, value in table.items():
        if key not in TABLE_KEYS:
            raise DataError(path, f"'{table_id}.{key}' is not a known field ({', '.join(TABLE_KEYS)})")
        if not isinstance(value, TABLE_KEYS[key]):
            raise DataError(path, f"'{table_id}.{key}' should be a {TABLE_KEYS[key].__name__}, not {value!r}")
    for key in REQUIRED_KEYS:
        if key not in table:
            raise DataError(path, f"'{table_id}' lacks '{key}'")
    for metric in table["metrics"]:
        if metric not in METRICS:
            raise DataError(path, f"'{table_id}.metrics' names {metric!r}, not a metric ({', '.join(METRICS)})")
    for column, detectors in table["columns"].items():
        where = f"{table_id}.columns.{column}"
        if not isinstance(column, str):
            raise DataError(path, f"'{where}': column labels must be quoted text, not {column!r}")
        if not isinstance(detectors, dict) or not detectors:
            raise DataError(path, f"'{where}' should map detectors to their values")
        for detector, values in detectors.items():
            if not isinstance(values, dict):
                raise DataError(path, f"'{where}.{detector}' should map metrics to values")
            for metric, value in values.items():
                _check_value(path, f"{where}.{detector}.{metric}", metric, value, table["metrics"])


def _check_value(path: Path, where: str, metric: Any, value: Any, table_metrics: list[str]) -> None:
    if metric not in METRICS:
        raise DataError(path, f"'{where}': {metric!r} is not a metric ({', '.join(METRICS)})")
    if metric not in table_metrics:
        raise DataError(path, f"'{where}': {metric} is not in the table's metrics {table_metrics}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(path, f"'{where}' is {value!r}, expected a number (percent)")
    if not 0.0 <= value <= 100.0:
        raise DataError(path, f"'{where}' = {value} is not a percentage in [0, 100]")


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> dict[str, dict[str, Any]]:
    """Read and validate a paper-numbers file (the packaged one by default)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(path, "paper numbers file does not exist") from exc
    except yaml.YAMLError as exc:
        raise DataError(path, f"paper numbers file is not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise DataError(path, "paper numbers file does not hold a mapping of tables")
    for table_id, table in data.items():
        _check_table(path, str(table_id), table)
    return data


@functools.lru_cache(maxsize=1)
def _packaged() -> dict[str, dict[str, Any]]:
    return load_paper_numbers(PAPER_NUMBERS)


def paper_tables() -> list[str]:
    """The table ids of the packaged file, in file order."""
    return list(_packaged())


def _table(table_id: str) -> dict:
    tables = _packaged()
    if table_id not in tables:
        raise AnogenError(f"the paper has no table {table_id!r} in {PAPER_NUMBERS.name} (known: {', '.join(tables)})")
    return tables[table_id]


def paper_table(table_id: str) -> dict:
    """One table (title, source, metrics, columns, note): a copy, safe to change."""
    return copy.deepcopy(_table(table_id))


def paper_value(table_id: str, column: str, detector: str, metric: str) -> float | None:
    """The printed value (percent), or ``None`` where the paper prints none for that detector or metric.

    An unknown table, column or metric name is an error (a typo would otherwise read as "not printed").
    """
    if metric not in METRICS:
        raise AnogenError(f"{metric!r} is not a metric ({', '.join(METRICS)})")
    columns = _table(table_id)["columns"]
    if column not in columns:
        raise AnogenError(f"the paper's {table_id} has no column {column!r} (columns: {', '.join(columns)})")
    value = columns[column].get(detector, {}).get(metric)
    return None if value is None else float(value)
