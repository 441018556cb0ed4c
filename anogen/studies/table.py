"""One study's outputs: ``table.csv``, ``plot.png`` and ``section.html`` from its evaluations.

A study (built by the planner, JSON-able) is a paper ablation as arms::

    {"name": "table3", "title": "...", "paper": "table3" or None,
     "plot": {"metric": "pixel_aupr", "x": "tau"} or None,
     "arms": [{"name": "tau_0.90", "label": "tau = 0.90", "paper_column": "0.90" or None,
               "x": 0.9 or None,
               "evaluations": [{"category", "detector", "variant", "metrics", "manifest"}, ...]}, ...]}

An evaluation may also name ``base_metrics`` / ``base_manifest``: the same detector evaluated
on the config's own test set (the test split less only the config's own support images: Table
1's in the paper study; the planner gives them to the arms whose support sets are the config's).

``table.csv`` holds first one ``mean`` row per arm x detector x variant (in arm order; the
mean over the categories where each metric is defined, as in summary.csv), then the
per-category rows in the same order. ``n_test`` and ``n_anomalous`` count the images the row
was scored on (``metrics.json``; summed over the categories on a mean row). Per metric
(summary.py's ``METRICS``) it has our value, ``base_<m>`` (ours on the config's own test set,
where evaluated there), ``paper_<m>`` (the paper's printed value for the arm's
``paper_column``; mean rows only: the paper prints no per-category values) and ``diff_<m>``
(ours - paper); ``base_n_test``, ``base_n_anomalous`` and ``base_test_set`` describe the base
evaluation. ``test_set`` is the evaluation's test-set identity (``metrics.json``), on a mean row
the 12-hex sha256 of its sorted ``<category>:<test_set>`` lines, so equal mean-row ids show that
arms shared their test images. ``note`` joins the undefined-metric notes, the provenance notes of
the manifests involved (random model, random teacher, fallback textures) and test-set notes.

Why one test set per study: a study compares its arms, and an arm that takes other support
images out of the test split would be scored on other images, mixing the arm's effect with
the test set's. The study's test set is the split less every arm's support images, so it can
be smaller than Table 1's; the paper prints its default numbers (Table 1's) in every table, so
the default arm's ``base_<m>`` (scored on Table 1's test set) is the value to hold against
the paper's, and its gap to ``<m>`` is what the study's smaller test set changes.

Values are in percent with 2 decimals; rows are in a fixed order, so the same inputs give a
byte-identical CSV. Every file is written atomically.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen import provenance
from anogen.errors import AnogenError, DataError
from anogen.evaluation.paper_numbers import paper_table, paper_value
from anogen.evaluation.report import MVTEC_CATEGORIES, delta_cell, html_page
from anogen.evaluation.summary import (
    MEAN,
    METRIC_LABELS,
    METRICS,
    csv_text,
    format_value,
    group_mean,
    percent,
    read_metrics,
    variant_rank,
)
from anogen.io import atomic_path, atomic_write_text
from anogen.keys import test_set_id
from anogen.plots import pyplot

__all__ = ["write_study", "STUDY_COLUMNS", "PAPER_METRICS", "DIFFERENT_TEST_SETS"]

# The four metrics the paper prints (it reports no AUPRO): the bars of a study without a line plot.
PAPER_METRICS = tuple(m for m in METRICS if m != "pixel_aupro")
STUDY_COLUMNS = (
    "arm",
    "label",
    "detector",
    "variant",
    "category",
    "n_categories",
    "n_test",
    "n_anomalous",
    "base_n_test",
    "base_n_anomalous",
    *(f"{prefix}{m}" for m in METRICS for prefix in ("", "base_", "paper_", "diff_")),
    "test_set",
    "base_test_set",
    "note",
)
DIFFERENT_TEST_SETS = "arms evaluated on different test sets"
STUDY_TEST_SET = "scored on the study's test set, smaller than the config's own"
BASE_LABEL = "on the config's test set"
NO_TEST_SET = "test set not recorded (evaluated before metrics.json had test_set)"
OUTPUT_NAMES = {"table": "table.csv", "plot": "plot.png", "section": "section.html"}


@dataclass(frozen=True)
class _Scores:
    """What one evaluation, or the mean of several, scored: metrics in percent (NaN = undefined),
    the test set's identity ('' = not recorded) and its images (None = not recorded)."""

    values: dict[str, float]
    test_set: str
    n_test: int | None
    n_anomalous: int | None


