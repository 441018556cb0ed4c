"""What both detector trainers share: parameter counts, one optimiser step, losses to the host.

Numeric precision (autocast, loss scaling) is decided in ``anogen.devices``; the trainers
only pass its ``GradScaler`` (or None) to ``backward_step``.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def rows_to_host(rows: list[dict]) -> list[dict]:
    """``rows`` with every tensor value (0-d, on the device) replaced by its Python float, in one
    device-to-host copy: a per-value ``.item()`` would wait for the device at every step.

    The values travel as float64, which holds every float32 / bf16 / fp16 value exactly, so each
    float equals what ``.item()`` would have returned."""
    where = [(i, k) for i, row in enumerate(rows) for k, v in row.items() if isinstance(v, torch.Tensor)]
    out = [dict(row) for row in rows]
    if where:
        values = torch.stack([rows[i][k].detach().reshape(()).to(torch.float64) for i, k in where]).cpu().tolist()
        for (i, k), v in zip(where, values):
            out[i][k] = v
    return out


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """``loss.backward()`` and ``optimizer.step()``, through the fp16 loss scaler when there is one."""
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
