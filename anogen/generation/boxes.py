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


class RangeShapes:
    """Box sizes from two intervals: width ~ U(width_range), height ~ U(height_range) (fractions of the
    image's width and height), angle ~ U[0, 180) when ``rotate`` else 0: hand-set ranges and the
    ``range`` rule of learned ones."""

    def __init__(self, width_range: Sequence[float], height_range: Sequence[float], rotate: bool):
        self.width, self.height = _check_range("width", width_range), _check_range("height", height_range)
        self.rotate = bool(rotate)

    def draw(self, rng: np.random.Generator, width: int, height: int) -> tuple[float, float, float]:
        bw = rng.uniform(*self.width) * width
        bh = rng.uniform(*self.height) * height
        angle = float(rng.uniform(0.0, 180.0)) if self.rotate else 0.0
        return bw, bh, angle

    def describe(self) -> str:
        return f"range=width {list(self.width)} x height {list(self.height)}, rotate={self.rotate}"


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
    """Draw ``n`` distinct boxes on ``foreground`` (uint8 HxW, nonzero = foreground), sizes from two intervals.

    ``strict`` keeps a box only when MORE than ``min_overlap`` of it is inside (the authors'
    template rule); ``overlap_key`` is the config key named when no box can be placed.
    :func:`sample_boxes_for` takes a resolved box range of either rule instead.

    Prefix-stable: boxes are drawn one after the other, box i from the generator state left by
    boxes 0..i-1 and checked for distinctness against those only, so the first b boxes of a
    call with ``n`` > b are the boxes of a call with ``n`` = b (``generation.images_per_normal``
    relies on it: a smaller N is the start of a larger one).
    """
    shapes = RangeShapes(width_range, height_range, rotate)
    return place_boxes(rng, foreground, n, shapes, min_overlap, max_tries, image_name, defect, strict, overlap_key)


def sample_boxes_for(
    rng: np.random.Generator,
    foreground: np.ndarray,
    n: int,
    box: dict,
    min_overlap: float,
    max_tries: int,
    image_name: str,
    defect: str,
    *,
    strict: bool = False,
    overlap_key: str = "generation.min_overlap",
) -> list[Box]:
    """:func:`sample_boxes` for a resolved box range (:func:`resolve_box_range`) of any rule."""
    shapes = box_shapes(box)
    return place_boxes(rng, foreground, n, shapes, min_overlap, max_tries, image_name, defect, strict, overlap_key)


def box_shapes(box: dict) -> RangeShapes | ComponentShapes:
    """What draws the sizes and angles of a resolved box range: its components or its two intervals."""
    if box.get("rule") == "components":
        return ComponentShapes.from_box(box)
    return RangeShapes(box["width"], box["height"], bool(box["rotate"]))


def place_boxes(
    rng: np.random.Generator,
    foreground: np.ndarray,
    n: int,
    shapes: RangeShapes | ComponentShapes,
    min_overlap: float,
    max_tries: int,
    image_name: str,
    defect: str,
    strict: bool = False,
    overlap_key: str = "generation.min_overlap",
) -> list[Box]:
    """The placement loop of :func:`sample_boxes` for any ``shapes`` (``draw(rng, width, height)``)."""
    fg = np.asarray(foreground) > 0
    if fg.ndim != 2:
        raise ValueError(f"foreground must be HxW, got shape {fg.shape}")
    height, width = fg.shape
    if n < 1 or max_tries < 1:
        raise ValueError(f"n and max_tries must be >= 1, got {n}, {max_tries}")

    accepted: list[Box] = []
    rasters: list[np.ndarray] = []
    for index in range(n):
        stats = {"too_large": 0, "empty": 0, "overlap": 0, "duplicate": 0}
        for _ in range(max_tries):
            bw, bh, angle = shapes.draw(rng, width, height)
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
                f"{max_tries} tries ({overlap_key}={min_overlap}{' (strict)' if strict else ''}, "
                f"{shapes.describe()} of {width}x{height} px, "
                f"foreground fraction={fg.mean():.3f}; rejected: {reasons}). Lower "
                f"{overlap_key}, change the box range of this defect, or check the "
                f"foreground mask (or box template) of this image",
            )
    return accepted


