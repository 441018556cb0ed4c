"""Data set layouts: MVTec AD, VisA and anomalib's Folder layout, behind one interface.

``data_layout`` in the config picks the layout; every function here returns the types of
:mod:`anogen.data.mvtec` (:class:`CategoryIndex` with ``train_good`` and :class:`TestItem`
s with masks), so support sets, boxes, detectors and the evaluation do not know which
layout the images came from. The layout options travel to every job as the JSON dict
:func:`layout_spec` returns (they identify the data, so they are part of the dataset
content key); ``None`` means the MVTec layout.

- ``mvtec``: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}``
  (see :mod:`anogen.data.mvtec`); also MPDD.
- ``visa``: the split file ``visa.split_csv`` (default ``split_csv/1cls.csv``, relative to
  the data root) with the header ``object,split,label,image,mask``; ``split`` is
  ``train``/``test``, ``label`` ``normal``/``anomaly``, ``image``/``mask`` are paths
  relative to the data root (``candle/Data/Images/Anomaly/000.JPG``,
  ``candle/Data/Masks/Anomaly/000.png``; the mask is empty for normal images). Categories
  are the ``object`` values. VisA has no defect types: every anomaly gets the defect name
  ``default_defect`` (``anomaly``). Mask pixels > 0 are anomalous (VisA masks hold small
  class values, not 255).
- ``folder``: anomalib's Folder data module, one entry per category in
  ``folder.categories``: ``normal_dir`` (normal images; training images unless split),
  ``abnormal_dir`` (anomalous test images; a string gives the one defect type
  ``default_defect``, a mapping ``{defect: dir}`` gives several), ``mask_dir`` (masks named
  like their image, ``<stem>.<ext>`` or ``<stem>_mask.<ext>``; a string or a mapping with
  the same defect names), ``normal_test_dir`` (normal test images; when null, a fraction
  ``normal_split_ratio`` of ``normal_dir`` is drawn, reproducibly from ``seed`` and the
  category name, as the normal test images and the rest is used for training, as
  anomalib does), ``extensions`` (only files with these endings are listed, others are
  skipped; null = every image extension, and any other file is an error). Folders are
  relative to the data root unless absolute. Unlike anomalib, ``mask_dir`` is required:
  AnoGen learns from masked anomalies and the evaluation reports pixel metrics.

Listing (:func:`discover`, :func:`list_categories`, :func:`list_defects`) opens no image
and is cheap enough for Snakemake's DAG construction; :func:`scan_category` checks image
headers (existence, readability, mask sizes) and names the file in every error.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from anogen.data import mvtec, realiad
from anogen.data.mvtec import (
    GOOD,
    MASK_SUFFIX,
    CategoryIndex,
    TestItem,
    check_pair,
    checked_headers,
    is_image_file,
    is_skipped,
    report,
    select_defects,
)
from anogen.errors import DataError
from anogen.keys import canonical_json

LAYOUTS = ("mvtec", "visa", "folder", "realiad")
VISA_COLUMNS = ("object", "split", "label", "image", "mask")

__all__ = [
    "LAYOUTS",
    "layout_spec",
    "layout_name",
    "discover",
    "list_categories",
    "list_defects",
    "scan_category",
    "folder_split_seed",
]


# ----------------------------------------------------------------------------- options


def layout_spec(config: dict) -> dict:
    """The layout options of a validated config, as one JSON-able dict (data identity).

    This is what every data-reading job receives (``params.dataset``) and what the
    dataset part of the content keys holds: only the options of the chosen layout.
    """
    layout = config["data_layout"]
    spec: dict[str, Any] = {"data_layout": layout}
    if layout == "visa":
        spec.update(default_defect=config["default_defect"], visa=dict(config["visa"]))
    elif layout == "folder":
        spec.update(default_defect=config["default_defect"], folder=dict(config["folder"]))
    elif layout == "realiad":
        spec.update(realiad=dict(config["realiad"]))
    return spec


def layout_name(options: dict | None) -> str:
    """The layout of ``layout_spec`` options; no options at all means the MVTec layout."""
    return options["data_layout"] if options else "mvtec"


def _path(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


# ----------------------------------------------------------------------------- listing


def discover(root: str | Path, options: dict | None) -> tuple[dict[str, dict], list[DataError]]:
    """``({category: {"defects", "texture", "rejected"}}, rejected categories)``; cheap.

    A category or defect whose name cannot be a result path component is not listed but
    returned as a DataError (``rejected``): ``Plan`` fails on it only when the config
    selects it (``categories: all`` / ``defects: all``), so a stray folder that the config
    leaves out does not stop the run.
    """
    root = Path(root)
    rejected: list[DataError] = []
    layout = {}
    for category in list_categories(root, options, rejected):
        bad_defects: list[DataError] = []
        defects = list_defects(root, category, options, bad_defects)
        # "texture": folders cannot tell a texture; the config's per-category options can (Plan.texture)
        entry = {"defects": defects, "texture": False}  # repeated on purpose: a fact of the folders, not a default
        layout[category] = {**entry, "rejected": bad_defects}
    return layout, rejected


def list_categories(root: str | Path, options: dict | None = None, rejected: list | None = None) -> list[str]:
    """Sorted category names of the layout (see :func:`discover` for ``rejected``)."""
    root = Path(root)
    name = layout_name(options)
    if name == "mvtec":
        return mvtec.list_categories(root, rejected)
    if name == "visa":
        rows = _visa_rows(root, options)
        found = sorted(rows)
        if not found:
            raise DataError(_visa_csv(root, options), "lists no image (expected rows object,split,label,image,mask)")
        return mvtec._checked_names(found, root, "category", rejected)
    if name == "folder":
        categories = sorted(options["folder"]["categories"])
        if not categories:
            raise DataError(root, "data_layout is folder but folder.categories names no data set")
        return categories
    if name == "realiad":
        return mvtec._checked_names(realiad.list_categories(root, options), root, "category", rejected)
    raise ValueError(f"unknown data layout {name!r} (expected one of {LAYOUTS})")


def list_defects(
    root: str | Path, category: str, options: dict | None = None, rejected: list | None = None
) -> list[str]:
    """Sorted defect types of a category; cheap."""
    root = Path(root)
    name = layout_name(options)
    if name == "mvtec":
        return mvtec.list_defects(root, category, rejected)
    if name == "visa":
        rows = _visa_rows(root, options).get(category)
        if rows is None:
            raise DataError(_visa_csv(root, options), f"has no row for category {category!r}")
        has_anomaly = any(row["split"] == "test" and row["label"] == "anomaly" for row in rows)
        return [options["default_defect"]] if has_anomaly else []
    if name == "folder":
        opts = _folder_options(options, category)
        for defect, folder in _abnormal_dirs(root, opts, options["default_defect"]).items():
            if not folder.is_dir():
                raise DataError(folder, f"abnormal_dir of folder.categories.{category} ({defect}) does not exist")
        return sorted(_abnormal_dirs(root, opts, options["default_defect"]))
    if name == "realiad":
        where = realiad.json_path(root, options, category)
        return mvtec._checked_names(realiad.list_defects(root, options, category), where, "defect", rejected)
    raise ValueError(f"unknown data layout {name!r} (expected one of {LAYOUTS})")


# ----------------------------------------------------------------------------- scanning


def scan_category(
    root: str | Path,
    category: str,
    options: dict | None = None,
    defects: Iterable[str] | None = None,
    min_shots: int | None = None,
    errors: list | None = None,
) -> CategoryIndex:
    """List and validate one category from image headers only (see ``mvtec.scan_category``).

    ``defects`` restricts the anomalous test items (``()`` = none, ``None`` = all);
    ``min_shots`` requires that many images per scanned defect type. The first problem
    raises; with an ``errors`` list every problem is collected and the item left out.
    """
    root = Path(root)
    name = layout_name(options)
    if name == "mvtec":
        return mvtec.scan_category(root, category, defects=defects, min_shots=min_shots, errors=errors)
    if name == "visa":
        return _scan_visa(root, category, options, defects, min_shots, errors)
    if name == "folder":
        return _scan_folder(root, category, options, defects, min_shots, errors)
    if name == "realiad":
        return _scan_realiad(root, category, options, defects, min_shots, errors)
    raise ValueError(f"unknown data layout {name!r} (expected one of {LAYOUTS})")


def _choose(available: list[str], defects: Iterable[str] | None, where: Path, category: str, errors) -> list[str]:
    types = ", ".join(available) or "none"
    return select_defects(
        available,
        defects,
        lambda _: where,
        lambda defect: f"category {category} has no defect type {defect!r} (defect types: {types})",
        errors,
    )


def _check_shots(where: Path, n: int, min_shots: int | None, errors) -> None:
    if min_shots is not None and n < min_shots:
        report(
            errors,
            DataError(
                where,
                f"has {n} anomalous image(s) but support.shots = {min_shots} real anomalies "
                "are needed for the support set; lower support.shots or exclude this defect",
            ),
        )


def _pair_ok(image: Path, mask: Path, errors) -> bool:
    try:
        check_pair(image, mask)
    except DataError as exc:
        report(errors, exc)
        return False
    return True


def _index(
    root: Path,
    category: str,
    train: list[Path],
    test: list[TestItem],
    defects: list[str],
    defect_dirs: dict[str, Path],
    where: Path,
    errors,
) -> CategoryIndex:
    if not train:
        report(errors, DataError(where, f"category {category} has no normal training image"))
    train, modes = checked_headers(train, errors)
    grayscale = bool(modes) and modes[0] in mvtec._GRAY_MODES
    return CategoryIndex(
        root=root,
        category=category,
        train_good=train,
        test=test,
        grayscale=grayscale,
        defects=defects,
        defect_dirs=defect_dirs,
    )


# ----------------------------------------------------------------------------- VisA


def _visa_csv(root: Path, options: dict) -> Path:
    return _path(root, options["visa"]["split_csv"])


def _visa_rows(root: Path, options: dict) -> dict[str, list[dict]]:
    path = _visa_csv(root, options)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(
            path, "VisA split file does not exist (set visa.split_csv; VisA ships split_csv/1cls.csv)"
        ) from None
    return _read_visa_csv(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_visa_csv(path_str: str, _mtime_ns: int, _size: int) -> dict[str, list[dict]]:
    """Rows grouped by object, checked; cached per file version (mtime and size are part of the key)."""
    path = Path(path_str)
    out: dict[str, list[dict]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in VISA_COLUMNS if c not in header]
        if missing:
            raise DataError(path, f"header lacks column(s) {missing} (expected {','.join(VISA_COLUMNS)})")
        for line_no, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}:{line_no}"
            if row["split"] not in ("train", "test"):
                raise DataError(where, f"split {row['split']!r} is neither 'train' nor 'test'")
            if row["label"] not in ("normal", "anomaly"):
                raise DataError(where, f"label {row['label']!r} is neither 'normal' nor 'anomaly'")
            if not row["image"]:
                raise DataError(where, "has no image path")
            if row["label"] == "anomaly" and not row["mask"]:
                raise DataError(where, f"anomalous image {row['image']} has no mask path")
            if row["split"] == "train" and row["label"] == "anomaly":
                raise DataError(where, "an anomalous image in the train split (training images must be normal)")
            out.setdefault(row["object"], []).append({**row, "line": line_no})
    return out


def _scan_visa(root: Path, category: str, options: dict, defects, min_shots, errors) -> CategoryIndex:
    csv_path = _visa_csv(root, options)
    rows = _visa_rows(root, options).get(category)
    if rows is None:
        raise DataError(csv_path, f"has no row for category {category!r}")
    default = options["default_defect"]
    available = list_defects(root, category, options)
    chosen = _choose(available, defects, csv_path, category, errors)

    def image_at(row: dict, column: str) -> Path | None:
        path = root / row[column]
        if not is_image_file(path.name):
            report(
                errors, DataError(f"{csv_path}:{row['line']}", f"{column} {row[column]!r} is not an image file name")
            )
            return None
        return path

    train = sorted(
        (p for r in rows if r["split"] == "train" and (p := image_at(r, "image"))), key=lambda p: p.as_posix()
    )
    test: list[TestItem] = []
    n_anomalous = 0
    for row in sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["image"]):
        path = image_at(row, "image")
        if path is None:
            continue
        if row["label"] == "normal":
            good, _ = checked_headers([path], errors)
            test += [TestItem(p, GOOD, None) for p in good]
        elif default in chosen:
            n_anomalous += 1
            mask = image_at(row, "mask")
            if mask is not None and _pair_ok(path, mask, errors):
                test.append(TestItem(path, default, mask))
    if default in chosen:
        _check_shots(csv_path, n_anomalous, min_shots, errors)
    return _index(root, category, train, test, chosen, {d: csv_path for d in chosen}, csv_path, errors)


# ----------------------------------------------------------------------------- Folder


def _folder_options(options: dict, category: str) -> dict:
    categories = options["folder"]["categories"]
    if category not in categories:
        raise DataError(category, f"is not one of folder.categories ({', '.join(sorted(categories)) or 'none'})")
    return categories[category]


def _abnormal_dirs(root: Path, opts: dict, default: str) -> dict[str, Path]:
    value = opts["abnormal_dir"]
    if isinstance(value, str):
        return {default: _path(root, value)}
    return {defect: _path(root, folder) for defect, folder in value.items()}


def _mask_dir(root: Path, opts: dict, defect: str) -> Path:
    value = opts["mask_dir"]
    return _path(root, value if isinstance(value, str) else value[defect])


def _folder_images(folder: Path, extensions: list[str] | None, what: str, errors=None) -> list[Path]:
    if not folder.is_dir():
        report(errors, DataError(folder, f"{what} does not exist or is not a directory"))
        return []
    if extensions is None:
        return mvtec.list_images(folder, errors)
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


def _folder_masks(mask_dir: Path, errors) -> dict[str, list[Path]]:
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


def _scan_folder(root: Path, category: str, options: dict, defects, min_shots, errors) -> CategoryIndex:
    opts = _folder_options(options, category)
    extensions = opts.get("extensions")
    abnormal = _abnormal_dirs(root, opts, options["default_defect"])
    available = sorted(abnormal)
    normal_dir = _path(root, opts["normal_dir"])
    chosen = _choose(available, defects, normal_dir.parent, category, errors)
    where = f"folder.categories.{category}"

    normals = _folder_images(normal_dir, extensions, f"normal_dir of {where}", errors)
    train: list[Path] = []
    normal_test: list[Path] = []
    if normal_dir.is_dir() and not normals:
        report(errors, DataError(normal_dir, "normal_dir contains no image"))
    if opts.get("normal_test_dir"):
        test_dir = _path(root, opts["normal_test_dir"])
        train = normals
        normal_test = _folder_images(test_dir, extensions, f"normal_test_dir of {where}", errors)
        if test_dir.is_dir() and not normal_test:
            report(errors, DataError(test_dir, "normal_test_dir contains no image"))
    elif normals:
        try:
            train, normal_test = _split_normals(
                normals, float(opts["normal_split_ratio"]), int(opts["seed"]), category, normal_dir
            )
        except DataError as exc:
            report(errors, exc)

    good, _ = checked_headers(normal_test, errors)
    test = [TestItem(path, GOOD, None) for path in good]
    for defect in chosen:
        folder = abnormal[defect]
        images = _folder_images(folder, extensions, f"abnormal_dir of {where}", errors)
        if folder.is_dir() and not images:
            report(errors, DataError(folder, "abnormal_dir contains no image"))
            continue
        _check_shots(folder, len(images), min_shots, errors)
        mask_dir = _mask_dir(root, opts, defect)
        masks = _folder_masks(mask_dir, errors)
        seen: dict[str, Path] = {}
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
            if _pair_ok(path, candidates[0], errors):
                test.append(TestItem(path, defect, candidates[0]))
    return _index(root, category, train, test, chosen, {d: abnormal[d] for d in chosen}, normal_dir, errors)


# ----------------------------------------------------------------------------- Real-IAD


def _scan_realiad(root: Path, category: str, options: dict, defects, min_shots, errors) -> CategoryIndex:
    """Real-IAD's split file of ``category`` (:mod:`anogen.data.realiad`): every view is an image."""
    rows = realiad.records(root, options, category)
    where = realiad.json_path(root, options, category)
    base = realiad.image_dir(root, options, category)
    chosen = _choose(list_defects(root, category, options), defects, where, category, errors)
    train = sorted((base / r["image"] for r in rows["train"]), key=lambda p: p.as_posix())
    test: list[TestItem] = []
    counts = dict.fromkeys(chosen, 0)
    for row in sorted(rows["test"], key=lambda r: r["image"]):
        if row["defect"] is None:
            good, _ = checked_headers([base / row["image"]], errors)
            test += [TestItem(p, GOOD, None) for p in good]
        elif row["defect"] in counts:
            counts[row["defect"]] += 1
            image, mask = base / row["image"], base / row["mask"]
            if _pair_ok(image, mask, errors):
                test.append(TestItem(image, row["defect"], mask))
    for defect, n in counts.items():
        _check_shots(f"{where} (defect {defect})", n, min_shots, errors)
    return _index(root, category, train, test, chosen, {d: where for d in chosen}, where, errors)


# ----------------------------------------------------------------------------- fingerprints


def category_files(root: str | Path, category: str, options: dict | None):
    """The files of one category by role (``anogen.data.fingerprint.CategoryFiles``), for content keys.

    MVTec layout: a directory listing only. VisA and Folder: their scan, collecting problems
    instead of raising (a broken file fails the job that reads it, not the planning; it is
    left out of the fingerprint, and fixing it changes the fingerprint).
    """
    from anogen.data.fingerprint import CategoryFiles, list_mvtec_files

    if layout_name(options) == "mvtec":
        return list_mvtec_files(root, category)
    index = scan_category(root, category, options, errors=[])
    test: dict[str, list[Path]] = {}
    masks: dict[str, dict[str, Path]] = {}
    for item in index.test:
        test.setdefault(item.defect, []).append(Path(item.path))
        if item.mask is not None:
            masks.setdefault(item.defect, {})[Path(item.path).stem] = Path(item.mask)
    return CategoryFiles(
        Path(root),
        tuple(Path(p) for p in index.train_good),
        {d: tuple(sorted(paths, key=lambda p: p.name)) for d, paths in test.items()},
        masks,
    )
