"""Support sets: the few real anomalies (image + mask) per (category, defect) that AnoGen learns from.

The paper uses 3 real anomalies per defect type, drawn from the MVTec test split. The
choice is a pure function of ``support.seed`` and the category and defect names (combined
through sha256), and of the sorted file names, so it does not depend on the order in which
the file system lists a folder or on the Python process.

A support directory holds ``images/000_<stem>.<ext>``, ``masks/000_<stem>.<ext>`` (byte
copies of the sources) and ``manifest.json``, written last. ``manifest.extra.items`` lists,
per shot, the copied files and their sources relative to the data root
(``bottle/test/broken_large/000.png``); ``excluded_test_images`` collects the latter so the
evaluation can drop support images from the test set.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from anogen.errors import DataError, IntegrityError
from anogen.io import (
    MANIFEST_NAME,
    atomic_path,
    load_manifest,
    read_image,
    verify_file,
    write_manifest,
)
from anogen.keys import canonical_json
from anogen.data.layouts import scan_category
from anogen.data.mvtec import (
    CategoryIndex,
    TestItem,
    load_image,
    load_mask,
)

__all__ = [
    "support_rng_seed",
    "select_support",
    "build_support_set",
    "read_support_set",
    "support_items",
    "excluded_test_images",
]

STAGE = "support"


def support_rng_seed(category: str, defect: str, seed: int) -> int:
    """64-bit seed derived from (seed, category, defect) through sha256 (stable across processes)."""
    payload = canonical_json({"stage": STAGE, "seed": int(seed), "category": category, "defect": defect})
    return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "little")


def select_support(index: CategoryIndex, defect: str, shots: int, seed: int) -> list[TestItem]:
    """Choose ``shots`` anomalous test items of ``defect``, deterministically, in file-name order."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    items = sorted(index.defect_items(defect), key=lambda item: item.path.name)
    if len(items) < shots:
        raise DataError(
            index.defect_path(defect),
            f"has {len(items)} image(s) but support.shots = {shots} real anomalies are "
            "needed for the support set; lower support.shots or exclude this defect",
        )
    rng = np.random.default_rng(support_rng_seed(index.category, defect, seed))
    chosen = sorted(int(i) for i in rng.choice(len(items), size=shots, replace=False))
    return [items[i] for i in chosen]


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _clear(out_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (out_dir / MANIFEST_NAME).unlink()
    for sub in ("images", "masks"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)


def build_support_set(
    root: str | Path,
    category: str,
    defect: str,
    *,
    shots: int,
    seed: int,
    out_dir: str | Path,
    key: str,
    inputs: dict[str, str] | None = None,
    layout: dict | None = None,
) -> Path:
    """Select, copy and verify the support set; write ``out_dir/manifest.json`` last. Returns its path.

    Any previous ``manifest.json``, ``images/`` and ``masks/`` in ``out_dir`` are removed
    first; on error they stay removed, so no manifest.json is left behind. ``layout`` is
    the data layout options (``anogen.data.layouts.layout_spec``; None = MVTec layout).
    """
    root = Path(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    try:
        index = scan_category(root, category, layout, defects=[defect], min_shots=shots)
        chosen = select_support(index, defect, shots, seed)
        files: list[str] = []
        records: list[dict[str, str]] = []
        for i, item in enumerate(chosen):
            assert item.mask is not None  # scan_category guarantees a mask for anomalies
            image_rel = f"images/{i:03d}_{item.path.stem}{item.path.suffix}"
            mask_rel = f"masks/{i:03d}_{item.path.stem}{item.mask.suffix}"
            _copy(item.path, out_dir / image_rel)
            _copy(item.mask, out_dir / mask_rel)
            # Decode every copied byte now, so a truncated source stops the job here,
            # with the source named, rather than in a later stage.
            image = _decode(out_dir / image_rel, item.path, "RGB")
            mask = _decode(out_dir / mask_rel, item.mask, "L")
            if image.shape[:2] != mask.shape[:2]:
                raise DataError(
                    item.mask,
                    f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                    f"{item.path} ({image.shape[1]}x{image.shape[0]})",
                )
            if not mask.any():
                raise DataError(item.mask, "mask is empty (all zero) for an anomalous image")
            files += [image_rel, mask_rel]
            records.append(
                {
                    "image": image_rel,
                    "mask": mask_rel,
                    "source_image": index.relpath(item.path),
                    "source_mask": index.relpath(item.mask),
                }
            )
        return write_manifest(
            out_dir,
            stage=STAGE,
            key=key,
            spec={"category": category, "defect": defect, "shots": shots, "seed": seed},
            inputs=inputs,
            files=files,
            extra={"items": records, "grayscale": index.grayscale},
        )
    except BaseException:
        _clear(out_dir)
        raise


def _decode(copy: Path, source: Path, mode: str) -> np.ndarray:
    try:
        return read_image(copy, mode)
    except DataError as exc:
        raise DataError(source, exc.problem) from exc


def _manifest_file(manifest_path: str | Path) -> Path:
    path = Path(manifest_path)
    return path / MANIFEST_NAME if path.is_dir() else path


def support_items(manifest_path: str | Path) -> list[dict[str, Any]]:
    """The ``extra.items`` records of a support manifest (checked to be a support manifest)."""
    path = _manifest_file(manifest_path)
    manifest = load_manifest(path)
    if manifest.get("stage") != STAGE or "items" not in manifest.get("extra", {}):
        raise IntegrityError(path, f"is not a support-set manifest (stage {manifest.get('stage')!r})")
    return list(manifest["extra"]["items"])


def read_support_set(
    manifest_path: str | Path, size: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Verified (image uint8 HxWx3, mask uint8 HxW in {0,1}) pairs, optionally resized to size x size."""
    path = _manifest_file(manifest_path)
    manifest = load_manifest(path)
    items = support_items(path)
    pairs = []
    for item in items:
        image_path = verify_file(path, item["image"], manifest)
        mask_path = verify_file(path, item["mask"], manifest)
        pairs.append((load_image(image_path, size), load_mask(mask_path, size)))
    return pairs


def excluded_test_images(manifest_paths: Iterable[str | Path]) -> set[str]:
    """Union of the support images (root-relative POSIX paths) of the given support manifests."""
    excluded: set[str] = set()
    for manifest_path in manifest_paths:
        for item in support_items(manifest_path):
            excluded.add(item["source_image"])
    return excluded
