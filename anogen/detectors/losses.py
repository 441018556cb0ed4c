"""Losses of the stage-3 detectors: focal (per-pixel map), SSIM, and AnoGen's weak box loss.

Conventions: the segmentation heads produce one *anomaly logit* ``z`` per pixel
(DRAEM's two-class softmax is turned into ``z = logit_anomalous - logit_normal``, which
gives exactly the same probabilities: ``softmax(l)[1] = sigmoid(l1 - l0)``), so
``p_anomaly = sigmoid(z)`` and all logs are computed stably with ``logsigmoid``.

Weak box loss (AnoGen Eq. 8-9)
------------------------------
``p_normal = 1 - p_anomaly`` (from the *detached* prediction). Inside the box, pixels with
``p_normal >= tau`` (confidently normal) get weight 0, every other pixel (the rest of the
box, and everything outside the box) weight 1; the loss is

    L'_seg = sum(weight * focal_map) / (number of pixels)

i.e. the usual mean over *all* pixels of the batch, with the filtered pixels counting as
zero (they are not removed from the denominator). With all weights 1 this is exactly the
plain focal loss with the box as target.

``tau = 1.0`` means "no filtering" (Table 3 of the paper: plain box supervision): in
float32 ``1 - p`` rounds to exactly 1.0 whenever ``p < 2**-25``, so the literal test
``p_normal >= 1.0`` would still drop such pixels; ``weak_mask`` therefore returns all ones
for ``tau >= 1``, and ``weak_focal_loss(..., tau=1.0)`` equals ``focal_loss`` bit for bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = [
    "focal_map",
    "focal_loss",
    "weak_mask",
    "weak_focal_loss",
    "gaussian_window",
    "gaussian_filter",
    "ssim",
    "ssim_loss",
    "infer_value_range",
    "cosine_distance_loss",
]


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """N,1,H,W or N,H,W -> N,H,W."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"expected N,H,W or N,1,H,W, got shape {tuple(x.shape)}")
    return x


def focal_map(logit: torch.Tensor, target: torch.Tensor, gamma: float, smooth: float = 0.0) -> torch.Tensor:
    """Per-pixel binary focal loss ``-(1 - p_t)^gamma * log(p_t)`` (N,H,W), float32.

    ``logit``: anomaly logit (N,H,W or N,1,H,W); ``target``: {0, 1} of the same shape.
    ``gamma = 0`` is binary cross-entropy. DRAEM uses gamma 2, DeSTSeg gamma 4.

    ``smooth = 0`` (DeSTSeg; exact): ``log p_t`` from ``logsigmoid``, finite for any logit.
    ``smooth > 0`` reproduces the official DRAEM ``FocalLoss(smooth=1e-5)``: the one-hot
    target is clamped to ``[s, 1 - s]`` and ``s`` is added once more, so that
    ``p_t' = (1 - 2s) * p_t + 2s`` replaces ``p_t`` in both factors (``p_t' >= 2s``: the
    loss of a pixel is at most ``-log(2s)``, about 10.8 for ``s = 1e-5``). The official code
    computes this on the softmax of two logits; ``sigmoid(l1 - l0)`` is the same probability.
    """
    z = _as_map(logit).float()
    t = _as_map(target).to(z.dtype)
    if smooth > 0:
        p = torch.sigmoid(z)
        pt = t * p + (1.0 - t) * (1.0 - p)
        pt = (1.0 - 2.0 * smooth) * pt + 2.0 * smooth
        return -((1.0 - pt).clamp_min(0.0) ** gamma) * torch.log(pt)
    log_p_anom = F.logsigmoid(z)
    log_p_norm = F.logsigmoid(-z)
    log_pt = t * log_p_anom + (1.0 - t) * log_p_norm
    if gamma == 0:
        return -log_pt
    pt = torch.exp(log_pt)
    return -((1.0 - pt).clamp_min(0.0) ** gamma) * log_pt


def focal_loss(logit: torch.Tensor, target: torch.Tensor, gamma: float, smooth: float = 0.0) -> torch.Tensor:
    """Mean of ``focal_map`` over every pixel of the batch."""
    return focal_map(logit, target, gamma, smooth).mean()


