"""Where the texture of synthetic (DRAEM / DeSTSeg) anomalies comes from.

DRAEM and DeSTSeg paste pieces of the Describable Textures Dataset (DTD) into normal
images. DTD cannot be downloaded by this project, so:

- when ``detectors.texture_source`` names a folder, every image below it (recursively;
  DTD's ``images/<class>/*.jpg`` layout or any other) is a texture, resized whole to the
  training size as the published code does;
- otherwise the textures are real photographs that ship inside scikit-image
  (``skimage.data``; only those that load without a download) plus, optionally, extra
  photographs such as other categories' training images (``fallback_images``). From these
  a random square crop (1/4 to all of the shorter side) is resized to the training size,
  so a handful of large photographs yields varied texture patches.

Flat or procedural noise is never used. ``describe()`` says which source was used and
how many images it holds; the training job records it in its manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anogen import provenance
from anogen.data.texture_files import IMAGE_SUFFIXES, texture_files, texture_fingerprint
from anogen.errors import DataError
from anogen.io import read_image

log = logging.getLogger(__name__)

# skimage.data photographs that are part of the wheel (no pooch download needed).
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "page",
    "text",
)

_SKIMAGE_CACHE: dict[str, np.ndarray] = {}


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def load_skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> dict[str, np.ndarray]:
    """Load the bundled scikit-image photographs that are available offline (cached)."""
    import skimage.data as skdata

    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in _SKIMAGE_CACHE:
            out[name] = _SKIMAGE_CACHE[name]
            continue
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            image = _to_rgb_uint8(loader())
        except Exception as exc:  # a data file that needs a download: skip it
            log.debug("skimage.data.%s is not available offline (%s)", name, exc)
            continue
        _SKIMAGE_CACHE[name] = image
        out[name] = image
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _random_crop(image: np.ndarray, rng: np.random.Generator, min_frac: float = 0.25) -> np.ndarray:
    h, w = image.shape[:2]
    short = min(h, w)
    side = int(round(short * rng.uniform(min_frac, 1.0)))
    side = max(8, min(side, short))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return image[y : y + side, x : x + side]


class TextureSource:
    """A pool of texture images; ``sample(rng, size)`` returns uint8 size x size x 3."""

    def __init__(
        self,
        *,
        kind: str,
        files: Sequence[Path] = (),
        arrays: dict[str, np.ndarray] | None = None,
        folder: Path | None = None,
        crop: bool,
    ):
        self.kind = kind
        self.files = [Path(f) for f in files]
        self.arrays = dict(arrays or {})
        self._array_names = sorted(self.arrays)
        self.folder = folder
        self.crop = crop
        if not self.files and not self.arrays:
            raise DataError(folder or "<textures>", "no texture images available")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(cls, folder: str | Path) -> TextureSource:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(
                folder,
                "texture folder (config detectors.texture_source) does not exist or is not a folder",
            )
        files = texture_files(folder)
        if not files:
            raise DataError(
                folder,
                "texture folder (config detectors.texture_source) holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))})",
            )
        return cls(kind="folder", files=files, folder=folder, crop=False)

    @classmethod
    def from_config(
        cls, texture_source: str | Path | None, fallback_images: Sequence[str | Path] = ()
    ) -> TextureSource:
        if texture_source:
            return cls.from_folder(texture_source)
        photos = load_skimage_photos()
        files = [Path(p) for p in fallback_images]
        if not photos and not files:
            raise DataError(
                "<textures>",
                "no texture source: set detectors.texture_source to a DTD-style folder "
                "(scikit-image's bundled photographs could not be loaded)",
            )
        provenance.record(provenance.FALLBACK_TEXTURES)
        return cls(kind="photographs", files=files, arrays=photos, crop=True)

    # ------------------------------------------------------------------ use
    def __len__(self) -> int:
        return len(self.files) + len(self.arrays)

    def describe(self) -> dict[str, Any]:
        if self.kind == "folder":
            return {
                "kind": "folder",
                "folder": str(self.folder),
                "n_images": len(self.files),
                # the plan's identity of the folder (its inputs["textures"] in the detector's key)
                "fingerprint": texture_fingerprint(self.folder, self.files),
            }
        return {
            "kind": "photographs",
            "skimage_images": list(self._array_names),
            "n_skimage": len(self.arrays),
            "n_fallback_images": len(self.files),
            "n_images": len(self),
            "note": "no texture_source folder given: random crops of scikit-image's bundled "
            "photographs and the fallback images",
        }

    def _get(self, index: int) -> np.ndarray:
        if index < len(self._array_names):
            return self.arrays[self._array_names[index]]
        return read_image(self.files[index - len(self._array_names)])

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        index = int(rng.integers(0, len(self)))
        image = self._get(index)
        if self.crop:
            image = _random_crop(image, rng)
        return _resize(image, size)
