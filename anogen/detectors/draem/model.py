"""DRAEM training step, learning-rate schedule and scoring.

Loss per step (DRAEM / AnoGen Eq. 3-4, 9):
    L = MSE(rec, clean) + ssim_weight * (1 - SSIM_11(rec, clean)) + focal_gamma(mask),
with the official code's small numeric details by default: the focal loss clamps its
one-hot target with ``focal_smooth = 1e-5`` (``losses.focal_map``), and SSIM infers its
value range from the reconstruction (``ssim_value_range: null``; ``losses.infer_value_range``).
with the focal term replaced by the weak box loss (``losses.weak_focal_loss``) for the
samples the stream marks ``weak``. The discriminative input is ``rec ++ image`` and, as in
the published code, the segmentation loss also trains the reconstructive network.

Budget: ``epochs`` passes of ``ceil(n_train / batch_size)`` steps. Learning rate (Adam, both
sub-networks): ``schedule='original'``: x0.2 from epoch 0.8*epochs and again from
0.9*epochs; ``'anogen'``: x0.1 from epoch 400 and again from epoch 600. The factor is a
pure function of the step, so nothing about the schedule needs checkpointing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anogen.detectors.draem.network import DraemNet, count_parameters, init_weights
from anogen.detectors.losses import ssim_loss, weak_focal_loss
from anogen.detectors.precision import detector_autocast, grad_scaler

DRAEM_DEFAULTS = {
    "epochs": 700,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "schedule": "original",
    "recon_base_width": 128,
    "disc_base_width": 64,
    "ssim_weight": 1.0,
    "focal_gamma": 2.0,
    "focal_smooth": 1e-5,
    "ssim_value_range": None,
    "score_pool": 21,
}


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    if schedule == "original":
        milestones, gamma = (0.8 * epochs, 0.9 * epochs), 0.2
    elif schedule == "anogen":
        milestones, gamma = (400, 600), 0.1
    else:
        raise ValueError(f"unknown DRAEM schedule {schedule!r}")
    return gamma ** sum(epoch >= m for m in milestones)


def draem_scores(p_anomaly: torch.Tensor, pool: int) -> torch.Tensor:
    """Image score: max of the ``pool x pool`` average-pooled anomaly map (stride 1, zero
    padding pool//2, padding counted, as published). ``p_anomaly``: N,1,H,W."""
    pooled = F.avg_pool2d(p_anomaly.float(), pool, stride=1, padding=pool // 2)
    return pooled.flatten(1).max(dim=1).values


class DraemTrainer:
    name = "draem"
    log_columns = ("loss", "l2", "ssim", "focal", "weak_dropped", "lr")

    def __init__(
        self,
        cfg: dict[str, Any],
        *,
        seed: int,
        tau: float,
        device: str,
        n_train: int,
        mixed_precision: str = "no",
    ):
        self.cfg = {**DRAEM_DEFAULTS, **cfg}
        self.tau, self.device = float(tau), device
        self.mixed_precision = mixed_precision
        torch.manual_seed(seed)
        self.model = DraemNet(self.cfg["recon_base_width"], self.cfg["disc_base_width"])
        init_weights(self.model)
        self.model.to(device)
        lr = float(self.cfg["learning_rate"])
        self.optimizer = torch.optim.Adam(
            [
                {"params": self.model.recon.parameters(), "lr": lr},
                {"params": self.model.disc.parameters(), "lr": lr},
            ]
        )
        self.batch_size = int(self.cfg["batch_size"])
        self.steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        self.total_steps = int(self.cfg["epochs"]) * self.steps_per_epoch
        self.scaler = grad_scaler(mixed_precision, device)

    # -- state
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer}

    def lr_at(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return float(self.cfg["learning_rate"]) * lr_factor(self.cfg["schedule"], epoch, int(self.cfg["epochs"]))

    def parameter_counts(self) -> dict[str, int]:
        return {
            "reconstructive": count_parameters(self.model.recon),
            "discriminative": count_parameters(self.model.disc),
            "total": count_parameters(self.model),
        }

    def export_config(self) -> dict[str, Any]:
        return {
            "recon_base_width": int(self.cfg["recon_base_width"]),
            "disc_base_width": int(self.cfg["disc_base_width"]),
            "score_pool": int(self.cfg["score_pool"]),
            "mixed_precision": self.mixed_precision,
        }

    # -- one step
    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        dev = self.device
        image = batch["image"].to(dev, non_blocking=True)
        clean = batch["clean"].to(dev, non_blocking=True)
        mask = batch["mask"].to(dev, non_blocking=True)
        weak = batch["weak"].to(dev)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with detector_autocast(self.mixed_precision, dev):
            rec, logit = self.model(image)
        rec, logit = rec.float(), logit.float()
        l2 = F.mse_loss(rec, clean)
        value_range = self.cfg["ssim_value_range"]
        ssim = ssim_loss(rec, clean, value_range=None if value_range is None else float(value_range))
        focal, weight = weak_focal_loss(
            logit,
            mask,
            self.tau,
            float(self.cfg["focal_gamma"]),
            apply=weak,
            smooth=float(self.cfg["focal_smooth"]),
        )
        loss = l2 + float(self.cfg["ssim_weight"]) * ssim + focal
        self.optimizer.zero_grad(set_to_none=True)
        _backward_step(loss, self.optimizer, self.scaler)
        return {
            "loss": loss.item(),
            "l2": l2.item(),
            "ssim": ssim.item(),
            "focal": focal.item(),
            "weak_dropped": float((weight == 0).float().mean().item()),
            "lr": lr,
        }


@torch.no_grad()
def draem_predict(model: DraemNet, images: torch.Tensor, pool: int, device: str, mixed_precision: str = "no"):
    model.eval()
    with detector_autocast(mixed_precision, device):
        _, logit = model(images)
    p = torch.sigmoid(logit.float())
    scores = draem_scores(p, pool)
    return scores.cpu().numpy().astype(np.float64), p[:, 0].cpu().numpy().astype(np.float32)


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
