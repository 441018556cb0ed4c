"""IS, KID and IC-LPIPS of one set of generated images, on whole images and on box crops.

- Inception Score (Salimans et al. 2016): exp(E KL(p(y|x) || p(y))) over Inception-v3's class
  posteriors, mean and std over ``is_splits`` splits (torch-fidelity's ``isc_features_to_metric``).
  1 for a single repeated image; higher = more confident and more varied classes.
- KID (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel between Inception
  pool features of the generated and the real anomalies, mean and std over ``kid_subsets``
  random subsets (torch-fidelity's ``kid_features_to_metric``). Near 0 for identical sets.
- IC-LPIPS (Ojha et al. 2021): every generated image is assigned to its nearest support anomaly
  by LPIPS; inside each cluster the LPIPS of every pair of members is averaged, and the metric is
  the mean over the clusters with two or more members. Higher = more diverse (0: one image
  repeated, or every cluster a copy of its centre).

Every image is resized to ``image_size`` first; a box crop is the mask's bounding rectangle
grown by ``crop_margin`` of its size per side (the whole image when the mask is empty or absent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Item = tuple[np.ndarray, "np.ndarray | None"]  # (uint8 HxWx3 image, uint8 HxW mask or None)


def resized(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def box_crop(image: np.ndarray, mask: np.ndarray | None, margin: float) -> np.ndarray:
    """The mask's bounding rectangle grown by ``margin`` of its size per side (whole image if no mask)."""
    if mask is None or not mask.any():
        return image
    if mask.shape != image.shape[:2]:
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = int(round((bottom - top) * margin)), int(round((right - left) * margin))
    height, width = mask.shape
    return image[max(0, top - dy) : min(height, bottom + dy), max(0, left - dx) : min(width, right + dx)]


