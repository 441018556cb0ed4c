"""Collect per-category ``metrics.json`` files into results/summary.csv and results/table1.csv.

summary.csv: one row per category x detector x variant, metrics in percent, followed (per
detector x variant) by a ``mean`` row: the mean over the categories where the metric is
defined; ``n_categories`` counts the categories of that detector x variant and ``note``
says which metric was missing where. Undefined values are empty cells.

table1.csv: the layout of the paper's Table 1: one row per metric and, per detector,
columns ``<detector> baseline``, ``<detector> anogen``, ``<detector> delta`` (anogen -
baseline, from the mean rows; empty if either is missing), then ``<detector>
generated_only`` and any other variant if present.

Rows and columns are sorted deterministically, numbers formatted with fixed decimals and
files written atomically, so the same inputs give byte-identical CSVs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from anogen.errors import DataError
from anogen.io import atomic_write_text
from anogen.provenance import manifest_notes

METRICS = ("image_auroc", "image_aupr", "pixel_auroc", "pixel_aupr", "pixel_aupro")
METRIC_LABELS = {
    "image_auroc": "Image AU-ROC",
    "image_aupr": "Image AU-PR",
    "pixel_auroc": "Pixel AU-ROC",
    "pixel_aupr": "Pixel AU-PR",
    "pixel_aupro": "Pixel AUPRO",
}
VARIANT_ORDER = ("baseline", "anogen", "generated_only")
MEAN = "mean"
DECIMALS = 2
SUMMARY_COLUMNS = ("category", "detector", "variant", *METRICS, "n_categories", "note")

__all__ = ["summarize", "read_metrics", "SUMMARY_COLUMNS", "METRICS"]


def variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(variant), "") if variant in VARIANT_ORDER else (len(VARIANT_ORDER), variant)


def format_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    text = f"{value:.{DECIMALS}f}"
    return "0.00" if text == "-0.00" else text


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Read one metrics.json; DataError naming the file if it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(path, "metrics file does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"metrics file is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(path, "metrics file does not hold a JSON object")
    for field in ("category", "detector", "variant"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise DataError(path, f"metrics file lacks a '{field}' name")
    for name in METRICS:
        value = data.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise DataError(path, f"'{name}' is {value!r}, expected a number or null")
        if value is not None and not (0.0 <= value <= 1.0):
            raise DataError(path, f"'{name}' = {value} is not a fraction in [0, 1]")
    return data


def percent(value: Any) -> float:
    return math.nan if value is None else 100.0 * float(value)


def csv_text(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow(list(row))
    return buf.getvalue()


Ident = tuple[str, str, str]  # (category, detector, variant)


def summarize(metrics_paths: list[Path], summary_csv: Path, table1_csv: Path) -> None:
    """Write summary.csv and table1.csv (see the module docstring) from metrics.json files."""
    records, provenance_notes = _read_all(metrics_paths)
    groups: dict[tuple[str, str], list[str]] = {}
    for category, detector, variant in records:
        groups.setdefault((detector, variant), []).append(category)
    rows, means = _summary_rows(records, provenance_notes, groups)
    atomic_write_text(summary_csv, csv_text(SUMMARY_COLUMNS, rows))
    atomic_write_text(table1_csv, _table1_text(groups, means, provenance_notes))


def _read_all(metrics_paths: list[Path]) -> tuple[dict[Ident, dict[str, float]], dict[Ident, list[str]]]:
    """(metrics in percent, provenance notes) per category x detector x variant, each evaluated once."""
    records: dict[Ident, dict[str, float]] = {}
    origin: dict[Ident, Path] = {}
    # What each result was computed from when that is not a real run's (anogen.provenance):
    # the evaluation manifest beside metrics.json carries the notes of its whole chain.
    provenance_notes: dict[Ident, list[str]] = {}
    for path in sorted(Path(p) for p in metrics_paths):
        data = read_metrics(path)
        ident = (data["category"], data["detector"], data["variant"])
        if ident in records:
            raise DataError(
                path,
                f"holds results for {'/'.join(ident)} which {origin[ident]} already holds; "
                "each category x detector x variant must be evaluated once",
            )
        origin[ident] = path
        records[ident] = {name: percent(data.get(name)) for name in METRICS}
        provenance_notes[ident] = manifest_notes(path.parent)
    return records, provenance_notes


def _summary_rows(records, provenance_notes, groups) -> tuple[list[list[str]], dict[tuple[str, str], dict[str, float]]]:
    """summary.csv's rows (each detector x variant: its categories, then its mean row) and the means."""
    rows: list[list[str]] = []
    means: dict[tuple[str, str], dict[str, float]] = {}
    for detector, variant in sorted(groups, key=lambda dv: (dv[0], variant_rank(dv[1]))):
        categories = sorted(groups[(detector, variant)])
        for category in categories:
            values = records[(category, detector, variant)]
            undefined = [name for name in METRICS if math.isnan(values[name])]
            row_notes = [f"undefined: {', '.join(undefined)}"] if undefined else []
            row_notes += provenance_notes[(category, detector, variant)]
            rows.append(
                [category, detector, variant, *(format_value(values[m]) for m in METRICS), "1", "; ".join(row_notes)]
            )
        mean_values, notes = group_mean([records[(c, detector, variant)] for c in categories], categories)
        means[(detector, variant)] = mean_values
        notes += sorted({n for c in categories for n in provenance_notes[(c, detector, variant)]})
        rows.append(
            [
                MEAN,
                detector,
                variant,
                *(format_value(mean_values[m]) for m in METRICS),
                str(len(categories)),
                "; ".join(notes),
            ]
        )
    return rows, means


