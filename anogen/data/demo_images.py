"""The demo data set's images: each one rendered alone from (seed, category, subset, index).

Normal images are crops of scikit-image's bundled photographs (``grass.png``, ``brick.png``,
``gravel.png``) or a drawn nut on a photo background; defects are drawn on top with an exact
binary mask (pixels differ from the clean image exactly where the mask is 1). The categories,
the spec and the writing of the set are in ``anogen.data.demo``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from anogen.data.demo import DEMO_CATEGORIES, GENERATOR, normalize_demo_spec
from anogen.errors import DataError
from anogen.keys import canonical_json

__all__ = ["render_demo_image"]

_MIN_DIFF = 12  # every mask pixel differs from the clean image by at least this (max over channels)


# ----------------------------------------------------------------------------- sources


def _skimage_data_dir() -> Path:
    found = importlib.util.find_spec("skimage")
    if found is None or not found.submodule_search_locations:
        raise DataError("skimage", "scikit-image is needed for the demo data set: pip install scikit-image")
    return Path(list(found.submodule_search_locations)[0]) / "data"


@functools.cache
def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as float32 gray in [0, 1] (read-only, cached)."""
    path = _skimage_data_dir() / name
    if not path.is_file():
        raise DataError(path, "bundled scikit-image photograph is missing; reinstall scikit-image")
    with Image.open(path) as img:
        array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    array.setflags(write=False)
    return array


