"""One overview PNG per (category, defect): support images | normal + boxes | generated samples."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anogen.generation.boxes import Box

LABEL_H = 14
GAP = 4
TITLE_H = 16
BOX_COLOUR = (255, 40, 40)


def _thumb(image: np.ndarray, size: int) -> Image.Image:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return Image.fromarray(image.astype(np.uint8)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def outline_boxes(image: np.ndarray, boxes: Sequence[Box], thickness: int = 2) -> np.ndarray:
    """A copy of ``image`` (HxWx3 uint8) with the boxes' outlines drawn (boxes in its pixels)."""
    out = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).copy())
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    for box in boxes:
        pts = np.round(box.corners() - 0.5).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], True, BOX_COLOUR, thickness)
    return out


def make_montage(
    support_images: Sequence[np.ndarray],
    normal_image: np.ndarray,
    boxes: Sequence[Box],
    generated: Sequence[np.ndarray],
    *,
    title: str = "",
    thumb: int = 128,
    max_generated: int = 8,
) -> np.ndarray:
    """One row of labelled thumbnails; returns uint8 HxWx3.

    ``boxes`` are in the pixel coordinates of ``normal_image``.
    """
    tiles: list[tuple[str, Image.Image]] = []
    for i, img in enumerate(support_images):
        tiles.append((f"support {i + 1}", _thumb(img, thumb)))
    thickness = max(1, round(2 * max(np.asarray(normal_image).shape[:2]) / thumb))  # ~2 px in the thumbnail
    tiles.append(("normal + box", _thumb(outline_boxes(normal_image, boxes, thickness), thumb)))
    for i, img in enumerate(list(generated)[:max_generated]):
        tiles.append((f"generated {i + 1}", _thumb(img, thumb)))

    width = GAP + len(tiles) * (thumb + GAP)
    height = TITLE_H + LABEL_H + thumb + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((GAP, 2), title, fill=(0, 0, 0), font=font)
    for k, (label, tile) in enumerate(tiles):
        x = GAP + k * (thumb + GAP)
        draw.text((x, TITLE_H), label, fill=(60, 60, 60), font=font)
        canvas.paste(tile, (x, TITLE_H + LABEL_H))
    return np.asarray(canvas, dtype=np.uint8)
