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

The rows of ``table.csv`` (columns, means, notes) are built in anogen.studies.table_rows, the
plot in anogen.studies.table_plot and the page in anogen.studies.table_html.

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

from pathlib import Path
from typing import Any

from anogen.errors import AnogenError
from anogen.evaluation.paper_numbers import paper_table
from anogen.evaluation.summary import csv_text
from anogen.io import atomic_write_text
from anogen.studies.table_html import section_html
from anogen.studies.table_plot import plot_study
from anogen.studies.table_rows import STUDY_COLUMNS, check_study, read_results, study_rows

__all__ = ["write_study"]

OUTPUT_NAMES = {"table": "table.csv", "plot": "plot.png", "section": "section.html"}


def write_study(study: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.csv``, ``plot.png`` and ``section.html`` of one study into ``out_dir``.

    ``study``: see the module docstring. Returns ``{"table": ..., "plot": ..., "section": ...}``,
    the paths written. A missing or malformed metrics.json raises DataError naming the file; a
    malformed study (no arms, repeated arm names) raises AnogenError.
    """
    check_study(study)
    if study.get("paper"):
        paper_table(study["paper"])  # an unknown table id fails before anything is read
    results = read_results(study)
    if not results:
        raise AnogenError(f"study {study['name']!r} has no evaluations")
    means, per_category = study_rows(study, results)
    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in OUTPUT_NAMES.items()}
    atomic_write_text(paths["table"], csv_text(STUDY_COLUMNS, [r.cells() for r in [*means, *per_category]]))
    plot_study(study, means, paths["plot"])
    atomic_write_text(paths["section"], section_html(study, means, per_category))
    return paths
