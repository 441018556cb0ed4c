"""``data_layout: mvtec``: the MVTec AD folder layout (also MPDD's).

Layout (any image size; MVTec's own images are 700-1024 px square)::

    <root>/<category>/train/good/<name>.<ext>
    <root>/<category>/test/good/<name>.<ext>
    <root>/<category>/test/<defect>/<stem>.<ext>
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<ext>

Categories are the folders holding ``train/good``, defect types the subfolders of ``test/``
except ``good``. :func:`list_categories` and :func:`list_defects` only list directories (no
image is opened) and are cheap enough for Snakemake's DAG construction; :func:`scan_category`
validates a category from image headers only; :func:`category_files` is a directory listing
only (through the planning's shared folder listings, ``anogen.data.fingerprint``). This layout
has no options (``options`` is None or ``{"data_layout": "mvtec"}``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from anogen.data.fingerprint import listed_files, listed_subdirs
from anogen.data.images import check_pair, is_image_file
from anogen.data.index import (
    GOOD,
    MASK_SUFFIX,
    CategoryFiles,
    CategoryIndex,
    TestItem,
    checked_headers,
    checked_names,
    is_grayscale,
    is_skipped,
    list_images,
    report,
    select_defects,
    validate_name,
)
from anogen.errors import DataError

CONFIG_KEYS: tuple[str, ...] = ()
sample_of = None  # every image is its own sample


def _subdirs(path: Path) -> list[str]:
    """Sorted names of non-hidden subdirectories of ``path`` (os.scandir only)."""
    names = []
    with os.scandir(path) as it:
        for entry in it:
            if is_skipped(entry.name):
                continue
            if entry.is_dir():
                names.append(entry.name)
    return sorted(names)


def _require_dir(path: Path, problem: str) -> None:
    if not path.is_dir():
        raise DataError(path, problem)


# ----------------------------------------------------------------------------- listing


def list_categories(root: Path, options: dict | None, rejected: list | None) -> list[str]:
    """Sorted names of the subfolders of ``root`` that contain ``train/good``.

    Cheap: only directories are listed. DataError if ``root`` is missing or holds no
    category. A category folder whose name cannot be used in result paths raises, unless
    ``rejected`` is a list: then its DataError is appended there and the folder skipped
    (``Plan`` fails only when the config selects such a folder).
    """
    _require_dir(root, "data root does not exist or is not a directory")
    found = [name for name in _subdirs(root) if (root / name / "train" / GOOD).is_dir()]
    categories = checked_names(found, root, "category", rejected)
    if not categories and not (rejected and found):
        raise DataError(
            root,
            "contains no category folder with train/good/ inside "
            "(expected the MVTec AD layout <root>/<category>/train/good/*.png)",
        )
    return categories


def list_defects(root: Path, category: str, options: dict | None, rejected: list | None) -> list[str]:
    """Sorted defect types of a category: the subfolders of ``test/`` except ``good``. Cheap.

    Badly named defect folders raise, or with a ``rejected`` list are appended there.
    """
    cat_dir = root / category
    _require_dir(cat_dir, f"category folder of {category!r} does not exist")
    test_dir = cat_dir / "test"
    _require_dir(test_dir, "test folder is missing (expected test/<defect>/ and test/good/)")
    return checked_names([n for n in _subdirs(test_dir) if n != GOOD], test_dir, "defect", rejected)


# ----------------------------------------------------------------------------- scanning


def _mask_candidates(gt_dir: Path) -> dict[str, list[Path]]:
    """Map image stem -> mask files ``<stem>_mask.<ext>`` found in ``gt_dir``."""
    found: dict[str, list[Path]] = {}
    if not gt_dir.is_dir():
        return found
    with os.scandir(gt_dir) as it:
        for entry in it:
            if is_skipped(entry.name) or not is_image_file(entry.name):
                continue
            stem = Path(entry.name).stem
            if stem.endswith(MASK_SUFFIX):
                found.setdefault(stem[: -len(MASK_SUFFIX)], []).append(gt_dir / entry.name)
    return found


def _find_mask(candidates: dict[str, list[Path]], gt_dir: Path, image_path: Path) -> Path:
    stem = image_path.stem
    paths = sorted(candidates.get(stem, []))
    if not paths:
        raise DataError(
            image_path,
            f"anomalous test image has no mask: expected {gt_dir / (stem + MASK_SUFFIX + '.png')} "
            f"(ground_truth/<defect>/<stem>{MASK_SUFFIX}.<ext>)",
        )
    if len(paths) > 1:
        raise DataError(image_path, "has several candidate masks: " + ", ".join(str(p) for p in paths))
    return paths[0]


def scan_category(
    root: Path,
    category: str,
    options: dict | None,
    defects: Iterable[str] | None,
    min_shots: int | None,
    errors: list | None,
) -> CategoryIndex:
    """List and validate one category from image headers only.

    ``defects`` restricts the anomalous test items to these defect types (normal test
    images are always included); ``None`` means every defect folder. ``min_shots``
    requires at least that many images per scanned defect type (the support set size).
    The first problem raises a DataError naming the file; with an ``errors`` list every
    problem is collected there instead and the offending items are left out.
    """
    validate_name(category, root / category, "category")
    cat_dir = root / category
    _require_dir(cat_dir, f"category folder of {category!r} does not exist under {root}")

    train_good, grayscale = _scan_train(cat_dir / "train" / GOOD, errors)
    chosen = _chosen_defects(root, category, defects, errors)

    test: list[TestItem] = []
    good_dir = cat_dir / "test" / GOOD
    if good_dir.is_dir():
        good, _ = checked_headers(list_images(good_dir, errors), errors)
        test += [TestItem(path, GOOD, None) for path in good]
    for defect in chosen:
        test += _scan_defect(cat_dir, defect, min_shots, errors)

    return CategoryIndex(
        root=root,
        category=category,
        train_good=train_good,
        test=test,
        grayscale=grayscale,
        defects=list(chosen),
    )


def _scan_train(train_dir: Path, errors: list | None) -> tuple[list[Path], bool]:
    """The normal training images (headers checked) and whether they are grayscale."""
    train_good: list[Path] = []
    if not train_dir.is_dir():
        report(errors, DataError(train_dir, "train/good folder is missing (it holds the normal training images)"))
    else:
        train_good = list_images(train_dir, errors)
        if not train_good:
            report(errors, DataError(train_dir, "contains no training images (expected *.png etc.)"))
    train_good, modes = checked_headers(train_good, errors)
    return train_good, is_grayscale(modes)


def _chosen_defects(root: Path, category: str, defects: Iterable[str] | None, errors: list | None) -> list[str]:
    """The defect types to scan: all of them (``defects`` None), or the requested ones, sorted."""
    test_dir = root / category / "test"
    try:
        available = list_defects(root, category, None, [] if errors is not None else None)
    except DataError as exc:
        report(errors, exc)
        available = []
    return select_defects(
        available,
        defects,
        lambda defect: test_dir / defect,
        lambda defect: f"defect folder does not exist (defect types of {category}: {', '.join(available) or 'none'})",
        errors,
    )


def _scan_defect(cat_dir: Path, defect: str, min_shots: int | None, errors: list | None) -> list[TestItem]:
    """The test items of one defect type, each paired with its checked ground-truth mask."""
    defect_dir = cat_dir / "test" / defect
    gt_dir = cat_dir / "ground_truth" / defect
    images = list_images(defect_dir, errors)
    if not images:
        report(errors, DataError(defect_dir, "defect folder contains no images"))
        return []
    if min_shots is not None and len(images) < min_shots:
        report(
            errors,
            DataError(
                defect_dir,
                f"has {len(images)} image(s) but support.shots = {min_shots} real anomalies "
                "are needed for the support set; lower support.shots or exclude this defect",
            ),
        )
    masks = _mask_candidates(gt_dir)
    seen: dict[str, Path] = {}
    items = []
    for path in images:
        if path.stem in seen:
            report(errors, DataError(path, f"has the same stem as {seen[path.stem]}, so its mask is ambiguous"))
            continue
        seen[path.stem] = path
        try:
            mask = _find_mask(masks, gt_dir, path)
            check_pair(path, mask)
        except DataError as exc:
            report(errors, exc)
            continue
        items.append(TestItem(path, defect, mask))
    return items


# ----------------------------------------------------------------------------- fingerprints


def category_files(root: Path, category: str, options: dict | None) -> CategoryFiles:
    """The files of a category by role (``train/good``, ``test/*``, ``ground_truth/*``): a
    directory listing only, lenient (a missing mask or stray file fails the job that reads it)."""
    cat = root / category
    test = {d: listed_files(cat / "test" / d) for d in listed_subdirs(cat / "test")}
    masks: dict[str, dict[str, Path]] = {}
    for defect in listed_subdirs(cat / "ground_truth"):
        for path in listed_files(cat / "ground_truth" / defect):
            stem = path.stem
            if stem.endswith(MASK_SUFFIX):
                masks.setdefault(defect, {})[stem[: -len(MASK_SUFFIX)]] = path
    return CategoryFiles(root, listed_files(cat / "train" / GOOD), test, masks)
