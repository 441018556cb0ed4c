"""Evaluate one trained detector on one category's test set, streaming.

Batches of test images are loaded at the detector's input size, scored, their anomaly maps
resized (bilinear) to the evaluation resolution and fed to a
:class:`~anogen.evaluation.metrics.PixelMetricAccumulator` together with the ground-truth
masks (brought to the evaluation resolution by ``spec["mask_resize"]``: nearest neighbour
by default, or the official DRAEM / DeSTSeg rules, see ``masks.py``; recorded in
``metrics.json`` and the manifest). Only the image scores
and the few maps chosen for the example panels are kept. Writes ``metrics.json``,
``examples/<defect>/<image>.png`` (``n_visualizations`` per defect type) and, last,
``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anogen.errors import AnogenError, DataError
from anogen.evaluation.masks import resize_gt_mask, resolve_mask_resize
from anogen.evaluation.metrics import PixelMetricAccumulator, image_metrics, resize_map
from anogen.evaluation.visualize import render_panel
from anogen.io import MANIFEST_NAME, atomic_save_image, atomic_write_json, write_manifest

log = logging.getLogger(__name__)

GOOD = "good"
METRIC_KEYS = ("image_auroc", "image_aupr", "pixel_auroc", "pixel_aupr", "pixel_aupro")

__all__ = ["evaluate_detector", "METRIC_KEYS"]


# ----------------------------------------------------------------------------- loading


def _load_image(path: Path, size: int, resize: str = "squash") -> np.ndarray:
    try:
        from anogen.data.mvtec import load_image
    except ImportError:  # pragma: no cover - data module not available
        from PIL import Image

        from anogen.io import read_image

        arr = read_image(path, "RGB")
        if arr.shape[:2] != (size, size):
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))
        return arr
    return load_image(path, size, resize)


def _load_gt_mask(path: Path, size: int, method: str, resize: str = "squash") -> np.ndarray:
    """The ground truth at ``size`` in the ``resize`` geometry of the images, by ``method``."""
    from anogen.data.geometry import to_square
    from anogen.data.mvtec import load_mask
    from anogen.io import read_image

    if method == "nearest":
        return load_mask(path, size, resize)  # the data module's loader, as before
    return resize_gt_mask(to_square(read_image(path, "L"), resize), size, method)


def _relpath(path: Path, data_root: Path) -> str:
    path, data_root = Path(path), Path(data_root)
    for p, r in ((path, data_root), (path.resolve(), data_root.resolve())):
        try:
            return p.relative_to(r).as_posix()
        except ValueError:
            continue
    # Outside the data root (a Folder-layout folder given as an absolute path): the same
    # "../" form the support manifest records (anogen.data.mvtec.relative_to_root).
    import os

    return Path(os.path.relpath(path, data_root)).as_posix()


def _pick_examples(defects: Sequence[str], n: int) -> list[int]:
    """Up to ``n`` indices per defect type (``good`` included), evenly spaced within each type."""
    if n <= 0:
        return []
    groups: dict[str, list[int]] = {}
    for i, defect in enumerate(defects):
        groups.setdefault(defect, []).append(i)
    chosen = []
    for pool in groups.values():
        k = min(n, len(pool))
        chosen += [pool[int(j * len(pool) / k)] for j in range(k)]
    return sorted(chosen)


def _batches(items: Sequence[Any], size: int) -> Iterable[tuple[int, Sequence[Any]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ----------------------------------------------------------------------------- main


def evaluate_detector(
    *,
    predictor: Any,
    test_items: Sequence[Any],
    data_root: str | Path,
    exclude: set[str] | Iterable[str],
    resolution: int,
    fpr_limit: float,
    out_dir: str | Path,
    key: str,
    inputs: dict[str, str],
    spec: dict[str, Any],
    n_visualizations: int = 4,
    batch_size: int = 8,
    extra: dict[str, Any] | None = None,
    resize: str = "squash",
    extra_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Score ``test_items`` with ``predictor`` and write metrics, example panels and manifest.

    ``extra_files``: files already in ``out_dir`` (e.g. the detector's loss plot) that the
    manifest lists and hashes too.

    ``resize`` (``anogen.data.geometry``) makes each test image square for the detector
    (at its ``image_size``) and each ground-truth mask square at ``resolution`` with the
    same geometry, so the anomaly map and the mask cover the same part of the image: with
    ``pad`` the padding counts as normal pixels, with ``crop`` the dropped strips are not
    evaluated.

    ``predictor``: ``.image_size`` and ``.predict(images float32 N,3,S,S in [0,1]) ->
    (scores (N,), maps (N,S,S))``. ``test_items``: objects with ``.path``, ``.defect``
    (``'good'`` = normal) and ``.mask`` (path or None). Items whose path relative to
    ``data_root`` (POSIX) is in ``exclude`` (the support images) are dropped.
    Returns the content of ``metrics.json`` (fractions in [0, 1]; undefined -> None).
    """
    import torch

    out_dir = Path(out_dir)
    data_root = Path(data_root)
    exclude = set(exclude)
    resolution = int(resolution)
    batch_size = max(int(batch_size), 1)
    image_size = int(predictor.image_size)
    try:
        mask_resize = resolve_mask_resize(spec.get("mask_resize", "nearest"), spec.get("detector"))
    except ValueError as exc:
        from anogen.errors import ConfigError

        raise ConfigError("evaluation.mask_resize", str(exc)) from exc
    t_start = time.perf_counter()

    # an interrupted earlier attempt must never look complete
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    examples_dir = out_dir / "examples"
    if examples_dir.is_dir():
        for stale in examples_dir.rglob("*.png"):
            stale.unlink()

    items = []
    excluded = []
    for item in test_items:
        rel = _relpath(Path(item.path), data_root)
        (excluded if rel in exclude else items).append((rel, item))
    if not items:
        raise DataError(data_root, "no test images left to evaluate after excluding the support images")
    labels = [item.defect != GOOD for _, item in items]
    for _, item in items:
        if item.defect != GOOD and item.mask is None:
            raise DataError(item.path, "anomalous test image has no ground-truth mask")
    log.info(
        "evaluating %d test images (%d anomalous, %d support images excluded) at %d px",
        len(items),
        sum(labels),
        len(excluded),
        resolution,
    )

    chosen = set(_pick_examples([item.defect for _, item in items], int(n_visualizations)))
    kept: dict[int, dict[str, Any]] = {}
    accumulator = PixelMetricAccumulator(resolution, fpr_limit=fpr_limit, expected_images=len(items))
    scores = np.empty(len(items), dtype=np.float64)
    map_min, map_max = math.inf, -math.inf

    for start, batch in _batches(items, batch_size):
        images = np.stack([_load_image(Path(item.path), image_size, resize) for _, item in batch])
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        with torch.no_grad():
            batch_scores, batch_maps = predictor.predict(tensor)
        batch_scores = np.asarray(batch_scores, dtype=np.float64).reshape(-1)
        batch_maps = np.asarray(batch_maps, dtype=np.float32)
        if batch_maps.ndim == 4 and batch_maps.shape[1] == 1:
            batch_maps = batch_maps[:, 0]
        if batch_scores.shape[0] != len(batch) or batch_maps.ndim != 3 or batch_maps.shape[0] != len(batch):
            raise AnogenError(
                f"predictor returned scores {batch_scores.shape} and maps {batch_maps.shape} "
                f"for a batch of {len(batch)} images (expected (N,) and (N, S, S))"
            )
        bad = ~np.isfinite(batch_scores) | ~np.isfinite(batch_maps).all(axis=(1, 2))
        if bad.any():
            raise AnogenError(
                f"the detector produced NaN or infinite output for {batch[int(np.argmax(bad))][0]} "
                "(training probably diverged; retrain the detector)"
            )
        maps = resize_map(batch_maps, resolution)
        for j, (rel, item) in enumerate(batch):
            mask = (
                np.zeros((resolution, resolution), dtype=np.uint8)
                if item.mask is None
                else _load_gt_mask(Path(item.mask), resolution, mask_resize, resize)
            )
            accumulator.update(maps[j], mask)
            index = start + j
            if index in chosen:
                kept[index] = {"rel": rel, "map": maps[j].copy(), "mask": mask, "image": images[j]}
        scores[start : start + len(batch)] = batch_scores
        map_min = min(map_min, float(maps.min()))
        map_max = max(map_max, float(maps.max()))

    values = dict(image_metrics(np.asarray(labels), scores))
    values.update(accumulator.compute())

    metrics: dict[str, Any] = {
        "category": spec.get("category"),
        "detector": spec.get("detector"),
        "variant": spec.get("variant"),
        "n_test_images": len(items),
        "n_anomalous": int(sum(labels)),
        "n_excluded": len(excluded),
        "mask_resize": mask_resize,
    }
    for name in METRIC_KEYS:
        metrics[name] = _nan_to_none(values[name])
    atomic_write_json(out_dir / "metrics.json", metrics)

    example_files = []
    for index in sorted(kept):
        entry = kept[index]
        rel = entry["rel"]
        defect = items[index][1].defect
        title = f"{spec.get('detector')} ({spec.get('variant')}) on {rel}: {defect}, image score {scores[index]:.4g}"
        panel = render_panel(entry["image"], entry["mask"], entry["map"], vmin=map_min, vmax=map_max, title=title)
        # examples/<defect>/<image>.png: the report labels each panel by defect and image
        # (workflow/rules/evaluation.smk), so every one of them is reachable there
        name = f"examples/{defect}/{Path(rel).stem}.png"
        atomic_save_image(out_dir / name, panel)
        example_files.append(name)

    manifest_extra = {
        "resolution": resolution,
        "mask_resize": mask_resize,
        "fpr_limit": float(fpr_limit),
        "image_size": image_size,
        "n_pixels": accumulator.n_pixels,
        "n_anomalous_pixels": accumulator.n_anomalous_pixels,
        "n_regions": accumulator.n_regions,
        "excluded": sorted(rel for rel, _ in excluded),
        "examples": example_files,
        "anomaly_map_range": [map_min, map_max],
        "seconds": round(time.perf_counter() - t_start, 3),
        "metrics": {name: metrics[name] for name in METRIC_KEYS},
    }
    manifest_extra.update(extra or {})
    write_manifest(
        out_dir,
        stage="evaluation",
        key=key,
        spec=spec,
        inputs=inputs,
        files=["metrics.json", *example_files, *extra_files],
        extra=json.loads(json.dumps(manifest_extra, allow_nan=False)),
    )
    log.info("metrics: %s", {name: metrics[name] for name in METRIC_KEYS})
    return metrics