# ----------------------------------------------------------------------------- learned boxes
#
# ``generation.box_ranges: learned`` (or ``default_box: learned``): a defect's box sizes come from
# its SUPPORT masks only (test masks are never read), in the model's square geometry (``resize``
# applied). Every mask is split into 8-connected components; a component smaller than
# ``min_component`` x the area of the largest component of the same mask is an annotation speck
# and is ignored. Then, by ``generation.learned_box.rule``:
#
# ``components`` (the default): each kept component gets its minimum-area rotated rectangle
# (cv2.minAreaRect of its pixel centres, each side + a pixel's extent along it). A
# component that fills less than ``min_fill`` of its rectangle and whose rectangle covers more
# than SPLIT_AREA of the image (a branched or curved crack) is cut in two across its long axis
# at the median of its pixels, and each half is fitted again, recursively (MAX_SPLITS deep).
# A box is drawn by picking one of these rectangles (a support mask uniformly, then a rectangle
# of it with probability proportional to its pixels), multiplying each side by its own
# log-uniform factor in [1 / (1 + size_jitter), 1 + size_jitter] (clipped to [min_size, 1]),
# and turning it: ``rotate: auto`` keeps the rectangle's angle (+ U(-angle_jitter,
# angle_jitter) degrees) when its long side is at least ``elongation`` x its short side and
# makes it axis-aligned otherwise (the side nearer the x axis becomes the width); ``true``
# always keeps the angle, ``false`` never does.
#
# ``range`` (the earlier rule): each component's axis-aligned bounding box gives a width and a
# height; the range is [min / (1 + margin), max x (1 + margin)] per axis, clipped to
# [min_size, 1], and width and height are drawn independently (:class:`RangeShapes`);
# ``rotate: true`` turns every box by a uniform angle, ``auto`` does so when at least half
# the components are elongated (as above).

SPLIT_AREA = 0.01
MAX_SPLITS = 4


def mask_component_sizes(mask: np.ndarray, min_component: float) -> list[tuple[float, float]]:
    """(width, height) fractions of the bounding box of each component of a HxW mask (nonzero = anomaly)."""
    import cv2

    labels, stats, kept = _components(mask, min_component)
    height, width = labels.shape
    return [(int(stats[i, cv2.CC_STAT_WIDTH]) / width, int(stats[i, cv2.CC_STAT_HEIGHT]) / height) for i in kept]