@dataclass(frozen=True)
class _Result:
    """One evaluation of the study, and the same detector on the config's own test set (``base``)."""

    arm: int  # index into study["arms"]
    detector: str
    variant: str
    category: str
    scores: _Scores
    notes: tuple[str, ...]
    base: _Scores | None = None

    @property
    def values(self) -> dict[str, float]:
        return self.scores.values

    @property
    def test_set(self) -> str:
        return self.scores.test_set


@dataclass
class _Row:
    """One row of table.csv before formatting."""

    arm: dict[str, Any]
    detector: str
    variant: str
    category: str
    n_categories: int
    scores: _Scores
    paper: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    base: _Scores | None = None

    @property
    def values(self) -> dict[str, float]:
        return self.scores.values

    @property
    def test_set(self) -> str:
        return self.scores.test_set

    def shows_base(self) -> bool:
        """Whether the row was also scored on the config's own test set, and that is another set."""
        return self.base is not None and self.base.test_set != self.test_set

    def cells(self) -> list[str]:
        base = self.base or _NOT_EVALUATED
        out = [self.arm["name"], self.arm.get("label") or self.arm["name"], self.detector, self.variant]
        out += [self.category, str(self.n_categories)]
        out += [_count(n) for n in (self.scores.n_test, self.scores.n_anomalous, base.n_test, base.n_anomalous)]
        for m in METRICS:
            ours, paper = self.values[m], self.paper.get(m, math.nan)
            out += [format_value(v) for v in (ours, base.values.get(m, math.nan), paper, ours - paper)]
        return [*out, self.test_set, base.test_set, "; ".join(_unique(self.notes))]


_NOT_EVALUATED = _Scores({}, "", None, None)


def _count(n: int | None) -> str:
    return "" if n is None else str(n)