@torch.no_grad()
def weak_mask(p_anomaly: torch.Tensor, box_mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Weights of Eq. 9: 0 inside the box where ``1 - p_anomaly >= tau``, else 1 (N,H,W).

    ``p_anomaly`` is detached here. ``tau >= 1`` returns all ones (plain box supervision).
    ``tau`` in [0, 1] is checked by the schema (``detectors.tau``).
    """
    p = _as_map(p_anomaly).detach().float()
    box = _as_map(box_mask).to(p.device)
    if tau >= 1.0:
        return torch.ones_like(p)
    confident_normal = (1.0 - p) >= tau  # delta of Eq. 8
    drop = confident_normal & (box > 0.5)
    return (~drop).to(p.dtype)


def weak_focal_loss(
    logit: torch.Tensor,
    box_mask: torch.Tensor,
    tau: float,
    gamma: float,
    apply: torch.Tensor | None = None,
    smooth: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 with the focal loss: ``mean(weight * focal_map(logit, box, gamma, smooth))``.

    ``apply`` (bool, N): samples for which the weak mask is used; the others get weight 1
    everywhere (plain supervision). Returns ``(loss, weight)``.
    """
    fmap = focal_map(logit, box_mask, gamma, smooth)
    weight = weak_mask(torch.sigmoid(_as_map(logit).detach().float()), box_mask, tau)
    if apply is not None:
        apply = apply.to(weight.device).bool().view(-1, 1, 1)
        weight = torch.where(apply, weight, torch.ones_like(weight))
    return (weight * fmap).mean(), weight


# ----------------------------------------------------------------------------- SSIM


def gaussian_window(size: int = 11, sigma: float = 1.5, channels: int = 3) -> torch.Tensor:
    """The official DRAEM window: the outer product of the normalised 1-D Gaussian, per channel
    (C,1,size,size), for a grouped ``conv2d`` with zero padding ``size // 2``. ``ssim`` applies
    the same filter as two banded matrix products (``gaussian_filter``)."""
    g = _gaussian_1d(size, sigma)
    window = (g[:, None] @ g[None, :]).float()
    return window.expand(channels, 1, size, size).contiguous()


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


@functools.lru_cache(maxsize=32)
def _band_matrix(n: int, size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix ``B`` with ``B[i, j] = g[j - i + size // 2]`` (0 off the band): ``B @ x``
    filters the columns of ``x`` as a ``size``-tap correlation with zero padding would.
    Cached: built (and copied to the device) once, not in every training step."""
    g = _gaussian_1d(size, sigma)
    offset = torch.arange(n)[None, :] - torch.arange(n)[:, None] + size // 2
    inside = (offset >= 0) & (offset < size)
    band = torch.where(inside, g[offset.clamp(0, size - 1)], torch.zeros((), dtype=torch.float64))
    return band.to(device, dtype)


def gaussian_filter(x: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Each channel of N,C,H,W ``x`` filtered by the ``size`` x ``size`` Gaussian with zero
    padding: ``conv2d(x, gaussian_window(size, sigma, C), padding=size // 2, groups=C)``.

    The window is separable, so the filter is ``B_H @ x @ B_W^T`` with banded matrices: the
    same sums up to float round-off (< 1e-6), and on a CPU core 10x faster than the grouped
    11x11 convolution at 64 px, forward and backward (the convolution was 15% of a DRAEM step
    there: bench/bench_job_overheads.py)."""
    h, w = x.shape[-2:]
    rows = _band_matrix(h, size, sigma, x.device, x.dtype)
    cols = rows if w == h else _band_matrix(w, size, sigma, x.device, x.dtype)
    return rows @ x @ cols.T


def infer_value_range(img: torch.Tensor) -> torch.Tensor:
    """The official DRAEM ``ssim(val_range=None)`` rule, applied to its first argument:
    ``max = 255 if max(img) > 128 else 1``, ``min = -1 if min(img) < -0.5 else 0``,
    range = max - min (so 1 for [0, 1] images, 2 once a value drops below -0.5).

    A 0-d float64 tensor on ``img``'s device: no host sync per training step (the official
    code's Python ``if`` waits for the GPU twice a step), and the constants it scales keep
    the precision of a Python float."""
    one = torch.ones((), dtype=torch.float64, device=img.device)
    hi = torch.where(img.max() > 128, 255.0 * one, one)
    lo = torch.where(img.min() < -0.5, -one, 0.0 * one)
    return hi - lo


def ssim(
    img1: torch.Tensor,
    img2: torch.Tensor,
    window_size: int = 11,
    value_range: float | None = 1.0,
    reduce: bool = True,
) -> torch.Tensor:
    """SSIM with an 11x11 Gaussian window (sigma 1.5), per channel, zero padding.

    ``value_range=None`` infers the range from ``img1`` as the official DRAEM code does
    (``infer_value_range``); a number fixes it.
    """
    if value_range is None:
        value_range = infer_value_range(img1.detach())

    def filt(x: torch.Tensor) -> torch.Tensor:
        return gaussian_filter(x, window_size, 1.5)

    mu1, mu2 = filt(img1), filt(img2)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = filt(img1 * img1) - mu1_sq
    s2 = filt(img2 * img2) - mu2_sq
    s12 = filt(img1 * img2) - mu12
    c1 = (0.01 * value_range) ** 2
    c2 = (0.03 * value_range) ** 2
    smap = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return smap.mean() if reduce else smap


def ssim_loss(
    img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, value_range: float | None = None
) -> torch.Tensor:
    """``1 - SSIM`` (DRAEM's reconstruction term; ``img1`` is the reconstruction, whose
    values set the range when ``value_range`` is None, as in the official ``SSIM()``)."""
    return 1.0 - ssim(img1.float(), img2.float(), window_size, value_range)


def cosine_distance_loss(distance_maps: list[torch.Tensor]) -> torch.Tensor:
    """DeSTSeg's student loss: for each level, the sum over the batch of the per-pixel
    ``1 - cos`` map divided by the map's H*W, summed over levels (as in the published code,
    i.e. a per-pixel mean times the batch size)."""
    total = distance_maps[0].new_zeros(())
    for d in distance_maps:
        h, w = d.shape[-2:]
        total = total + d.float().sum() / (h * w)
    return total
