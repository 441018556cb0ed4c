"""Stage 1 without training: import the authors' published embedding of one (category, defect).

The vector of the authors' ``embeddings.pt`` (see ``anogen.authors``) is written as the same
``learned_embeds.safetensors`` that ``learn_embedding`` writes (diffusers' textual-inversion
format, ``{placeholder_token: [1, dim]}``), under this config's ``embedding.placeholder_token``
rather than their ``*`` (a token of BERT's vocabulary: the prompt is the placeholder alone
either way, one token whose input embedding is the vector). Downstream rules read it
unchanged. No diffusion model is loaded: the width is checked against the text encoder when
generating (``anogen.generation.run.check_embedding_width``).

The rule's other outputs say what happened instead of inventing a loss curve: ``loss.csv``
holds the header ``step,loss,lr`` and no row (zero steps were trained here), ``loss.png`` is
an empty plot titled "imported: no training"; the manifest's ``extra`` records
``source: authors``, the source path, its sha256 and the token it was stored under.
"""

from __future__ import annotations

import logging
from pathlib import Path

from anogen.authors import load_authors_embedding
from anogen.diffusion.textual_inversion import save_learned_embedding
from anogen.embedding.train import EMBEDDING_FILE, LOSS_CSV, LOSS_PNG, render_loss_plot, write_loss_csv
from anogen.errors import DataError
from anogen.io import MANIFEST_NAME, sha256_file, write_manifest

log = logging.getLogger("anogen.embedding")

__all__ = ["import_authors_embedding"]


def import_authors_embedding(
    *,
    source: str | Path,
    spec: dict,
    out_dir: str | Path,
    key: str,
    inputs: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``learned_embeds.safetensors``, ``loss.csv``, ``loss.png`` and (last) the manifest."""
    source = Path(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    digest = sha256_file(source) if source.is_file() else None
    if digest is not None and digest != spec["sha256"]:
        raise DataError(
            source, "changed since the workflow was planned (its sha256 is part of the key); rerun snakemake"
        )
    source_token, vector = load_authors_embedding(source)
    token = spec["placeholder_token"]
    save_learned_embedding(
        out_dir / EMBEDDING_FILE,
        token,
        vector,
        metadata={"source": "authors", "source_token": source_token, "source_sha256": digest, "key": key},
    )
    write_loss_csv(out_dir / LOSS_CSV, [], 0.0)
    render_loss_plot(
        out_dir / LOSS_PNG,
        [],
        title=f"{spec['category']}/{spec['defect']}: imported from the authors' embeddings.pt (no training)",
    )
    log.info("imported %s (%s, %d-d) as %s", source, source_token, vector.numel(), token)
    return write_manifest(
        out_dir,
        stage="embedding",
        key=key,
        spec=spec,
        inputs=inputs,
        files=[EMBEDDING_FILE, LOSS_CSV, LOSS_PNG],
        extra={
            "source": "authors",
            "source_path": str(source),
            "source_sha256": digest,
            "source_token": source_token,
            "token": token,
            "dim": int(vector.numel()),
            "family": None,  # no model was loaded; the authors trained on CompVis/ldm-text2im-large-256
            "trained_steps": 0,
            **(extra or {}),
        },
    )
