"""A study's ``section.html``: a stand-alone page with the mean rows, the paper's values beside them,
the test-set line and the notes."""

from __future__ import annotations

import html
import math
from typing import Any

from anogen.evaluation.paper_numbers import paper_table
from anogen.evaluation.report import MVTEC_CATEGORIES, delta_cell, html_page
from anogen.evaluation.summary import METRIC_LABELS, METRICS, format_value
from anogen.studies.table_rows import DIFFERENT_TEST_SETS, Row, Scores, study_title, unique

BASE_LABEL = "on the config's test set"


def _images(scores: Scores | None) -> str:
    """'test images (anomalous)' of a row, '-' where not evaluated or not recorded."""
    if scores is None or scores.n_test is None:
        return "-"
    return f"{scores.n_test} ({'-' if scores.n_anomalous is None else scores.n_anomalous})"


def _html_table(means: list[Row]) -> str:
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


def _test_set_html(means: list[Row], per_category: list[Row]) -> str:
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


def section_html(study: dict[str, Any], means: list[Row], per_category: list[Row]) -> str:
    """section.html: a stand-alone page (inline CSS, as the report's tables) with the mean table and notes."""
    show_paper = any(r.paper for r in means)
    title = study_title(study, {n for r in means for n in r.notes})
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
    found = unique([n for r in [*means, *per_category] for n in r.notes])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in found) or "<li>none</li>"
    body = (
        f'<h3>{html.escape(title)}</h3>\n<p class="caption">{caption}</p>\n{_html_table(means)}\n'
        f'{_test_set_html(means, per_category)}\n<h4>Notes</h4>\n<ul class="anogen-notes">{notes}</ul>'
    )
    return html_page(study.get("title") or study["name"], body)
