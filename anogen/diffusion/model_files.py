"""Where a diffusion model's files are, which classes read them, and which of them are missing.

A model is a local folder or a hub id. A hub id is resolved in the local HF cache only
(``snapshots/<commit>/`` through ``refs/<revision>``), never over the network: with
``HF_HUB_OFFLINE=1`` (cluster compute nodes) that is all ``from_pretrained`` can read, and
checking it first turns the hub libraries' "couldn't connect" into a list of the files that
are really missing, and where.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from anogen.diffusion.published import TOKENIZER_FILES
from anogen.errors import ConfigError

# Weight files a component may have (diffusers models, transformers models), single or sharded.
_WEIGHT_NAMES = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}
# Library names model_index.json uses for pipeline-local classes.
_PIPELINE_MODULES = {
    "latent_diffusion": "diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion",
    "stable_diffusion": "diffusers.pipelines.stable_diffusion",
}


def component_class(index: dict, subfolder: str):
    """The class ``model_index.json`` names for ``subfolder`` (e.g. ``BertTokenizer``)."""
    entry = index.get(subfolder)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        raise ConfigError("diffusion.model", f"model_index.json has no component {subfolder!r}")
    library, name = entry
    module = importlib.import_module(_PIPELINE_MODULES.get(library, library))
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(
            "diffusion.model", f"model_index.json names {library}.{name} for {subfolder!r}; that class does not exist"
        ) from None


def local_model_root(model: str, revision: str | None = None) -> Path | None:
    """The folder holding ``model``'s files: the folder itself, or its snapshot in the HF cache.

    None when a hub id is not in the cache (``from_pretrained`` may still download it online).
    """
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:
        return None


def _with_variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _has_weights(folder: Path, library: str, variant: str | None) -> bool:
    for name in _WEIGHT_NAMES[library]:
        name = _with_variant(name, variant)
        if (folder / name).is_file() or (folder / f"{name}.index.json").is_file():
            return True
    return False


def missing_model_files(root: Path, index: dict, subfolders: dict, variant: str | None) -> list[str]:
    """One line per missing file of the components the project loads (empty when all are there)."""
    missing = []
    for part in ("unet", "vae", "text_encoder"):
        folder = root / subfolders[part]
        library = "diffusers" if part != "text_encoder" else "transformers"
        if not (folder / "config.json").is_file():
            missing.append(f"{folder / 'config.json'} is missing")
        if not _has_weights(folder, library, variant):
            names = " or ".join(_with_variant(n, variant) for n in _WEIGHT_NAMES[library])
            hint = "" if variant else " (a folder of *.fp16.* files only needs diffusion.variant: fp16)"
            missing.append(f"{folder} has no weights ({names}){hint}")
    tokenizer = root / subfolders["tokenizer"]
    tokenizer_class = (index.get(subfolders["tokenizer"]) or [None, None])[1]
    for name in TOKENIZER_FILES.get(str(tokenizer_class).removesuffix("Fast"), ()):
        if not (tokenizer / name).is_file() and not (tokenizer / "tokenizer.json").is_file():
            missing.append(f"{tokenizer / name} is missing (read by {tokenizer_class})")
    if not (root / subfolders["scheduler"] / "scheduler_config.json").is_file():
        missing.append(f"{root / subfolders['scheduler'] / 'scheduler_config.json'} is missing")
    return missing
