"""Example panels for the evaluation: image | ground truth | anomaly map | overlay, colour bar.

Panels are drawn with matplotlib (labelled tiles, a colour bar of the anomaly score). The heat
colours are jet (dark blue -> blue -> cyan -> yellow -> red -> dark red; ``heat_colors`` is the
same ramp in numpy for the overlay); every panel of one evaluation uses the same value range so
that colours are comparable between images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["PanelRenderer", "heat_colors", "overlay", "render_panel"]

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


def _tiles(image: np.ndarray, mask: np.ndarray, amap: np.ndarray, lo: float, hi: float):
    """The four tiles at the anomaly map's size (image and mask resized if needed)."""
    h, w = amap.shape
    img = _to_rgb(image)
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
    m = (np.asarray(mask) > 0).astype(np.uint8) * 255
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
    return img, m, amap, overlay(img, heat_colors(amap, lo, hi))


def _value_range(amap: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    lo = float(np.min(amap)) if vmin is None else float(vmin)
    hi = float(np.max(amap)) if vmax is None else float(vmax)
    return lo, (hi if hi > lo else lo + 1e-12)


_TALLEST_LINE = "Ag|()[]{}_^"


class PanelRenderer:
    """Draws panels into one matplotlib figure, reused from panel to panel.

    Building a figure and running its constrained layout is most of a panel's cost: a
    reused figure draws a panel 4x faster on a CPU core (bench/bench_job_overheads.py), and
    an evaluation draws about 16. The
    layout depends only on the tile size, the colour bar's range and whether there is a
    title, so the figure is kept while those stay the same and only the tiles' pixels and
    the title's text change; anything else builds a new figure. A reused figure's panel
    equals ``render_panel``'s pixel for pixel (tests/test_evaluate_summary.py)."""

    def __init__(self):
        self._fig = None
        self._key = None

    def render(
        self,
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
        amap = np.asarray(anomaly_map, dtype=np.float64)
        lo, hi = _value_range(amap, vmin, vmax)
        tiles = _tiles(image, mask, amap, lo, hi)
        key = (amap.shape, lo, hi, bool(title))
        if key != self._key:
            self.close()
            self._build(tiles, lo, hi, bool(title))
            self._key = key
        for shown, tile in zip(self._images, tiles):
            shown.set_data(tile)
        if title:
            self._title.set_text(title)
        self._fig.canvas.draw()
        rgba = np.asarray(self._fig.canvas.buffer_rgba(), dtype=np.uint8)
        return np.ascontiguousarray(rgba[..., :3])

    def _build(self, tiles, lo: float, hi: float, titled: bool) -> None:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.colors import Normalize

        fig, axes = plt.subplots(1, 4, figsize=(9.6, 2.9), layout="constrained")
        labels = ("test image", "ground truth", "anomaly map", "overlay")
        self._images = []
        for ax, label, tile in zip(axes, labels, tiles):
            if label == "anomaly map":
                shown = ax.imshow(tile, cmap="jet", norm=Normalize(lo, hi), interpolation="nearest")
                heat = shown
            else:
                shown = ax.imshow(
                    tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest"
                )
            self._images.append(shown)
            ax.set_title(label, fontsize="medium")
            ax.set_xticks([])
            ax.set_yticks([])
        bar = fig.colorbar(heat, ax=list(axes), fraction=0.02, pad=0.01)
        bar.set_label("anomaly score")
        # The layout is computed once, for a title line as tall as any (ascender, descender,
        # brackets), and then kept: every panel of the figure has the same geometry, whatever
        # its title's letters.
        self._title = fig.suptitle(_TALLEST_LINE, fontsize="medium") if titled else None
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
        self._fig = fig

    def close(self) -> None:
        if self._fig is not None:
            import matplotlib.pyplot as plt

            plt.close(self._fig)
        self._fig = self._key = None


def render_panel(
    image: np.ndarray,
    mask: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> np.ndarray:
    """One panel in a figure of its own (``PanelRenderer.render``)."""
    renderer = PanelRenderer()
    try:
        return renderer.render(image, mask, anomaly_map, vmin=vmin, vmax=vmax, title=title)
    finally:
        renderer.close()
