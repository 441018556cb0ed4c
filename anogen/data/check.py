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
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anogen.data.geometry import to_square
from anogen.errors import AnogenError, DataError

# Suggest texture: true when GrabCut keeps this fraction of its initial rectangle (the image
# less a 5% margin on every side, which GrabCut always treats as background): ~73% of the image.
TEXTURE_COVERAGE = 0.9

__all__ = ["CheckReport", "check_data", "planned_job_counts", "texture_threshold", "TEXTURE_COVERAGE"]


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    regions: dict[str, float] = field(default_factory=dict)  # separate foreground regions per image (median)
    boxes: dict[str, dict] = field(default_factory=dict)  # "category/defect" -> learned box range
    placement: dict[str, Any] = field(default_factory=dict)  # "category/defect" -> generation.placement.Placement

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        out = list(self.lines)
        out += [f"PROBLEM  {p}" for p in self.problems]
        out += [f"warning  {w}" for w in self.warnings]
        if self.problems:
            out.append(f"{len(self.problems)} problem(s) that would stop a job, {len(self.warnings)} warning(s)")
        else:
            out.append(f"no problem found ({len(self.warnings)} warning(s))")
        return "\n".join(out)


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


def _decode_all(index, report: CheckReport, resize: str) -> dict[str, Any]:
    """Decode every image and mask of a scanned category; sizes, modes and bad files."""
    from anogen.data import images
    from anogen.io import read_image

    sizes: collections.Counter = collections.Counter()
    modes: collections.Counter = collections.Counter()
    bad: set[str] = set()

    def decode(path: Path, mode: str) -> np.ndarray | None:
        try:
            array = read_image(path, mode)
        except DataError as exc:
            report.problems.append(str(exc))
            bad.add(str(path))
            return None
        return array

    for path in index.train_good + [item.path for item in index.test]:
        array = decode(path, "RGB")
        if array is None:
            continue
        modes["grayscale" if images.read_header(path)[1] in images.GRAY_MODES else "colour"] += 1
        if array is not None:
            sizes[(array.shape[1], array.shape[0])] += 1
    for item in index.test:
        if item.mask is None:
            continue
        mask = decode(item.mask, "L")
        if mask is not None and not mask.any():
            report.problems.append(f"{item.mask}: mask is empty (all zero) for the anomalous image {item.path}")
            bad.add(str(item.mask))
        elif mask is not None and resize == "crop" and not to_square(mask, "crop").any():
            report.warnings.append(
                f"{item.path}: its anomaly lies entirely outside the centre square kept by "
                "resize: crop (no model sees it; as a support image it stops the embedding job)"
            )
    return {"sizes": sizes, "modes": modes, "bad": bad}