def _unique(items: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


# ----------------------------------------------------------------------------- reading


def _check_study(study: dict[str, Any]) -> None:
    """The shape the planner promises; an AnogenError naming the study otherwise (a planner bug)."""
    name = study.get("name") if isinstance(study, dict) else None
    problems = []
    if not isinstance(name, str) or not name:
        problems.append("no 'name'")
    arms = study.get("arms") if isinstance(study, dict) else None
    if not isinstance(arms, list) or not arms:
        problems.append("no arms")
    else:
        names = [arm.get("name") for arm in arms if isinstance(arm, dict)]
        if len(names) != len(arms) or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            problems.append(f"arm names missing or repeated ({names})")
        elif not all(isinstance(arm.get("evaluations"), list) for arm in arms):
            problems.append("an arm without an 'evaluations' list")
    plot = study.get("plot") if isinstance(study, dict) else None
    if plot is not None and (not isinstance(plot, dict) or plot.get("metric") not in METRICS):
        problems.append(f"'plot' must be null or name a metric of {list(METRICS)}, not {plot!r}")
    if problems:
        raise AnogenError(f"study {name!r} is malformed: {'; '.join(problems)}")


def _count_of(metrics: dict[str, Any], name: str) -> int | None:
    value = metrics.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _test_set(metrics: dict[str, Any], manifest: Path) -> str:
    """metrics.json's test_set, else the manifest's (both written by evaluate_detector); '' if neither."""
    if isinstance(metrics.get("test_set"), str):
        return metrics["test_set"]
    try:
        extra = json.loads(manifest.read_text(encoding="utf-8")).get("extra") or {}
    except (OSError, ValueError):
        return ""
    return extra["test_set"] if isinstance(extra.get("test_set"), str) else ""


def _read_scores(
    study: dict[str, Any], evaluation: dict[str, Any], prefix: str = ""
) -> tuple[tuple[str, str, str], _Scores, Path]:
    """(category, detector, variant), scores and manifest of the evaluation's ``<prefix>metrics``."""
    path = Path(evaluation[f"{prefix}metrics"])
    data = read_metrics(path)
    ident = (data["category"], data["detector"], data["variant"])
    expected = tuple(evaluation.get(k, data[k]) for k in ("category", "detector", "variant"))
    if ident != expected:
        raise DataError(
            path, f"holds results for {'/'.join(ident)}, study {study['name']} expected {'/'.join(expected)}"
        )
    manifest = Path(evaluation.get(f"{prefix}manifest") or path.with_name("manifest.json"))
    scores = _Scores(
        {m: percent(data.get(m)) for m in METRICS},
        _test_set(data, manifest),
        _count_of(data, "n_test_images"),
        _count_of(data, "n_anomalous"),
    )
    return ident, scores, manifest


def _read_results(study: dict[str, Any]) -> list[_Result]:
    """Every evaluation of every arm, checked against what the study says it is."""
    results: list[_Result] = []
    for index, arm in enumerate(study["arms"]):
        seen: dict[tuple[str, str, str], str] = {}
        for evaluation in arm["evaluations"]:
            ident, scores, manifest = _read_scores(study, evaluation)
            if ident in seen:
                raise DataError(
                    evaluation["metrics"], f"arm {arm['name']} already has {'/'.join(ident)} from {seen[ident]}"
                )
            seen[ident] = evaluation["metrics"]
            base = _read_scores(study, evaluation, "base_")[1] if evaluation.get("base_metrics") else None
            notes = tuple(sorted(provenance.manifest_notes(manifest)))
            results.append(_Result(index, ident[1], ident[2], ident[0], scores, notes, base))
    return results


def _mismatched_categories(results: Sequence[_Result]) -> set[str]:
    """Categories whose evaluations (any arm, detector or variant) did not all see the same test images."""
    by_category: dict[str, set[str]] = {}
    for r in results:
        by_category.setdefault(r.category, set()).add(r.test_set)
    return {c for c, sets in by_category.items() if len(sets) > 1}


# ----------------------------------------------------------------------------- rows


def _comparable(categories: Sequence[str]) -> bool:
    """The paper's numbers are MVTec AD means: compared only when every category is MVTec AD."""
    return bool(categories) and set(categories) <= set(MVTEC_CATEGORIES)


def _paper_values(study: dict[str, Any], arm: dict[str, Any], detector: str) -> dict[str, float]:
    if not study.get("paper") or arm.get("paper_column") is None:
        return {}
    found = {m: paper_value(study["paper"], str(arm["paper_column"]), detector, m) for m in METRICS}
    return {m: v for m, v in found.items() if v is not None}


def _category_row(arm: dict[str, Any], r: _Result, mismatched: set[str]) -> _Row:
    undefined = [m for m in METRICS if math.isnan(r.values[m])]
    notes = [f"undefined: {', '.join(undefined)}"] if undefined else []
    notes += r.notes
    if not r.test_set:
        notes.append(NO_TEST_SET)
    if r.category in mismatched:
        notes.append(DIFFERENT_TEST_SETS)
    row = _Row(arm, r.detector, r.variant, r.category, 1, r.scores, notes=notes, base=r.base)
    return _with_base_note(row)


def _with_base_note(row: _Row) -> _Row:
    """A row scored on a smaller test set than the config's own says by how many images."""
    if row.shows_base() and row.base.n_test is not None and row.scores.n_test is not None:
        fewer = row.base.n_test - row.scores.n_test
        anomalous = (row.base.n_anomalous or 0) - (row.scores.n_anomalous or 0)
        row.notes.append(f"{STUDY_TEST_SET} ({fewer} fewer test images, {anomalous} of them anomalous): see base_*")
    return row


def _mean_scores(scores: list[_Scores], categories: list[str]) -> tuple[_Scores, list[str]]:
    """The mean over categories (each metric where defined), the images summed, one test-set id."""
    values, notes = group_mean([s.values for s in scores], categories)
    counts = [
        None if any(getattr(s, name) is None for s in scores) else sum(getattr(s, name) for s in scores)
        for name in ("n_test", "n_anomalous")
    ]
    recorded = all(s.test_set for s in scores)
    test_set = test_set_id(f"{c}:{s.test_set}" for c, s in zip(categories, scores)) if recorded else ""
    return _Scores(values, test_set, *counts), notes


def _mean_row(
    study: dict[str, Any], arm: dict[str, Any], group: list[_Result], all_categories: list[str], mismatched: set[str]
) -> _Row:
    """The mean of one arm x detector x variant over its categories, with the paper's value beside it."""
    group = sorted(group, key=lambda r: r.category)
    categories = [r.category for r in group]
    scores, notes = _mean_scores([r.scores for r in group], categories)
    base = None
    if all(r.base is not None for r in group):
        base = _mean_scores([r.base for r in group], categories)[0]
    missing = [c for c in all_categories if c not in categories]
    if missing:
        notes.append(
            f"mean over {len(categories)} of the study's {len(all_categories)} categories (not {' '.join(missing)})"
        )
    notes += sorted({n for r in group for n in r.notes})
    paper = _paper_values(study, arm, group[0].detector) if _comparable(all_categories) else {}
    if paper and len(categories) != len(MVTEC_CATEGORIES):
        notes.append(f"the paper's values are means over all {len(MVTEC_CATEGORIES)} MVTec AD categories")
    if not scores.test_set:
        notes.append(NO_TEST_SET)
    bad = [c for c in categories if c in mismatched]
    if bad:
        notes.append(f"{DIFFERENT_TEST_SETS} ({' '.join(bad)})")
    row = _Row(arm, group[0].detector, group[0].variant, MEAN, len(group), scores, paper, notes, base)
    return _with_base_note(row)


def _study_rows(study: dict[str, Any], results: list[_Result]) -> tuple[list[_Row], list[_Row]]:
    """(mean rows, per-category rows), each in arm order, then detector and variant, then category."""
    groups: dict[tuple[int, str, str], list[_Result]] = {}
    for r in results:
        groups.setdefault((r.arm, r.detector, r.variant), []).append(r)
    order = sorted(groups, key=lambda g: (g[0], g[1], variant_rank(g[2])))
    all_categories = sorted({r.category for r in results})
    mismatched = _mismatched_categories(results)
    means, per_category = [], []
    for key in order:
        arm = study["arms"][key[0]]
        means.append(_mean_row(study, arm, groups[key], all_categories, mismatched))
        for r in sorted(groups[key], key=lambda r: r.category):
            per_category.append(_category_row(arm, r, mismatched))
    return means, per_category


# ----------------------------------------------------------------------------- plot


def _title(study: dict[str, Any], notes: set[str]) -> str:
    title = study.get("title") or study["name"]
    flags = [
        text
        for note, text in ((provenance.RANDOM_MODEL, "random model"), (provenance.RANDOM_TEACHER, "random teacher"))
        if note in notes
    ]
    return f"{title} [{', '.join(flags)}: not comparable with the paper]" if flags else title


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


def _line_plot(ax, study: dict[str, Any], means: list[_Row]) -> None:
    """Our mean metric over the arms' x per detector x variant; the paper's points as separate markers."""
    metric, shown = study["plot"]["metric"], []
    series: dict[tuple[str, str], list[_Row]] = {}
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


def _bar_plot(axes, means: list[_Row]) -> None:
    """Per detector x variant: grouped bars of the paper's four metrics per arm, the paper's values as markers."""
    groups: dict[tuple[str, str], list[_Row]] = {}
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


def plot_study(study: dict[str, Any], means: list[_Row], path: str | Path) -> None:
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
    title = _title(study, {n for r in means for n in r.notes})
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())), fontsize="medium")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- html


