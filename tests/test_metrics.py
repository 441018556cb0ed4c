"""Exactness of the evaluation metrics against scikit-learn and a plain AUPRO reference."""

from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np
import pytest

from anogen.evaluation.metrics import (
    MetricUndefinedWarning,
    PixelMetricAccumulator,
    image_aupr,
    image_auroc,
    image_metrics,
    pixel_metrics,
    resize_map,
    resize_mask,
)

sk = pytest.importorskip("sklearn.metrics")

TOL = 1e-7


# ----------------------------------------------------------------------------- helpers


def _scores(rng: np.random.Generator, n: int, ties: bool) -> np.ndarray:
    if ties:
        # few distinct levels, plus a partly quantised continuous part
        s = rng.random(n)
        quant = rng.random(n) < 0.7
        s[quant] = np.round(s[quant] * rng.integers(2, 12)) / 10
        return s
    return rng.random(n)


def _blob_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    masks = np.zeros((n, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        if i % 3 == 0:
            continue  # some images without any anomaly
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(1, max(size // 4, 2), 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    return masks


def _maps(rng: np.random.Generator, masks: np.ndarray, ties: bool, dtype=np.float32) -> np.ndarray:
    maps = rng.random(masks.shape) * 0.8 + masks * rng.random(masks.shape) * 0.6
    if ties:
        maps = np.round(maps * 16) / 16
    return maps.astype(dtype)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of a binary mask by breadth-first search (independent of scipy)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            region = np.zeros_like(seen)
            queue = deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                region[y, x] = True
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            regions.append(region)
    return regions


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Loop over every distinct threshold: FPR over normal pixels, PRO = mean region overlap."""
    maps = np.asarray(maps, dtype=np.float64)
    regions = [(i, r) for i, m in enumerate(masks) for r in _components(m > 0)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[i][r].sum() / r.sum() for i, r in regions]))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


# ----------------------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 17, 500])
def test_image_metrics_equal_sklearn(seed, ties, n):
    rng = np.random.default_rng(seed * 100 + n)
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[0], labels[-1] = True, False
    scores = _scores(rng, n, ties)
    assert abs(image_auroc(labels, scores) - sk.roc_auc_score(labels, scores)) < TOL
    assert abs(image_aupr(labels, scores) - sk.average_precision_score(labels, scores)) < TOL
    both = image_metrics(labels.astype(int), scores.tolist())
    assert both["image_auroc"] == pytest.approx(image_auroc(labels, scores), abs=1e-12)
    assert both["image_aupr"] == pytest.approx(image_aupr(labels, scores), abs=1e-12)


def test_image_metrics_integer_and_float64_scores():
    labels = np.array([0, 1, 0, 1, 1, 0])
    ints = np.array([3, 3, 1, 7, 2, 2**40])  # 2**40 + tiny differences need float64
    close = np.array([1.0, 1.0 + 1e-12, 1.0, 1.0 + 2e-12, 1.0 - 1e-12, 1.0 + 1e-12])
    for s in (ints, close):
        assert abs(image_auroc(labels, s) - sk.roc_auc_score(labels, s)) < TOL
        assert abs(image_aupr(labels, s) - sk.average_precision_score(labels, s)) < TOL


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], []])
def test_image_metrics_degenerate_give_nan_and_warn(labels):
    scores = np.linspace(0, 1, len(labels))
    for fn, name in ((image_auroc, "image_auroc"), (image_aupr, "image_aupr")):
        with pytest.warns(MetricUndefinedWarning, match=name):
            assert math.isnan(fn(labels, scores))


def test_image_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="binary"):
        image_auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        image_aupr([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="length"):
        image_auroc([0, 1, 1], [0.1, 0.2])


# ----------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_pixel_metrics_streamed_equal_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(8, 40))
    n = int(rng.integers(3, 9))
    masks = _blob_masks(rng, n, size)
    maps = _maps(rng, masks, ties)
    acc = PixelMetricAccumulator(size, expected_images=n if seed % 2 else None)
    for m, g in zip(maps, masks):
        acc.update(m, g.astype(bool) if seed % 2 else g)
    got = acc.compute()
    y, s = masks.reshape(-1), maps.reshape(-1).astype(np.float64)
    assert abs(got["pixel_auroc"] - sk.roc_auc_score(y, s)) < TOL
    assert abs(got["pixel_aupr"] - sk.average_precision_score(y, s)) < TOL
    assert acc.n_images == n and acc.n_pixels == y.size and acc.n_anomalous_pixels == y.sum()
    # compute() is repeatable and updates after it still count
    assert acc.compute() == got
    acc.update(maps[0], masks[0])
    y2 = np.concatenate([y, masks[0].reshape(-1)])
    s2 = np.concatenate([s, maps[0].reshape(-1).astype(np.float64)])
    assert abs(acc.compute()["pixel_auroc"] - sk.roc_auc_score(y2, s2)) < TOL


def test_pixel_metrics_keep_float64_precision():
    # values that collide in float32 must stay distinct (the buffer switches to float64)
    rng = np.random.default_rng(7)
    masks = _blob_masks(rng, 4, 16)
    base = _maps(rng, masks, ties=True, dtype=np.float64)
    maps = base + masks * 1e-12 - (1 - masks) * rng.integers(0, 2, masks.shape) * 1e-12
    acc = PixelMetricAccumulator(16)
    acc.update(base[0].astype(np.float32), masks[0])  # starts as float32
    for m, g in zip(maps[1:], masks[1:]):
        acc.update(m, g)
    got = acc.compute()
    y = masks.reshape(-1)
    s = np.concatenate([base[0].astype(np.float32).astype(np.float64).reshape(-1), maps[1:].reshape(-1)])
    assert abs(got["pixel_auroc"] - sk.roc_auc_score(y, s)) < TOL
    assert abs(got["pixel_aupr"] - sk.average_precision_score(y, s)) < TOL


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_equals_reference(seed, limit):
    rng = np.random.default_rng(1000 + seed)
    size = int(rng.integers(8, 20))
    masks = _blob_masks(rng, 4, size)
    masks[1, :2, :2] = 1  # a tiny region in a corner
    maps = _maps(rng, masks, ties=bool(seed % 2))
    got = pixel_metrics(maps, masks, fpr_limit=limit)["pixel_aupro"]
    assert abs(got - reference_aupro(maps, masks, limit)) < TOL


@pytest.mark.parametrize("limit", [1.0, 0.3])
def test_aupro_regions_are_8_connected(limit):
    """Pixels touching only at a corner are one region (the official 8-connectivity).

    4 x 4 map: anomalous a = (0, 0) and b = (1, 1) touch diagonally, c = (3, 3) is alone;
    a scores 1, the 13 normal pixels 0.5, b and c 0. By hand, going down in threshold:
    at 1 (FPR 0) region {a, b} is half covered and {c} not: PRO = (1/2 + 0) / 2 = 1/4;
    at 0.5 the FPR jumps to 1 with PRO still 1/4; so the area up to any limit is 1/4 of it.
    With 4-connected regions {a}, {b}, {c} the PRO would be 1/3 instead.
    """
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 3, 3] = 1
    amap = np.full((1, 4, 4), 0.5, dtype=np.float32)
    amap[0, 0, 0] = 1.0
    amap[0, 1, 1] = amap[0, 3, 3] = 0.0
    assert pixel_metrics(amap, mask, fpr_limit=limit)["pixel_aupro"] == pytest.approx(0.25, abs=TOL)


def test_aupro_equals_reference_on_diagonal_chains():
    """A checkerboard-like mask (regions joined only at corners) against the loop reference."""
    rng = np.random.default_rng(11)
    masks = np.zeros((3, 12, 12), dtype=np.uint8)
    yy, xx = np.mgrid[:12, :12]
    masks[0][(yy + xx) % 2 == 0] = 1  # one 8-connected region of 72 pixels
    masks[1][(yy == xx) | (yy == 11 - xx)] = 1  # two crossing diagonals: one region
    masks[2][(yy % 4 == 0) & (xx % 4 == 0)] = 1  # isolated pixels: nine regions
    maps = _maps(rng, masks, ties=False)
    for limit in (0.3, 1.0):
        got = pixel_metrics(maps, masks, fpr_limit=limit)["pixel_aupro"]
        assert abs(got - reference_aupro(maps, masks, limit)) < TOL


def test_aupro_limit_below_one_normal_pixel_and_constant_maps():
    rng = np.random.default_rng(3)
    masks = _blob_masks(rng, 3, 10)
    maps = _maps(rng, masks, ties=True)
    got = pixel_metrics(maps, masks, fpr_limit=1e-4)["pixel_aupro"]
    assert abs(got - reference_aupro(maps, masks, 1e-4)) < TOL
    flat = np.full(masks.shape, 0.5, dtype=np.float32)  # one tie group: the diagonal, 0.5 at any limit
    res = pixel_metrics(flat, masks)
    assert abs(res["pixel_aupro"] - reference_aupro(flat, masks, 0.3)) < TOL
    assert abs(res["pixel_auroc"] - 0.5) < TOL


def test_perfect_and_inverted_detectors():
    rng = np.random.default_rng(5)
    masks = _blob_masks(rng, 4, 12)
    perfect = masks.astype(np.float32) + rng.random(masks.shape).astype(np.float32) * 0.1
    res = pixel_metrics(perfect, masks)
    assert res["pixel_auroc"] == pytest.approx(1.0) and res["pixel_aupr"] == pytest.approx(1.0)
    assert res["pixel_aupro"] == pytest.approx(1.0)
    inverted = pixel_metrics(-perfect, masks)
    assert inverted["pixel_auroc"] == pytest.approx(0.0) and inverted["pixel_aupro"] == pytest.approx(0.0)


@pytest.mark.parametrize("fill", [0, 1])
def test_pixel_degenerate_give_nan_and_warn(fill):
    acc = PixelMetricAccumulator(8)
    for _ in range(2):
        acc.update(np.random.default_rng(0).random((8, 8)), np.full((8, 8), fill, dtype=np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = acc.compute()
    assert all(math.isnan(res[k]) for k in ("pixel_auroc", "pixel_aupr", "pixel_aupro"))
    messages = [str(w.message) for w in caught if issubclass(w.category, MetricUndefinedWarning)]
    for name in ("pixel_auroc", "pixel_aupr", "pixel_aupro"):
        assert any(name in m and ("anomalous" in m or "normal" in m) for m in messages), messages


def test_empty_accumulator_warns():
    with pytest.warns(MetricUndefinedWarning, match="no samples"):
        res = PixelMetricAccumulator(4).compute()
    assert math.isnan(res["pixel_auroc"])


def test_accumulator_rejects_bad_input():
    acc = PixelMetricAccumulator(None)
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="fpr_limit"):
        PixelMetricAccumulator(4, fpr_limit=0.0)


def test_resolution_resizes_map_bilinear_and_mask_nearest():
    rng = np.random.default_rng(11)
    big_mask = np.kron(_blob_masks(rng, 2, 16)[1], np.ones((4, 4), dtype=np.uint8))  # 64 x 64
    big_map = rng.random((64, 64)).astype(np.float32)
    small_mask = resize_mask(big_mask, 16)
    assert small_mask.dtype == np.uint8 and set(np.unique(small_mask)) <= {0, 1}
    assert np.array_equal(small_mask, _blob_masks(np.random.default_rng(11), 2, 16)[1])
    small_map = resize_map(big_map, 16)
    assert small_map.shape == (16, 16) and small_map.dtype == np.float32
    np.testing.assert_allclose(resize_map(np.full((5, 5), 2.0), 9), 2.0, rtol=1e-6)

    a = PixelMetricAccumulator(16)
    a.update(big_map, big_mask)
    b = PixelMetricAccumulator(16)
    b.update(small_map, small_mask)
    assert a.compute() == b.compute()