def _foregrounds(plan, category: str, paths: list[Path], n: int) -> list[tuple[str, np.ndarray | None, str]]:
    """(path, foreground mask, method used) of ``n`` evenly spaced normal images, made as the category's
    foreground job makes it (GrabCut, the authors' Otsu or its template); no mask for a texture."""
    from anogen.data.images import load_image
    from anogen.generation.foreground import estimate_foreground_with_method, load_template

    chosen = paths[:: max(1, len(paths) // max(1, n))][:n]
    if plan.texture(category):
        return [(str(path), None, "texture") for path in chosen]
    template, method = plan.foreground_template(category), plan.foreground_method(category)
    iterations = plan.config["generation"]["grabcut_iterations"]
    found = []
    for path in chosen:
        try:
            image = load_image(path)
        except AnogenError:
            continue  # already reported by the decode pass
        if template:
            found.append((str(path), load_template(template, *image.shape[:2]), "template"))
        else:
            found.append((str(path), *estimate_foreground_with_method(image, method, iterations)))
    return found


def _coverage(found: list[tuple[str, np.ndarray, str]]) -> tuple[float | None, collections.Counter, float | None]:
    """Mean foreground fraction of the image over the images ``found``, the methods used, and the
    median number of separate foreground regions (``REGION_FRACTION`` of the image or more)."""
    if not found:
        return None, collections.Counter(), None
    methods = collections.Counter(method for _, _, method in found)
    fractions = [float(mask.mean()) for _, mask, _ in found]
    return float(np.mean(fractions)), methods, float(np.median([_regions(mask) for _, mask, _ in found]))


# A foreground region counts (multi-instance categories: one region per object) from this
# fraction of the image on; smaller ones are GrabCut's specks.
REGION_FRACTION = 0.002


# A learned box range whose smaller side starts here covers nearly the whole image: worth a look.
WHOLE_IMAGE_BOX = 0.6


def _regions(mask: np.ndarray) -> int:
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return int(np.sum(stats[1:n, cv2.CC_STAT_AREA] >= REGION_FRACTION * mask.size))


def _learned_boxes(plan, category: str, chosen: dict, report: CheckReport) -> None:
    """The box range each defect with a learned range gets from its support masks (``chosen``)."""
    from anogen.data.images import load_mask
    from anogen.generation.boxes import learned_box_range

    learned = plan.config["generation"]["learned_box"]
    for defect, items in chosen.items():
        if not plan.learns_box(category, defect):
            continue
        try:
            masks = [to_square(load_mask(item.mask), plan.config["resize"]) for item in items]
            box = learned_box_range(masks, learned, learned["rotate"], f"support set of {category}/{defect}")
        except AnogenError as exc:
            report.problems.append(str(exc))
            continue
        report.boxes[f"{category}/{defect}"] = box
        if min(box["width"][0], box["height"][0]) >= WHOLE_IMAGE_BOX:
            report.warnings.append(
                f"{category}/{defect}: the box range learned from its support masks starts at "
                f"{min(box['width'][0], box['height'][0]):.0%} of the image (nearly the whole image): check "
                f"those masks, or hand-set generation.box_ranges.{category}.{defect}"
            )
        report.lines.append(
            f"  boxes of {defect} (learned from {len(items)} support masks, {len(box['components'])} "
            f"components): width {box['width'][0]:.3f}-{box['width'][1]:.3f}, "
            f"height {box['height'][0]:.3f}-{box['height'][1]:.3f} of the image"
        )


def texture_threshold() -> float:
    """Foreground fraction of the whole image above which check-data suggests texture: true."""
    from anogen.generation.foreground import MARGIN

    return TEXTURE_COVERAGE * (1.0 - 2.0 * MARGIN) ** 2


# Folders named in the one warning about operating-system files; the rest are counted.
JUNK_FOLDERS_SHOWN = 3


def _os_junk(index) -> dict[Path, list[str]]:
    """Folder -> the operating system's files (``index.OS_JUNK_FILES``) in it, over the folders of
    the scanned images and masks: every listing skips them, the report says where they are."""
    from anogen.data.index import is_os_junk

    folders = {Path(p).parent for p in index.train_good}
    folders |= {Path(p).parent for item in index.test for p in (item.path, item.mask) if p is not None}
    found: dict[Path, list[str]] = {}
    for folder in sorted(folders):
        with os.scandir(folder) as it:
            names = sorted((e.name for e in it if is_os_junk(e.name) and e.is_file()), key=str.lower)
        if names:
            found[folder] = names
    return found


def os_junk_warning(found: dict[Path, list[str]]) -> str | None:
    """One warning line for every folder that holds an operating system's files (None: no such file)."""
    if not found:
        return None
    shown = [f"{', '.join(names)} in {folder}" for folder, names in list(found.items())[:JUNK_FOLDERS_SHOWN]]
    more = len(found) - len(shown)
    return (
        "operating-system files skipped (not data, never read): "
        + "; ".join(shown)
        + (f"; and in {more} more folder(s)" if more else "")
    )


def _support_sets(index, shots: int, seed: int, offset: int, report: CheckReport) -> dict[str, list]:
    """Defect -> the support items the support job would choose; a defect with too few is a problem."""
    from anogen.data.support import select_support

    chosen_sets: dict[str, list] = {}
    for defect in index.defects:
        try:
            chosen_sets[defect] = select_support(index, defect, shots, seed, offset)
        except AnogenError:
            where = str(index.defect_path(defect))
            if not any(p.startswith(f"{where}:") for p in report.problems):  # files dropped above
                usable = len(index.defect_items(defect))
                report.problems.append(
                    f"{where}: only {usable} usable anomalous image(s) (see the problems "
                    f"with its files) but support.shots = {shots} are needed"
                )
    return chosen_sets


def _check_category(
    plan, category: str, defects: list[str], options: dict, report: CheckReport, foreground_images: int
) -> dict[Path, list[str]]:
    """Check one category into ``report``; returns its folders holding an operating system's files."""
    from anogen.data.layouts import layout_module, scan_category

    config = plan.config
    shots, seed = config["support"]["shots"], config["support"]["seed"]
    errors: list[DataError] = []
    try:
        index = scan_category(config["data_root"], category, options, defects=defects, min_shots=shots, errors=errors)
    except AnogenError as exc:
        report.problems.append(str(exc))
        return {}
    report.problems += [str(e) for e in errors]
    junk = _os_junk(index)
    decoded = _decode_all(index, report, config["resize"])

    # What the evaluation would see after the support images are left out.
    chosen_sets = _support_sets(index, shots, seed, config["support"]["offset"], report)
    excluded = {str(item.path) for chosen in chosen_sets.values() for item in chosen}
    if layout_module(options).sample_of is not None:  # every view of a support sample leaves the test set
        try:
            excluded |= {str(Path(config["data_root"]) / rel) for rel in plan.excluded_from_test(category)}
        except AnogenError as exc:
            report.problems.append(str(exc))
    kept = [item for item in index.test if not (config["support"]["exclude_from_test"] and str(item.path) in excluded)]
    n_good = sum(not item.is_anomalous for item in kept)
    n_bad = len(kept) - n_good
    if not kept:
        report.problems.append(f"{category}: no test image left after excluding the support images")
    elif not n_good or not n_bad:
        which = "normal" if not n_good else "anomalous"
        report.warnings.append(
            f"{category}: no {which} test image left after excluding the support images (image AU-ROC is undefined)"
        )

    modes = decoded["modes"]
    if len(modes) > 1:
        report.warnings.append(f"{category}: grayscale and colour images mixed ({dict(modes)}); all are read as RGB")
    sizes = decoded["sizes"]
    ratios = sorted({round(w / h, 3) for w, h in sizes})
    if any(r != 1.0 for r in ratios) and config["resize"] == "squash":
        report.warnings.append(
            f"{category}: non-square images (aspect ratios {ratios}) are squashed to squares (resize: squash); "
            "resize: pad or crop keeps the aspect ratio"
        )
    per_defect = collections.Counter(item.defect for item in index.test if item.is_anomalous)
    size_text = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4))
    if len(sizes) > 4:
        size_text += f", ... ({len(sizes)} sizes)"
    report.lines.append(
        f"category {category}: {len(index.train_good)} normal training images, "
        f"{sum(not i.is_anomalous for i in index.test)} normal test images, anomalies "
        + (", ".join(f"{d} {per_defect[d]}" for d in index.defects) or "none")
        + f"; after excluding the support sets: {n_good} normal + {n_bad} anomalous test images"
    )
    report.lines.append(f"  sizes {size_text}; aspect ratios {ratios}; {dict(modes)}")
    _learned_boxes(plan, category, chosen_sets, report)

    usable = [p for p in index.train_good if str(p) not in decoded["bad"]]
    limit = config["generation"]["max_normal_images"]
    _foreground_and_boxes(plan, category, defects, usable[:limit] if limit else usable, report, foreground_images)
    return junk


