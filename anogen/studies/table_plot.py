"""A study's ``plot.png``: our mean metric over the arms' x as a line, or grouped bars per arm, with
the paper's printed values as markers."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from anogen.evaluation.summary import METRIC_LABELS, METRICS
from anogen.io import atomic_path
from anogen.plots import pyplot
from anogen.studies.table_rows import Row, study_title

# The four metrics the paper prints (it reports no AUPRO): the bars of a study without a line plot.
PAPER_METRICS = tuple(m for m in METRICS if m != "pixel_aupro")


def _y_floor(shown: list[float]) -> float:
    """A round value below the smallest shown value (as report.plot_comparison), so small gaps stay visible."""
    finite = [v for v in shown if math.isfinite(v)]
    return max(0.0, math.floor((min(finite) - 5.0) / 10.0) * 10.0) if finite else 0.0


def _label_points(ax, points: list[tuple[float, float, bool]], colour: str) -> None:
    """Write each value beside its point: above it when ``True`` (the higher of ours and the paper's), else below."""
    for x, y, above in points:
        if math.isfinite(y):
            offset = (0, 6) if above else (0, -12)
            ax.annotate(
                f"{y:.1f}", (x, y), textcoords="offset points", xytext=offset, ha="center", fontsize=7, color=colour
            )


def _line_plot(ax, study: dict[str, Any], means: list[Row]) -> None:
    """Our mean metric over the arms' x per detector x variant; the paper's points as separate markers."""
    metric, shown = study["plot"]["metric"], []
    series: dict[tuple[str, str], list[Row]] = {}
    for row in means:
        if isinstance(row.arm.get("x"), (int, float)):
            series.setdefault((row.detector, row.variant), []).append(row)
    colours = iter(["#d9541e", "#1f3f99", "#2a8a3e", "#8c3fa6", "#8c8c8c"] * 4)
    for (detector, variant), rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r.arm["x"])
        xs, ys = [r.arm["x"] for r in rows], [r.values[metric] for r in rows]
        colour = next(colours)
        name = detector if len({v for _, v in series}) == 1 else f"{detector} {variant}"
        ax.plot(xs, ys, marker="o", color=colour, label=f"{name} (ours)")
        paper = [(r.arm["x"], r.paper[metric], r.values[metric]) for r in rows if metric in r.paper]
        printed = {x: y for x, y, _ in paper}
        _label_points(ax, [(x, y, not y < printed.get(x, -math.inf)) for x, y in zip(xs, ys)], colour)
        if paper:
            ax.plot(
                [x for x, _, _ in paper],
                [y for _, y, _ in paper],
                marker="D",
                mfc="none",
                mew=1.5,
                linestyle="none",
                color=colour,
                label=f"{name} (paper)",
            )
            _label_points(ax, [(x, y, not math.isfinite(ours) or y > ours) for x, y, ours in paper], colour)
        shown += ys + list(printed.values())
    ax.set_xlabel(study["plot"].get("x") or "x")
    ax.set_ylabel(f"{METRIC_LABELS[metric]} (%, mean over categories)")
    ax.set_ylim(_y_floor(shown), 100)
    if not series:
        ax.text(0.5, 0.5, "no arm has a numeric x", ha="center", va="center", transform=ax.transAxes)


def _bar_plot(axes, means: list[Row]) -> None:
    """Per detector x variant: grouped bars of the paper's four metrics per arm, the paper's values as markers."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in means:
        groups.setdefault((row.detector, row.variant), []).append(row)
    colours = ["#8c8c8c", "#d9541e", "#1f3f99", "#2a8a3e"]
    width = 0.8 / len(PAPER_METRICS)
    for ax, ((detector, variant), rows) in zip(axes, sorted(groups.items())):
        shown: list[float] = []
        for k, metric in enumerate(PAPER_METRICS):
            xs = [i + (k - (len(PAPER_METRICS) - 1) / 2) * width for i in range(len(rows))]
            ys = [r.values[metric] for r in rows]
            ax.bar(xs, ys, width, color=colours[k], label=METRIC_LABELS[metric])
            paper = [(x, r.paper[metric]) for x, r in zip(xs, rows) if metric in r.paper]
            if paper:
                ax.plot(
                    *zip(*paper), marker="_", markersize=12, mew=2.5, color="black", linestyle="none", label="paper"
                )
            shown += ys + [y for _, y in paper]
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r.arm.get("label") or r.arm["name"] for r in rows], rotation=20, ha="right")
        ax.set_ylim(_y_floor(shown), 100)
        ax.set_title(f"{detector} ({variant})", fontsize="medium")
        ax.set_ylabel("percent, mean over categories")


def plot_study(study: dict[str, Any], means: list[Row], path: str | Path) -> None:
    """plot.png: a line over the arms' x (``study["plot"]`` set) or grouped bars per arm; written atomically."""
    plt = pyplot()
    n_panels = 1 if study.get("plot") else max(1, len({(r.detector, r.variant) for r in means}))
    n_arms = len(study["arms"])
    fig, axes = plt.subplots(1, n_panels, figsize=(max(6.0, 1.1 * n_arms + 2.5) * n_panels, 4.6), squeeze=False)
    if study.get("plot"):
        _line_plot(axes[0, 0], study, means)
    else:
        _bar_plot(axes[0], means)
    handles, labels = [], []
    for ax in axes.flat:
        ax.grid(True, axis="y", color="#e6e6e6", linewidth=0.6)
        ax.set_axisbelow(True)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, fontsize="small")
    title = study_title(study, {n for r in means for n in r.notes})
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize="medium")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