def as_uint8_tensor(images: Sequence[np.ndarray], size: int):
    """uint8 N x 3 x size x size (what torch-fidelity's extractors take)."""
    import torch

    stacked = np.stack([resized(np.ascontiguousarray(im), size) for im in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def inception_features(net, images, batch_size: int, device: str) -> dict[str, Any]:
    """``logits_unbiased`` and ``2048`` features of a uint8 N x 3 x H x W tensor (float64, CPU)."""
    import torch

    from anogen.quality.networks import INCEPTION_FEATURES

    parts: list[tuple] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            parts.append(tuple(f.double().cpu() for f in net(images[start : start + batch_size].to(device))))
    return {name: torch.cat([p[i] for p in parts]) for i, name in enumerate(INCEPTION_FEATURES)}


def inception_score(logits, splits: int, seed: int) -> dict[str, Any]:
    """IS mean and std over ``min(splits, n)`` splits (torch-fidelity)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    used = min(splits, len(logits))
    out = isc_features_to_metric(logits, splits=used, shuffle=True, rng_seed=seed)
    return {"is_mean": out["inception_score_mean"], "is_std": out["inception_score_std"], "is_splits": used}


def kid(generated, real, subsets: int, subset_size: int, seed: int) -> dict[str, Any]:
    """KID mean and std over ``subsets`` subsets of ``min(subset_size, n_generated, n_real)`` (torch-fidelity)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, len(generated), len(real))
    if size < 2:  # the unbiased estimator needs two samples per set
        return {"kid_mean": None, "kid_std": None, "kid_subsets": subsets, "kid_subset_size": size}
    out = kid_features_to_metric(
        generated, real, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return {
        "kid_mean": out["kernel_inception_distance_mean"],
        "kid_std": out["kernel_inception_distance_std"],
        "kid_subsets": subsets,
        "kid_subset_size": size,
    }


Distance = Callable[[Sequence[Any], Sequence[Any]], np.ndarray]


def ic_lpips(generated: Sequence[Any], centres: Sequence[Any], distance: Distance) -> dict[str, Any]:
    """Ojha et al.'s intra-cluster LPIPS; ``distance(a, b)`` is the elementwise distance of two lists."""
    if not centres or not generated:
        return {"ic_lpips": None, "clusters": []}
    n, k = len(generated), len(centres)
    to_centre = distance([g for g in generated for _ in range(k)], [c for _ in range(n) for c in centres])
    nearest = np.asarray(to_centre, dtype=np.float64).reshape(n, k).argmin(axis=1)
    means, sizes = [], []
    for cluster in range(k):
        members = np.flatnonzero(nearest == cluster)
        sizes.append(len(members))
        if len(members) < 2:
            continue
        i, j = np.triu_indices(len(members), k=1)
        pairs = distance([generated[m] for m in members[i]], [generated[m] for m in members[j]])
        means.append(float(np.mean(pairs)))
    return {"ic_lpips": float(np.mean(means)) if means else None, "clusters": sizes}


def lpips_distance(model, batch_size: int, device: str) -> Distance:
    """Elementwise LPIPS of two lists of float32 3 x H x W tensors in [0, 1]."""
    import torch

    def distance(a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(a), batch_size):
                x = torch.stack(list(a[start : start + batch_size])).to(device)
                y = torch.stack(list(b[start : start + batch_size])).to(device)
                out.append(model(x, y, normalize=True).flatten().double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return distance


def set_metrics(generated, real, support, settings: dict, nets: dict, device: str) -> dict[str, Any]:
    """IS, KID and IC-LPIPS of one view (whole images or crops): lists of uint8 HxWx3 arrays."""
    size, batch = settings["image_size"], settings["batch_size"]
    gen = as_uint8_tensor(generated, size)
    gen_features = inception_features(nets["inception"], gen, batch, device)
    out = inception_score(gen_features["logits_unbiased"], settings["is_splits"], settings["seed"])
    if real:
        real_features = inception_features(nets["inception"], as_uint8_tensor(real, size), batch, device)
        out.update(kid(gen_features["2048"], real_features["2048"], **_kid_settings(settings)))
    else:
        out.update(kid_mean=None, kid_std=None, kid_subsets=settings["kid_subsets"], kid_subset_size=0)
    centres = list(as_uint8_tensor(support, size).float() / 255.0) if support else []
    out.update(ic_lpips(list(gen.float() / 255.0), centres, lpips_distance(nets["lpips"], batch, device)))
    return out


def _masked(items: Sequence[Item]) -> bool:
    return all(m is not None for _, m in items)


def _kid_settings(settings: dict) -> dict:
    return {"subsets": settings["kid_subsets"], "subset_size": settings["kid_subset_size"], "seed": settings["seed"]}


def quality_metrics(
    generated: Sequence[Item], real: Sequence[Item], support: Sequence[Item], settings: dict, nets: dict, device: str
) -> dict[str, Any]:
    """Whole-image metrics, then the same on box crops (``crop_`` prefix; None where no masks)."""
    whole = set_metrics(*([im for im, _ in s] for s in (generated, real, support)), settings, nets, device)
    crops: dict[str, Any] = {}
    if generated and _masked(generated):
        # a set without masks takes no part in the crop view (its crop KID or IC-LPIPS stays empty)
        views = [
            [box_crop(im, m, settings["crop_margin"]) for im, m in s] if _masked(s) else []
            for s in (generated, real, support)
        ]
        crops = set_metrics(*views, settings, nets, device)
    row = {
        "n_generated": len(generated),
        "n_real": len(real),
        "n_support": len(support),
        **{k: whole[k] for k in METRIC_KEYS},
        **{f"crop_{k}": crops.get(k) for k in METRIC_KEYS},
    }
    row.update({k: whole[k] for k in ("is_splits", "kid_subsets", "kid_subset_size")})
    row["clusters"] = " ".join(map(str, whole["clusters"]))
    return row


METRIC_KEYS = ("is_mean", "is_std", "ic_lpips", "kid_mean", "kid_std")
