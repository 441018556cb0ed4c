"""The image resize kernels of the detectors (``detectors.<detector>.image_interpolation``).

The official DRAEM code and the authors' DRAEM fork read an image with ``cv2.imread`` and
resize it with ``cv2.resize`` (bilinear, ``INTER_LINEAR``, no antialiasing); the official
DeSTSeg code and its fork resize a PIL image with torchvision's ``Resize``, i.e. Pillow's
``BILINEAR`` (which widens its support when it shrinks, an antialiasing filter). The
embedding and generation stages read images with Pillow ``BICUBIC``
(``anogen.data.images.load_image``). On 1024 px MVTec images brought to 256 px the kernels
differ by several grey levels on fine textures (docs/fidelity.md).

Colour order does not matter: every kernel resizes each channel alone, so resizing the RGB
array is byte-identical to resizing cv2's BGR array and reordering it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anogen.data.geometry import to_square
from anogen.io import read_image

INTERPOLATIONS = ("cv2_linear", "pil_bilinear", "pil_bicubic")
_PIL = {"pil_bilinear": Image.Resampling.BILINEAR, "pil_bicubic": Image.Resampling.BICUBIC}

__all__ = ["INTERPOLATIONS", "resize_square", "load_square_rgb"]


def resize_square(image: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """uint8 HxW(xC) resized to size x size by ``interpolation`` (unchanged when already that size)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.shape[:2] == (size, size):
        return image
    if interpolation == "cv2_linear":
        return cv2.resize(image, (int(size), int(size)), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(image).resize((int(size), int(size)), _PIL[interpolation]), dtype=np.uint8)


def load_square_rgb(path: str | Path, size: int, resize: str, interpolation: str) -> np.ndarray:
    """uint8 size x size x 3 RGB: decoded, made square by ``resize`` (``anogen.data.geometry``),
    resized by ``interpolation``."""
    return resize_square(to_square(read_image(path, "RGB"), resize), size, interpolation)
