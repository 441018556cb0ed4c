"""``data_layout: realiad``: Real-IAD (Wang et al., CVPR 2024), its JSON split files and multi-view samples.

The data set as published (one resolution folder and the JSON split files)::

    <data_root>/<realiad.image_root>/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg
    <data_root>/<realiad.image_root>/<category>/NG/<code>/S0101/<category>_0101_NG_<code>_C2_<time>.jpg
                                                                  ..._C2_<time>_mask.png
    <data_root>/<realiad.json_dir>/<category>.json

``image_root`` defaults to ``realiad_1024`` and ``json_dir`` to ``realiad_jsons/realiad_jsons``
(the multi-view split files; ``realiad_jsons_sv`` holds the single-view ones, same format).
A split file is ``{"meta": {"normal_class": "OK", ...}, "train": [...], "test": [...]}``; each
record is one VIEW: ``{"category", "anomaly_class", "image_path", "mask_path"}`` with paths
relative to ``<image_root>/<category>``. Categories are the split files' names.

- Defect types are the ``anomaly_class`` labels of the test records (Real-IAD's codes: AK pit,
  BX deformation, CH abrasion, HS scratch, PS damage, QS missing parts, YW foreign objects,
  ZW contamination); a record labelled ``meta.normal_class`` is a normal image, also a view of an
  anomalous sample in which the defect is not visible. Anomalous records need a ``mask_path``.
- Multi-view samples: the five views (C1-C5) of one sample share its folder (``.../S0101/``).
  Every view is an image of its own, and a sample's views are kept on one side of every split:
  a sample in both ``train`` and ``test`` is an error, and when a view is chosen for a support
  set, every view of its sample leaves the test set (:func:`sample_of`, used by
  ``Plan.excluded_from_test``), so the evaluation never scores another view of a support object.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

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
    under_root,
)
from anogen.errors import DataError

CONFIG_KEYS = ("realiad",)
FIELDS = ("anomaly_class", "image_path")


def json_path(root: Path, options: dict, category: str) -> Path:
    return under_root(root, options["realiad"]["json_dir"]) / f"{category}.json"


def image_dir(root: Path, options: dict, category: str) -> Path:
    return under_root(root, options["realiad"]["image_root"]) / category


def sample_of(relpath: str) -> str:
    """The sample a view belongs to: its folder (``.../NG/BX/S0101``), data-root-relative."""
    return str(PurePosixPath(relpath).parent)


# ----------------------------------------------------------------------------- split files


def records(root: Path, options: dict, category: str) -> dict:
    """``{"normal": class, "train": [...], "test": [...]}`` of one category, checked; cached per file version."""
    path = json_path(root, options, category)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(path, f"Real-IAD split file of category {category!r} does not exist") from None
    return _read(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _read(path_str: str, _mtime_ns: int, _size: int) -> dict:
    path = Path(path_str)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"is not a readable JSON split file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("test"), list):
        raise DataError(path, 'expected {"meta": {...}, "train": [...], "test": [...]}')
    normal = (data.get("meta") or {}).get("normal_class")
    if not normal:
        raise DataError(path, 'has no meta.normal_class (Real-IAD\'s split files say "OK")')
    out = {"normal": normal, "train": [], "test": []}
    for split in ("train", "test"):
        for i, record in enumerate(data[split]):
            where = f"{path}:{split}[{i}]"
            if not isinstance(record, dict) or any(not record.get(f) for f in FIELDS):
                raise DataError(where, f"a record needs {', '.join(FIELDS)} (and mask_path for an anomaly)")
            anomalous = record["anomaly_class"] != normal
            if anomalous and not record.get("mask_path"):
                raise DataError(where, f"anomalous view {record['image_path']} has no mask_path")
            if anomalous and split == "train":
                raise DataError(where, "an anomalous view in the train split (training images must be normal)")
            out[split].append(
                {
                    "defect": record["anomaly_class"] if anomalous else None,
                    "image": record["image_path"],
                    "mask": record.get("mask_path") if anomalous else None,
                }
            )
    _check_samples(path, out)
    return out


def _check_samples(path: Path, rows: dict) -> None:
    """No sample (folder of views) on both sides of the train/test split."""
    train = {sample_of(r["image"]) for r in rows["train"]}
    both = sorted(train & {sample_of(r["image"]) for r in rows["test"]})
    if both:
        raise DataError(
            path,
            f"{len(both)} sample(s) have views in both train and test (e.g. {both[0]}): the views of one "
            "object must stay on one side of the split",
        )


# ----------------------------------------------------------------------------- listing


def list_categories(root: Path, options: dict, rejected: list | None) -> list[str]:
    """The split files' names, sorted (badly named ones raise or go to ``rejected``)."""
    folder = under_root(root, options["realiad"]["json_dir"])
    if not folder.is_dir():
        raise DataError(folder, "Real-IAD split folder does not exist (set realiad.json_dir)")
    found = sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))
    if not found:
        raise DataError(folder, "holds no <category>.json split file")
    return checked_names(found, root, "category", rejected)


def list_defects(root: Path, category: str, options: dict, rejected: list | None) -> list[str]:
    """The ``anomaly_class`` labels of the category's anomalous test views, sorted."""
    found = sorted({r["defect"] for r in records(root, options, category)["test"] if r["defect"]})
    return checked_names(found, json_path(root, options, category), "defect", rejected)


# ----------------------------------------------------------------------------- scanning


def scan_category(
    root: Path,
    category: str,
    options: dict,
    defects: Iterable[str] | None,
    min_shots: int | None,
    errors: list | None,
) -> CategoryIndex:
    """The category's split file: every view is an image, checked from its header."""
    rows = records(root, options, category)
    where = json_path(root, options, category)
    base = image_dir(root, options, category)
    chosen = choose_defects(list_defects(root, category, options, None), defects, where, category, errors)
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
            if pair_ok(image, mask, errors):
                test.append(TestItem(image, row["defect"], mask))
    for defect, n in counts.items():
        check_shots(f"{where} (defect {defect})", n, min_shots, errors)
    return build_index(root, category, train, test, chosen, {d: where for d in chosen}, where, errors)


def category_files(root: Path, category: str, options: dict) -> CategoryFiles:
    """The files of the category's lenient scan (``CategoryFiles.from_index``)."""
    return CategoryFiles.from_index(scan_category(root, category, options, None, None, []))