def _images(scores: _Scores | None) -> str:
    """'test images (anomalous)' of a row, '-' where not evaluated or not recorded."""
    if scores is None or scores.n_test is None:
        return "-"
    return f"{scores.n_test} ({'-' if scores.n_anomalous is None else scores.n_anomalous})"


def _html_table(means: list[_Row]) -> str:
    """The mean rows: the images scored, ours per metric, ours on the config's own test set where a
    row's differs, and for the metrics the paper prints its value and ours - paper."""
    compared = {m for r in means for m in r.paper}
    with_base = any(r.shows_base() for r in means)
    head = [("arm", ""), ("detector", ""), ("variant", ""), ("categories", ""), ("test images (anomalous)", "")]
    head += [(f"{BASE_LABEL}: test images (anomalous)", "base")] if with_base else []
    for m in METRICS:
        head.append((METRIC_LABELS[m], ""))
        head += [(f"{METRIC_LABELS[m]}, {BASE_LABEL}", "base")] if with_base else []
        if m in compared:
            head += [(f"paper {METRIC_LABELS[m]}", "paper"), ("ours - paper", "paper")]
    th = "".join(
        f'<th class="{cls}">{html.escape(text)}</th>' if cls else f"<th>{html.escape(text)}</th>" for text, cls in head
    )
    lines = ["<table>", f"<tr>{th}</tr>"]
    for row in means:
        base = row.base if row.shows_base() else None
        label = row.arm.get("label") or row.arm["name"]
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in (label, row.detector, row.variant))
        tds += f'<td class="num">{row.n_categories}</td><td class="num">{_images(row.scores)}</td>'
        tds += f'<td class="num base">{_images(base)}</td>' if with_base else ""
        for m in METRICS:
            tds += f'<td class="num">{format_value(row.values[m])}</td>'
            if with_base:
                tds += f'<td class="num base">{(format_value(base.values[m]) if base else "") or "-"}</td>'
            if m in compared:
                paper = row.paper.get(m, math.nan)
                tds += f'<td class="num paper">{format_value(paper) or "-"}</td>' + delta_cell(
                    row.values[m] - paper, "num paper"
                )
        lines.append(f"<tr>{tds}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _test_set_html(means: list[_Row], per_category: list[_Row]) -> str:
    """One line: whether every arm saw the same test images (the mean rows' ids), else which categories differ."""
    ids = sorted({r.test_set for r in means})
    bad = sorted({r.category for r in per_category if DIFFERENT_TEST_SETS in r.notes})
    if bad:
        text = f"<b>Warning: {DIFFERENT_TEST_SETS}</b> for {html.escape(', '.join(bad))}: compare these arms with care."
    elif ids == [""]:
        text = "The test set of these evaluations was not recorded."
    elif len(ids) == 1:
        text = f"Every arm was evaluated on the same test images (test set <code>{html.escape(ids[0])}</code>)."
    else:
        shown = ", ".join(f"<code>{html.escape(i)}</code>" for i in ids if i)
        text = f"Every category's test images are the same in every arm; the arms cover different categories (test sets {shown})."
    return f'<p class="caption">{text}</p>'


def section_html(study: dict[str, Any], means: list[_Row], per_category: list[_Row]) -> str:
    """section.html: a stand-alone page (inline CSS, as the report's tables) with the mean table and notes."""
    show_paper = any(r.paper for r in means)
    title = _title(study, {n for r in means for n in r.notes})
    caption = (
        "Mean over categories, percent (per-category values: table.csv); test images: summed over the categories."
        " Every arm is scored on one test set, the test split less all the arms' support images, so that the arms"
        " differ only in what they change, not in the images they are scored on."
    )
    if any(r.shows_base() for r in means):
        caption += (
            f" That set is smaller than the config's own (the split less only its own support images: Table 1's in"
            f" the paper study); '{BASE_LABEL}' is the same detector scored there, for the arms whose support sets"
            " are the config's: hold that value against the paper's default numbers, and its gap to ours is what"
            " the study's smaller test set changes."
        )
    if show_paper:
        source = paper_table(study["paper"])["source"]
        caption += (
            f" Shaded: the paper's printed values ({html.escape(source)}), means over the "
            f"{len(MVTEC_CATEGORIES)} MVTec AD categories; the paper prints no per-category values and no AUPRO."
        )
    elif study.get("paper"):
        caption += " The paper's numbers are MVTec AD means; these categories are not all MVTec AD, so none are shown."
    found = _unique([n for r in [*means, *per_category] for n in r.notes])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in found) or "<li>none</li>"
    body = (
        f'<h3>{html.escape(title)}</h3>\n<p class="caption">{caption}</p>\n{_html_table(means)}\n'
        f'{_test_set_html(means, per_category)}\n<h4>Notes</h4>\n<ul class="anogen-notes">{notes}</ul>'
    )
    return html_page(study.get("title") or study["name"], body)


# ----------------------------------------------------------------------------- job


def write_study(study: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.csv``, ``plot.png`` and ``section.html`` of one study into ``out_dir``.

    ``study``: see the module docstring. Returns ``{"table": ..., "plot": ..., "section": ...}``,
    the paths written. A missing or malformed metrics.json raises DataError naming the file; a
    malformed study (no arms, repeated arm names) raises AnogenError.
    """
    _check_study(study)
    if study.get("paper"):
        paper_table(study["paper"])  # an unknown table id fails before anything is read
    results = _read_results(study)
    if not results:
        raise AnogenError(f"study {study['name']!r} has no evaluations")
    means, per_category = _study_rows(study, results)
    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in OUTPUT_NAMES.items()}
    atomic_write_text(paths["table"], csv_text(STUDY_COLUMNS, [r.cells() for r in [*means, *per_category]]))
    plot_study(study, means, paths["plot"])
    atomic_write_text(paths["section"], section_html(study, means, per_category))
    return paths
