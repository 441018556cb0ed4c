"""Where a diffusion model's files are, which classes read them, which of them are missing, and
which of them ``load_backbone`` reads (the model's part of the content keys).

A model is a local folder or a hub id. A hub id is resolved in the local HF cache only
(``snapshots/<commit>/`` through ``refs/<revision>``), never over the network: with
``HF_HUB_OFFLINE=1`` (cluster compute nodes) that is all ``from_pretrained`` can read, and
checking it first turns the hub libraries' "couldn't connect" into a list of the files that
are really missing, and where.

The plan imports this module (no torch, no diffusers): ``model_files_record`` names the files the
loader reads and identifies each without reading it. In a hub cache a snapshot's file is a link to
``blobs/<etag>``, and the etag is the file's hash (sha256 for LFS files, git's blob sha1 for the
others), so the link alone identifies the content; a local folder's file is identified by size and
mtime_ns, as the data set's files are (``anogen.data.fingerprint``): hashing gigabytes of weights
at every planning would make a dry run take minutes.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from anogen.diffusion.published import FAMILY_OF_PIPELINE, SUBFOLDERS, TOKENIZER_FILES
from anogen.errors import ConfigError

# Weight files a component may have, in the order its library looks for them. diffusers (with
# use_safetensors unset) takes a safetensors index, then one .safetensors file, then one .bin
# file, and never reads a .bin index; transformers takes .safetensors, its index, .bin, its index.
_WEIGHT_NAMES = {
    "diffusers": (
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin",
    ),
    "transformers": (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ),
}
# The components with weights, and the library whose rules pick their files.
_WEIGHTED_PARTS = (("unet", "diffusers"), ("vae", "diffusers"), ("text_encoder", "transformers"))
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


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit; None = main) in
    the HF cache, resolved as huggingface_hub does offline; None when it is not there."""
    from huggingface_hub import constants  # the cache folder only (HF_HUB_CACHE, HF_HOME): cheap

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def local_model_root(model: str, revision: str | None = None) -> Path | None:
    """The folder holding ``model``'s files: the folder itself, or its snapshot in the HF cache.

    None when a hub id is not in the cache (``from_pretrained`` may still download it online).
    """
    if Path(model).is_dir():
        return Path(model)
    return hub_snapshot(model, revision)


def _with_variant(name: str, variant: str | None) -> str:
    """diffusers' and transformers' ``_add_variant``: the variant goes before the last suffix."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weight_files(folder: Path, library: str, variant: str | None) -> list[str]:
    """The names of the weight files in ``folder`` that ``library``'s ``from_pretrained`` reads: the
    first of ``_WEIGHT_NAMES`` there, and for a shard index the index and every shard it maps to."""
    for name in _WEIGHT_NAMES[library]:
        name = _with_variant(name, variant)
        if not (folder / name).is_file():
            continue
        if ".index." not in name:
            return [name]
        shards = json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"].values()
        return [name, *sorted(set(shards))]
    return []


def read_files(root: Path, variant: str | None) -> list[str]:
    """The files of the model in ``root`` that ``load_backbone`` reads, as POSIX paths relative to it.

    model_index.json, the scheduler's config, each loaded component's config.json and weights
    (``weight_files``), and every file of the tokenizer's folder (which of its config, special-token
    and vocabulary files a tokenizer opens depends on its class and the transformers version;
    tokenizer.json where there is one). Components never loaded (a safety checker, an image
    processor) are not read.
    """
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    sub = SUBFOLDERS[FAMILY_OF_PIPELINE[index["_class_name"]]]
    files = ["model_index.json", f"{sub['scheduler']}/scheduler_config.json"]
    for part, library in _WEIGHTED_PARTS:
        names = ["config.json", *weight_files(root / sub[part], library, variant)]
        files += [f"{sub[part]}/{name}" for name in names]
    tokenizer = root / sub["tokenizer"]
    if tokenizer.is_dir():
        files += sorted(f"{sub['tokenizer']}/{p.name}" for p in tokenizer.iterdir() if p.is_file())
    return files


def _identity(path: Path, in_hub_cache: bool) -> dict:
    """A file's content without reading it: a hub cache link's blob name, else size and mtime_ns."""
    if in_hub_cache and path.is_symlink():
        blob = Path(os.readlink(path))
        if blob.parent.name == "blobs":  # an LFS file's sha256 (64 hex), another file's git blob sha1 (40)
            return {"sha256" if len(blob.name) == 64 else "git_blob_sha1": blob.name}
    try:
        st = path.stat()
    except FileNotFoundError:
        return {"bytes": None, "mtime_ns": None}
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_files_record(model: str, revision: str | None, variant: str | None) -> dict | None:
    """Where ``model`` is and each file ``load_backbone`` reads with its identity (``_identity``):
    ``{"source": "hub", "snapshot": <commit>, "files": {...}}`` or ``{"source": "folder", "folder":
    <absolute path>, "files": {...}}``. None when there is nothing here to read (a hub id not in the
    cache, a folder without the model_index.json of a supported pipeline): the loader says why.
    """
    in_hub_cache = not Path(model).is_dir()
    root = local_model_root(model, revision)
    if root is None:
        return None
    try:
        files = read_files(root, variant)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if in_hub_cache:
        where = {"source": "hub", "snapshot": root.name}
    else:
        where = {"source": "folder", "folder": str(root.resolve())}
    return {**where, "files": {rel: _identity(root / rel, in_hub_cache) for rel in files}}


def missing_model_files(root: Path, index: dict, subfolders: dict, variant: str | None) -> list[str]:
    """One line per missing file of the components the project loads (empty when all are there)."""
    missing = []
    for part, library in _WEIGHTED_PARTS:
        folder = root / subfolders[part]
        if not (folder / "config.json").is_file():
            missing.append(f"{folder / 'config.json'} is missing")
        if not weight_files(folder, library, variant):
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
