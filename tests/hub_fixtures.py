"""Tiny models laid out exactly as the real checkpoints are published, and a hub cache holding them.

``anogen.diffusion.tiny.build_tiny_model`` writes the published layout (``.bin`` weights, slow-tokenizer
files, the published scheduler and config files, the VAE's 2022 attention names). These helpers add
what a user's machine has after ``hf download``: the HF cache's ``models--<org>--<name>/`` with
``blobs/<sha256>``, ``snapshots/<commit>/`` (links into ``blobs/``) and ``refs/main``; and the
variants met in community copies: a text encoder saved in float16, a folder of fp16-variant files only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from anogen.diffusion.published import SUBFOLDERS
from anogen.diffusion.tiny import build_tiny_model

LDM_REPO = "CompVis/ldm-text2im-large-256"
SD_REPO = "CompVis/stable-diffusion-v1-4"
REPO_OF_FAMILY = {"ldm": LDM_REPO, "sd": SD_REPO}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def published_model(family: str, folder: Path, *, seed: int = 0, resolution: int = 64) -> Path:
    return build_tiny_model(family, folder, seed=seed, resolution=resolution)


def install_in_hub_cache(folder: Path, repo_id: str, cache: Path, commit: str = COMMIT) -> Path:
    """Put ``folder``'s files into ``cache`` as ``hf download repo_id`` does; returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def text_encoder_in_float16(folder: Path, family: str) -> None:
    """Re-save the text encoder as many community copies have it: fp16 weights, ``torch_dtype: float16``."""
    sub = folder / SUBFOLDERS[family]["text_encoder"]
    state = torch.load(sub / "pytorch_model.bin", weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, sub / "pytorch_model.bin")
    config = json.loads((sub / "config.json").read_text())
    config["torch_dtype"] = "float16"
    (sub / "config.json").write_text(json.dumps(config, indent=2))


def fp16_variant_only(folder: Path, family: str) -> None:
    """Replace every weight file by its ``*.fp16.safetensors`` variant (half precision), nothing else."""
    from safetensors.torch import save_file

    for part in ("unet", "vae", "text_encoder"):
        sub = folder / SUBFOLDERS[family][part]
        (weights,) = sub.glob("*.bin")
        state = torch.load(weights, weights_only=True)
        stem = "model" if part == "text_encoder" else "diffusion_pytorch_model"
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        save_file(half, sub / f"{stem}.fp16.safetensors")
        weights.unlink()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
