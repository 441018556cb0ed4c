"""Exact, fast, streaming detection metrics: AU-ROC, AU-PR (average precision) and AUPRO.

Every metric is computed from two sorted score arrays, one for the positives (anomalous
images / pixels) and one for the negatives, so ties are handled exactly and nothing is
quantised:

* AU-ROC is the Mann-Whitney statistic ``P(s+ > s-) + P(s+ == s-) / 2``: for each positive
  the number of negatives strictly below it and equal to it come from two binary searches in
  the sorted negatives. This is the area under the trapezoidal ROC curve, i.e. exactly what
  ``sklearn.metrics.roc_auc_score`` returns.
* AU-PR is the step-wise average precision ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
  score thresholds, as ``sklearn.metrics.average_precision_score`` defines it. Recall only
  changes at thresholds equal to a positive score, so only the distinct positive scores are
  visited; the false positives at each come from the same binary search.
* AUPRO (per-region overlap, Bergmann et al.): the ground truth of each image is split into
  8-connected regions; each anomalous pixel carries the weight ``1 / |its region|``. At a
  threshold ``t`` the FPR is ``#{normal pixels >= t} / #normal`` and the PRO is
  ``sum of weights of anomalous pixels >= t / #regions``. The curve through the points at
  every distinct threshold (starting at (0, 0)) is integrated with the trapezoid rule up to
  ``fpr_limit`` (linear interpolation at exactly the limit) and divided by the limit. The
  area of the trapezoids is regrouped as a sum over positives (see ``_aupro``), again using
  only binary searches into the sorted negatives.

Memory: :class:`PixelMetricAccumulator` keeps one float32 per normal pixel (float64 only if
a map arrives whose values float32 cannot represent exactly) and, per anomalous pixel, its
score plus an int32 region size. With ``expected_images`` the buffer is allocated once at
its final size; :meth:`~PixelMetricAccumulator.compute` sorts it in place. For MVTec AD
(1,725 maps at 256 x 256, 113 M pixels) that is about 0.45 GB, against several GB for
scikit-learn on the concatenated pixels (float64 scores, an int64 argsort and sorted copies).

Undefined metrics (only one class present, no ground-truth region) are returned as NaN and
announced with a :class:`MetricUndefinedWarning` that names the metric and the reason;
they are never silently replaced by a number.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "MetricUndefinedWarning",
    "PixelMetricAccumulator",
    "image_auroc",
    "image_aupr",
    "image_metrics",
    "pixel_metrics",
    "resize_map",
    "resize_mask",
]


class MetricUndefinedWarning(UserWarning):
    """A metric could not be computed from the data given (it is returned as NaN)."""


def _undefined(metric: str, reason: str, stacklevel: int = 3) -> float:
    warnings.warn(f"{metric} is undefined ({reason}); returning NaN", MetricUndefinedWarning, stacklevel=stacklevel)
    return math.nan


# ----------------------------------------------------------------------------- input checks


def _as_binary_labels(labels: Any, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.reshape(-1)
    arr = arr.reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5]
        raise ValueError(f"{name} must be binary (0/1 or bool); found values {bad.tolist()}")
    return arr.astype(bool)


def _as_finite_scores(scores: Any, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def _exact_dtype(arr: np.ndarray) -> np.dtype:
    """float32 if every value survives a round trip through float32, else float64."""
    if arr.dtype in (np.float32, np.float16, np.bool_, np.uint8, np.int8, np.uint16, np.int16):
        return np.dtype(np.float32)
    as64 = arr.astype(np.float64, copy=False)
    with np.errstate(over="ignore"):
        as32 = as64.astype(np.float32)
    return np.dtype(np.float32) if np.array_equal(as32, as64) else np.dtype(np.float64)


# ----------------------------------------------------------------------------- core


def _positive_groups(pos_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of an ascending array: (values, start indices, counts)."""
    n = pos_sorted.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return pos_sorted[:0], empty, empty
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(pos_sorted[1:], pos_sorted[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    counts = np.diff(np.append(starts, n))
    return pos_sorted[starts], starts, counts


def _neg_bounds(neg_sorted: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ascending ``values``: #negatives < v and #negatives <= v (exact, tie-aware).

    The second binary search is only run for values that actually occur among the
    negatives, which is usually a small fraction.
    """
    below = np.searchsorted(neg_sorted, values, side="left")
    upto = below.copy()
    n = neg_sorted.size
    if n and values.size:
        inside = below < n
        idx = np.flatnonzero(inside)
        tied = idx[neg_sorted[below[idx]] == values[idx]]
        if tied.size:
            upto[tied] = np.searchsorted(neg_sorted, values[tied], side="right")
    return below, upto


def _auroc(n_pos: int, n_neg: int, counts: np.ndarray, below: np.ndarray, upto: np.ndarray) -> float:
    # sum over positives of (#neg below + #neg equal / 2), in integers: below + upto = 2*below + eq
    twice = int(np.dot(counts.astype(np.int64), (below + upto).astype(np.int64)))
    return twice / (2.0 * n_pos * n_neg)


def _average_precision(n_pos: int, n_neg: int, starts: np.ndarray, counts: np.ndarray, below: np.ndarray) -> float:
    # threshold = each distinct positive value v: TP = #pos >= v, FP = #neg >= v
    tp = (n_pos - starts).astype(np.float64)
    fp = (n_neg - below).astype(np.float64)
    precision = tp / (tp + fp)
    return float(np.dot(counts.astype(np.float64), precision) / n_pos)


def _aupro(
    neg_sorted: np.ndarray,
    values: np.ndarray,
    starts: np.ndarray,
    below: np.ndarray,
    upto: np.ndarray,
    weights: np.ndarray,
    weight_suffix: np.ndarray,
    n_regions: int,
    fpr_limit: float,
) -> float:
    """Area under the PRO curve up to ``fpr_limit``, normalised by the limit.

    Going down in threshold, each distinct negative value ``t`` with ``c_t`` normal pixels
    adds a trapezoid of width ``c_t / N`` between PRO(> t) and PRO(>= t). Thresholds held
    only by positives add vertical steps (no area). Let ``t*`` be the negative value whose
    trapezoid contains FPR = limit. The fully included trapezoids (values above ``t*``) sum to

        1/(2 R N) * sum_{negatives j above t*} [W(> s_j) + W(>= s_j)]
      = 1/(2 R N) * sum_{positives p} w_p * (#{t* < s_j < s_p} + #{t* < s_j <= s_p}),

    where ``W(x)`` is the summed region weight of the positives in ``x``. The trapezoid of
    ``t*`` is cut at the limit with PRO interpolated linearly inside it.
    """
    n_neg = neg_sorted.size
    limit_count = fpr_limit * n_neg
    k = min(max(int(math.ceil(limit_count)), 1), n_neg)  # t* is the k-th largest negative
    t_star = neg_sorted[n_neg - k]
    lo = int(np.searchsorted(neg_sorted, t_star, side="left"))
    hi = int(np.searchsorted(neg_sorted, t_star, side="right"))
    # per distinct positive value v: summed weight of the positives equal to v
    group_weight = np.add.reduceat(weights, starts)
    strictly = np.clip(below - hi, 0, None) + np.clip(upto - hi, 0, None)
    full = float(np.dot(group_weight, strictly.astype(np.float64))) / (2.0 * n_regions * n_neg)

    # the boundary trapezoid of t*
    first_above = int(np.searchsorted(values, t_star, side="right"))  # groups with v > t*
    first_atleast = int(np.searchsorted(values, t_star, side="left"))  # groups with v >= t*
    w_above = float(weight_suffix[starts[first_above]]) if first_above < starts.size else 0.0
    w_atleast = float(weight_suffix[starts[first_atleast]]) if first_atleast < starts.size else 0.0
    pro_a = w_above / n_regions
    pro_b = w_atleast / n_regions
    width = (hi - lo) / n_neg
    used = fpr_limit - (n_neg - hi) / n_neg
    frac = min(max(used / width, 0.0), 1.0)
    pro_at_limit = pro_a + (pro_b - pro_a) * frac
    boundary = frac * width * (pro_a + pro_at_limit) / 2.0
    return (full + boundary) / fpr_limit


def _sorted_metrics(
    pos: np.ndarray,
    neg_sorted: np.ndarray,
    *,
    what: str,
    region_sizes: np.ndarray | None = None,
    n_regions: int = 0,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """AU-ROC, AP (and AUPRO if region sizes are given) from positives and sorted negatives."""
    out: dict[str, float] = {}
    n_pos, n_neg = int(pos.size), int(neg_sorted.size)
    names = [f"{what}_auroc", f"{what}_aupr"] + ([f"{what}_aupro"] if region_sizes is not None else [])
    if n_pos == 0 or n_neg == 0:
        reason = (
            "no samples at all"
            if n_pos + n_neg == 0
            else f"no {'anomalous' if n_pos == 0 else 'normal'} {'pixels' if what == 'pixel' else 'images'}"
            f" among {n_pos + n_neg}"
        )
        for name in names:
            out[name] = _undefined(name, reason)
        return out
    if region_sizes is not None:
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        weights = 1.0 / region_sizes[order].astype(np.float64)
        del order
    else:
        pos = np.sort(pos)
        weights = None
    values, starts, counts = _positive_groups(pos)
    below, upto = _neg_bounds(neg_sorted, values)
    out[f"{what}_auroc"] = _auroc(n_pos, n_neg, counts, below, upto)
    out[f"{what}_aupr"] = _average_precision(n_pos, n_neg, starts, counts, below)
    if weights is not None:
        if n_regions == 0:  # cannot happen when there are positives, kept for safety
            out[f"{what}_aupro"] = _undefined(f"{what}_aupro", "no ground-truth regions")
        else:
            suffix = np.append(np.cumsum(weights[::-1])[::-1], 0.0)
            out[f"{what}_aupro"] = _aupro(
                neg_sorted, values, starts, below, upto, weights, suffix, n_regions, fpr_limit
            )
    return out


# ----------------------------------------------------------------------------- image level


def image_metrics(labels: Any, scores: Any) -> dict[str, float]:
    """``{"image_auroc", "image_aupr"}`` of image scores; labels 1/True = anomalous."""
    y = _as_binary_labels(labels)
    s = _as_finite_scores(scores)
    if y.size != s.size:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    s = s.astype(_exact_dtype(s), copy=False)
    return _sorted_metrics(s[y], np.sort(s[~y]), what="image")


def _image_metric(labels: Any, scores: Any, name: str) -> float:
    y = _as_binary_labels(labels)
    s = _as_finite_scores(scores)
    if y.size != s.size:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size == 0 or y.all() or not y.any():
        kind = "no images" if y.size == 0 else (f"all {y.size} images are {'anomalous' if y.all() else 'normal'}")
        return _undefined(name, kind, stacklevel=4)
    s = s.astype(_exact_dtype(s), copy=False)
    return _sorted_metrics(s[y], np.sort(s[~y]), what="image")[name]


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve; equals ``sklearn.metrics.roc_auc_score`` (ties included).

    ``labels``: 1/True = anomalous. NaN and a :class:`MetricUndefinedWarning` if only one
    class is present.
    """
    return _image_metric(labels, scores, "image_auroc")


def image_aupr(labels: Any, scores: Any) -> float:
    """Average precision; equals ``sklearn.metrics.average_precision_score`` (ties included).

    ``labels``: 1/True = anomalous. NaN and a :class:`MetricUndefinedWarning` if only one
    class is present (scikit-learn would return 1.0 or 0.0 there).
    """
    return _image_metric(labels, scores, "image_aupr")


# ----------------------------------------------------------------------------- resizing


def resize_map(anomaly_map: Any, size: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, no antialiasing) of an HxW or NxHxW map to size x size."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(anomaly_map, dtype=np.float32)
    if arr.shape[-2:] == (size, size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))
    squeeze = t.ndim == 2
    t = t[None, None] if squeeze else t[:, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    out = out[0, 0] if squeeze else out[:, 0]
    return out.numpy()


def resize_mask(mask: Any, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a HxW mask to size x size; returns uint8 in {0, 1}."""
    from PIL import Image

    arr = (np.asarray(mask) > 0).astype(np.uint8)
    if arr.shape == (size, size):
        return arr
    img = Image.fromarray(arr).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.uint8)


# ----------------------------------------------------------------------------- pixel level


_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class PixelMetricAccumulator:
    """Streams (anomaly map, ground-truth mask) pairs; computes pixel AU-ROC, AU-PR, AUPRO.

    ``resolution``: maps are resized bilinearly and masks by nearest neighbour to
    ``resolution x resolution`` when their shape differs (``None``: use them as given).
    ``fpr_limit``: upper FPR bound of the AUPRO integral. ``expected_images``: if given,
    the normal-pixel buffer is allocated once at its final size (no growth copies).
    ``aupro=False`` skips connected-component labelling (AUPRO is then not reported).

    The result equals scikit-learn's ``roc_auc_score`` / ``average_precision_score`` on the
    concatenation of all pixels; see the module docstring for how and for the memory used.
    """

    def __init__(
        self,
        resolution: int | None = None,
        fpr_limit: float = 0.3,
        expected_images: int | None = None,
        aupro: bool = True,
    ):
        if resolution is not None and (int(resolution) != resolution or resolution < 1):
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        if not (0.0 < float(fpr_limit) <= 1.0):
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
        self.resolution = None if resolution is None else int(resolution)
        self.fpr_limit = float(fpr_limit)
        self.with_aupro = bool(aupro)
        self._dtype = np.dtype(np.float32)
        capacity = 0
        if expected_images and self.resolution:
            capacity = int(expected_images) * self.resolution * self.resolution
        self._neg = np.empty(capacity, dtype=self._dtype)
        self._n_neg = 0
        self._pos: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._n_pos = 0
        self.n_regions = 0
        self.n_images = 0

    # -- bookkeeping
    @property
    def n_pixels(self) -> int:
        return self._n_neg + self._n_pos

    @property
    def n_anomalous_pixels(self) -> int:
        return self._n_pos

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (normal-pixel buffer at its capacity)."""
        return int(self._neg.nbytes + sum(p.nbytes for p in self._pos) + sum(s.nbytes for s in self._sizes))

    def _upgrade(self, dtype: np.dtype) -> None:
        if dtype == self._dtype or self._dtype == np.float64:
            return
        self._dtype = np.dtype(np.float64)
        upgraded = np.empty(self._neg.size, dtype=np.float64)
        upgraded[: self._n_neg] = self._neg[: self._n_neg]
        self._neg = upgraded
        self._pos = [p.astype(np.float64) for p in self._pos]

    def _reserve(self, extra: int) -> None:
        need = self._n_neg + extra
        if need <= self._neg.size:
            return
        grown = np.empty(max(need, int(self._neg.size * 1.5), 1 << 16), dtype=self._dtype)
        grown[: self._n_neg] = self._neg[: self._n_neg]
        self._neg = grown

    # -- streaming
    def update(self, anomaly_map: Any, gt_mask: Any) -> None:
        """Add one image: ``anomaly_map`` float HxW, ``gt_mask`` uint8/bool HxW (nonzero = anomalous)."""
        amap = np.asarray(anomaly_map)
        mask = np.asarray(gt_mask)
        if amap.ndim != 2 or mask.ndim != 2:
            raise ValueError(f"expected 2-D map and mask, got shapes {amap.shape} and {mask.shape}")
        if self.resolution is not None:
            if amap.shape != (self.resolution, self.resolution):
                amap = resize_map(amap, self.resolution)
            if mask.shape != (self.resolution, self.resolution):
                mask = resize_mask(mask, self.resolution)
        if amap.shape != mask.shape:
            raise ValueError(f"anomaly map {amap.shape} and mask {mask.shape} differ in shape")
        amap = _as_finite_scores(amap, "anomaly map").reshape(mask.shape)
        self._upgrade(_exact_dtype(amap))
        amap = amap.astype(self._dtype, copy=False)
        anomalous = mask.astype(bool, copy=False) if mask.dtype == bool else mask > 0

        n_anom = int(np.count_nonzero(anomalous))
        n_norm = anomalous.size - n_anom
        self._reserve(n_norm)
        if n_anom == 0:
            self._neg[self._n_neg : self._n_neg + n_norm] = amap.reshape(-1)
        else:
            self._neg[self._n_neg : self._n_neg + n_norm] = amap[~anomalous]
            # work inside the bounding box of the anomalous pixels (same row-major order)
            rows = np.flatnonzero(anomalous.any(axis=1))
            cols = np.flatnonzero(anomalous.any(axis=0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            inside = anomalous[box]
            self._pos.append(amap[box][inside])
            if self.with_aupro:
                from scipy import ndimage

                labels, n_comp = ndimage.label(inside, structure=_EIGHT_CONNECTED)
                sizes = np.bincount(labels.reshape(-1), minlength=n_comp + 1).astype(np.int32)
                self._sizes.append(sizes[labels[inside]])
                self.n_regions += int(n_comp)
            self._n_pos += n_anom
        self._n_neg += n_norm
        self.n_images += 1

    def compute(self) -> dict[str, float]:
        """``{"pixel_auroc", "pixel_aupr", "pixel_aupro"}`` as fractions (NaN + warning if undefined).

        Sorts the normal-pixel buffer in place (the multiset is unchanged, so further
        updates and repeated calls remain valid).
        """
        neg = self._neg[: self._n_neg]
        neg.sort()
        pos = np.concatenate(self._pos) if self._pos else np.zeros(0, dtype=self._dtype)
        pos = pos.astype(self._dtype, copy=False)
        sizes = None
        if self.with_aupro:
            sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int32)
        result = _sorted_metrics(
            pos,
            neg,
            what="pixel",
            region_sizes=sizes,
            n_regions=self.n_regions,
            fpr_limit=self.fpr_limit,
        )
        return result


def pixel_metrics(
    anomaly_maps: Any, gt_masks: Any, fpr_limit: float = 0.3, resolution: int | None = None
) -> dict[str, float]:
    """Convenience: pixel metrics of in-memory maps (N x H x W) and masks (N x H x W)."""
    acc = PixelMetricAccumulator(resolution, fpr_limit=fpr_limit)
    for amap, mask in zip(anomaly_maps, gt_masks, strict=True):
        acc.update(amap, mask)
    return acc.compute()
