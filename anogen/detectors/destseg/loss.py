"""DeSTSeg's training losses (both phases), as one module.

Phase 1 (student): the cosine distance between the teacher's features of the clean image
and the student's features of the anomalous one (``losses.cosine_distance_loss``).
Phase 2 (segmentation): ``focal_gamma4(logit, mask) + L1(sigmoid(logit), mask)`` on the mask
resized to the output size (1/4 of the image: bilinear, then >= 0.5). For ``weak`` samples
the focal term is the weak box loss (threshold ``tau``; the L1 term stays plain, as in the
published AnoGen setup). A baseline (no ``tau`` in its spec) never marks a sample weak:
``tau=None`` is plain supervision, exactly the weak loss with every weight 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anogen.detectors.losses import cosine_distance_loss, focal_map, weak_focal_loss


def segmentation_target(mask: torch.Tensor, size) -> torch.Tensor:
    """The {0, 1} mask at the segmentation output's ``size`` (bilinear, then >= 0.5)."""
    target = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return (target >= 0.5).float()


class DestsegLoss(nn.Module):
    """``student(distance_maps)``: phase 1; ``forward(logit, mask, weak) -> (loss, terms)``:
    phase 2 (``terms``: ``focal``, ``l1``, ``weight``, the weak-loss weights N,h,w)."""

    def __init__(self, cfg: dict[str, Any], tau: float | None):
        super().__init__()
        self.focal_gamma = float(cfg["focal_gamma"])
        self.tau = None if tau is None else float(tau)

    @staticmethod
    def student(distance_maps: list[torch.Tensor]) -> torch.Tensor:
        return cosine_distance_loss(distance_maps)

    def focal(self, logit: torch.Tensor, target: torch.Tensor, weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tau is None:  # a baseline: its stream never marks a sample weak
            fmap = focal_map(logit, target, self.focal_gamma)
            return fmap.mean(), torch.ones_like(fmap)
        return weak_focal_loss(logit, target, self.tau, self.focal_gamma, apply=weak)

    def forward(
        self, logit: torch.Tensor, mask: torch.Tensor, weak: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = segmentation_target(mask, logit.shape[2:])
        focal, weight = self.focal(logit, target, weak)
        l1 = F.l1_loss(torch.sigmoid(logit), target)
        return focal + l1, {"focal": focal, "l1": l1, "weight": weight}
