"""How a non-square image becomes the square input of the models: ``resize: squash | pad | crop``.

Every model in the workflow works on square inputs (the diffusion model at its native
resolution, DRAEM and DeSTSeg at ``detectors.image_size``, the metrics at
``evaluation.resolution``). MVTec AD images are square, so the three modes agree there;
VisA (e.g. 1500 x 1000 px) and most Folder data sets are not:

- ``squash`` (default, what DRAEM's and DeSTSeg's loaders do): resize width and height
  independently; the aspect ratio is lost, nothing is lost from the image;
- ``pad``: centre the image on a black square of side ``max(H, W)`` (masks: 0 = normal),
  then resize; the aspect ratio is kept, the padding is a normal border in every image;
- ``crop``: cut the centred square of side ``min(H, W)``, then resize; the aspect ratio is
  kept, the border strips are dropped (anomalies there are not seen by any model, and are
  not part of the evaluation either).

``to_square`` works at the native resolution (no resampling), so an image and its mask
go through exactly the same geometry, and the subsequent square resize is whatever
interpolation the caller already uses (bicubic for images, nearest for masks). For pad
this differs from "resize the long side, then pad" only by the interpolation blending one
pixel of black into the image edge.
"""

from __future__ import annotations

import numpy as np

RESIZE_MODES = ("squash", "pad", "crop")

__all__ = ["RESIZE_MODES", "check_mode", "square_window", "to_square", "square_pair"]


def check_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    return mode


def square_window(height: int, width: int, mode: str) -> tuple[int, int, int]:
    """(side, top, left) of the square in the image's own pixel grid.

    ``pad``: the image is placed at (top, left) inside a ``side`` x ``side`` canvas;
    ``crop``: the square starts at (top, left) inside the image. ``squash`` returns the
    identity (side is meaningless there; the image is resized as it is).
    """
    check_mode(mode)
    if mode == "pad":
        side = max(height, width)
        return side, (side - height) // 2, (side - width) // 2
    if mode == "crop":
        side = min(height, width)
        return side, (height - side) // 2, (width - side) // 2
    return max(height, width), 0, 0


def to_square(array: np.ndarray, mode: str) -> np.ndarray:
    """Image (HxW or HxWxC) made square by ``mode`` at native resolution; ``squash`` = unchanged."""
    array = np.asarray(array)
    height, width = array.shape[:2]
    if check_mode(mode) == "squash" or height == width:
        return array
    side, top, left = square_window(height, width, mode)
    if mode == "crop":
        return np.ascontiguousarray(array[top : top + side, left : left + side])
    canvas = np.zeros((side, side) + array.shape[2:], dtype=array.dtype)
    canvas[top : top + height, left : left + width] = array
    return canvas


def square_pair(image: np.ndarray, mask: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask through the same geometry (they must have the same H x W)."""
    if np.asarray(image).shape[:2] != np.asarray(mask).shape[:2]:
        raise ValueError(f"mask {np.asarray(mask).shape[:2]} does not match image {np.asarray(image).shape[:2]}")
    return to_square(image, mode), to_square(mask, mode)
