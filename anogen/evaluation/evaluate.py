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

Both ``metrics.json`` and the manifest's ``extra`` record ``test_set``, the identity of the
images evaluated (:func:`test_set_id`), so results can be shown to share one test set.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anogen.data.geometry import to_square
from anogen.data.images import load_mask
from anogen.data.index import relative_to_root
from anogen.data.interpolation import load_square_rgb
from anogen.errors import AnogenError, ConfigError, DataError
from anogen.evaluation.masks import resize_gt_mask, resolve_mask_resize
from anogen.evaluation.metrics import PixelMetricAccumulator, image_metrics, resize_map
from anogen.evaluation.visualize import PanelRenderer
from anogen.io import atomic_save_image, atomic_write_json, read_image
from anogen.keys import test_set_id
from anogen.resumable import ResumableJob

log = logging.getLogger(__name__)

GOOD = "good"
METRIC_KEYS = ("image_auroc", "image_aupr", "pixel_auroc", "pixel_aupr", "pixel_aupro")

__all__ = ["evaluate_detector", "test_set_id", "METRIC_KEYS"]


# ----------------------------------------------------------------------------- loading


def _load_image(path: Path, size: int, resize: str, interpolation: str) -> np.ndarray:
    """The test image as the detector's own loader gives it (``image_interpolation`` of its training)."""
    return load_square_rgb(path, size, resize, interpolation)


def _load_gt_mask(path: Path, size: int, method: str, resize: str) -> np.ndarray:
    """The ground truth at ``size`` in the ``resize`` geometry of the images, by ``method``."""
    if method == "nearest":
        return load_mask(path, size, resize)  # the data module's loader, as before
    return resize_gt_mask(to_square(read_image(path, "L"), resize), size, method)


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


# ----------------------------------------------------------------------------- steps


def _mask_resize(spec: dict[str, Any]) -> str:
    """``evaluation.mask_resize`` resolved for this detector (``official`` -> its own rule)."""
    try:
        return resolve_mask_resize(spec["mask_resize"], spec["detector"])
    except ValueError as exc:
        raise ConfigError("evaluation.mask_resize", str(exc)) from exc


def _clear_outputs(job: ResumableJob) -> None:
    """An interrupted earlier attempt must never look complete, nor leave stale panels behind."""
    job.start_afresh()
    examples_dir = job.out_dir / "examples"
    if examples_dir.is_dir():
        for stale in examples_dir.rglob("*.png"):
            stale.unlink()


def _select_items(test_items: Sequence[Any], data_root: Path, exclude: set[str]) -> tuple[list, list]:
    """(kept, excluded) lists of ``(data-root-relative path, item)``; support images are excluded."""
    items, excluded = [], []
    for item in test_items:
        rel = relative_to_root(data_root, item.path)
        (excluded if rel in exclude else items).append((rel, item))
    if not items:
        raise DataError(data_root, "no test images left to evaluate after excluding the support images")
    for _, item in items:
        if item.defect != GOOD and item.mask is None:
            raise DataError(item.path, "anomalous test image has no ground-truth mask")
    return items, excluded


def _predict_batch(predictor: Any, images: np.ndarray, batch: Sequence[tuple[str, Any]]):
    """(scores (N,) float64, maps (N, S, S) float32) of one batch, checked for shape and finiteness."""
    import torch

    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    with torch.no_grad():
        scores, maps = predictor.predict(tensor)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if scores.shape[0] != len(batch) or maps.ndim != 3 or maps.shape[0] != len(batch):
        raise AnogenError(
            f"predictor returned scores {scores.shape} and maps {maps.shape} "
            f"for a batch of {len(batch)} images (expected (N,) and (N, S, S))"
        )
    bad = ~np.isfinite(scores) | ~np.isfinite(maps).all(axis=(1, 2))
    if bad.any():
        raise AnogenError(
            f"the detector produced NaN or infinite output for {batch[int(np.argmax(bad))][0]} "
            "(training probably diverged; retrain the detector)"
        )
    return scores, maps


