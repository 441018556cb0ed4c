"""The summary as the Snakemake report shows it: HTML tables, a comparison figure, the notes.

Snakemake embeds an ``.html`` report item in an iframe, so each table is a small stand-alone
HTML page (inline CSS, no scripts). Written by the ``summarize`` rule next to the CSVs:

- ``summary.html``: every row of summary.csv (category x detector x variant, percent);
- ``table1.html``: table1.csv (mean per detector x variant, AnoGen - baseline delta) and,
  when every evaluated category is an MVTec AD category, the paper's Table 1 (mean over
  the 15 MVTec AD categories) beside it with its delta and ours - paper;
- ``comparison.png``: baseline vs AnoGen per metric and category (and the mean);
- ``notes.html``: the distinct non-empty ``note`` cells of summary.csv (what was random,
  missing or a fallback), which the report's front page also shows.

The paper (Table 1) gives only means over MVTec AD, no per-category numbers, and no AUPRO.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from anogen.evaluation.paper_numbers import paper_table
from anogen.evaluation.summary import METRIC_LABELS, METRICS
from anogen.io import atomic_path, atomic_write_text

__all__ = [
    "PAPER_TABLE1",
    "MVTEC_CATEGORIES",
    "read_rows",
    "is_mvtec_run",
    "summary_html",
    "table1_html",
    "notes",
    "notes_html",
    "plot_comparison",
    "write_report_items",
]

LABEL_METRICS = {label: name for name, label in METRIC_LABELS.items()}

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)


def _paper_table1() -> dict[str, dict[str, dict[str, float]]]:
    """detector -> variant -> metric -> value from the paper's Table 1 (anogen/evaluation/paper_numbers.yaml)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant, detectors in paper_table("table1")["columns"].items():
        for detector, values in detectors.items():
            out.setdefault(detector, {})[variant] = dict(values)
    return out


# The paper's Table 1: mean over the 15 MVTec AD categories, percent (no AUPRO reported).
PAPER_TABLE1: dict[str, dict[str, dict[str, float]]] = _paper_table1()

MEAN = "mean"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 14px;
       margin: 8px; color: #222; }
