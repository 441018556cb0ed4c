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
from anogen.keys import canonical_json


def save_learned_embedding(path: str | Path, token: str, vector: torch.Tensor, metadata: dict | None = None) -> None:
    """Write ``{token: vector [1, dim]}``; ``metadata`` goes, as canonical JSON, under one
    header key ``anogen`` (safetensors orders several metadata keys at random, which would
    make the file's bytes, and so its sha256, differ between identical runs)."""
    tensor = vector.detach().to("cpu", torch.float32).reshape(1, -1).contiguous()
    meta = {"anogen": canonical_json(metadata)} if metadata else None
    with atomic_path(path) as tmp:
        save_file({token: tensor}, str(tmp), metadata=meta)


def read_embedding_metadata(path: str | Path) -> dict:
    """The ``metadata`` dict given to ``save_learned_embedding`` ({} when there was none)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta["anogen"]) if "anogen" in meta else {}


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
