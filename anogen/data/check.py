"""The data checks of ``anogen check-data``: what one category's files would do to the jobs.

``anogen.commands.check_data`` runs them over a config's categories (it explains what counts
as a problem and what as a warning) and adds the checks that need the generation stage
(``anogen.generation.check``). Here: every image and mask decoded fully (unreadable,
truncated, empty masks, anomalies outside ``resize: crop``'s square), the operating-system
files every listing skips, whether each defect has ``support.shots`` usable anomalies, and
what the evaluation would see once the support images are left out (image counts, mixed
grayscale and colour, non-square images).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anogen.data import images
from anogen.data.geometry import to_square
from anogen.data.index import is_os_junk
from anogen.data.layouts import scan_category
from anogen.data.support import select_support
from anogen.errors import AnogenError, DataError
from anogen.io import read_image

__all__ = ["CategoryFiles", "CheckReport", "check_category_files", "report_test_set", "os_junk_warning"]


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


@dataclass
class CategoryFiles:
    """One scanned category: its index, what decoding found, the support sets and the OS files."""

    index: Any  # anogen.data.layouts' CategoryIndex
    sizes: collections.Counter  # (width, height) -> images
    modes: collections.Counter  # "grayscale" / "colour" -> images
    bad: set[str]  # files that could not be decoded
    chosen: dict[str, list]  # defect -> the support items the support job would choose
    junk: dict[Path, list[str]]  # folder -> the operating system's files in it


def check_category_files(
    config: dict, category: str, defects: list[str], options: dict, report: CheckReport
) -> CategoryFiles | None:
    """Scan one category as the jobs will, decode every file, choose the support sets; each
    problem into ``report``. None when the category cannot be scanned at all."""
    shots, seed = config["support"]["shots"], config["support"]["seed"]
    errors: list[DataError] = []
    try:
        index = scan_category(config["data_root"], category, options, defects=defects, min_shots=shots, errors=errors)
    except AnogenError as exc:
        report.problems.append(str(exc))
        return None
    report.problems += [str(e) for e in errors]
    junk = _os_junk(index)
    sizes, modes, bad = _decode_all(index, report, config["resize"])
    chosen = _support_sets(index, shots, seed, config["support"]["offset"], report)
    return CategoryFiles(index, sizes, modes, bad, chosen, junk)


def _decode_all(index, report: CheckReport, resize: str) -> tuple[collections.Counter, collections.Counter, set[str]]:
    """Decode every image and mask of a scanned category; sizes, modes and bad files."""
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
    return sizes, modes, bad


# Folders named in the one warning about operating-system files; the rest are counted.
JUNK_FOLDERS_SHOWN = 3


def _os_junk(index) -> dict[Path, list[str]]:
    """Folder -> the operating system's files (``index.OS_JUNK_FILES``) in it, over the folders of
    the scanned images and masks: every listing skips them, the report says where they are."""
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


def report_test_set(config: dict, category: str, files: CategoryFiles, excluded: set[str], report: CheckReport) -> None:
    """What the evaluation would see once the ``excluded`` support images are left out, and the
    category's image counts, sizes and colour modes."""
    index = files.index
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

    modes, sizes = files.modes, files.sizes
    if len(modes) > 1:
        report.warnings.append(f"{category}: grayscale and colour images mixed ({dict(modes)}); all are read as RGB")
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