@dataclass
class _Scored:
    """What one pass over the test set keeps: image scores, pixel counts, the example maps."""

    scores: np.ndarray
    accumulator: PixelMetricAccumulator
    kept: dict[int, dict[str, Any]] = field(default_factory=dict)
    map_min: float = math.inf
    map_max: float = -math.inf


def _score_all(predictor, items, spec: dict[str, Any], mask_resize: str, batch_size: int) -> _Scored:
    """Stream the test set through the detector: every map meets its mask at ``resolution``."""
    resolution, image_size = int(spec["resolution"]), int(predictor.image_size)
    chosen = set(_pick_examples([item.defect for _, item in items], int(spec["n_visualizations"])))
    accumulator = PixelMetricAccumulator(resolution, fpr_limit=spec["aupro_fpr_limit"], expected_images=len(items))
    run = _Scored(np.empty(len(items), dtype=np.float64), accumulator)
    for start, batch in _batches(items, max(int(batch_size), 1)):
        images = np.stack(
            [_load_image(Path(item.path), image_size, spec["resize"], spec["image_interpolation"]) for _, item in batch]
        )
        batch_scores, batch_maps = _predict_batch(predictor, images, batch)
        maps = resize_map(batch_maps, resolution)
        for j, (rel, item) in enumerate(batch):
            mask = (
                np.zeros((resolution, resolution), dtype=np.uint8)
                if item.mask is None
                else _load_gt_mask(Path(item.mask), resolution, mask_resize, spec["resize"])
            )
            accumulator.update(maps[j], mask)
            if start + j in chosen:
                run.kept[start + j] = {"rel": rel, "map": maps[j].copy(), "mask": mask, "image": images[j]}
        run.scores[start : start + len(batch)] = batch_scores
        run.map_min = min(run.map_min, float(maps.min()))
        run.map_max = max(run.map_max, float(maps.max()))
    return run


def _write_metrics(out_dir: Path, spec, items, excluded, mask_resize: str, run: _Scored) -> dict[str, Any]:
    labels = np.asarray([item.defect != GOOD for _, item in items])
    values = dict(image_metrics(labels, run.scores))
    values.update(run.accumulator.compute())
    metrics: dict[str, Any] = {
        "category": spec["category"],
        "detector": spec["detector"],
        "variant": spec["variant"],
        "n_test_images": len(items),
        "test_set": test_set_id(rel for rel, _ in items),
        "n_anomalous": int(labels.sum()),
        "n_excluded": len(excluded),
        "mask_resize": mask_resize,
    }
    for name in METRIC_KEYS:
        metrics[name] = _nan_to_none(values[name])
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _write_examples(out_dir: Path, spec, items, run: _Scored) -> list[str]:
    """One panel (image, ground truth, anomaly map on the shared scale) per chosen test image."""
    example_files = []
    renderer = PanelRenderer()  # one figure for all panels (same size and colour range)
    try:
        for index in sorted(run.kept):
            entry = run.kept[index]
            rel, defect = entry["rel"], items[index][1].defect
            title = f"{spec['detector']} ({spec['variant']}) on {rel}: {defect}, image score {run.scores[index]:.4g}"
            panel = renderer.render(
                entry["image"], entry["mask"], entry["map"], vmin=run.map_min, vmax=run.map_max, title=title
            )
            # examples/<defect>/<image>.png: the report labels each panel by defect and image
            # (workflow/rules/evaluation.smk), so every one of them is reachable there
            name = f"examples/{defect}/{Path(rel).stem}.png"
            atomic_save_image(out_dir / name, panel)
            example_files.append(name)
    finally:
        renderer.close()
    return example_files