def _foreground_and_boxes(
    plan, category: str, defects: list[str], images: list[Path], report: CheckReport, n: int
) -> None:
    """The foreground of ``n`` of the normal ``images`` the jobs read, its coverage, and whether every
    defect's boxes can be placed on it."""
    try:
        found = _foregrounds(plan, category, images, n)
    except AnogenError as exc:  # a foreground template the foreground job could not read either
        report.problems.append(str(exc))
        return
    if plan.texture(category) or plan.foreground_template(category):
        report.lines.append("  foreground: " + ("texture (whole image)" if plan.texture(category) else "template"))
    else:
        _report_coverage(category, plan.foreground_method(category), found, report)
    _box_placement(plan, category, defects, [(path, mask) for path, mask, _ in found], report)


def _report_coverage(category: str, method: str, found: list, report: CheckReport) -> None:
    cover, methods, regions = _coverage(found)
    if cover is None:
        return
    report.coverage[category] = cover
    report.regions[category] = regions
    line = (
        f"  foreground ({'GrabCut' if method == 'grabcut' else method} on {sum(methods.values())} normal images, methods {dict(methods)}): "
        f"{cover:.0%} of the image, {regions:g} separate region(s) per image (median; a multi-instance "
        "category needs one per instance)"
    )
    if cover >= texture_threshold():
        line += f"; nearly everything: if {category} is a texture, set category_options.{category}.texture: true"
    report.lines.append(line)


def _box_placement(plan, category: str, defects: list[str], foregrounds: list, report: CheckReport) -> None:
    """Each defect's boxes drawn as its generation job draws them (``anogen.generation.placement``)."""
    from anogen.generation.placement import RESOLUTION, check_placement

    checked = []
    for defect in defects:
        if plan.learns_box(category, defect) and f"{category}/{defect}" not in report.boxes:
            continue  # its range could not be learned: reported by _learned_boxes
        try:
            placement = check_placement(plan, category, defect, foregrounds)
        except AnogenError as exc:  # e.g. a learned range without support masks: reported once
            if str(exc) not in report.problems:
                report.problems.append(str(exc))
            continue
        if placement is not None:
            report.placement[f"{category}/{defect}"] = placement
            checked.append(placement)
    if not checked:
        return
    failed = [p for p in checked if not p.ok]
    report.problems += [p.problem() for p in failed]
    report.lines.append(
        f"  box placement ({len(foregrounds)} normal images, {RESOLUTION} px, the generation jobs' seeds and "
        f"draw budget): {len(checked) - len(failed)} of {len(checked)} defect types placeable"
        + (": not " + ", ".join(p.defect for p in failed) if failed else "")
    )


def check_data(config: dict, *, foreground_images: int = 4, echo: Callable[[str], None] | None = None) -> CheckReport:
    """Check the data set of a validated config (``load_config_file``); see the module docstring."""
    from anogen.data.layouts import layout_spec
    from anogen.plan import Plan

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
