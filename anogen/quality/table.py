"""``generation_quality.csv`` and its report page: one row per (category, defect, generated set).

Every row states the settings its numbers were computed with (sizes, splits, subsets, the feature
extractors and their weights' sha256, the library versions) and its provenance notes, so rows from
different runs or generators can be compared only where those agree.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from anogen.io import atomic_write_text
from anogen.quality.metrics import METRIC_KEYS

SETTINGS = (
    "image_size",
    "resize_kernel",
    "crop_margin",
    "crop_rule",
    "is_splits",
    "kid_subsets",
    "kid_subset_size",
    "seed",
    "ic_lpips_centres",
    "ic_lpips_cluster_cap",
    "clusters",
    "feature_extractor",
    "inception_sha256",
    "lpips_net",
    "lpips_sha256",
    "torch_fidelity_version",
    "lpips_version",
    "torch_version",
)
COLUMNS = (
    "category",
    "defect",
    "generation_key",
    "source",
    "n_generated",
    "n_real",
    "n_centres",
    *METRIC_KEYS,
    *(f"crop_{k}" for k in METRIC_KEYS),
    *SETTINGS,
    "note",
)

# The peers' published means over MVTec AD (their own scripts, sizes and image counts).
PEERS = (
    ("AnomalyDiffusion (Hu et al., AAAI 2024)", 1.80, 0.32, None),
    ("DualAnoDiff (Jin et al., CVPR 2025)", 1.93, 0.38, None),
    ("SeaS (Dai et al., 2025)", 1.88, 0.34, 0.04),
)
NOT_CONFIGURED = (
    "Generation quality (IS, IC-LPIPS, KID) not computed: quality.inception_weights and quality.lpips_weights "
    "are not both set (the weights are never downloaded; see the README's 'Generation quality')."
)


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "torch_fidelity_version": version("torch-fidelity"),
        "lpips_version": version("lpips"),
        "torch_version": version("torch"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
    atomic_write_text(path, out.getvalue())


def _mean(values: Iterable[str]) -> float | None:
    numbers = [float(v) for v in values if v not in ("", None)]
    return sum(numbers) / len(numbers) if numbers else None


_SHOWN = ("is_mean", "ic_lpips", "kid_mean", "crop_is_mean", "crop_ic_lpips", "crop_kid_mean")
_LABELS = ("IS", "IC-LPIPS", "KID", "IS (crop)", "IC-LPIPS (crop)", "KID (crop)")


def _fmt(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value:.3f}"


def per_category(rows: Sequence[Mapping[str, str]]) -> list[tuple[str, list[float | None]]]:
    """Mean over the defects of each category, then the mean row over the categories."""
    categories = list(dict.fromkeys(r["category"] for r in rows))
    table = [(c, [_mean(r[k] for r in rows if r["category"] == c) for k in _SHOWN]) for c in categories]
    mean = [_mean("" if v is None else str(v) for v in col) for col in zip(*(vals for _, vals in table))]
    return table + [("mean", mean)] if table else table


def quality_html(rows: Sequence[Mapping[str, str]]) -> str:
    """The per-category table, its mean row, the peers' means, the settings and the notes."""
    head = "".join(f"<th>{label}</th>" for label in _LABELS)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f'<td class="num">{_fmt(v)}</td>' for v in values) + "</tr>\n"
        for name, values in per_category(rows)
    )
    peers = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{_fmt(is_)}</td><td class='num'>{_fmt(ic)}</td>"
        f"<td class='num'>{_fmt(k)}</td></tr>\n"
        for name, is_, ic, k in PEERS
    )
    settings = sorted({", ".join(f"{s}={r[s]}" for s in SETTINGS if s != "clusters") for r in rows})
    notes = sorted({part.strip() for r in rows for part in r["note"].split(";") if part.strip()})
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Generation quality</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px}.num{text-align:right}</style></head><body>\n"
        "<h3>Generation quality per category (mean over its defect types)</h3>\n"
        f"<table><tr><th>category</th>{head}</tr>\n{body}</table>\n"
        "<h3>Published means over MVTec AD (whole images)</h3>\n"
        "<p>Cited from each paper. Their public scripts compute IC-LPIPS with LPIPS-VGG at 256 px, inputs in "
        "[-1, 1]: AnomalyDiffusion's and DualAnoDiff's around the first third of the defect's test anomalies, at "
        "most 50 images per cluster; SeaS's around all real anomalies, at most 140, on 1000 generated images. "
        "IS and KID come from torch-fidelity. Image counts and generators differ, so the numbers are not strictly "
        "comparable with each other, nor with the rows above unless their settings (below: lpips_net=vgg, "
        "ic_lpips_centres=test_first_third, ic_lpips_cluster_cap=50 for AnomalyDiffusion's) match.</p>\n"
        f"<table><tr><th>method</th><th>IS</th><th>IC-LPIPS</th><th>KID</th></tr>\n{peers}</table>\n"
        "<h4>Settings of the rows above</h4><ul>"
        + "".join(f"<li>{html.escape(s)}</li>" for s in settings)
        + "</ul>\n<h4>Notes</h4><ul>"
        + ("".join(f"<li><b>{html.escape(n)}</b></li>" for n in notes) or "<li>none</li>")
        + "</ul>\n</body></html>\n"
    )


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
