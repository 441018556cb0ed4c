"""DRAEM training step, learning-rate schedule and scoring (the loss: ``loss.DraemLoss``).

The discriminative input is ``rec ++ image`` and, as in the published code, the
segmentation loss also trains the reconstructive network.

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

from anogen.detectors.common import backward_step, count_parameters
from anogen.detectors.draem.loss import DraemLoss
from anogen.detectors.draem.network import DraemNet, init_weights
from anogen.devices import autocast, grad_scaler


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
    """``cfg``: the spec's ``draem`` section (every key the schema fills); ``tau``: the
    resolved tau of a non-baseline variant, None for a baseline."""

    name = "draem"
    log_columns = ("loss", "l2", "ssim", "focal", "weak_dropped", "lr")

    def __init__(
        self,
        cfg: dict[str, Any],
        *,
        seed: int,
        tau: float | None,
        device: str,
        n_train: int,
        mixed_precision: str,
    ):
        self.cfg = dict(cfg)
        self.device = device
        self.mixed_precision = mixed_precision
        self.loss = DraemLoss(self.cfg, tau)
        self.tau = self.loss.tau
        torch.manual_seed(seed)
        self.model = DraemNet(int(self.cfg["recon_base_width"]), int(self.cfg["disc_base_width"]))
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
    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        """One optimiser step; the losses stay 0-d device tensors (no host sync: the caller
        copies them in batches, ``common.rows_to_host``), the learning rate is a float."""
        dev = self.device
        image = batch["image"].to(dev, non_blocking=True)
        clean = batch["clean"].to(dev, non_blocking=True)
        mask = batch["mask"].to(dev, non_blocking=True)
        weak = batch["weak"].to(dev)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with autocast(self.mixed_precision, dev):
            rec, logit = self.model(image)
        loss, terms = self.loss(rec.float(), clean, logit.float(), mask, weak)
        self.optimizer.zero_grad(set_to_none=True)
        backward_step(loss, self.optimizer, self.scaler)
        return {
            "loss": loss.detach(),
            "l2": terms["l2"].detach(),
            "ssim": terms["ssim"].detach(),
            "focal": terms["focal"].detach(),
            "weak_dropped": (terms["weight"] == 0).float().mean(),
            "lr": lr,
        }


@torch.no_grad()
def draem_predict(model: DraemNet, images: torch.Tensor, pool: int, device: str, mixed_precision: str):
    model.eval()
    with autocast(mixed_precision, device):
        _, logit = model(images)
    p = torch.sigmoid(logit.float())
    scores = draem_scores(p, pool)
    return scores.cpu().numpy().astype(np.float64), p[:, 0].cpu().numpy().astype(np.float32)
