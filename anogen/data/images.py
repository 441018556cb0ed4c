"""A data set's image files, whatever its layout: which names are images, headers, decoding.

Accepted extensions: png, jpg, jpeg, bmp, tif, tiff (any case). Scanning a category reads
headers only (:func:`read_header`, :func:`check_pair`: existence, readability, mask sizes);
:func:`load_image` / :func:`load_mask` decode fully, so a truncated file raises
:class:`~anogen.errors.DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogen.data.geometry import to_square
from anogen.errors import DataError
from anogen.io import read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Pillow modes of single-channel images: a category whose first training image has one is grayscale.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

__all__ = [
    "IMAGE_EXTENSIONS",
    "GRAY_MODES",
    "is_image_file",
    "read_header",
    "check_pair",
    "load_image",
    "load_mask",
]


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_header(path: Path) -> tuple[tuple[int, int], str]:
    """(size, mode) from the header; DataError naming the file if it is not an image."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except FileNotFoundError as exc:
        raise DataError(path, "file does not exist") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable image ({exc})") from exc


def check_pair(image: Path, mask: Path) -> None:
    """Both headers readable and the same size, else DataError naming the file."""
    img_size, _ = read_header(image)
    mask_size, _ = read_header(mask)
    if img_size != mask_size:
        raise DataError(
            mask,
            f"mask size {mask_size[0]}x{mask_size[1]} differs from its image {image} ({img_size[0]}x{img_size[1]})",
        )


# ----------------------------------------------------------------------------- loading


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")


def _check_geometry(size: int | None, resize: str | None) -> None:
    """A ``size`` needs the config's ``resize`` geometry: the loaders never pick one themselves."""
    _check_size(size)
    if size is not None and resize is None:
        raise ValueError("a size needs resize (the config's 'resize': squash, pad or crop)")


def load_image(path: str | Path, size: int | None = None, resize: str | None = None) -> np.ndarray:
    """Decode fully to uint8 HxWx3 RGB (grayscale replicated); optional bicubic resize to size x size.

    With a ``size``, a non-square image is first made square by ``resize``
    (``anogen.data.geometry``: squash, pad or crop; required then); without one it is
    returned as stored.
    """
    _check_geometry(size, resize)
    array = read_image(path, "RGB")
    if size is not None:
        array = to_square(array, resize)
    if size is not None and array.shape[:2] != (size, size):
        array = np.asarray(
            Image.fromarray(array).resize((int(size), int(size)), Image.Resampling.BICUBIC),
            dtype=np.uint8,
        )
    return array


def load_mask(path: str | Path, size: int | None = None, resize: str | None = None) -> np.ndarray:
    """Decode fully to uint8 HxW in {0, 1} (any value > 0 is 1); NEAREST resize to size x size.

    With a ``size``, the same ``resize`` geometry as :func:`load_image` (padding is 0; required then).
    """
    _check_geometry(size, resize)
    array = (read_image(path, "L") > 0).astype(np.uint8)
    if size is not None:
        array = to_square(array, resize)
    if size is not None and array.shape != (size, size):
        array = np.asarray(
            Image.fromarray(array).resize((int(size), int(size)), Image.Resampling.NEAREST),
            dtype=np.uint8,
        )
    return array
