"""DRAEM's training loss (DRAEM / AnoGen Eq. 3-4, 9), as one module.

    L = MSE(rec, clean) + ssim_weight * (1 - SSIM_11(rec, clean)) + focal_gamma(mask),

with the official code's small numeric details (schema defaults): the focal loss clamps its
one-hot target with ``focal_smooth = 1e-5`` (``losses.focal_map``), and SSIM infers its
value range from the reconstruction (``ssim_value_range: null``; ``losses.infer_value_range``).
For the samples the stream marks ``weak`` the focal term is the weak box loss
(``losses.weak_focal_loss``, threshold ``tau``). A baseline (no generated branch, so no
``tau`` in its spec) never marks a sample weak: ``tau=None`` is plain supervision, which
gives exactly the weak loss with every weight 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anogen.detectors.losses import focal_map, ssim_loss, weak_focal_loss


class DraemLoss(nn.Module):
    """``forward(rec, clean, logit, mask, weak) -> (loss, terms)``; inputs float32.

    ``terms``: the float tensors ``l2``, ``ssim``, ``focal`` and ``weight`` (the weak-loss
    weights per pixel, N,H,W; all ones without weak samples)."""

    def __init__(self, cfg: dict[str, Any], tau: float | None):
        super().__init__()
        self.ssim_weight = float(cfg["ssim_weight"])
        self.focal_gamma = float(cfg["focal_gamma"])
        self.focal_smooth = float(cfg["focal_smooth"])
        value_range = cfg["ssim_value_range"]
        self.ssim_value_range = None if value_range is None else float(value_range)
        self.tau = None if tau is None else float(tau)

    def focal(self, logit: torch.Tensor, mask: torch.Tensor, weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tau is None:  # a baseline: its stream never marks a sample weak
            fmap = focal_map(logit, mask, self.focal_gamma, self.focal_smooth)
            return fmap.mean(), torch.ones_like(fmap)
        return weak_focal_loss(logit, mask, self.tau, self.focal_gamma, apply=weak, smooth=self.focal_smooth)

    def forward(
        self, rec: torch.Tensor, clean: torch.Tensor, logit: torch.Tensor, mask: torch.Tensor, weak: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        l2 = F.mse_loss(rec, clean)
        ssim = ssim_loss(rec, clean, value_range=self.ssim_value_range)
        focal, weight = self.focal(logit, mask, weak)
        loss = l2 + self.ssim_weight * ssim + focal
        return loss, {"l2": l2, "ssim": ssim, "focal": focal, "weight": weight}
