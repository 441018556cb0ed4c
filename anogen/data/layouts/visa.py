"""``data_layout: visa``: VisA's split file.

The split file ``visa.split_csv`` (default ``split_csv/1cls.csv``, relative to the data root
unless absolute) has the header ``object,split,label,image,mask``; ``split`` is
``train``/``test``, ``label`` ``normal``/``anomaly``, ``image``/``mask`` are paths relative to
the data root (``candle/Data/Images/Anomaly/000.JPG``, ``candle/Data/Masks/Anomaly/000.png``;
the mask is empty for normal images). Categories are the ``object`` values. VisA has no defect
types: every anomaly gets the defect name ``default_defect`` (``anomaly``). Mask pixels > 0 are
anomalous (VisA masks hold small class values, not 255). Listing reads the split file only.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable
from pathlib import Path

from anogen.data.images import is_image_file
from anogen.data.index import (
    GOOD,
    CategoryFiles,
    CategoryIndex,
    TestItem,
    build_index,
    check_shots,
    checked_headers,
    checked_names,
    choose_defects,
    pair_ok,
    report,
    under_root,
)
from anogen.errors import DataError

CONFIG_KEYS = ("default_defect", "visa")
sample_of = None  # every image is its own sample
COLUMNS = ("object", "split", "label", "image", "mask")


def _csv(root: Path, options: dict) -> Path:
    return under_root(root, options["visa"]["split_csv"])


def _rows(root: Path, options: dict) -> dict[str, list[dict]]:
    path = _csv(root, options)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(
            path, "VisA split file does not exist (set visa.split_csv; VisA ships split_csv/1cls.csv)"
        ) from None
    return _read_csv(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_csv(path_str: str, _mtime_ns: int, _size: int) -> dict[str, list[dict]]:
    """Rows grouped by object, checked; cached per file version (mtime and size are part of the key)."""
    path = Path(path_str)
    out: dict[str, list[dict]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(path, f"header lacks column(s) {missing} (expected {','.join(COLUMNS)})")
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


def _category_rows(root: Path, category: str, options: dict) -> list[dict]:
    rows = _rows(root, options).get(category)
    if rows is None:
        raise DataError(_csv(root, options), f"has no row for category {category!r}")
    return rows


# ----------------------------------------------------------------------------- listing


def list_categories(root: Path, options: dict, rejected: list | None) -> list[str]:
    """The split file's ``object`` values, sorted (badly named ones raise or go to ``rejected``)."""
    found = sorted(_rows(root, options))
    if not found:
        raise DataError(_csv(root, options), "lists no image (expected rows object,split,label,image,mask)")
    return checked_names(found, root, "category", rejected)


def list_defects(root: Path, category: str, options: dict, rejected: list | None) -> list[str]:
    """``[default_defect]`` when the category has an anomalous test image, else none."""
    rows = _category_rows(root, category, options)
    has_anomaly = any(row["split"] == "test" and row["label"] == "anomaly" for row in rows)
    return [options["default_defect"]] if has_anomaly else []


# ----------------------------------------------------------------------------- scanning


def scan_category(
    root: Path,
    category: str,
    options: dict,
    defects: Iterable[str] | None,
    min_shots: int | None,
    errors: list | None,
) -> CategoryIndex:
    """The category's rows, every image and mask checked from its header."""
    csv_path = _csv(root, options)
    rows = _category_rows(root, category, options)
    default = options["default_defect"]
    available = list_defects(root, category, options, None)
    chosen = choose_defects(available, defects, csv_path, category, errors)

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
            if mask is not None and pair_ok(path, mask, errors):
                test.append(TestItem(path, default, mask))
    if default in chosen:
        check_shots(csv_path, n_anomalous, min_shots, errors)
    return build_index(root, category, train, test, chosen, {d: csv_path for d in chosen}, csv_path, errors)


def category_files(root: Path, category: str, options: dict) -> CategoryFiles:
    """The files of the category's lenient scan (``CategoryFiles.from_index``)."""
    return CategoryFiles.from_index(scan_category(root, category, options, None, None, []))
