"""The learned anomaly embedding on disk, in diffusers' textual-inversion format.

A ``learned_embeds.safetensors`` file maps the placeholder token to its vector(s), shape
[n_vectors, dim], exactly as diffusers' textual-inversion example writes it, so that
``StableDiffusionPipeline.load_textual_inversion(path, token=...)`` loads it. The LDM
pipeline has no such loader: ``load_embedding(pipe, path)`` loads it into either family's
pipeline, and ``Backbone.set_token_embedding`` is the same for AnoGen's own stages.
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
    ((token, vector),) = tensors.items()
    return token, vector.reshape(1, -1)


def _pipeline_text_parts(pipe) -> tuple[object, object]:
    """(tokenizer, text encoder) of an LDM (``bert``) or Stable Diffusion (``text_encoder``) pipeline."""
    tokenizer = getattr(pipe, "tokenizer", None)
    encoder = getattr(pipe, "text_encoder", None) or getattr(pipe, "bert", None)
    if tokenizer is None or encoder is None:
        raise TypeError(
            f"{type(pipe).__name__} has no tokenizer and text encoder (expected an LDMTextToImagePipeline "
            "with tokenizer + bert, or a StableDiffusion pipeline with tokenizer + text_encoder)"
        )
    return tokenizer, encoder


def load_embedding(pipe, path: str | Path, token: str | None = None) -> int:
    """Add a learned anomaly token to a diffusers pipeline; return the token's id.

    Works for both families AnoGen uses: ``LDMTextToImagePipeline`` (LDMBert and a
    BertTokenizer; diffusers gives it no ``load_textual_inversion``) and Stable Diffusion 1.x
    (CLIP; the same result as diffusers' ``pipe.load_textual_inversion(path, token=...)``).
    The token (``token``, or the one stored in the file) is added to the tokenizer, the text
    encoder's input embeddings grow by one row, and that row is set to the learned vector, so
    a prompt such as ``"a photo of <anomaly>"`` puts the vector at the token's position.
    Loading the same token again replaces its vector; a token that is already a word of the
    model's own vocabulary is refused (it would change what that word means).
    """
    stored, vector = load_learned_embedding(path)
    token = token or stored
    tokenizer, encoder = _pipeline_text_parts(pipe)
    embeddings = encoder.get_input_embeddings()
    vector = vector.reshape(-1)
    if vector.numel() != embeddings.weight.shape[1]:
        raise IntegrityError(
            path,
            f"the embedding has {vector.numel()} values but the pipeline's text encoder "
            f"({type(encoder).__name__}) has {embeddings.weight.shape[1]}: it was learned on another model",
        )
    added = set(tokenizer.get_added_vocab())
    if token in tokenizer.get_vocab() and token not in added:
        raise ValueError(f"{token!r} is already a word of the pipeline's tokenizer; load it under another token")
    if token not in added:
        tokenizer.add_tokens([token])
    token_id = int(tokenizer.convert_tokens_to_ids(token))
    if token_id >= embeddings.num_embeddings:
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = encoder.get_input_embeddings()
    with torch.no_grad():
        embeddings.weight[token_id] = vector.to(embeddings.weight)
    return token_id
