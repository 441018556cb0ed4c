"""Perlin-noise anomaly masks (the recipe DRAEM and DeSTSeg use for synthetic anomalies).

A mask is made of gradient noise on a lattice of ``2**a x 2**b`` cells (``a, b`` drawn
independently from ``[min_scale, max_scale)``, by default 0..5, i.e. 1..32 cells per
axis), rotated by an angle in [-90, 90] degrees about the image centre (the area that
rotates in from outside is 0), and thresholded at 0.5. Every random number comes from
the ``numpy.random.Generator`` passed in, so a mask is a pure function of that
generator's state. Unlike the published code, the lattice does not need to divide the
image size: every pixel is mapped to its own lattice coordinate.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["perlin_noise", "perlin_mask", "rotate_array"]


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6.0 * t - 15.0) * t + 10.0) * t * t * t


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise of ``shape`` (H, W) with ``res`` (cells along H, cells along W).

    Values lie roughly in [-1, 1] (scaled by sqrt(2) as in the classic formulation).
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1 or ry < 1 or rx < 1:
        raise ValueError(f"bad perlin shape {shape} or resolution {res}")
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)

    # Lattice coordinate of every pixel row / column.
    uy = np.arange(h, dtype=np.float64) * (ry / h)
    ux = np.arange(w, dtype=np.float64) * (rx / w)
    iy = np.minimum(np.floor(uy).astype(np.int64), ry - 1)
    ix = np.minimum(np.floor(ux).astype(np.int64), rx - 1)
    fy = (uy - iy)[:, None]
    fx = (ux - ix)[None, :]
    iy_, ix_ = iy[:, None], ix[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        cy, cx = iy_ + dy, ix_ + dx
        return gy[cy, cx] * (fy - dy) + gx[cy, cx] * (fx - dx)

    n00, n01 = corner(0, 0), corner(0, 1)
    n10, n11 = corner(1, 0), corner(1, 1)
    ty, tx = _fade(fy), _fade(fx)
    top = n00 + tx * (n01 - n00)
    bottom = n10 + tx * (n11 - n10)
    return math.sqrt(2.0) * (top + ty * (bottom - top))


def rotate_array(
    array: np.ndarray,
    angle_deg: float,
    *,
    fill: float | tuple[float, ...] = 0,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Rotate an HxW or HxWxC array about its centre, keeping its size; outside = ``fill``."""
    h, w = array.shape[:2]
    if angle_deg == 0:
        return array.copy()
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle_deg), 1.0)
    if isinstance(fill, (int, float)):
        border = (fill,) * (array.shape[2] if array.ndim == 3 else 1)
    else:
        border = tuple(fill)
    out = cv2.warpAffine(
        array,
        matrix,
        (w, h),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )
    if array.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    return out


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
    max_rotation: float = 90.0,
) -> np.ndarray:
    """A thresholded, rotated Perlin mask: uint8 HxW in {0, 1} (DRAEM's recipe)."""
    a = int(rng.integers(min_scale, max_scale))
    b = int(rng.integers(min_scale, max_scale))
    noise = perlin_noise(shape, (2**a, 2**b), rng).astype(np.float32)
    angle = float(rng.uniform(-max_rotation, max_rotation)) if max_rotation > 0 else 0.0
    noise = rotate_array(noise, angle, fill=0.0)
    return (noise > threshold).astype(np.uint8)
