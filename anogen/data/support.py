"""Support sets: the few real anomalies (image + mask) per (category, defect) that AnoGen learns from.

The paper uses 3 real anomalies per defect type, drawn from the MVTec test split. The
choice is a pure function of ``support.seed`` and the category and defect names (combined
through sha256), and of the sorted file names, so it does not depend on the order in which
the file system lists a folder or on the Python process. One seed orders a defect's images
once (``support_order``) and a set is a run of that order: ``support.shots`` images from place
``support.offset``. So the sets of one seed are nested (k = 1 within k = 3 within k = 5: Table
2b's arms take out of the test set only the k = 5 images) and a set at offset 3 is disjoint from
the default one wherever the defect has 6 images or more (Table 2a's second set).

A support directory holds ``images/000_<stem>.<ext>``, ``masks/000_<stem>.<ext>`` (byte
copies of the sources) and ``manifest.json``, written last. ``manifest.extra.items`` lists,
per shot, the copied files and their sources relative to the data root
(``bottle/test/broken_large/000.png``); ``excluded_test_images`` collects the latter so the
evaluation can drop support images from the test set.

A support set can instead be *named*: ``files`` (from ``support.files`` or the authors'
published folders, see ``anogen.authors``) lists image file names in
``<category>/test/<defect>/``; the set is exactly those files, in that order
(``select_listed``), and a name missing from the data set stops the job with that file named.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anogen.data.images import load_image, load_mask
from anogen.data.index import CategoryIndex, TestItem
from anogen.data.layouts import scan_category
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

__all__ = [
    "support_rng_seed",
    "support_order",
    "choose_support",
    "select_support",
    "select_listed",
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


# The first three places of the seeded order are the draw of the code before sets were nested
# (``rng.choice`` of 3 file indices), so the paper's default k = 3 sets, and their keys, stay those
# of earlier runs; the rest of the order continues the same generator. Repeated on purpose: it
# pins that draw, whatever support.shots' default becomes.
_FIRST_DRAW = 3


def support_order(names: Sequence[str], category: str, defect: str, seed: int) -> list[str]:
    """Every name of ``names`` in the seeded order of (category, defect, seed): a pure function of
    the sorted names and the seed. A seeded support set is a run of this order (``choose_support``),
    so sets of one seed are nested: k = 1 is in k = 3, which is in k = 5."""
    ordered = sorted(names)
    rng = np.random.default_rng(support_rng_seed(category, defect, seed))
    first = [int(i) for i in rng.choice(len(ordered), size=min(_FIRST_DRAW, len(ordered)), replace=False)]
    taken = set(first)
    rest = [i for i in range(len(ordered)) if i not in taken]
    return [ordered[i] for i in first + [rest[int(j)] for j in rng.permutation(len(rest))]]


def choose_support(
    names: Sequence[str],
    category: str,
    defect: str,
    shots: int,
    seed: int,
    offset: int = 0,  # repeated on purpose: the first set of the order, what a call naming no place means
) -> list[str]:
    """The ``shots`` file names at places ``offset`` .. ``offset + shots - 1`` of the seeded order
    (``support_order``; the places wrap around past its end), in file-name order.

    ``offset`` = 0 gives the first ``shots``; a set at ``offset`` >= the first set's ``shots``
    is disjoint from it when the folder has ``offset + shots`` images or more (Table 2a's second
    set). Planning (``anogen.plan.Plan``) calls this on the listed names to put the choice into
    the support key; the support job then copies exactly the files the plan chose.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    order = support_order(names, category, defect, seed)
    if len(order) < shots:
        raise ValueError(f"{len(order)} names for {shots} shots")
    return sorted(order[(offset + i) % len(order)] for i in range(shots))


def select_support(
    index: CategoryIndex,
    defect: str,
    shots: int,
    seed: int,
    offset: int = 0,  # repeated on purpose: the first set of the order, what a call naming no place means
) -> list[TestItem]:
    """Choose ``shots`` anomalous test items of ``defect`` (``choose_support``), in file-name order."""
    items = sorted(index.defect_items(defect), key=lambda item: item.path.name)
    by_name = {item.path.name: item for item in items}
    if len(items) < shots:
        raise DataError(
            index.defect_path(defect),
            f"has {len(items)} image(s) but support.shots = {shots} real anomalies are "
            "needed for the support set; lower support.shots or exclude this defect",
        )
    names = choose_support(list(by_name), index.category, defect, shots, seed, offset)
    return [by_name[name] for name in names]


