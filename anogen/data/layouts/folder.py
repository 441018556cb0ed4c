"""``data_layout: folder``: anomalib's Folder data module, one entry per category.

Each entry of ``folder.categories`` names its folders (relative to the data root unless
absolute): ``normal_dir`` (normal images; training images unless split), ``abnormal_dir``
(anomalous test images; a string gives the one defect type ``default_defect``, a mapping
``{defect: dir}`` gives several), ``mask_dir`` (masks named like their image, ``<stem>.<ext>``
or ``<stem>_mask.<ext>``; a string or a mapping with the same defect names),
``normal_test_dir`` (normal test images; when null, a fraction ``normal_split_ratio`` of
``normal_dir`` is drawn, reproducibly from ``seed`` and the category name, as the normal test
images and the rest is used for training, as anomalib does), ``extensions`` (only files with
these endings are listed, others are skipped; null = every image extension, and any other file
is an error). Unlike anomalib, ``mask_dir`` is required: AnoGen learns from masked anomalies and
the evaluation reports pixel metrics.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from anogen.data.images import is_image_file
from anogen.data.index import (
    GOOD,
    MASK_SUFFIX,
    CategoryFiles,
    CategoryIndex,
    TestItem,
    build_index,
    check_shots,
    checked_headers,
    choose_defects,
    is_skipped,
    list_images,
    pair_ok,
    report,
    under_root,
)
from anogen.errors import DataError
from anogen.keys import canonical_json

CONFIG_KEYS = ("default_defect", "folder")
sample_of = None  # every image is its own sample


def _options(options: dict, category: str) -> dict:
    categories = options["folder"]["categories"]
    if category not in categories:
        raise DataError(category, f"is not one of folder.categories ({', '.join(sorted(categories)) or 'none'})")
    return categories[category]


def _abnormal_dirs(root: Path, opts: dict, default: str) -> dict[str, Path]:
    value = opts["abnormal_dir"]
    if isinstance(value, str):
        return {default: under_root(root, value)}
    return {defect: under_root(root, folder) for defect, folder in value.items()}


def _mask_dir(root: Path, opts: dict, defect: str) -> Path:
    value = opts["mask_dir"]
    return under_root(root, value if isinstance(value, str) else value[defect])


# ----------------------------------------------------------------------------- listing


def list_categories(root: Path, options: dict, rejected: list | None) -> list[str]:
    """The names of ``folder.categories``, sorted (the config's keys: checked with the config)."""
    categories = sorted(options["folder"]["categories"])
    if not categories:
        raise DataError(root, "data_layout is folder but folder.categories names no data set")
    return categories


def list_defects(root: Path, category: str, options: dict, rejected: list | None) -> list[str]:
    """The defect types of the category's ``abnormal_dir``; each folder must exist."""
    opts = _options(options, category)
    for defect, folder in _abnormal_dirs(root, opts, options["default_defect"]).items():
        if not folder.is_dir():
            raise DataError(folder, f"abnormal_dir of folder.categories.{category} ({defect}) does not exist")
    return sorted(_abnormal_dirs(root, opts, options["default_defect"]))


# ----------------------------------------------------------------------------- scanning


def _images(folder: Path, extensions: list[str] | None, what: str, errors=None) -> list[Path]:
    if not folder.is_dir():
        report(errors, DataError(folder, f"{what} does not exist or is not a directory"))
        return []
    if extensions is None:
        return list_images(folder, errors)
    endings = tuple(e.lower() for e in extensions)
    with os.scandir(folder) as it:
        paths = [
            folder / e.name for e in it if not is_skipped(e.name) and e.is_file() and e.name.lower().endswith(endings)
        ]
    return sorted(paths, key=lambda p: p.name)


def folder_split_seed(category: str, seed: int) -> int:
    """64-bit seed of the normal train/test split, from (seed, category) through sha256."""
    payload = canonical_json({"stage": "folder_split", "seed": int(seed), "category": category})
    return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "little")


def _split_normals(
    images: list[Path], ratio: float, seed: int, category: str, where: Path
) -> tuple[list[Path], list[Path]]:
    n_test = max(1, round(ratio * len(images)))
    if len(images) - n_test < 1:
        raise DataError(
            where,
            f"has {len(images)} normal image(s): too few to keep normal_split_ratio = {ratio} of them "
            "for the test set and still train on the rest (add images or set normal_test_dir)",
        )
    rng = np.random.default_rng(folder_split_seed(category, seed))
    chosen = set(int(i) for i in rng.choice(len(images), size=n_test, replace=False))
    train = [p for i, p in enumerate(images) if i not in chosen]
    test = [p for i, p in enumerate(images) if i in chosen]
    return train, test


