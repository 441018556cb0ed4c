"""The checks of ``anogen check-data`` that need the generation stage: the foreground and the boxes.

On a few normal images of a category (``foreground_images``) the foreground is made as the
category's foreground job makes it (GrabCut, the authors' Otsu or its template) and its coverage
reported, suggesting ``category_options.<c>.texture: true`` where GrabCut's foreground covers
nearly the whole image (GrabCut keeps >= 90% of its initial rectangle: a texture or a close-up,
where boxes may go anywhere). Each defect's learned box range is learned from its support masks,
and on the same images its boxes are drawn as its generation job will draw them
(``anogen.generation.placement``): a defect whose boxes cannot be placed is a problem naming the
best overlap found and the settings to change. ``plan`` is the config's ``anogen.plan.Plan``,
handed in by the command.
"""

from __future__ import annotations

import collections
from pathlib import Path

import cv2
import numpy as np

from anogen.data.check import CheckReport
from anogen.data.geometry import to_square
from anogen.data.images import load_image, load_mask
from anogen.errors import AnogenError
from anogen.generation.boxes import learned_box_range
from anogen.generation.foreground import MARGIN, estimate_foreground_with_method, load_template
from anogen.generation.placement import RESOLUTION, check_placement

# Suggest texture: true when GrabCut keeps this fraction of its initial rectangle (the image
# less a 5% margin on every side, which GrabCut always treats as background): ~73% of the image.
TEXTURE_COVERAGE = 0.9

# A foreground region counts (multi-instance categories: one region per object) from this
# fraction of the image on; smaller ones are GrabCut's specks.
REGION_FRACTION = 0.002

# A learned box range whose smaller side starts here covers nearly the whole image: worth a look.
WHOLE_IMAGE_BOX = 0.6


def _foregrounds(plan, category: str, paths: list[Path], n: int) -> list[tuple[str, np.ndarray | None, str]]:
    """(path, foreground mask, method used) of ``n`` evenly spaced normal images, made as the category's
    foreground job makes it (GrabCut, the authors' Otsu or its template); no mask for a texture."""
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


def _regions(mask: np.ndarray) -> int:
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return int(np.sum(stats[1:n, cv2.CC_STAT_AREA] >= REGION_FRACTION * mask.size))


def learned_boxes(plan, category: str, chosen: dict, report: CheckReport) -> None:
    """The box range each defect with a learned range gets from its support masks (``chosen``)."""
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
    return TEXTURE_COVERAGE * (1.0 - 2.0 * MARGIN) ** 2


def foreground_and_boxes(
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
    checked = []
    for defect in defects:
        if plan.learns_box(category, defect) and f"{category}/{defect}" not in report.boxes:
            continue  # its range could not be learned: reported by learned_boxes
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
