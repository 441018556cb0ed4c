"""Numeric precision of the stage-3 detectors (config ``detectors.mixed_precision``).

The official DRAEM and DeSTSeg code, and the authors' AnoGen forks of both, train and test
in float32. ``"no"`` (the default) does the same. ``"auto"`` autocasts the forward passes
on CUDA to bfloat16 where the GPU supports it, else to float16 (with loss scaling);
``"bf16"`` / ``"fp16"`` force one of the two. Losses are always computed in float32. On a
CPU every mode runs in float32, and the manifest records the precision actually used.
"""

from __future__ import annotations

import contextlib

import torch

MODES = ("no", "auto", "bf16", "fp16")

__all__ = ["MODES", "effective_precision", "detector_autocast", "grad_scaler"]


def effective_precision(mode: str, device: str) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: what ``mode`` means on ``device``."""
    if mode not in MODES:
        raise ValueError(f"unknown mixed_precision {mode!r} (one of {MODES})")
    if mode == "no" or device != "cuda":
        return "fp32"
    if mode == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return mode


def detector_autocast(mode: str, device: str):
    """A context manager: autocast to the effective precision, or nothing for fp32."""
    precision = effective_precision(mode, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(mode: str, device: str):
    """Loss scaling only for fp16 autocast; None otherwise."""
    if effective_precision(mode, device) == "fp16":
        return torch.amp.GradScaler("cuda")
    return None