def _components(mask: np.ndarray, min_component: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, stats, kept labels) of the 8-connected components of a HxW mask, specks dropped."""
    import cv2

    fg = (np.asarray(mask) > 0).astype(np.uint8)
    if fg.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {fg.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    areas = stats[1:n, cv2.CC_STAT_AREA]  # row 0 is the background
    if not len(areas):
        return labels, stats, np.zeros(0, int)
    return labels, stats, 1 + np.flatnonzero(areas >= min_component * int(areas.max()))


def min_area_rect(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> tuple[float, float, float]:
    """(long side, short side, angle of the long side in [0, 180) degrees) of a pixel set of a HxW
    mask, sides as fractions of the mask's sides (the square the model sees when ``resize`` squashes).

    The angle is OpenCV's ``RotatedRect`` orientation (that of :class:`Box`). The rectangle is
    fitted to the pixel centres, then each side grows by a pixel's extent along it (an
    axis-aligned block of w x h pixels gives exactly w x h).
    """
    import cv2

    scale = float(max(height, width))  # fit in pixel-sized units: float32 keeps its precision
    px, py = scale / width, scale / height  # a pixel's width and height there
    points = np.stack([(xs + 0.5) * px, (ys + 0.5) * py], axis=1).astype(np.float32)
    (_, _), (w, h), angle = cv2.minAreaRect(points)
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    w, h = w + c * px + s * py, h + s * px + c * py
    if w < h:
        w, h, angle = h, w, angle + 90.0
    return float(w / scale), float(h / scale), float(angle % 180.0)


def _pieces(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int], min_fill: float, depth: int = 0) -> list:
    """Rotated rectangles ``(w, h, angle, pixels)`` covering a pixel set, cut while they are sparse."""
    w, h, angle = min_area_rect(xs, ys, *shape)
    pixels = len(xs) / (shape[0] * shape[1])  # fraction of the image, as w * h
    sparse = pixels < min_fill * w * h and w * h > SPLIT_AREA
    if not sparse or depth >= MAX_SPLITS or len(xs) < 4:
        return [(w, h, angle, pixels)]
    a = math.radians(angle)
    along = xs / shape[1] * math.cos(a) + ys / shape[0] * math.sin(a)  # position along the long side
    low = along <= np.median(along)
    if low.all():
        return [(w, h, angle, pixels)]
    return _pieces(xs[low], ys[low], shape, min_fill, depth + 1) + _pieces(
        xs[~low], ys[~low], shape, min_fill, depth + 1
    )


def mask_component_rects(mask: np.ndarray, min_component: float, min_fill: float) -> list[list[float]]:
    """``[w, h, angle, pixels]`` of the rotated rectangles of a HxW mask's components (``components`` rule).

    ``w >= h`` are fractions of the mask's sides (its squashed square), ``angle`` in degrees,
    ``pixels`` the fraction of the mask's pixels the rectangle stands for.
    """
    labels, _, kept = _components(mask, min_component)
    rects = []
    for label in kept:
        ys, xs = np.nonzero(labels == label)
        for w, h, angle, pixels in _pieces(xs, ys, labels.shape, min_fill):
            rects.append([round(w, 4), round(h, 4), round(angle, 2), round(pixels, 6)])
    return rects


def _no_anomaly(where: str) -> DataError:
    return DataError(
        where,
        "generation box range 'learned' needs anomalous pixels in the support masks, but they are "
        "all empty; give this defect a hand-set range in generation.box_ranges",
    )


def _elongated(w: float, h: float, elongation: float) -> bool:
    return w >= elongation * h


def learned_box_range(masks: Sequence[np.ndarray], learned: dict, rotate, where: str = "support set") -> dict:
    """The learned box range of ``generation.learned_box`` (``learned``) from support masks.

    ``rule: components`` gives ``{rule, components: [[w, h, angle, weight], ...], rotate,
    size_jitter, angle_jitter, elongation, min_size, width, height}`` (``weight``: the chance
    of drawing that rectangle; ``width`` and ``height``: the smallest and largest side a box
    can get along its own width and height axes, for reports); ``rule: range`` (or a ``learned``
    without a rule: the spec of the earlier rule) gives ``{width, height, rotate, components}``
    with the (width, height) bounding-box fractions it was learned from.
    """
    # A learned spec written before rules existed has no rule: it is the range rule's (its keys stay).
    if learned.get("rule", "range") == "range":  # repeated on purpose: a spec without a rule
        return _learned_range(masks, learned, rotate, where)
    return _learned_components(masks, learned, rotate, where)


def _learned_range(masks: Sequence[np.ndarray], learned: dict, rotate, where: str) -> dict:
    margin, floor = float(learned["margin"]), float(learned["min_size"])
    sizes = [size for mask in masks for size in mask_component_sizes(mask, float(learned["min_component"]))]
    if not sizes:
        raise _no_anomaly(where)
    out: dict = {}
    for axis, values in (("width", [w for w, _ in sizes]), ("height", [h for _, h in sizes])):
        lo = min(1.0, max(floor, min(values) / (1.0 + margin)))
        hi = min(1.0, max(lo, max(values) * (1.0 + margin)))
        out[axis] = [round(lo, 4), round(hi, 4)]
    if rotate == "auto":
        rects = [r for mask in masks for r in mask_component_rects(mask, float(learned["min_component"]), 0.0)]
        rotate = 2 * sum(_elongated(r[0], r[1], float(learned["elongation"])) for r in rects) >= len(rects)
    out["rotate"] = bool(rotate)
    out["components"] = [[round(w, 4), round(h, 4)] for w, h in sizes]
    return out


def _learned_components(masks: Sequence[np.ndarray], learned: dict, rotate, where: str) -> dict:
    min_component, min_fill = float(learned["min_component"]), float(learned["min_fill"])
    per_mask = [r for r in (mask_component_rects(mask, min_component, min_fill) for mask in masks) if r]
    if not per_mask:
        raise _no_anomaly(where)
    components = []
    for rects in per_mask:  # each mask weighs 1 / masks; within it, a rectangle weighs by its pixels
        total = sum(r[3] for r in rects)
        components += [[w, h, angle, pixels / total / len(per_mask)] for w, h, angle, pixels in rects]
    box = {
        "rule": "components",  # repeated on purpose: the rule this function implements, recorded with its box
        "rotate": rotate if rotate == "auto" else bool(rotate),
        **{name: float(learned[name]) for name in ("size_jitter", "angle_jitter", "elongation", "min_size")},
        "components": [[w, h, a, round(p, 6)] for w, h, a, p in components],
    }
    return {**box, **ComponentShapes.from_box(box).envelope()}


class ComponentShapes:
    """Box sizes drawn from learned rotated rectangles (the ``components`` rule, see above)."""

    def __init__(self, rects, weights, rotate, size_jitter, angle_jitter, elongation, min_size):
        self.rects = np.asarray(rects, dtype=float).reshape(-1, 3)
        self.weights = np.asarray(weights, dtype=float) / float(np.sum(weights))
        self.rotate, self.elongation = rotate, float(elongation)
        self.log_jitter, self.angle_jitter = math.log1p(float(size_jitter)), float(angle_jitter)
        self.min_size = float(min_size)

    @classmethod
    def from_box(cls, box: dict) -> ComponentShapes:
        comps = box["components"]
        return cls(
            [c[:3] for c in comps],
            [c[3] for c in comps],
            box["rotate"],
            box["size_jitter"],
            box["angle_jitter"],
            box["elongation"],
            box["min_size"],
        )

    def turned(self, w: float, h: float, angle: float) -> tuple[float, float, float | None]:
        """(width, height, angle or None): a rectangle kept at its angle, or made axis-aligned (None)."""
        if self.rotate is True or (self.rotate == "auto" and _elongated(w, h, self.elongation)):
            return w, h, angle
        return (w, h, None) if angle < 45.0 or angle >= 135.0 else (h, w, None)

    def draw(self, rng: np.random.Generator, width: int, height: int) -> tuple[float, float, float]:
        # Four draws per box, whatever the rectangle: the stream never depends on which one was picked.
        k = int(rng.choice(len(self.rects), p=self.weights))
        fw, fh = np.exp(rng.uniform(-self.log_jitter, self.log_jitter, 2))
        turn = rng.uniform(-self.angle_jitter, self.angle_jitter)
        w, h, angle = self.turned(*self.rects[k])
        w, h = (min(1.0, max(self.min_size, side)) for side in (w * fw, h * fh))
        return w * width, h * height, 0.0 if angle is None else float((angle + turn) % 180.0)

    def envelope(self) -> dict:
        """The smallest and largest box side along its width and its height axis (fractions)."""
        sides = np.array([self.turned(*r)[:2] for r in self.rects])
        lo, hi = sides.min(axis=0) / math.exp(self.log_jitter), sides.max(axis=0) * math.exp(self.log_jitter)
        lo, hi = np.clip(lo, self.min_size, 1.0), np.clip(hi, self.min_size, 1.0)
        return {axis: [round(float(lo[i]), 4), round(float(hi[i]), 4)] for i, axis in enumerate(("width", "height"))}

    def describe(self) -> str:
        return (
            f"{len(self.rects)} learned rectangles (size_jitter={math.expm1(self.log_jitter):.3g}, "
            f"rotate={self.rotate})"
        )


def resolve_box_range(box: dict, support_masks: Sequence[np.ndarray] = (), where: str = "support set") -> dict:
    """A generation spec's ``box`` resolved: a hand-set ``{width, height, rotate}`` as is, a learned one
    (``{"learned": {...}, "rotate": ...}``) computed from ``support_masks`` (:func:`learned_box_range`)
    with ``source: learned``. :func:`sample_boxes_for` draws boxes from either.
    """
    if "learned" not in box:
        return {"width": list(box["width"]), "height": list(box["height"]), "rotate": bool(box["rotate"])}
    learned = learned_box_range(support_masks, box["learned"], box["rotate"], where)
    return {**learned, "source": "learned"}