table { border-collapse: collapse; margin-bottom: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.mean td { font-weight: bold; background: #fafafa; }
td.up { color: #17702b; } td.down { color: #a12020; }
th.paper, td.paper { background: #f4f7fc; }
p.caption { max-width: 60em; color: #444; }
"""


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _fmt(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return ""
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text.replace("-0.00", "0.00").replace("+0.00", "0.00")


def html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def delta_cell(value: float, cls: str = "num") -> str:
    sign = "" if not math.isfinite(value) or value == 0 else (" up" if value > 0 else " down")
    return f'<td class="{cls}{sign}">{_fmt(value, signed=True)}</td>'


def is_mvtec_run(rows: Iterable[Mapping[str, str]]) -> bool:
    """Whether every evaluated category is an MVTec AD category (the paper's numbers apply)."""
    categories = {r["category"] for r in rows if r["category"] != MEAN}
    return bool(categories) and categories <= set(MVTEC_CATEGORIES)


def _categories(rows: Iterable[Mapping[str, str]]) -> list[str]:
    return sorted({r["category"] for r in rows if r["category"] != MEAN})


# ----------------------------------------------------------------------------- tables


def summary_html(rows: Sequence[Mapping[str, str]]) -> str:
    """summary.csv as an HTML table (mean rows in bold)."""
    head = ["category", "detector", "variant", *(METRIC_LABELS[m] for m in METRICS), "categories", "note"]
    lines = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cls = ' class="mean"' if r["category"] == MEAN else ""
        cells = [f"<td>{html.escape(r[c])}</td>" for c in ("category", "detector", "variant")]
        cells += [f'<td class="num">{html.escape(r.get(m, ""))}</td>' for m in METRICS]
        cells.append(f'<td class="num">{html.escape(r.get("n_categories", ""))}</td>')
        cells.append(f"<td>{html.escape(r.get('note', ''))}</td>")
        lines.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    caption = (
        '<p class="caption">Metrics in percent on the test set of each category (support images '
        "excluded). <b>mean</b> rows: mean over the categories where the metric is defined; "
        "empty cells are undefined metrics (see the note).</p>"
    )
    return html_page("summary", "<h3>Summary: every category x detector x variant</h3>\n" + caption + "\n".join(lines))


def table1_html(table1_rows: Sequence[Mapping[str, str]], summary_rows: Sequence[Mapping[str, str]]) -> str:
    """table1.csv as HTML; for MVTec AD runs with the paper's Table 1 and ours - paper beside it."""
    if not table1_rows:
        return html_page("table 1", "<p>No results.</p>")
    columns = [c for c in table1_rows[0] if c not in ("metric", "note")]
    detectors = sorted({c.split(" ", 1)[0] for c in columns})
    has_note = "note" in table1_rows[0]
    compare = is_mvtec_run(summary_rows)
    n_categories = len(_categories(summary_rows))

    head = ["<th>metric</th>"]
    for c in columns:
        head.append(f"<th>{html.escape(c)}</th>")
    if compare:
        for d in detectors:
            if d in PAPER_TABLE1:
                head += [
                    f'<th class="paper">paper {html.escape(d)} baseline</th>',
                    f'<th class="paper">paper {html.escape(d)} anogen</th>',
                    f'<th class="paper">paper {html.escape(d)} delta</th>',
                    f'<th class="paper">{html.escape(d)} anogen - paper</th>',
                ]
    if has_note:
        head.append("<th>note</th>")
    lines = ["<table>", "<tr>" + "".join(head) + "</tr>"]
    for r in table1_rows:
        label = r["metric"]
        metric = LABEL_METRICS.get(label)
        cells = [f"<td>{html.escape(label)}</td>"]
        for c in columns:
            value = _num(r[c])
            cells.append(delta_cell(value) if c.endswith(" delta") else f'<td class="num">{_fmt(value)}</td>')
        if compare:
            for d in detectors:
                paper = PAPER_TABLE1.get(d)
                if paper is None:
                    continue
                base = paper["baseline"].get(metric, math.nan)
                ours_paper = paper["anogen"].get(metric, math.nan)
                ours = _num(r.get(f"{d} anogen"))
                cells.append(f'<td class="num paper">{_fmt(base) or "-"}</td>')
                cells.append(f'<td class="num paper">{_fmt(ours_paper) or "-"}</td>')
                cells.append(delta_cell(ours_paper - base, "num paper"))
                cells.append(delta_cell(ours - ours_paper, "num paper"))
        if has_note:  # what these means were computed from (random models, fallbacks): as text
            cells.append(f'<td class="note">{html.escape(r.get("note") or "", quote=False)}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    if compare:
        scope = "the paper's numbers are the mean over all 15 MVTec AD categories" + (
            ""
            if n_categories == len(MVTEC_CATEGORIES)
            else f"; this run evaluated {n_categories} of them, so the comparison is indicative only"
        )
        caption = (
            '<p class="caption">Mean over categories, percent; <b>delta</b> = AnoGen - baseline. '
            f"Shaded: the paper's Table 1 (AnoGen, Gui et al., ECCV 2024; {scope}). The paper reports no "
            "AUPRO and no per-category numbers.</p>"
        )
    else:
        caption = (
            '<p class="caption">Mean over categories, percent; <b>delta</b> = AnoGen - baseline. '
            "The paper's Table 1 numbers are shown only for MVTec AD runs; these categories are not MVTec AD "
            "categories, so there is nothing to compare with.</p>"
        )
    return html_page("table 1", "<h3>Table 1 layout: baseline vs AnoGen</h3>\n" + caption + "\n".join(lines))


def notes(rows: Iterable[Mapping[str, str]]) -> list[tuple[str, list[str]]]:
    """Distinct non-empty notes (``;``-separated parts) in order of first appearance, with the rows they are on."""
    found: dict[str, list[str]] = {}
    for r in rows:
        for part in (p.strip() for p in (r.get("note") or "").split(";")):
            if part:
                found.setdefault(part, []).append(f"{r['category']}/{r['detector']}/{r['variant']}")
    return list(found.items())


def notes_html(rows: Iterable[Mapping[str, str]]) -> str:
    """The notes as an HTML fragment (a list), also inlined on the report's front page."""
    items = notes(rows)
    if not items:
        return '<p class="anogen-notes">No notes: the note column of summary.csv is empty.</p>\n'
    lines = ['<ul class="anogen-notes">']
    for text, where in items:
        shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
        lines.append(f"<li><b>{html.escape(text)}</b> ({html.escape(shown)})</li>")
    lines.append("</ul>\n")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure


def plot_comparison(rows: Sequence[Mapping[str, str]], path: str | Path) -> None:
    """Bars: baseline vs AnoGen per category (and mean); one panel per metric (rows) x detector (columns).

    Each panel's y axis starts at a round value below its smallest bar (never above it), so
    differences of a point or two between high AU-ROCs stay visible; the axis says where.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    detectors = sorted({r["detector"] for r in rows})
    categories = _categories(rows) + [MEAN]
    compare = is_mvtec_run(rows)
    index = {(r["category"], r["detector"], r["variant"]): r for r in rows}
    variants = [v for v in ("baseline", "anogen") if any(r["variant"] == v for r in rows)]
    colours = {"baseline": "#8c8c8c", "anogen": "#d9541e"}
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(categories))
    n_cols = max(1, len(detectors))
    fig, axes = plt.subplots(
        len(METRICS),
        n_cols,
        figsize=(max(5.0, 0.42 * len(categories) + 1.6) * n_cols, 2.4 * len(METRICS) + 0.8),
        squeeze=False,
    )
    for i, detector in enumerate(detectors):
        for j, metric in enumerate(METRICS):
            ax = axes[j, i]
            shown: list[float] = []
            for k, variant in enumerate(variants):
                values = [_num(index.get((c, detector, variant), {}).get(metric)) for c in categories]
                shown += [v for v in values if math.isfinite(v)]
                ax.bar(
                    x + (k - (len(variants) - 1) / 2) * width, values, width, color=colours.get(variant), label=variant
                )
            paper = PAPER_TABLE1.get(detector) if compare else None
            if paper:
                for k, variant in enumerate(variants):
                    value = paper.get(variant, {}).get(metric)
                    if value is not None:
                        shown.append(value)
                        ax.plot(
                            [x[-1] + (k - (len(variants) - 1) / 2) * width],
                            [value],
                            marker="_",
                            markersize=14,
                            mew=2.5,
                            color="black",
                            linestyle="none",
                            label="paper (mean)" if k == 0 else None,
                        )
            low = max(0.0, math.floor((min(shown) - 5.0) / 10.0) * 10.0) if shown else 0.0
            ax.set_ylim(low, 100)
            ax.set_xticks(x)
            ax.set_xticklabels(categories if j == len(METRICS) - 1 else [], rotation=60, ha="right", fontsize="small")
            ax.set_title(f"{detector}: {METRIC_LABELS[metric]}", fontsize="medium")
            if i == 0:
                ax.set_ylabel("percent")
            ax.grid(True, axis="y", color="#e6e6e6", linewidth=0.6)
            ax.set_axisbelow(True)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="upper right", ncol=len(labels), frameon=False)
    fig.suptitle("Baseline vs AnoGen per metric and category", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def write_report_items(
    summary_csv: str | Path,
    table1_csv: str | Path,
    *,
    summary_html_path: str | Path,
    table1_html_path: str | Path,
    comparison_png: str | Path,
    notes_html_path: str | Path,
) -> None:
    """Render the report items of the summarize rule from the CSVs it has just written."""
    rows = read_rows(summary_csv)
    table1 = read_rows(table1_csv)
    atomic_write_text(summary_html_path, summary_html(rows))
    atomic_write_text(table1_html_path, table1_html(table1, rows))
    # a fragment, not a page: the front page inlines it (a page's <style> would restyle the report)
    atomic_write_text(notes_html_path, "<h4>Notes on these results</h4>\n" + notes_html(rows))
    plot_comparison(rows, comparison_png)
