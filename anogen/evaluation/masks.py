"""Ground-truth masks at the evaluation resolution (config ``evaluation.mask_resize``).

The official test scripts differ in how a full-size MVTec mask (0/255) becomes a 256x256
label map, which moves pixel AU-PR by a visible amount on thin defects:

- ``nearest``: nearest-neighbour resize, every nonzero pixel anomalous (this project's
  default, ``anogen.data.images.load_mask``);
- ``bilinear_uint8`` (official DRAEM ``test_DRAEM.py``): OpenCV bilinear resize of the
  0/255 mask, divided by 255 and cast to uint8, so only pixels that stay exactly 255 (fully
  inside the defect) count as anomalous;
- ``bilinear_antialias`` (official DeSTSeg ``eval.py``): the mask in [0, 1] resized by an
  antialiased bilinear filter (torchvision ``Resize(antialias=True)`` on a tensor, i.e.
  ``torch.nn.functional.interpolate(..., antialias=True)``), anomalous where >= 0.5.

``official`` picks each detector's own rule (DRAEM: ``bilinear_uint8``, DeSTSeg:
``bilinear_antialias``; ``resolve_mask_resize``), as the two official test scripts do.

Masks stored as 0/1 (not 0/255) are scaled to 0/255 first, so that the bilinear rules see
the same grey levels as for MVTec's files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anogen.io import read_image

MASK_RESIZE_METHODS = ("nearest", "bilinear_uint8", "bilinear_antialias")
MASK_RESIZE_SETTINGS = (*MASK_RESIZE_METHODS, "official")
OFFICIAL_MASK_RESIZE = {"draem": "bilinear_uint8", "destseg": "bilinear_antialias"}

__all__ = [
    "MASK_RESIZE_METHODS",
    "MASK_RESIZE_SETTINGS",
    "OFFICIAL_MASK_RESIZE",
    "resolve_mask_resize",
    "resize_gt_mask",
    "load_gt_mask",
]


def resolve_mask_resize(setting: str, detector: str | None) -> str:
    """The rule a setting means for ``detector`` (``official`` -> that detector's own)."""
    if setting == "official":
        if detector not in OFFICIAL_MASK_RESIZE:
            raise ValueError(f"mask_resize 'official' needs a known detector, got {detector!r}")
        return OFFICIAL_MASK_RESIZE[detector]
    if setting not in MASK_RESIZE_METHODS:
        raise ValueError(f"unknown mask_resize {setting!r} (one of {MASK_RESIZE_SETTINGS})")
    return setting


def _as_255(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype == bool or raw.max(initial=0) <= 1:
        return (raw > 0).astype(np.uint8) * 255
    return raw.astype(np.uint8)


def resize_gt_mask(raw: np.ndarray, size: int, method: str) -> np.ndarray:
    """``raw``: uint8 HxW mask (0/255 or 0/1). Returns uint8 size x size in {0, 1}."""
    if method not in MASK_RESIZE_METHODS:
        raise ValueError(f"unknown mask_resize {method!r} (one of {MASK_RESIZE_METHODS})")
    size = int(size)
    mask = _as_255(raw)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if method == "nearest":
        from PIL import Image

        binary = (mask > 0).astype(np.uint8)
        if binary.shape != (size, size):
            binary = np.asarray(Image.fromarray(binary).resize((size, size), Image.Resampling.NEAREST))
        return binary.astype(np.uint8)
    if method == "bilinear_uint8":
        resized = mask if mask.shape == (size, size) else cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
        return (resized.astype(np.float64) / 255.0).astype(np.uint8)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(mask.astype(np.float32) / 255.0)[None, None]
    if tuple(t.shape[2:]) != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (t[0, 0] >= 0.5).numpy().astype(np.uint8)


def load_gt_mask(path: str | Path, size: int, method: str) -> np.ndarray:
    """Read a mask file (grey levels kept) and ``resize_gt_mask`` it."""
    return resize_gt_mask(read_image(path, "L"), size, method)
