"""Synthetic anomalies: a Perlin-shaped piece of foreign texture blended into a normal image.

Two recipes, after the published DRAEM and DeSTSeg training code (re-implemented here
with numpy / OpenCV / Pillow, every random draw from an explicit ``numpy`` Generator):

DRAEM (``DraemSynthesizer``)
    - with probability 0.3 the normal image is first rotated by U(-90, 90) degrees (black
      corners), and this rotated image is then the reconstruction target;
    - the texture gets 3 of 10 augmentations (distinct, in random order): gamma contrast,
      brightness multiply/add, sharpness, hue/saturation shift, solarize, posterize, invert,
      autocontrast, equalize, rotation by U(-45, 45);
    - opacity ``beta ~ U(0, 0.8)``: inside the mask ``out = (1 - beta) * texture + beta * image``;
    - with probability 0.5 the sample stays normal (empty mask, image unchanged).

DeSTSeg (``DestsegSynthesizer``)
    - optional rotation of the normal image by 0/90/180/270 degrees and/or a small random
      angle (published default per category: see ``DESTSEG_ROTATION``), grey (114) corners;
    - the texture is used as is (no augmentation), same Perlin mask and opacity;
    - always anomalous (only an empty Perlin mask, which is rare, leaves it normal).

CutPaste (``CutPasteSynthesizer``, Table 4 of the paper): a jittered rectangle of the image
pasted elsewhere in it, inside either recipe above.

``SyntheticSample.mask`` is exactly where ``image`` differs from ``clean``: outside the mask
the pixels are copied bit for bit; inside it they are the blend (equal to the clean pixel
only where the texture happens to equal it).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from anogen.detectors.perlin import perlin_mask, rotate_array
from anogen.detectors.textures import TextureSource

__all__ = [
    "SyntheticSample",
    "DraemSynthesizer",
    "DestsegSynthesizer",
    "TEXTURE_AUGMENTATIONS",
    "augment_texture",
    "DESTSEG_ROTATION",
    "destseg_rotation_for",
    "destseg_angle",
    "CutPasteSynthesizer",
]


@dataclasses.dataclass
class SyntheticSample:
    image: np.ndarray  # float32 HxWx3 in [0, 1]: the network input
    mask: np.ndarray  # uint8 HxW in {0, 1}: exactly where image != clean
    is_anomalous: bool
    clean: np.ndarray  # float32 HxWx3 in [0, 1]: the (possibly rotated) normal image
    beta: float  # opacity of the normal image inside the mask (0 = pure texture)

    def __iter__(self):  # ``image, mask, is_anomalous = sample`` works
        return iter((self.image, self.mask, self.is_anomalous))


# ----------------------------------------------------------------------------- texture augmentations


def _gamma_contrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.uniform(0.5, 2.0, size=3)  # per channel
    x = img.astype(np.float32) / 255.0
    return np.clip(np.power(x, gamma[None, None, :]) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _brightness(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mul = rng.uniform(0.8, 1.2)
    add = rng.uniform(-30, 30)
    ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ycc[:, :, 0] = np.clip(ycc[:, :, 0] * mul + add, 0, 255)
    return cv2.cvtColor(ycc.astype(np.uint8), cv2.COLOR_YCrCb2RGB)


def _sharpness(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.0, 2.0)
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(img)).enhance(factor))


def _hue_saturation(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dh, ds = rng.integers(-50, 51, size=2)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.int32)  # hue in 0..255
    hsv[:, :, 0] = (hsv[:, :, 0] + dh) % 256
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] + ds, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)


def _solarize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    apply = rng.random() < 0.5
    threshold = int(rng.integers(32, 129))
    if not apply:
        return img
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def _posterize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(1, 9))
    shift = 8 - bits
    return ((img >> shift) << shift).astype(np.uint8)


def _invert(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (255 - img).astype(np.uint8)


def _autocontrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cutoff = float(rng.uniform(0.0, 20.0))
    return np.asarray(ImageOps.autocontrast(Image.fromarray(img), cutoff=cutoff))


def _equalize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.equalize(Image.fromarray(img)))


def _rotate45(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rotate_array(img, float(rng.uniform(-45.0, 45.0)), fill=0)


TEXTURE_AUGMENTATIONS = (
    ("gamma_contrast", _gamma_contrast),
    ("brightness", _brightness),
    ("sharpness", _sharpness),
    ("hue_saturation", _hue_saturation),
    ("solarize", _solarize),
    ("posterize", _posterize),
    ("invert", _invert),
    ("autocontrast", _autocontrast),
    ("equalize", _equalize),
    ("rotate", _rotate45),
)


def augment_texture(texture: np.ndarray, rng: np.random.Generator, n: int = 3) -> np.ndarray:
    """Apply ``n`` distinct augmentations from ``TEXTURE_AUGMENTATIONS`` in random order."""
    order = rng.choice(len(TEXTURE_AUGMENTATIONS), size=n, replace=False)
    out = np.ascontiguousarray(texture)
    for index in order:
        out = np.ascontiguousarray(TEXTURE_AUGMENTATIONS[int(index)][1](out, rng))
    return out


# ----------------------------------------------------------------------------- blending


def _to_float(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def _blend(clean: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    tex = texture.astype(np.float32) / 255.0
    blended = (1.0 - beta) * tex + beta * clean
    return np.where(mask[:, :, None].astype(bool), blended, clean).astype(np.float32)


class _Base:
    normal_prob: float = 0.0
    augment: bool = False

    def __init__(self, textures: TextureSource, *, max_beta: float = 0.8):
        self.textures = textures
        self.max_beta = max_beta

    def rotate_normal(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image

    def __call__(self, normal: np.ndarray, rng: np.random.Generator) -> SyntheticSample:
        """``normal``: uint8 (or float in [0, 1]) HxWx3 at training size."""
        h, w = normal.shape[:2]
        if h != w:
            raise ValueError(f"synthetic anomalies expect square images, got {normal.shape}")
        clean = _to_float(self.rotate_normal(normal, rng))
        # Draw every random number in a fixed order whatever the outcome, so that a
        # sample depends only on the generator state it started from.
        texture = self.textures.sample(rng, h)
        if self.augment:
            texture = augment_texture(texture, rng)
        mask = perlin_mask((h, w), rng)
        beta = float(rng.uniform(0.0, self.max_beta))
        stays_normal = bool(rng.random() < self.normal_prob)
        if stays_normal or not mask.any():
            return SyntheticSample(
                image=clean.copy(),
                mask=np.zeros((h, w), np.uint8),
                is_anomalous=False,
                clean=clean,
                beta=beta,
            )
        image = _blend(clean, texture, mask, beta)
        return SyntheticSample(image=image, mask=mask, is_anomalous=True, clean=clean, beta=beta)


class DraemSynthesizer(_Base):
    """DRAEM's recipe: 30% rotated inputs, augmented texture, half the samples normal."""

    normal_prob = 0.5
    augment = True
    rotate_prob = 0.3

    def rotate_normal(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        do_rotate = rng.random() < self.rotate_prob
        angle = float(rng.uniform(-90.0, 90.0))
        return rotate_array(image, angle, fill=0) if do_rotate else image


# DeSTSeg's published per-category policy: (rotate by a multiple of 90, max small angle).
DESTSEG_ROTATION: dict[str, tuple[bool, float]] = {
    **{c: (False, 0.0) for c in ("capsule", "metal_nut", "pill", "toothbrush", "transistor")},
    **{c: (False, 5.0) for c in ("wood", "zipper", "cable")},
    **{c: (True, 5.0) for c in ("bottle", "grid", "hazelnut", "leather", "tile", "carpet", "screw")},
}
DESTSEG_DEFAULT_ROTATION = (True, 5.0)


def destseg_rotation_for(category: str | None) -> tuple[bool, float]:
    """DeSTSeg's rotation policy for an MVTec category; (True, 5.0) for anything else."""
    if category is None:
        return DESTSEG_DEFAULT_ROTATION
    return DESTSEG_ROTATION.get(category, DESTSEG_DEFAULT_ROTATION)


class DestsegSynthesizer(_Base):
    """DeSTSeg's recipe: always anomalous, plain texture, rotations 0/90/180/270 +- small."""

    normal_prob = 0.0
    augment = False

    def __init__(
        self,
        textures: TextureSource,
        *,
        rotate_90: bool = True,
        random_rotate: float = 5.0,
        max_beta: float = 0.8,
    ):
        super().__init__(textures, max_beta=max_beta)
        self.rotate_90 = rotate_90
        self.random_rotate = random_rotate

    def rotate_normal(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = destseg_angle(rng, self.rotate_90, self.random_rotate)
        if angle == 0.0:
            return image
        return rotate_array(image, angle, fill=(114, 114, 114) if image.dtype == np.uint8 else 114 / 255.0)


def destseg_angle(rng: np.random.Generator, rotate_90: bool, random_rotate: float) -> float:
    """One angle of DeSTSeg's rotation rule: a multiple of 90 (when ``rotate_90``) plus
    U(-random_rotate, random_rotate). The quarter is drawn whether or not it is used, so
    the draws that follow do not depend on the policy. The published code rotates twice
    (by the multiple of 90, then by the small angle); one rotation by the sum is the same
    map up to interpolation."""
    quarter = int(rng.integers(0, 4))
    small = float(rng.uniform(-random_rotate, random_rotate)) if random_rotate > 0 else 0.0
    return (90.0 * quarter if rotate_90 else 0.0) + small


# ----------------------------------------------------------------------------- CutPaste


def _color_jitter(patch: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation (multiplicative factors) and hue (shift in turns)
    on a float HxWx3 patch in [0, 1], in that fixed order, like torchvision's ColorJitter
    with a fixed permutation."""
    b, c, sat, hue = (float(f) for f in factors)
    out = np.clip(patch * b, 0.0, 1.0)
    gray = out @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.clip(c * out + (1.0 - c) * gray.mean(), 0.0, 1.0)
    gray = (out @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    out = np.clip(sat * out + (1.0 - sat) * gray, 0.0, 1.0).astype(np.float32)
    if hue != 0.0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # float: hue in degrees [0, 360)
        hsv[:, :, 0] = np.mod(hsv[:, :, 0] + 360.0 * hue, 360.0)
        out = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)
    return out.astype(np.float32)


class CutPasteSynthesizer:
    """CutPaste (Li et al., CVPR 2021) as the anomaly source of a detector's synthetic branch.

    A rectangle of ``area_ratio`` U(lo, hi) of the image and aspect ratio (h/w)
    log-uniform in ``[aspect_ratio, 1/aspect_ratio]`` is cut at a random place of the
    (possibly rotated) normal image, colour-jittered (``color_jitter`` = the maximal relative
    change of brightness, contrast and saturation, and the maximal hue shift in turns;
    0 = none) and pasted at another random place; the mask is the pasted rectangle. The
    detector's own recipe stays in force around it (``recipe``: DRAEM's 30% input rotation
    and half normal samples, DeSTSeg's rotation policy), so only the anomaly source changes.

    As with the Perlin recipes, pixels outside the mask are copied bit for bit. The paper's
    CutPaste pastes a single patch; CutPaste-scar and the 3-way variant are not offered.
    """

    def __init__(
        self,
        recipe: _Base,
        *,
        area_ratio: tuple[float, float],
        aspect_ratio: float,
        color_jitter: float,
    ):
        # Ranges: the schema (detectors.cutpaste) and train._cutpaste_args (min <= max).
        lo, hi = (float(v) for v in area_ratio)
        self.recipe, self.area_ratio = recipe, (lo, hi)
        self.aspect_ratio, self.color_jitter = float(aspect_ratio), float(color_jitter)

    def patch_box(self, size: int, rng: np.random.Generator) -> tuple[int, int]:
        """(height, width) of the patch, each in [1, size - 1]."""
        area = rng.uniform(*self.area_ratio) * size * size
        log_r = np.log(self.aspect_ratio)
        ratio = float(np.exp(rng.uniform(log_r, -log_r)))  # height / width
        ph = int(round(np.sqrt(area * ratio)))
        pw = int(round(np.sqrt(area / ratio)))
        return min(max(ph, 1), size - 1), min(max(pw, 1), size - 1)

    def __call__(self, normal: np.ndarray, rng: np.random.Generator) -> SyntheticSample:
        h, w = normal.shape[:2]
        if h != w:
            raise ValueError(f"synthetic anomalies expect square images, got {normal.shape}")
        clean = _to_float(self.recipe.rotate_normal(normal, rng))
        # Every draw happens whatever the outcome (see _Base.__call__).
        ph, pw = self.patch_box(h, rng)
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        y1, x1 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        j = self.color_jitter
        factors = np.array(
            [
                rng.uniform(1 - j, 1 + j),
                rng.uniform(1 - j, 1 + j),
                rng.uniform(1 - j, 1 + j),
                rng.uniform(-min(j, 0.5), min(j, 0.5)),
            ]
        )
        stays_normal = bool(rng.random() < self.recipe.normal_prob)
        # A patch pasted back where it was cut, unjittered, changes nothing: no anomaly.
        if stays_normal or ((y0, x0) == (y1, x1) and j == 0):
            return SyntheticSample(
                image=clean.copy(),
                mask=np.zeros((h, w), np.uint8),
                is_anomalous=False,
                clean=clean,
                beta=1.0,
            )
        patch = clean[y0 : y0 + ph, x0 : x0 + pw].copy()
        if j > 0:
            patch = _color_jitter(patch, factors)
        image = clean.copy()
        image[y1 : y1 + ph, x1 : x1 + pw] = patch
        mask = np.zeros((h, w), np.uint8)
        mask[y1 : y1 + ph, x1 : x1 + pw] = 1
        return SyntheticSample(image=image, mask=mask, is_anomalous=True, clean=clean, beta=0.0)