def _masks(mask_dir: Path, errors) -> dict[str, list[Path]]:
    """Image stem -> candidate masks ``<stem>.<ext>`` and ``<stem>_mask.<ext>``."""
    found: dict[str, list[Path]] = {}
    if not mask_dir.is_dir():
        report(errors, DataError(mask_dir, "mask_dir does not exist or is not a directory"))
        return found
    with os.scandir(mask_dir) as it:
        for entry in it:
            if is_skipped(entry.name) or not is_image_file(entry.name):
                continue
            stem = Path(entry.name).stem
            found.setdefault(stem, []).append(mask_dir / entry.name)
            if stem.endswith(MASK_SUFFIX):
                found.setdefault(stem[: -len(MASK_SUFFIX)], []).append(mask_dir / entry.name)
    return found


def _normal_split(root: Path, category: str, opts: dict, normal_dir: Path, errors) -> tuple[list[Path], list[Path]]:
    """(training images, normal test images): ``normal_test_dir``'s, else drawn from ``normal_dir``."""
    extensions = opts.get("extensions")
    where = f"folder.categories.{category}"
    normals = _images(normal_dir, extensions, f"normal_dir of {where}", errors)
    train: list[Path] = []
    normal_test: list[Path] = []
    if normal_dir.is_dir() and not normals:
        report(errors, DataError(normal_dir, "normal_dir contains no image"))
    if opts.get("normal_test_dir"):
        test_dir = under_root(root, opts["normal_test_dir"])
        train = normals
        normal_test = _images(test_dir, extensions, f"normal_test_dir of {where}", errors)
        if test_dir.is_dir() and not normal_test:
            report(errors, DataError(test_dir, "normal_test_dir contains no image"))
    elif normals:
        try:
            train, normal_test = _split_normals(
                normals, float(opts["normal_split_ratio"]), int(opts["seed"]), category, normal_dir
            )
        except DataError as exc:
            report(errors, exc)
    return train, normal_test


def _defect_items(
    root: Path, category: str, opts: dict, defect: str, folder: Path, min_shots: int | None, errors
) -> list[TestItem]:
    """The anomalous images of one ``abnormal_dir``, each paired with its checked mask."""
    images = _images(folder, opts.get("extensions"), f"abnormal_dir of folder.categories.{category}", errors)
    if folder.is_dir() and not images:
        report(errors, DataError(folder, "abnormal_dir contains no image"))
        return []
    check_shots(folder, len(images), min_shots, errors)
    mask_dir = _mask_dir(root, opts, defect)
    masks = _masks(mask_dir, errors)
    seen: dict[str, Path] = {}
    items = []
    for path in images:
        if path.stem in seen:
            report(errors, DataError(path, f"has the same stem as {seen[path.stem]}, so its mask is ambiguous"))
            continue
        seen[path.stem] = path
        candidates = sorted(set(masks.get(path.stem, [])))
        if not candidates:
            if mask_dir.is_dir():
                report(
                    errors,
                    DataError(
                        path,
                        f"anomalous image has no mask: expected {mask_dir / (path.stem + '.png')} or "
                        f"{mask_dir / (path.stem + MASK_SUFFIX + '.png')} (any image extension)",
                    ),
                )
            continue
        if len(candidates) > 1:
            report(errors, DataError(path, "has several candidate masks: " + ", ".join(str(p) for p in candidates)))
            continue
        if pair_ok(path, candidates[0], errors):
            items.append(TestItem(path, defect, candidates[0]))
    return items


def scan_category(
    root: Path,
    category: str,
    options: dict,
    defects: Iterable[str] | None,
    min_shots: int | None,
    errors: list | None,
) -> CategoryIndex:
    """The category's folders, every image and mask checked from its header."""
    opts = _options(options, category)
    abnormal = _abnormal_dirs(root, opts, options["default_defect"])
    normal_dir = under_root(root, opts["normal_dir"])
    chosen = choose_defects(sorted(abnormal), defects, normal_dir.parent, category, errors)
    train, normal_test = _normal_split(root, category, opts, normal_dir, errors)
    good, _ = checked_headers(normal_test, errors)
    test = [TestItem(path, GOOD, None) for path in good]
    for defect in chosen:
        test += _defect_items(root, category, opts, defect, abnormal[defect], min_shots, errors)
    return build_index(root, category, train, test, chosen, {d: abnormal[d] for d in chosen}, normal_dir, errors)


def category_files(root: Path, category: str, options: dict) -> CategoryFiles:
    """The files of the category's lenient scan (``CategoryFiles.from_index``)."""
    return CategoryFiles.from_index(scan_category(root, category, options, None, None, []))
