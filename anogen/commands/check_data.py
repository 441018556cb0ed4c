"""``anogen check-data``: read the whole data set once and report every problem at once.

A run of the workflow stops at the first bad file it meets, possibly hours in. This check
walks the data set of a config the way the jobs will (``anogen.data.layouts``, the
config's ``Plan``), collects *every* problem instead of stopping, and says what the DAG
would run. Problems are what would stop a job (exit status 1):

- names the DAG rejects (category/defect folders that ``categories: all`` / ``defects:
  all`` select), categories or defects the config names that do not exist;
- unreadable or truncated images and masks (every file is decoded fully), files that are
  not images, empty folders, missing masks, masks whose size differs from their image,
  empty masks of anomalous images, several masks for one image;
- too few anomalies of a defect type for ``support.shots``; no test image left once the
  support images are excluded (``support.exclude_from_test``).

Warnings do not stop a job but change what the results mean: grayscale and colour images
mixed in a category (everything is converted to RGB), non-square images (see
``resize``), no normal or no anomalous test image left after the support sets (image
AU-ROC is undefined), badly named folders the config leaves out, operating-system files
(Thumbs.db, desktop.ini) in the image folders, which every listing skips (one line naming
where). For each category it
also reports image sizes and aspect ratios and the foreground coverage on a few normal images
(``foreground_images``, as the category's foreground job makes it: GrabCut, the authors' Otsu
or its template), suggesting ``category_options.<c>.texture: true`` where GrabCut's foreground
covers nearly the whole image (GrabCut keeps >= 90% of its initial rectangle: a texture or
a close-up, where boxes may go anywhere). On the same images it draws every defect's boxes as
its generation job will (``anogen.generation.placement``): a defect whose boxes cannot be placed
is a problem naming the best overlap found and the settings to change.

This module picks the categories and defects of the config and counts the jobs; the checks
themselves are in ``anogen.data.check`` (the files) and ``anogen.generation.check`` (the
foreground and the boxes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from anogen.data.check import CheckReport, check_category_files, os_junk_warning, report_test_set
from anogen.data.layouts import layout_module, layout_spec
from anogen.errors import AnogenError
from anogen.generation.check import foreground_and_boxes, learned_boxes
from anogen.options import config_of_args
from anogen.plan import Plan

__all__ = ["check_data", "planned_job_counts", "run"]


def planned_job_counts(plan) -> dict[str, int]:
    """Jobs per rule of the default target, as the Snakefile plans them from ``Plan``."""
    pairs = plan.pairs()
    runs = plan.detector_runs()
    counts = {
        "demo_data": 1 if plan.is_demo else 0,
        "tiny_model": 1 if plan.tiny_family else 0,  # as data.smk decides
        "select_support": len(pairs),
        "estimate_foreground": len(plan.categories),
        "learn_embedding": len(pairs),
        "generate_anomalies": len(pairs),
        "train_detector": len(runs),
        "evaluate_detector": len(runs),
        "summarize": 1,
        "all": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


def _check_category(
    plan: Plan, category: str, defects: list[str], options: dict, report: CheckReport, foreground_images: int
) -> dict[Path, list[str]]:
    """Check one category into ``report``; returns its folders holding an operating system's files."""
    config = plan.config
    files = check_category_files(config, category, defects, options, report)
    if files is None:
        return {}
    # What the evaluation would see after the support images are left out.
    excluded = {str(item.path) for chosen in files.chosen.values() for item in chosen}
    if layout_module(options).sample_of is not None:  # every view of a support sample leaves the test set
        try:
            excluded |= {str(Path(config["data_root"]) / rel) for rel in plan.excluded_from_test(category)}
        except AnogenError as exc:
            report.problems.append(str(exc))
    report_test_set(config, category, files, excluded, report)
    learned_boxes(plan, category, files.chosen, report)

    usable = [p for p in files.index.train_good if str(p) not in files.bad]
    limit = config["generation"]["max_normal_images"]
    foreground_and_boxes(plan, category, defects, usable[:limit] if limit else usable, report, foreground_images)
    return files.junk


def check_data(config: dict, *, foreground_images: int = 4, echo: Callable[[str], None] | None = None) -> CheckReport:
    """Check the data set of a validated config (``load_config_file``); see the module docstring."""
    report = CheckReport()
    plan = Plan(config)
    options = layout_spec(config)
    report.lines.append(f"data {config['data_root']} (data_layout {config['data_layout']}, resize {config['resize']})")
    try:
        layout = plan.layout
    except AnogenError as exc:
        report.problems.append(str(exc))
        return report
    rejected = getattr(plan, "_rejected_categories", [])
    wanted = config["categories"]
    for exc in rejected:
        (report.problems if wanted == "all" else report.warnings).append(
            str(exc) + ("" if wanted == "all" else " (not selected by categories:, so ignored)")
        )
    if wanted == "all":
        categories = list(layout)
    else:
        categories = [c for c in wanted if c in layout]
        report.problems += [
            f"categories: {c!r} not found under {config['data_root']!r}" for c in wanted if c not in layout
        ]
    selected_pairs = []
    junk: dict[Path, list[str]] = {}
    for category in categories:
        choice = "all" if config["defects"] == "all" else config["defects"].get(category, "all")
        available = layout[category]["defects"]
        for exc in layout[category].get("rejected", []):
            (report.problems if choice == "all" else report.warnings).append(str(exc))
        defects = available if choice == "all" else [d for d in choice if d in available]
        if choice != "all":
            report.problems += [
                f"defects.{category}: {d!r} not found (available: {available})" for d in choice if d not in available
            ]
        if not defects:
            report.problems.append(f"{category}: no defect type to learn from (no anomalous test image)")
        selected_pairs += [(category, d) for d in defects]
        if echo:
            echo(f"checking {category} ...")
        junk |= _check_category(plan, category, defects, options, report, foreground_images)
    if warning := os_junk_warning(junk):
        report.warnings.append(warning)

    report.lines.append(
        f"plan: {len(categories)} categories, {len(selected_pairs)} (category, defect) pairs: "
        + ", ".join(f"{c}/{d}" for c, d in selected_pairs)
    )
    try:
        report.jobs = planned_job_counts(plan)
    except AnogenError as exc:  # the DAG would not build; say so unless that file is reported already
        path = getattr(exc, "path", None)
        if not any(p.startswith(f"{path}:") for p in report.problems):
            report.problems.append(str(exc))
    if not report.jobs:
        report.lines.append("jobs: none, the DAG would not build (see the problems)")
    else:
        report.lines.append(
            "jobs: "
            + ", ".join(f"{rule} {n}" for rule, n in report.jobs.items())
            + f" (total {sum(report.jobs.values())})"
        )
    return report


def run(args) -> int:
    report = check_data(
        config_of_args(args),
        foreground_images=args.foreground_images,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(report.render())
    return 0 if report.ok else 1
