"""The rows of a study's ``table.csv``: its evaluations read and checked, then one mean row per
arm x detector x variant and one row per category (the study's shape: anogen.studies.table).

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

Values are in percent with 2 decimals; rows are in a fixed order, so the same inputs give a
byte-identical CSV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anogen import provenance
from anogen.errors import AnogenError, DataError
from anogen.evaluation.paper_numbers import paper_value
from anogen.evaluation.report import MVTEC_CATEGORIES
from anogen.evaluation.summary import MEAN, METRICS, format_value, group_mean, percent, read_metrics, variant_rank
from anogen.keys import test_set_id

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
NO_TEST_SET = "test set not recorded (evaluated before metrics.json had test_set)"


@dataclass(frozen=True)
class Scores:
    """What one evaluation, or the mean of several, scored: metrics in percent (NaN = undefined),
    the test set's identity ('' = not recorded) and its images (None = not recorded)."""

    values: dict[str, float]
    test_set: str
    n_test: int | None
    n_anomalous: int | None


@dataclass(frozen=True)
class Result:
    """One evaluation of the study, and the same detector on the config's own test set (``base``)."""

    arm: int  # index into study["arms"]
    detector: str
    variant: str
    category: str
    scores: Scores
    notes: tuple[str, ...]
    base: Scores | None = None

    @property
    def values(self) -> dict[str, float]:
        return self.scores.values

    @property
    def test_set(self) -> str:
        return self.scores.test_set


@dataclass
class Row:
    """One row of table.csv before formatting."""

    arm: dict[str, Any]
    detector: str
    variant: str
    category: str
    n_categories: int
    scores: Scores
    paper: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    base: Scores | None = None

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
        return [*out, self.test_set, base.test_set, "; ".join(unique(self.notes))]


_NOT_EVALUATED = Scores({}, "", None, None)


def _count(n: int | None) -> str:
    return "" if n is None else str(n)


def unique(items: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


# ----------------------------------------------------------------------------- reading


def check_study(study: dict[str, Any]) -> None:
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
) -> tuple[tuple[str, str, str], Scores, Path]:
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
    scores = Scores(
        {m: percent(data.get(m)) for m in METRICS},
        _test_set(data, manifest),
        _count_of(data, "n_test_images"),
        _count_of(data, "n_anomalous"),
    )
    return ident, scores, manifest


def read_results(study: dict[str, Any]) -> list[Result]:
    """Every evaluation of every arm, checked against what the study says it is."""
    results: list[Result] = []
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
            results.append(Result(index, ident[1], ident[2], ident[0], scores, notes, base))
    return results


def _mismatched_categories(results: Sequence[Result]) -> set[str]:
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


def _category_row(arm: dict[str, Any], r: Result, mismatched: set[str]) -> Row:
    undefined = [m for m in METRICS if math.isnan(r.values[m])]
    notes = [f"undefined: {', '.join(undefined)}"] if undefined else []
    notes += r.notes
    if not r.test_set:
        notes.append(NO_TEST_SET)
    if r.category in mismatched:
        notes.append(DIFFERENT_TEST_SETS)
    row = Row(arm, r.detector, r.variant, r.category, 1, r.scores, notes=notes, base=r.base)
    return _with_base_note(row)


def _with_base_note(row: Row) -> Row:
    """A row scored on a smaller test set than the config's own says by how many images."""
    if row.shows_base() and row.base.n_test is not None and row.scores.n_test is not None:
        fewer = row.base.n_test - row.scores.n_test
        anomalous = (row.base.n_anomalous or 0) - (row.scores.n_anomalous or 0)
        row.notes.append(f"{STUDY_TEST_SET} ({fewer} fewer test images, {anomalous} of them anomalous): see base_*")
    return row


def _mean_scores(scores: list[Scores], categories: list[str]) -> tuple[Scores, list[str]]:
    """The mean over categories (each metric where defined), the images summed, one test-set id."""
    values, notes = group_mean([s.values for s in scores], categories)
    counts = [
        None if any(getattr(s, name) is None for s in scores) else sum(getattr(s, name) for s in scores)
        for name in ("n_test", "n_anomalous")
    ]
    recorded = all(s.test_set for s in scores)
    test_set = test_set_id(f"{c}:{s.test_set}" for c, s in zip(categories, scores)) if recorded else ""
    return Scores(values, test_set, *counts), notes


def _mean_row(
    study: dict[str, Any], arm: dict[str, Any], group: list[Result], all_categories: list[str], mismatched: set[str]
) -> Row:
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
    row = Row(arm, group[0].detector, group[0].variant, MEAN, len(group), scores, paper, notes, base)
    return _with_base_note(row)


def study_rows(study: dict[str, Any], results: list[Result]) -> tuple[list[Row], list[Row]]:
    """(mean rows, per-category rows), each in arm order, then detector and variant, then category."""
    groups: dict[tuple[int, str, str], list[Result]] = {}
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


# ----------------------------------------------------------------------------- title (plot and page)


def study_title(study: dict[str, Any], notes: set[str]) -> str:
    title = study.get("title") or study["name"]
    flags = [
        text
        for note, text in ((provenance.RANDOM_MODEL, "random model"), (provenance.RANDOM_TEACHER, "random teacher"))
        if note in notes
    ]
    return f"{title} [{', '.join(flags)}: not comparable with the paper]" if flags else title
