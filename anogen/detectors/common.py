"""What both detector trainers share: parameter counts and one optimiser step.

Numeric precision (autocast, loss scaling) is decided in ``anogen.devices``; the trainers
only pass its ``GradScaler`` (or None) to ``backward_step``.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """``loss.backward()`` and ``optimizer.step()``, through the fp16 loss scaler when there is one."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