def _item_rng(seed: int, category: str, subset: str, index: int) -> np.random.Generator:
    payload = canonical_json({"g": GENERATOR, "seed": seed, "category": category, "subset": subset, "i": index})
    digest = hashlib.sha256(payload.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    interp = cv2.INTER_AREA if array.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(array, (size, size), interpolation=interp)


def _crop(
    photo: np.ndarray, rng: np.random.Generator, size: int, frac: tuple[float, float], flips: bool = True
) -> np.ndarray:
    side = min(photo.shape)
    c = int(rng.integers(int(frac[0] * side), int(frac[1] * side) + 1))
    y = int(rng.integers(0, photo.shape[0] - c + 1))
    x = int(rng.integers(0, photo.shape[1] - c + 1))
    crop = photo[y : y + c, x : x + c]
    flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
    if flips and flip_h:
        crop = crop[:, ::-1]
    if flips and flip_v:
        crop = crop[::-1]
    return np.clip(_resize(np.ascontiguousarray(crop), size), 0.0, 1.0)


def _normalise(g: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(g, [1, 99])
    return np.clip((g - lo) / max(hi - lo, 1e-3), 0.0, 1.0)


# ----------------------------------------------------------------------------- normal images
# Each renderer returns (clean float32 image HxW or HxWx3 in [0, 1], context for defects).


def _render_grass(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    g = _normalise(_crop(_photo("grass.png"), rng, size, (0.35, 0.55)))
    g = np.clip(g * rng.uniform(0.93, 1.07), 0.0, 1.0)
    lo = np.array([0.05, 0.14, 0.03], np.float32)
    hi = np.array([0.62, 0.80, 0.30], np.float32) * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    img = lo + (hi - lo) * (g[..., None] ** 1.1)
    return img.astype(np.float32), {"lum": g, "fg": np.ones((size, size), bool)}


def _render_brick(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    g = _crop(_photo("brick.png"), rng, size, (0.40, 0.55))
    g = _normalise(g) * 0.62 + 0.18
    img = np.clip(g * rng.uniform(0.93, 1.07) + rng.uniform(-0.03, 0.03), 0.0, 1.0)
    return img.astype(np.float32), {"lum": img, "fg": np.ones((size, size), bool)}


def _hexagon(cx: float, cy: float, radius: float, theta: float) -> np.ndarray:
    angles = theta + np.arange(6) * np.pi / 3
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _fill(size: int, polygons: list[np.ndarray], antialias: bool) -> np.ndarray:
    """Filled polygons: float alpha in [0, 1] (antialiased) or an exact bool mask."""
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round(np.asarray(p, np.float64) * 16).astype(np.int32) for p in polygons]
    cv2.fillPoly(canvas, pts, 255, lineType=cv2.LINE_AA if antialias else cv2.LINE_8, shift=4)
    return canvas.astype(np.float32) / 255.0 if antialias else canvas > 0


def _circle(cx: float, cy: float, r: float, n: int = 48) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def _render_nut(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    s = float(size)
    bg_g = _normalise(_crop(_photo("gravel.png"), rng, size, (0.5, 0.8)))
    bg_level = rng.uniform(0.55, 0.62)
    bg = bg_level + 0.10 * (bg_g - 0.5)
    bg = bg[..., None] * np.array([0.90, 0.95, 1.02], np.float32)

    cx, cy = s / 2 + rng.uniform(-0.07, 0.07, size=2) * s
    radius = 0.30 * s * rng.uniform(0.95, 1.05)
    theta = rng.uniform(0.0, np.pi / 3)
    hole_r = 0.40 * radius
    outer = _fill(size, [_hexagon(cx, cy, radius, theta)], antialias=True)
    hole = _fill(size, [_circle(cx, cy, hole_r)], antialias=True)
    alpha = outer * (1.0 - hole)

    # Soft drop shadow on the background (light from the upper left).
    shift = max(1, round(0.02 * s))
    shadow = np.roll(alpha, (shift, shift), axis=(0, 1))
    k = 2 * max(1, round(0.02 * s)) + 1
    shadow = cv2.GaussianBlur(shadow, (k, k), 0)
    bg = bg * (1.0 - 0.35 * shadow[..., None])

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    r = np.sqrt(dx**2 + dy**2)
    light = 0.80 - 0.22 * (dx + dy) / np.sqrt(2)  # brighter towards the upper left
    edge = cv2.distanceTransform((outer > 0.5).astype(np.uint8), cv2.DIST_L2, 3) / radius
    bevel = np.where(edge < 0.10, 0.72 + 2.0 * edge, 1.0)  # darker outer chamfer
    inner_ring = np.where((r > 0.40) & (r < 0.55), 1.15, 1.0)  # bright chamfer around the hole
    grain = _normalise(_crop(_photo("grass.png"), rng, size, (0.3, 0.5)))
    shade = light * bevel * inner_ring * (0.94 + 0.08 * grain) * rng.uniform(0.93, 1.07)
    base = np.array([0.86, 0.62, 0.30], np.float32) * rng.uniform(0.97, 1.03, size=3).astype(np.float32)
    obj = np.clip(shade[..., None] * base, 0.0, 1.0)

    img = bg * (1.0 - alpha[..., None]) + obj * alpha[..., None]
    fg = alpha >= 0.5
    ctx = {
        "lum": img.mean(axis=2),
        "fg": fg,
        "background": np.clip(bg, 0.0, 1.0).astype(np.float32),
        "center": (cx, cy),
        "radius": radius,
        "hole_r": hole_r,
        "theta": theta,
    }
    return np.clip(img, 0.0, 1.0).astype(np.float32), ctx


# ----------------------------------------------------------------------------- defects
# Each defect returns (defect appearance, same shape as the image, bool mask of its pixels).


def _blob(size: int, cx: float, cy: float, r: float, rng: np.random.Generator, irregular: float = 0.35) -> np.ndarray:
    n = int(rng.integers(10, 16))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * (1.0 + rng.uniform(-irregular, irregular, n))
    radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3.0  # smooth the outline
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return _fill(size, [pts], antialias=False)


def _point_in(mask: np.ndarray, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A random pixel of ``mask`` at least ``margin`` px from its border (falls back to ``mask``)."""
    inner = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3) > margin
    ys, xs = np.nonzero(inner if inner.any() else mask)
    i = int(rng.integers(len(ys)))
    return float(xs[i]), float(ys[i])


def _texture_center(size: int, rng: np.random.Generator) -> tuple[float, float]:
    cx, cy = rng.uniform(0.15, 0.85, size=2) * size
    return float(cx), float(cy)


def _thickness(size: int) -> int:
    return max(2, round(size / 64))


def _contamination_grass(img, ctx, rng, size):
    cx, cy = _texture_center(size, rng)
    mask = _blob(size, cx, cy, rng.uniform(0.05, 0.09) * size, rng)
    colours = np.array([[0.85, 0.12, 0.55], [0.15, 0.35, 0.95], [0.95, 0.92, 0.85], [0.95, 0.45, 0.08]], np.float32)
    colour = colours[int(rng.integers(len(colours)))]
    defect = colour * (0.70 + 0.40 * ctx["lum"][..., None])
    return defect, mask


def _hole_grass(img, ctx, rng, size):
    cx, cy = _texture_center(size, rng)
    a, b = rng.uniform(0.045, 0.085, size=2) * size
    angle = rng.uniform(0, 180)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, ((cx, cy), (2 * a, 2 * b), angle), 1, -1, cv2.LINE_8)
    mask = mask > 0
    rim_w = max(2, round(size / 48))
    core = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=rim_w) > 0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rr = np.sqrt(((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2)
    dark = np.array([0.05, 0.035, 0.02], np.float32) * (1.0 + 1.5 * np.clip(rr, 0, 1))[..., None]
    rim = np.array([0.80, 0.58, 0.34], np.float32) * (0.85 + 0.3 * ctx["lum"])[..., None]
    defect = np.where(core[..., None], dark, rim)
    return defect, mask


def _crack_brick(img, ctx, rng, size):
    x, y = rng.uniform(0.2, 0.8, size=2) * size
    direction = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(int(rng.integers(6, 11))):
        direction += rng.uniform(-0.8, 0.8)
        step = rng.uniform(0.04, 0.08) * size
        x = float(np.clip(x + step * np.cos(direction), 2, size - 3))
        y = float(np.clip(y + step * np.sin(direction), 2, size - 3))
        pts.append((x, y))
    canvas = np.zeros((size, size), np.uint8)
    poly = np.round(np.asarray(pts) * 16).astype(np.int32)
    cv2.polylines(canvas, [poly], False, 1, _thickness(size), cv2.LINE_8, shift=4)
    mask = canvas > 0
    defect = np.full((size, size), rng.uniform(0.0, 0.04), np.float32) + 0.12 * ctx["lum"]
    return defect, mask


def _spot_brick(img, ctx, rng, size):
    cx, cy = _texture_center(size, rng)
    mask = _blob(size, cx, cy, rng.uniform(0.04, 0.075) * size, rng)
    defect = 0.94 + 0.06 * ctx["lum"]
    return defect.astype(np.float32), mask


def _chip_nut(img, ctx, rng, size):
    cx, cy = ctx["center"]
    radius = ctx["radius"]
    phi = ctx["theta"] + rng.uniform(0, 2 * np.pi)
    px, py = cx + 0.97 * radius * np.cos(phi), cy + 0.97 * radius * np.sin(phi)
    mask = _blob(size, px, py, rng.uniform(0.22, 0.32) * radius, rng, irregular=0.3) & ctx["fg"]
    # The (shadowed) background shows through where the piece broke off.
    return ctx["background"], mask


def _contamination_nut(img, ctx, rng, size):
    cx, cy = _point_in(ctx["fg"], rng, margin=0.06 * size)
    mask = _blob(size, cx, cy, rng.uniform(0.035, 0.06) * size, rng) & ctx["fg"]
    colour = np.array([0.10, 0.30, 0.36], np.float32) * rng.uniform(0.85, 1.15)
    defect = colour * (0.75 + 0.5 * ctx["lum"][..., None])
    return defect, mask


def _scratch_nut(img, ctx, rng, size):
    px, py = _point_in(ctx["fg"], rng, margin=0.04 * size)
    angle = rng.uniform(0, np.pi)
    half = 0.5 * rng.uniform(0.35, 0.6) * ctx["radius"]
    p0 = (px - half * np.cos(angle), py - half * np.sin(angle))
    p1 = (px + half * np.cos(angle), py + half * np.sin(angle))
    canvas = np.zeros((size, size), np.uint8)
    pts = np.round(np.array([p0, p1]) * 16).astype(np.int32)
    cv2.line(canvas, tuple(pts[0]), tuple(pts[1]), 1, _thickness(size), cv2.LINE_8, shift=4)
    mask = (canvas > 0) & ctx["fg"]
    defect = np.broadcast_to(np.array([0.98, 0.96, 0.90], np.float32), img.shape)
    return defect, mask


_RENDERERS: dict[str, Callable] = {
    "grass_texture": _render_grass,
    "brick_gray": _render_brick,
    "nut_object": _render_nut,
}
_DEFECTS: dict[tuple[str, str], Callable] = {
    ("grass_texture", "contamination"): _contamination_grass,
    ("grass_texture", "hole"): _hole_grass,
    ("brick_gray", "crack"): _crack_brick,
    ("brick_gray", "spot"): _spot_brick,
    ("nut_object", "chip"): _chip_nut,
    ("nut_object", "contamination"): _contamination_nut,
    ("nut_object", "scratch"): _scratch_nut,
}


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_demo_image(
    spec: dict[str, Any] | None, category: str, subset: str, index: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render one image of the demo set: ``(image, mask, clean)``.

    ``subset`` is ``"train/good"``, ``"test/good"`` or ``"test/<defect>"``. Images are uint8
    HxW (grayscale categories) or HxWx3; ``mask`` is uint8 HxW in {0, 1} (None for normal
    images) and ``clean`` is the same image before the defect was drawn. Pixels differ
    from ``clean`` exactly where ``mask`` is 1.
    """
    spec = normalize_demo_spec(spec)
    if category not in DEMO_CATEGORIES:
        raise KeyError(f"unknown demo category {category!r} (known: {', '.join(sorted(DEMO_CATEGORIES))})")
    size = spec["image_size"]
    rng = _item_rng(spec["seed"], category, subset, index)
    clean_f, ctx = _RENDERERS[category](rng, size)
    clean = _to_uint8(clean_f)
    split, _, defect = subset.partition("/")
    if split not in ("train", "test") or (split == "train" and defect != "good"):
        raise KeyError(f"unknown subset {subset!r}")
    if defect == "good":
        return clean, None, clean
    if defect not in DEMO_CATEGORIES[category]["defects"]:
        raise KeyError(f"demo category {category!r} has no defect {defect!r}")

    defect_f, mask = _DEFECTS[(category, defect)](clean_f, ctx, rng, size)
    if not mask.any():  # cannot happen with the margins above; keep the invariant anyway
        raise AssertionError(f"empty defect mask for {category}/{subset}/{index}")
    image = clean.copy()
    drawn = _to_uint8(np.broadcast_to(defect_f, clean_f.shape))
    image[mask] = drawn[mask]
    # Guarantee that every mask pixel visibly differs from the clean image, so that the
    # mask is exactly the set of changed pixels (and no mask pixel looks normal).
    diff = np.abs(image.astype(np.int16) - clean.astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    weak = mask & (diff < _MIN_DIFF)
    if weak.any():
        c = clean[weak].astype(np.int16)
        level = c if c.ndim == 1 else c.mean(axis=-1, keepdims=True)
        pushed = np.where(level < 128, c + 4 * _MIN_DIFF, c - 4 * _MIN_DIFF)
        image[weak] = np.clip(pushed, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8), clean
