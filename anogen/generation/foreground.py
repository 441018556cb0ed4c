"""Foreground masks of normal images, on which anomaly boxes are placed.

- objects: OpenCV GrabCut initialised with a centred rectangle (5% margin on every side),
  run on a copy downscaled to at most ``WORK_SIZE`` px (GrabCut on 1024 px MVTec images is
  slow and the mask is only used at the diffusion model's resolution), then resized back
  with nearest neighbour. When GrabCut fails or returns a degenerate mask (under
  ``MIN_FRACTION`` of the image), Otsu thresholding is used instead (the polarity that
  leaves most of the image border as background, then a morphological closing); when that
  is degenerate too, the whole image;
- texture categories: the whole image;
- a user template (white = foreground): that mask, resized with nearest neighbour;
- ``otsu_authors`` (``category_options.<c>.foreground_method``): the authors' screw masks
  (``authors_otsu``), computed at 256 px and resized back with nearest neighbour.

A per-defect box template (``generation.templates``, the authors' ``mask_template``) is not a
foreground of the category: ``load_box_template`` reads it for that defect's box sampling
only (``anogen.generation.run``), which then needs no foreground set at all.

``build_foreground_set`` computes the mask once per normal image of a category (every
defect of the category shares it) and writes ``masks/<stem>.png`` (0/255) and, last,
``manifest.json`` whose ``extra["items"]`` lists ``source_image`` (data-root-relative POSIX
path), ``mask``, ``fraction`` and ``method`` per image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anogen.data.images import load_image
from anogen.data.index import relative_to_root
from anogen.errors import DataError
from anogen.io import atomic_save_image, read_image, write_manifest

log = logging.getLogger("anogen.generation")

WORK_SIZE = 256
MARGIN = 0.05
MIN_FRACTION = 0.01
METHODS = ("grabcut", "otsu_authors")
# The authors' screw masks (creatMask_v2.py): at 256 px, a 15 px elliptic closing.
AUTHORS_OTSU_SIZE = 256
AUTHORS_OTSU_KERNEL = 15


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.astype(np.uint8)
    return cv2.resize(mask.astype(np.uint8), (int(width), int(height)), interpolation=cv2.INTER_NEAREST)


def _work_copy(image: np.ndarray, work_size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, work_size / max(h, w))
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _grabcut(image: np.ndarray, iterations: int, margin: float) -> np.ndarray | None:
    h, w = image.shape[:2]
    mx, my = max(1, round(w * margin)), max(1, round(h * margin))
    if w - 2 * mx < 2 or h - 2 * my < 2:
        return None
    mask = np.zeros((h, w), np.uint8)
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws from OpenCV's RNG
    try:
        cv2.grabCut(
            np.ascontiguousarray(image[..., ::-1]),
            mask,
            (mx, my, w - 2 * mx, h - 2 * my),
            bgd,
            fgd,
            int(iterations),
            cv2.GC_INIT_WITH_RECT,
        )
    except cv2.error as exc:  # e.g. a flat image: no colour clusters to fit
        log.debug("GrabCut failed (%s); falling back to Otsu", exc)
        return None
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)


def _otsu(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 0)
    _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([binary[0], binary[-1], binary[:, 0], binary[:, -1]])
    if border.mean() > 0.5:  # the border should be background
        binary = 1 - binary
    k = max(3, (min(image.shape[:2]) // 50) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_CLOSE, kernel)


def authors_otsu(image: np.ndarray) -> np.ndarray:
    """The authors' foreground (uint8 {0, 1} at ``AUTHORS_OTSU_SIZE``): the image resized by
    cv2 bilinear, grey (cv2's weights), Otsu, inverted when the top-left pixel is foreground,
    then closed by a ``AUTHORS_OTSU_KERNEL`` px ellipse. RGB in, as their BGR read converts alike."""
    size = (AUTHORS_OTSU_SIZE, AUTHORS_OTSU_SIZE)
    small = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_LINEAR)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    _, thresh = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if thresh[0][0] == 255:
        thresh = cv2.bitwise_not(thresh)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (AUTHORS_OTSU_KERNEL, AUTHORS_OTSU_KERNEL))
    return (cv2.morphologyEx(thresh, cv2.MORPH_CLOSE, kernel) > 0).astype(np.uint8)


def _degenerate(mask: np.ndarray | None) -> bool:
    if mask is None:
        return True
    fraction = float(mask.mean())
    return fraction < MIN_FRACTION or fraction > 1.0 - MIN_FRACTION


def estimate_foreground_with_method(
    image: np.ndarray,
    method: str,
    iterations: int,  # generation.grabcut_iterations
    *,
    margin: float = MARGIN,
    work_size: int = WORK_SIZE,
) -> tuple[np.ndarray, str]:
    """Foreground mask (uint8 HxW in {0, 1}, at the image's size) and the method that made it."""
    if method not in METHODS:
        raise ValueError(f"unknown foreground method {method!r}; expected one of {METHODS}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 HxWx3, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if method == "otsu_authors":
        return _resize_mask(authors_otsu(image), h, w), "otsu_authors"
    small = _work_copy(image, work_size)
    mask = _grabcut(small, iterations, margin)
    used = "grabcut"
    if _degenerate(mask):
        mask, used = _otsu(small), "otsu"
        # Otsu may legitimately mark (almost) everything: only an empty mask is useless.
        if float(mask.mean()) < MIN_FRACTION:
            mask, used = np.ones(small.shape[:2], np.uint8), "full"
    return _resize_mask(mask, h, w), used


def estimate_foreground(image: np.ndarray, method: str, iterations: int) -> np.ndarray:
    """Foreground mask of an object image: uint8 HxW in {0, 1}, same size as ``image``."""
    return estimate_foreground_with_method(image, method, iterations)[0]


def load_template(template: str | Path, height: int, width: int) -> np.ndarray:
    """A user template mask (white = foreground, any value >= 128) resized to height x width."""
    mask = (read_image(template, "L") >= 128).astype(np.uint8)
    if not mask.any():
        raise DataError(template, "foreground template has no white (foreground) pixel")
    return _resize_mask(mask, height, width)


def load_box_template(template: str | Path, height: int, width: int) -> np.ndarray:
    """A per-defect box template as the authors read it: grayscale, bilinear resize, any value > 0 inside.

    (Their ``creatMask_v1.py`` resizes ``mask.png`` to 256 x 256 with ``cv2.resize``'s default
    bilinear interpolation and intersects boxes with it by ``box & template``, so every
    nonzero pixel counts.) Returns uint8 HxW in {0, 1}.
    """
    gray = read_image(template, "L")
    if gray.shape != (height, width):
        gray = cv2.resize(gray, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    mask = (gray > 0).astype(np.uint8)
    if not mask.any():
        raise DataError(template, "box template has no nonzero (allowed) pixel")
    return mask


def _mask_for(path: Path, texture: bool, template: Path | None, iterations: int, method: str) -> tuple[np.ndarray, str]:
    image = load_image(path, size=None)
    h, w = image.shape[:2]
    if template is not None:
        return load_template(template, h, w), "template"
    if texture:
        return np.ones((h, w), np.uint8), "texture"
    return estimate_foreground_with_method(image, method, iterations)


def build_foreground_set(
    *,
    image_paths: list[Path],
    data_root: Path,
    texture: bool,
    template: Path | None,
    iterations: int,
    out_dir: Path,
    key: str,
    inputs: dict[str, str],
    spec: dict[str, Any],
    method: str | None = None,
) -> Path:
    """Write one foreground mask per image and the manifest (last); return the manifest path.

    ``method``: ``category_options.<c>.foreground_method`` of an object category (the spec's
    ``method``); None = GrabCut.

    ``spec`` is the config subset the caller keyed this artifact with (``Plan.spec("foreground",
    category)``); the manifest records it as given. A rerun recomputes every mask (about 0.25 s per 1024 px
    image), which keeps the result independent of interruptions.
    """
    out_dir = Path(out_dir)
    data_root = Path(data_root)
    template = Path(template) if template is not None else None
    stems: dict[str, Path] = {}
    for p in image_paths:
        p = Path(p)
        if p.stem in stems:
            raise DataError(p, f"two normal images share the stem '{p.stem}' ({stems[p.stem]})")
        stems[p.stem] = p

    items: list[dict[str, Any]] = []
    files: list[str] = []
    counts: dict[str, int] = {}
    for i, path in enumerate(Path(p) for p in image_paths):
        rel = f"masks/{path.stem}.png"
        mask, used = _mask_for(
            path, texture, template, iterations, method or "grabcut"
        )  # repeated on purpose: None = the schema's default
        atomic_save_image(out_dir / rel, (mask * 255).astype(np.uint8))
        counts[used] = counts.get(used, 0) + 1
        items.append(
            {
                "source_image": relative_to_root(data_root, path),
                "mask": rel,
                "fraction": float(mask.mean()),
                "method": used,
            }
        )
        files.append(rel)
        if (i + 1) % 50 == 0:
            log.info("foreground: %d/%d images", i + 1, len(image_paths))
    log.info("foreground masks: %s", counts)
    return write_manifest(
        out_dir,
        stage="foreground",
        key=key,
        spec=spec,
        inputs=inputs,
        files=files,
        extra={"items": items, "methods": counts, "work_size": WORK_SIZE, "margin": MARGIN},
    )
