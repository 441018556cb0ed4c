"""Random (optionally rotated) bounding boxes placed on the foreground of a normal image.

A box is drawn as follows, from an explicit ``numpy.random.Generator``:

1. width  ~ U(width_range)  x image width, height ~ U(height_range) x image height (pixels);
2. angle  ~ U[0, 180) degrees when ``rotate`` else 0;
3. the centre is uniform over the positions where the whole rotated rectangle lies inside
   the image (if the rotated rectangle is larger than the image, the try fails);
4. the box is accepted when at least ``min_overlap`` of its rasterised area lies on the
   foreground mask (``strict``: more than ``min_overlap``, the authors' rule for their
   per-defect templates, ``> 0.75``) and its raster differs from every box already
   accepted for this image.

Each box gets at most ``max_tries`` draws; then a :class:`~anogen.errors.DataError` names the
image and the defect, so an impossible constraint stops the job instead of looping forever.

Geometry convention: continuous pixel coordinates, pixel ``(x, y)`` covers
``[x, x+1) x [y, y+1)``; ``cx, cy, w, h`` are in pixels of the image the box was sampled on,
``angle`` in degrees (OpenCV's ``RotatedRect`` orientation). A box's raster holds the pixels
whose centre lies inside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from anogen.errors import DataError


@dataclasses.dataclass(frozen=True)
class Box:
    cx: float
    cy: float
    w: float
    h: float
    angle: float = 0.0

    def _axes(self) -> tuple[float, float]:
        a = math.radians(self.angle)
        return math.cos(a), math.sin(a)

    def corners(self) -> np.ndarray:
        """4x2 float array of corner points (x, y), continuous pixel coordinates.

        The width axis points along (cos a, sin a) with y downwards -- the orientation of
        OpenCV's ``RotatedRect`` (``cv2.boxPoints`` gives the same corners).
        """
        c, s = self._axes()
        u = np.array([c, s]) * self.w / 2
        v = np.array([-s, c]) * self.h / 2
        centre = np.array([self.cx, self.cy])
        return np.stack([centre - u + v, centre - u - v, centre + u - v, centre + u + v])

    def extent(self) -> tuple[float, float]:
        """Half width and half height of the axis-aligned hull of the rotated box."""
        return _half_extent(self.w, self.h, self.angle)

    def to_mask(self, height: int, width: int) -> np.ndarray:
        """uint8 HxW mask in {0, 1}: pixels whose centre lies in the (half-open) rotated box.

        Exact point-in-rectangle sampling (area ~ w*h, no boundary bias) rather than
        ``cv2.fillPoly``, which also fills every pixel the outline touches.
        """
        height, width = int(height), int(width)
        mask = np.zeros((height, width), dtype=np.uint8)
        hx, hy = self.extent()
        x0, x1 = max(0, math.floor(self.cx - hx)), min(width, math.ceil(self.cx + hx) + 1)
        y0, y1 = max(0, math.floor(self.cy - hy)), min(height, math.ceil(self.cy + hy) + 1)
        if x0 >= x1 or y0 >= y1:
            return mask
        ys, xs = np.mgrid[y0:y1, x0:x1]
        dx, dy = xs + 0.5 - self.cx, ys + 0.5 - self.cy
        c, s = self._axes()
        u = dx * c + dy * s
        v = -dx * s + dy * c
        inside = (u >= -self.w / 2) & (u < self.w / 2) & (v >= -self.h / 2) & (v < self.h / 2)
        mask[y0:y1, x0:x1] = inside
        return mask

    def scaled(self, sx: float, sy: float) -> Box:
        """The same box on an image resized by (sx, sy); exact for angle 0 and for sx == sy."""
        return Box(self.cx * sx, self.cy * sy, self.w * sx, self.h * sy, self.angle)

    def as_dict(self) -> dict:
        return {
            "cx": float(self.cx),
            "cy": float(self.cy),
            "w": float(self.w),
            "h": float(self.h),
            "angle": float(self.angle),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Box:
        return cls(float(d["cx"]), float(d["cy"]), float(d["w"]), float(d["h"]), float(d.get("angle", 0.0)))


def _half_extent(w: float, h: float, angle: float) -> tuple[float, float]:
    a = math.radians(angle)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return (w * c + h * s) / 2.0, (w * s + h * c) / 2.0


def _check_range(name: str, rng_range: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in rng_range)
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"{name} range must satisfy 0 < min <= max <= 1, got {list(rng_range)}")
    return lo, hi


def sample_boxes(
    rng: np.random.Generator,
    foreground: np.ndarray,
    n: int,
    width_range: Sequence[float],
    height_range: Sequence[float],
    rotate: bool,
    min_overlap: float,
    max_tries: int,
    image_name: str,
    defect: str,
    *,
    strict: bool = False,
    overlap_key: str = "generation.min_overlap",
) -> list[Box]:
    """Draw ``n`` distinct boxes on ``foreground`` (uint8 HxW, nonzero = foreground).

    ``strict`` keeps a box only when MORE than ``min_overlap`` of it is inside (the authors'
    template rule); ``overlap_key`` is the config key named when no box can be placed.

    Prefix-stable: boxes are drawn one after the other, box i from the generator state left by
    boxes 0..i-1 and checked for distinctness against those only, so the first b boxes of a
    call with ``n`` > b are the boxes of a call with ``n`` = b (``generation.images_per_normal``
    relies on it: a smaller N is the start of a larger one).
    """
    fg = np.asarray(foreground) > 0
    if fg.ndim != 2:
        raise ValueError(f"foreground must be HxW, got shape {fg.shape}")
    height, width = fg.shape
    w_lo, w_hi = _check_range("width", width_range)
    h_lo, h_hi = _check_range("height", height_range)
    if n < 1 or max_tries < 1:
        raise ValueError(f"n and max_tries must be >= 1, got {n}, {max_tries}")

    accepted: list[Box] = []
    rasters: list[np.ndarray] = []
    for index in range(n):
        stats = {"too_large": 0, "empty": 0, "overlap": 0, "duplicate": 0}
        for _ in range(max_tries):
            bw = rng.uniform(w_lo, w_hi) * width
            bh = rng.uniform(h_lo, h_hi) * height
            angle = float(rng.uniform(0.0, 180.0)) if rotate else 0.0
            hx, hy = _half_extent(bw, bh, angle)
            # Always consume the same number of draws per try, whatever happens below.
            ux, uy = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)
            if 2 * hx > width + 1e-9 or 2 * hy > height + 1e-9:
                stats["too_large"] += 1
                continue
            box = Box(hx + ux * (width - 2 * hx), hy + uy * (height - 2 * hy), bw, bh, angle)
            raster = box.to_mask(height, width)
            area = int(raster.sum())
            if area == 0:
                stats["empty"] += 1
                continue
            inside = int(np.count_nonzero(fg & (raster > 0)))
            if inside < min_overlap * area or (strict and inside <= min_overlap * area):
                stats["overlap"] += 1
                continue
            if any(np.array_equal(raster, r) for r in rasters):
                stats["duplicate"] += 1
                continue
            accepted.append(box)
            rasters.append(raster)
            break
        else:
            reasons = ", ".join(f"{k}: {v}" for k, v in stats.items() if v)
            raise DataError(
                image_name,
                f"could not place a box for defect '{defect}' (box {index + 1} of {n}) after "
                f"{max_tries} tries ({overlap_key}={min_overlap}{' (strict)' if strict else ''}, range=width {[w_lo, w_hi]} x "
                f"height {[h_lo, h_hi]} of {width}x{height} px, rotate={bool(rotate)}, "
                f"foreground fraction={fg.mean():.3f}; rejected: {reasons}). Lower "
                f"{overlap_key}, change the box range of this defect, or check the "
                f"foreground mask (or box template) of this image",
            )
    return accepted


# ----------------------------------------------------------------------------- learned ranges
#
# ``generation.box_ranges: learned`` (or ``default_box: learned``): the width and height range
# of a defect's boxes comes from its SUPPORT masks only (test masks are never read):
#
# 1. every support mask (in the model's square geometry, ``resize`` applied) is split into
#    8-connected components; a component smaller than ``min_component`` x the area of the
#    largest component of the same mask is an annotation speck and is ignored;
# 2. each kept component's axis-aligned bounding box gives a width and a height as fractions of
#    the mask's width and height;
# 3. the range is [min / (1 + margin), max x (1 + margin)] per axis, clipped to
#    [min_size, 1]; ``rotate`` comes from ``generation.learned_box.rotate``.


def mask_component_sizes(mask: np.ndarray, min_component: float) -> list[tuple[float, float]]:
    """(width, height) fractions of the bounding box of each component of a HxW mask (nonzero = anomaly)."""
    import cv2

    fg = (np.asarray(mask) > 0).astype(np.uint8)
    if fg.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {fg.shape}")
    height, width = fg.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    stats = stats[1:n]  # row 0 is the background
    if not len(stats):
        return []
    largest = int(stats[:, cv2.CC_STAT_AREA].max())
    keep = stats[stats[:, cv2.CC_STAT_AREA] >= min_component * largest]
    return [(int(s[cv2.CC_STAT_WIDTH]) / width, int(s[cv2.CC_STAT_HEIGHT]) / height) for s in keep]


def learned_box_range(masks: Sequence[np.ndarray], learned: dict, rotate: bool, where: str = "support set") -> dict:
    """The box range learned from support masks: ``{width, height, rotate, components}``.

    ``learned`` holds ``margin``, ``min_size`` and ``min_component`` (``generation.learned_box``);
    ``components`` lists the (width, height) fractions it was learned from (for the manifest).
    """
    margin, floor = float(learned["margin"]), float(learned["min_size"])
    sizes = [size for mask in masks for size in mask_component_sizes(mask, float(learned["min_component"]))]
    if not sizes:
        raise DataError(
            where,
            "generation box range 'learned' needs anomalous pixels in the support masks, but they are "
            "all empty; give this defect a hand-set range in generation.box_ranges",
        )
    out: dict = {}
    for axis, values in (("width", [w for w, _ in sizes]), ("height", [h for _, h in sizes])):
        lo = min(1.0, max(floor, min(values) / (1.0 + margin)))
        hi = min(1.0, max(lo, max(values) * (1.0 + margin)))
        out[axis] = [round(lo, 4), round(hi, 4)]
    out["rotate"] = bool(rotate)
    out["components"] = [[round(w, 4), round(h, 4)] for w, h in sizes]
    return out


def resolve_box_range(box: dict, support_masks: Sequence[np.ndarray] = (), where: str = "support set") -> dict:
    """A generation spec's ``box`` as ``{width, height, rotate}`` (+ ``source``, learned ``components``).

    A hand-set box is returned as is; a learned one (``{"learned": {...}, "rotate": ...}``) is
    computed from ``support_masks`` with :func:`learned_box_range`.
    """
    if "learned" not in box:
        return {"width": list(box["width"]), "height": list(box["height"]), "rotate": bool(box["rotate"])}
    learned = learned_box_range(support_masks, box["learned"], bool(box["rotate"]), where)
    return {**learned, "source": "learned"}
