"""Example panels for the evaluation: image | ground truth | anomaly map | overlay, colour bar.

Panels are drawn with matplotlib (labelled tiles, a colour bar of the anomaly score). The heat
colours are jet (dark blue -> blue -> cyan -> yellow -> red -> dark red; ``heat_colors`` is the
same ramp in numpy for the overlay); every panel of one evaluation uses the same value range so
that colours are comparable between images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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
    """uint8 RGB panel: test image | ground truth | anomaly map | overlay, with a colour bar.

    All tiles are shown at the anomaly map's size (image and mask resized if needed);
    ``title`` (e.g. the image path and score) is written above; the colour bar spans
    [vmin, vmax] (the value range shared by every panel of one evaluation).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    amap = np.asarray(anomaly_map, dtype=np.float64)
    h, w = amap.shape
    img = _to_rgb(image)
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
    m = (np.asarray(mask) > 0).astype(np.uint8) * 255
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
    lo = float(np.min(amap)) if vmin is None else float(vmin)
    hi = float(np.max(amap)) if vmax is None else float(vmax)
    if not hi > lo:
        hi = lo + 1e-12
    heat = heat_colors(amap, lo, hi)

    fig, axes = plt.subplots(1, 4, figsize=(9.6, 2.9), layout="constrained")
    tiles = (("test image", img), ("ground truth", m), ("anomaly map", amap), ("overlay", overlay(img, heat)))
    shown = None
    for ax, (label, tile) in zip(axes, tiles):
        if label == "anomaly map":
            shown = ax.imshow(tile, cmap="jet", norm=Normalize(lo, hi), interpolation="nearest")
        else:
            ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=list(axes), fraction=0.02, pad=0.01)
    bar.set_label("anomaly score")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.uint8)
    plt.close(fig)
    return np.ascontiguousarray(rgba[..., :3])