def _manifest_extra(spec, mask_resize, predictor, run: _Scored, excluded, examples, metrics, t_start) -> dict:
    """What the manifest records beyond the spec: the rule used, pixel counts, the examples, the metrics."""
    return {
        "resolution": int(spec["resolution"]),
        "mask_resize": mask_resize,
        "fpr_limit": float(spec["aupro_fpr_limit"]),
        "image_size": int(predictor.image_size),
        "n_pixels": run.accumulator.n_pixels,
        "n_anomalous_pixels": run.accumulator.n_anomalous_pixels,
        "n_regions": run.accumulator.n_regions,
        "excluded": sorted(rel for rel, _ in excluded),
        "test_set": metrics["test_set"],
        "n_test_images": metrics["n_test_images"],
        "examples": examples,
        "anomaly_map_range": [run.map_min, run.map_max],
        "seconds": round(time.perf_counter() - t_start, 3),
        "metrics": {name: metrics[name] for name in METRIC_KEYS},
    }


# ----------------------------------------------------------------------------- job


def evaluate_detector(
    *,
    predictor: Any,
    test_items: Sequence[Any],
    data_root: str | Path,
    spec: dict[str, Any],
    out_dir: str | Path,
    key: str,
    inputs: dict[str, str],
    batch_size: int,
    extra: dict[str, Any] | None = None,
    extra_files: Sequence[str] = (),
) -> Path:
    """Score ``test_items`` with ``predictor``; write metrics, example panels and, last, the manifest.

    ``spec`` is the evaluation spec of the plan (``Plan.spec("evaluation", ...)``): ``resolution``,
    ``aupro_fpr_limit``, ``n_visualizations``, ``mask_resize``, ``resize``, ``category``,
    ``detector``, ``variant`` and ``excluded`` (the support images, data-root-relative POSIX
    paths: test items with such a path are dropped). ``batch_size`` (prediction batch) only
    changes speed. ``extra_files``: files already in ``out_dir`` (e.g. the detector's loss
    plot) that the manifest lists and hashes too.

    ``resize`` (``anogen.data.geometry``) makes each test image square for the detector
    (at its ``image_size``) and each ground-truth mask square at ``resolution`` with the
    same geometry, so the anomaly map and the mask cover the same part of the image: with
    ``pad`` the padding counts as normal pixels, with ``crop`` the dropped strips are not
    evaluated.

    ``predictor``: ``.image_size`` and ``.predict(images float32 N,3,S,S in [0,1]) ->
    (scores (N,), maps (N,S,S))``. ``test_items``: objects with ``.path``, ``.defect``
    (``'good'`` = normal) and ``.mask`` (path or None). ``metrics.json`` holds fractions in
    [0, 1] (undefined -> null) and ``test_set`` (:func:`test_set_id` of the evaluated images'
    data-root-relative paths). Returns the manifest's path.
    """
    t_start = time.perf_counter()
    out_dir, data_root = Path(out_dir), Path(data_root)
    mask_resize = _mask_resize(spec)
    # One short pass over the test set: no checkpoint, an interrupted run simply starts afresh.
    job = ResumableJob(out_dir, stage="evaluation", key=key, spec=spec, inputs=inputs)
    _clear_outputs(job)

    # 1. items: the test set less the support images
    items, excluded = _select_items(test_items, data_root, set(spec["excluded"]))
    log.info(
        "evaluating %d test images (%d anomalous, %d support images excluded) at %d px",
        *(len(items), sum(item.defect != GOOD for _, item in items), len(excluded), spec["resolution"]),
    )
    # 2. predict: image scores, pixel metrics streamed, example maps kept
    run = _score_all(predictor, items, spec, mask_resize, batch_size)
    # 3. metrics
    metrics = _write_metrics(out_dir, spec, items, excluded, mask_resize, run)
    # 4. visualisations
    example_files = _write_examples(out_dir, spec, items, run)
    # 5. manifest, last
    manifest_extra = _manifest_extra(spec, mask_resize, predictor, run, excluded, example_files, metrics, t_start)
    manifest_extra.update(extra or {})
    manifest = job.write_manifest(
        ["metrics.json", *example_files, *extra_files], json.loads(json.dumps(manifest_extra, allow_nan=False))
    )
    log.info("metrics: %s", {name: metrics[name] for name in METRIC_KEYS})
    return manifest
