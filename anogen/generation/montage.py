"""One overview PNG per (category, defect): a labelled grid of the support images, a normal
image with its sampled boxes and the generated samples (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from anogen.generation.boxes import Box

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
    columns: int = 4,
) -> np.ndarray:
    """A labelled grid; returns uint8 HxWx3.

    Row 1: the support anomalies (the few-shot real examples the embedding learned from);
    row 2: a normal training image with its sampled boxes; rows 3+: generated samples,
    ``columns`` per row. ``boxes`` are in the pixel coordinates of ``normal_image``; each tile
    is ``thumb`` px (about; matplotlib lays the grid out at 100 dpi).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    support = [np.asarray(_thumb(img, thumb)) for img in support_images]
    thickness = max(1, round(2 * max(np.asarray(normal_image).shape[:2]) / thumb))  # ~2 px in the thumbnail
    normal = np.asarray(_thumb(outline_boxes(normal_image, boxes, thickness), thumb))
    gen = [np.asarray(_thumb(img, thumb)) for img in list(generated)[:max_generated]]
    columns = max(1, columns, len(support))
    gen_rows = max(1, -(-len(gen) // columns))
    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = [
        ("support (real)", [(f"support {i + 1}", t) for i, t in enumerate(support)]),
        ("normal + box", [("sampled box", normal)]),
    ]
    for r in range(gen_rows):
        chunk = gen[r * columns : (r + 1) * columns]
        rows.append(
            ("generated" if r == 0 else "", [(f"generated {r * columns + i + 1}", t) for i, t in enumerate(chunk)])
        )

    tile_in = thumb / 100.0
    fig, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(columns * (tile_in + 0.15) + 0.4, len(rows) * (tile_in + 0.45) + 0.45),
        squeeze=False,
    )
    for r, (row_label, tiles) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(tiles):
                label, tile = tiles[c]
                ax.imshow(tile, interpolation="nearest")
                ax.set_title(label, fontsize=8)
            else:
                ax.axis("off")
        if row_label:
            axes[r, 0].set_ylabel(row_label, fontsize=8)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=9, y=0.995, va="top")
        top = 1.0 - 0.3 / fig.get_figheight()
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.3, rect=(0, 0, 1, top))
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.uint8)
    plt.close(fig)
    return np.ascontiguousarray(rgba[..., :3])