def group_mean(values: list[dict[str, float]], categories: list[str]) -> tuple[dict[str, float], list[str]]:
    """Per metric the mean over the categories where it is defined, and notes on the missing ones."""
    mean_values: dict[str, float] = {}
    notes = []
    for name in METRICS:
        available = [v[name] for v in values]
        defined = [v for v in available if not math.isnan(v)]
        mean_values[name] = math.fsum(defined) / len(defined) if defined else math.nan
        missing = [c for c, v in zip(categories, available) if math.isnan(v)]
        if missing:
            notes.append(
                f"{name} mean over {len(defined)}/{len(categories)} categories (undefined for {' '.join(missing)})"
            )
    return mean_values, notes


def _table1_text(groups, means, provenance_notes) -> str:
    """table1.csv: per metric the mean of each detector x variant column, and the anogen - baseline delta."""
    columns: list[tuple[str, str, str]] = []  # (header, detector, variant or "delta")
    for detector in sorted({detector for detector, _ in groups}):
        columns += [
            (f"{detector} baseline", detector, "baseline"),
            (f"{detector} anogen", detector, "anogen"),
            (f"{detector} delta", detector, "delta"),
        ]
        extra_variants = sorted(
            (v for d, v in groups if d == detector and v not in ("baseline", "anogen")),
            key=variant_rank,
        )
        columns += [(f"{detector} {v}", detector, v) for v in extra_variants]

    def cell(detector: str, variant: str, name: str) -> str:
        if variant == "delta":
            base = means.get((detector, "baseline"))
            ours = means.get((detector, "anogen"))
            if base is None or ours is None:
                return ""
            return format_value(ours[name] - base[name])
        values = means.get((detector, variant))
        return "" if values is None else format_value(values[name])

    # Every number of the table is a mean over runs that may carry notes: each row says which.
    table_note = "; ".join(_scoped_notes(provenance_notes))
    table_rows = [[METRIC_LABELS[name], *(cell(d, v, name) for _, d, v in columns), table_note] for name in METRICS]
    return csv_text(["metric", *(h for h, _, _ in columns), "note"], table_rows)


def _scoped_notes(notes: dict[tuple[str, str, str], list[str]]) -> list[str]:
    """Each distinct note once, with the detector x variant columns it applies to."""
    where: dict[str, set[str]] = {}
    for (_, detector, variant), found in notes.items():
        for note in found:
            where.setdefault(note, set()).add(f"{detector} {variant}")
    return [f"{note} [{', '.join(sorted(cols))}]" for note, cols in sorted(where.items())]
