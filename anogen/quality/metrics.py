"""IS, KID and IC-LPIPS of one set of generated images, on whole images and on box crops.

- Inception Score (Salimans et al. 2016): exp(E KL(p(y|x) || p(y))) over Inception-v3's class
  posteriors, mean and std over ``is_splits`` splits (torch-fidelity's ``isc_features_to_metric``).
  1 for a single repeated image; higher = more confident and more varied classes. Empty, with a
  note, on fewer images than splits (torch-fidelity's result is NaN there).
- KID (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel between Inception
  pool features of the generated and the real anomalies, mean and std over ``kid_subsets``
  random subsets of ``kid_subset_size`` (torch-fidelity's ``kid_features_to_metric``). Near 0 for
  identical sets. Empty, with a note, when either set is smaller than a subset (torch-fidelity
  refuses).
- IC-LPIPS (Ojha et al. 2021, as AnomalyDiffusion's ``cal_ic_lpips.py``): every generated image is
  assigned to its nearest cluster centre by LPIPS (the last one on a tie); at most
  ``ic_lpips_cluster_cap`` random members of a cluster are kept; inside each cluster the LPIPS of
  every pair is averaged, and the metric is the mean over the clusters with two or more members.
  LPIPS inputs are in [-1, 1]. Higher = more diverse (0: one image repeated).

Every image is resized to ``image_size`` first (:data:`RESIZE_KERNEL`). A box crop follows one rule
for generated, real and centre images alike (:data:`CROP_RULE`, :func:`crop_window`): the square
around the mask's bounding box (the inpainting box of a generated image, the ground truth's tight
box of a real one) grown by ``crop_margin`` of its longer side per side, then resized like a
whole image; the whole image when the mask is empty or absent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from anogen.quality.networks import INCEPTION_FEATURES

Item = tuple[np.ndarray, "np.ndarray | None"]  # (uint8 HxWx3 image, uint8 HxW mask or None)

# torchvision's Resize on a PIL image, which every peer's script applies (antialiased when shrinking)
RESIZE_KERNEL = "PIL bilinear"
CROP_RULE = "square around the mask's bounding box, longer side x (1 + 2 crop_margin), inside the image; PIL bilinear"


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (uint8 HxWx3 or HxW) at ``size`` x ``size`` with :data:`RESIZE_KERNEL`."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def crop_window(mask: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(top, left, side) of the box crop of a non-empty HxW mask.

    The side is the bounding box's longer side times (1 + 2 margin), at most the image's shorter
    side; the square is centred on the box and shifted to lie inside the image. Square, so the
    resize to ``image_size`` keeps the aspect of whatever the box holds.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height, width = mask.shape
    side = min(int(round(max(bottom - top, right - left) * (1 + 2 * margin))), height, width)
    y = min(max(int(round((top + bottom - side) / 2)), 0), height - side)
    x = min(max(int(round((left + right - side) / 2)), 0), width - side)
    return y, x, side


def box_crop(image: np.ndarray, mask: np.ndarray | None, margin: float) -> np.ndarray:
    """The :func:`crop_window` of ``mask`` cut from ``image`` (the whole image if no mask or an empty one)."""
    if mask is None or not mask.any():
        return image
    if mask.shape != image.shape[:2]:
        from PIL import Image

        shape = image.shape[1::-1]
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(shape, Image.Resampling.NEAREST))
    y, x, side = crop_window(mask, margin)
    return image[y : y + side, x : x + side]


def as_uint8_tensor(images: Sequence[np.ndarray], size: int):
    """uint8 N x 3 x size x size (what torch-fidelity's extractors take)."""
    import torch

    stacked = np.stack([resized(np.ascontiguousarray(im), size) for im in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def inception_features(net, images, batch_size: int, device: str) -> dict[str, Any]:
    """``logits_unbiased`` and ``2048`` features of a uint8 N x 3 x H x W tensor (float64, CPU)."""
    import torch

    parts: list[tuple] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            parts.append(tuple(f.double().cpu() for f in net(images[start : start + batch_size].to(device))))
    return {name: torch.cat([p[i] for p in parts]) for i, name in enumerate(INCEPTION_FEATURES)}


def inception_score(logits, splits: int, seed: int) -> dict[str, Any]:
    """IS mean and std over ``splits`` splits (torch-fidelity); empty with a note on fewer images than splits."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    if len(logits) < splits:
        note = f"IS empty: {len(logits)} images, fewer than quality.is_splits={splits} (one split needs one)"
        return {"is_mean": None, "is_std": None, "notes": [note]}
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return {"is_mean": out["inception_score_mean"], "is_std": out["inception_score_std"], "notes": []}


def kid(generated, real, subsets: int, subset_size: int, seed: int) -> dict[str, Any]:
    """KID mean and std over ``subsets`` subsets of ``subset_size`` (torch-fidelity); empty with a note on fewer."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    if min(len(generated), len(real)) < subset_size:
        note = (
            f"KID empty: {len(generated)} generated and {len(real)} real images, fewer than "
            f"quality.kid_subset_size={subset_size} in one set (set it to at most the smaller count)"
        )
        return {"kid_mean": None, "kid_std": None, "notes": [note]}
    out = kid_features_to_metric(
        generated, real, kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed, verbose=False
    )
    return {
        "kid_mean": out["kernel_inception_distance_mean"],
        "kid_std": out["kernel_inception_distance_std"],
        "notes": [],
    }


Distance = Callable[[Sequence[Any], Sequence[Any]], np.ndarray]


def ic_lpips(
    generated: Sequence[Any],
    centres: Sequence[Any],
    distance: Distance,
    cap: int | None = None,
    seed: int = 0,  # repeated on purpose: irrelevant without a cap (every member is scored)
) -> dict[str, Any]:
    """Intra-cluster LPIPS; ``distance(a, b)`` is the elementwise distance of two lists.

    ``clusters`` are the member counts before the ``cap`` (a seeded random choice of members).
    """
    if not centres or not generated:
        return {"ic_lpips": None, "clusters": []}
    n, k = len(generated), len(centres)
    to_centre = distance([g for g in generated for _ in range(k)], [c for _ in range(n) for c in centres])
    # the last of equal minima, as AnomalyDiffusion's scan over the centres with `dist <= min_dist`
    nearest = k - 1 - np.asarray(to_centre, dtype=np.float64).reshape(n, k)[:, ::-1].argmin(axis=1)
    rng = np.random.default_rng(seed)
    means, sizes = [], []
    for cluster in range(k):
        members = np.flatnonzero(nearest == cluster)
        sizes.append(len(members))
        if cap is not None and len(members) > cap:
            members = np.sort(rng.choice(members, cap, replace=False))
        if len(members) < 2:
            continue
        i, j = np.triu_indices(len(members), k=1)
        pairs = distance([generated[m] for m in members[i]], [generated[m] for m in members[j]])
        means.append(float(np.mean(pairs)))
    return {"ic_lpips": float(np.mean(means)) if means else None, "clusters": sizes}


def lpips_input(images):
    """A uint8 N x 3 x H x W tensor as LPIPS takes it: float32 in [-1, 1] (the peers' Normalize(0.5, 0.5))."""
    return list((images.float() / 255.0 - 0.5) / 0.5)


def lpips_distance(model, batch_size: int, device: str) -> Distance:
    """Elementwise LPIPS of two lists of float32 3 x H x W tensors in [-1, 1]."""
    import torch

    def distance(a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(a), batch_size):
                x = torch.stack(list(a[start : start + batch_size])).to(device)
                y = torch.stack(list(b[start : start + batch_size])).to(device)
                out.append(model(x, y).flatten().double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return distance


def set_metrics(generated, real, centres, settings: dict, nets: dict, device: str) -> dict[str, Any]:
    """IS, KID and IC-LPIPS of one view (whole images or crops): lists of uint8 HxWx3 arrays."""
    size, batch = settings["image_size"], settings["batch_size"]
    gen = as_uint8_tensor(generated, size)
    gen_features = inception_features(nets["inception"], gen, batch, device)
    out = inception_score(gen_features["logits_unbiased"], settings["is_splits"], settings["seed"])
    notes = out.pop("notes")
    if real:
        real_features = inception_features(nets["inception"], as_uint8_tensor(real, size), batch, device)
        out.update(kid(gen_features["2048"], real_features["2048"], **_kid_settings(settings)))
        notes += out.pop("notes")
    else:
        out.update(kid_mean=None, kid_std=None)
    lpips_centres = lpips_input(as_uint8_tensor(centres, size)) if centres else []
    distance = lpips_distance(nets["lpips"], batch, device)
    cap, seed = settings["ic_lpips_cluster_cap"], settings["seed"]
    out.update(ic_lpips(lpips_input(gen), lpips_centres, distance, cap=cap, seed=seed))
    return {**out, "notes": notes}


def _masked(items: Sequence[Item]) -> bool:
    return all(m is not None for _, m in items)


def _kid_settings(settings: dict) -> dict:
    return {"subsets": settings["kid_subsets"], "subset_size": settings["kid_subset_size"], "seed": settings["seed"]}


def quality_metrics(
    generated: Sequence[Item], real: Sequence[Item], centres: Sequence[Item], settings: dict, nets: dict, device: str
) -> dict[str, Any]:
    """Whole-image metrics, then the same on box crops (``crop_`` prefix; None where no masks).

    ``notes`` lists why a metric is empty (the crop view has the same image counts, so the same notes).
    """
    whole = set_metrics(*([im for im, _ in s] for s in (generated, real, centres)), settings, nets, device)
    crops: dict[str, Any] = {"notes": []}
    if generated and _masked(generated):
        # a set without masks takes no part in the crop view (its crop KID or IC-LPIPS stays empty)
        views = [
            [box_crop(im, m, settings["crop_margin"]) for im, m in s] if _masked(s) else []
            for s in (generated, real, centres)
        ]
        crops = set_metrics(*views, settings, nets, device)
    row = {
        "n_generated": len(generated),
        "n_real": len(real),
        "n_centres": len(centres),
        **{k: whole[k] for k in METRIC_KEYS},
        **{f"crop_{k}": crops.get(k) for k in METRIC_KEYS},
        "crop_rule": CROP_RULE,
        "resize_kernel": RESIZE_KERNEL,
    }
    row.update({k: settings[k] for k in ("is_splits", "kid_subsets", "kid_subset_size", "ic_lpips_cluster_cap")})
    row["clusters"] = " ".join(map(str, whole["clusters"]))
    row["notes"] = sorted(set(whole["notes"] + crops["notes"]))
    return row


METRIC_KEYS = ("is_mean", "is_std", "ic_lpips", "kid_mean", "kid_std")
