"""The learned anomaly embedding on disk, in diffusers' textual-inversion format.

A ``learned_embeds.safetensors`` file maps the placeholder token to its vector(s), shape
[n_vectors, dim], exactly as diffusers' textual-inversion example writes it, so that
``StableDiffusionPipeline.load_textual_inversion(path, token=...)`` loads it. The LDM
pipeline has no such loader; ``Backbone.set_token_embedding`` reads the same file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from anogen.errors import IntegrityError
from anogen.io import atomic_path


def save_learned_embedding(path: str | Path, token: str, vector: torch.Tensor, metadata: dict | None = None) -> None:
    tensor = vector.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({token: tensor}, str(tmp), metadata=meta)


def load_learned_embedding(path: str | Path) -> tuple[str, torch.Tensor]:
    """Return (token, vector [1, dim]) from a single-token textual-inversion file."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise IntegrityError(path, f"not a readable safetensors embedding ({exc})") from exc
    if len(tensors) != 1:
        raise IntegrityError(path, f"expected one token in the embedding file, found {sorted(tensors)}")
    (token, vector), = tensors.items()
    return token, vector.reshape(1, -1)