def select_listed(index: CategoryIndex, defect: str, files: list[str], origin: str = "support.files") -> list[TestItem]:
    """The anomalous test items of ``defect`` named by ``files``, in that order.

    ``origin`` says where the list came from, for the error naming a file the data set lacks.
    """
    if not files:
        raise ValueError("an explicit support list needs at least one file name")
    if len(set(files)) != len(files):
        raise DataError(index.defect_path(defect), f"{origin} names a file twice: {list(files)}")
    by_name = {item.path.name: item for item in index.defect_items(defect)}
    chosen = []
    for name in files:
        if name not in by_name:
            raise DataError(
                index.defect_path(defect) / name,
                f"is named by {origin} for {index.category}/{defect} but is not an image of this "
                f"data set's test/{defect}/ folder (it has {len(by_name)} image(s)); use the original "
                "MVTec AD file names, or remove the entry",
            )
        chosen.append(by_name[name])
    return chosen


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
    shots: int | None = None,
    seed: int | None = None,
    out_dir: str | Path,
    key: str,
    inputs: dict[str, str] | None = None,
    files: list[str] | None = None,
    origin: str = "support.files",
    layout: dict | None = None,
    spec: dict | None = None,
) -> Path:
    """Select, copy and verify the support set; write ``out_dir/manifest.json`` last. Returns its path.

    ``files`` names the set (``shots``/``seed`` are then unused); otherwise ``shots`` images
    are chosen with ``seed``. ``spec`` is the spec the Plan keyed the set with (the workflow's
    job passes it; the manifest records it as given); a direct call without one records the
    selection's own arguments.

    Any previous ``manifest.json``, ``images/`` and ``masks/`` in ``out_dir`` are removed
    first; on error they stay removed, so no manifest.json is left behind. ``layout`` is
    the data layout options (``anogen.data.layouts.layout_spec``; None = MVTec layout).
    """
    root = Path(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    try:
        index, chosen, own_spec = _choose(root, category, defect, shots, seed, files, origin, layout)
        records = [_copy_shot(i, item, index, out_dir) for i, item in enumerate(chosen)]
        return write_manifest(
            out_dir,
            stage=STAGE,
            key=key,
            spec=own_spec if spec is None else spec,
            inputs=inputs,
            files=[rel for record in records for rel in (record["image"], record["mask"])],
            extra={
                "items": records,
                "grayscale": index.grayscale,
                # seeded sets arrive here as the names the plan chose (origin support.seed)
                "selection": "seeded" if files is None or origin == "support.seed" else "listed",
            },
        )
    except BaseException:
        _clear(out_dir)
        raise


def _choose(root, category, defect, shots, seed, files, origin, layout) -> tuple[CategoryIndex, list[TestItem], dict]:
    """(scanned index, chosen items, the manifest's spec): the listed ``files``, or ``shots`` seeded ones."""
    if files is not None:
        files = list(files)
        index = scan_category(root, category, layout, defects=[defect])
        return (
            index,
            select_listed(index, defect, files, origin),
            {"category": category, "defect": defect, "files": files},
        )
    if shots is None or seed is None:
        raise ValueError("shots and seed are needed when no files are listed")
    index = scan_category(root, category, layout, defects=[defect], min_shots=shots)
    spec = {"category": category, "defect": defect, "shots": shots, "seed": seed}
    return index, select_support(index, defect, shots, seed), spec


def _copy_shot(i: int, item: TestItem, index: CategoryIndex, out_dir: Path) -> dict[str, str]:
    """Copy shot ``i`` (image and mask) into ``out_dir``, check the copies; its manifest record."""
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
    return {
        "image": image_rel,
        "mask": mask_rel,
        "source_image": index.relpath(item.path),
        "source_mask": index.relpath(item.mask),
    }


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
    manifest_path: str | Path, size: int | None = None, resize: str | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Verified (image uint8 HxWx3, mask uint8 HxW in {0,1}) pairs, optionally resized to size x size.

    A ``size`` needs the config's ``resize`` geometry (``anogen.data.images.load_image``).
    """
    path = _manifest_file(manifest_path)
    manifest = load_manifest(path)
    items = support_items(path)
    pairs = []
    for item in items:
        image_path = verify_file(path, item["image"], manifest)
        mask_path = verify_file(path, item["mask"], manifest)
        pairs.append((load_image(image_path, size, resize), load_mask(mask_path, size, resize)))
    return pairs


def excluded_test_images(manifest_paths: Iterable[str | Path]) -> set[str]:
    """Union of the support images (root-relative POSIX paths) of the given support manifests."""
    excluded: set[str] = set()
    for manifest_path in manifest_paths:
        for item in support_items(manifest_path):
            excluded.add(item["source_image"])
    return excluded
