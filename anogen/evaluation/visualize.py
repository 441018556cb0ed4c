"""Example panels for the evaluation: image | ground truth | anomaly map (heat colours).

numpy and PIL only (no matplotlib). The heat colours are a jet-like ramp
(dark blue -> blue -> cyan -> yellow -> red -> dark red); every panel of one evaluation
uses the same value range so that colours are comparable between images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["heat_colors", "overlay", "render_panel"]

# (position, R, G, B) control points of the ramp
_RAMP = np.array(
    [
        [0.000, 0.0, 0.0, 0.5],
        [0.125, 0.0, 0.0, 1.0],
        [0.375, 0.0, 1.0, 1.0],
        [0.625, 1.0, 1.0, 0.0],
        [0.875, 1.0, 0.0, 0.0],
        [1.000, 0.5, 0.0, 0.0],
    ]
)

_GAP = 4
_HEADER = 14


def heat_colors(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map an HxW float array to uint8 HxWx3 heat colours; values are scaled to [vmin, vmax]."""
    v = np.asarray(values, dtype=np.float64)
    lo = float(np.min(v)) if vmin is None else float(vmin)
    hi = float(np.max(v)) if vmax is None else float(vmax)
    span = hi - lo
    x = np.zeros_like(v) if not np.isfinite(span) or span <= 0 else (v - lo) / span
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    rgb = np.stack([np.interp(x, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend heat colours over an RGB uint8 image."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)), 0, 255)
        arr = arr.astype(np.uint8)
    return arr


def render_panel(
    image: np.ndarray,
    mask: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Side-by-side uint8 panel: image | ground-truth mask | heat-coloured anomaly map.

    All three are shown at the anomaly map's size (image and mask resized if needed);
    ``title`` (e.g. the image path and score) is written in a strip above.
    """
    amap = np.asarray(anomaly_map, dtype=np.float64)
    h, w = amap.shape
    img = _to_rgb(image)
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
    m = (np.asarray(mask) > 0).astype(np.uint8) * 255
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
    gt = np.repeat(m[..., None], 3, axis=-1)
    heat = heat_colors(amap, vmin, vmax)

    top = _HEADER if title else 0
    canvas = np.full((h + top, 3 * w + 2 * _GAP, 3), 255, dtype=np.uint8)
    for i, part in enumerate((img, gt, heat)):
        x0 = i * (w + _GAP)
        canvas[top : top + h, x0 : x0 + w] = part
    if title:
        pil = Image.fromarray(canvas)
        ImageDraw.Draw(pil).text((2, 1), title, fill=(0, 0, 0))
        canvas = np.asarray(pil, dtype=np.uint8)
    return canvas
