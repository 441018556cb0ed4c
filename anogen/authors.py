"""Reading the artefacts the AnoGen authors published with their code (github.com/gaobb/AnoGen).

Their repository ships, for the 73 MVTec AD defect types, the inputs and outputs of their
own run (paths below are relative to the clone named by the ``authors_repo`` config key):

- ``DIFFUSION/images/train_images/<category>/<defect>/<stem>.png``: the 3 support images of
  each defect type (chosen with ``random.seed(0)`` over ``os.listdir`` order), with their
  masks in ``<defect>_mask/<stem>_mask.png`` (MVTec's own mask naming). Only the file
  *names* are used here: the images and masks are read from the user's MVTec copy
  (``data_root/<category>/test/<defect>/<name>`` and ``ground_truth/<defect>/<stem>_mask.png``),
  so nothing of the authors' tree is copied into results;
- ``DIFFUSION/images/mask_template/<category>/<defect>/mask.png``: one hand-drawn box template
  per defect type (68 of the 73; none for the 5 screw defects, whose boxes then use the
  category's foreground). Two folders hold a second file (``grid/metal_contamination``:
  a pasted picture, ``tile/rough``: ``msak.png``) that the authors' mask script never reads
  (it opens ``mask.png`` only), and neither is read here;
- ``DIFFUSION/logs/<category>_<defect>/embeddings.pt``: the learned embedding, a torch zip
  of ``{"string_to_token": {"*": tensor(1008)}, "string_to_param": ParameterDict({"*":
  Parameter[1, 1280]})}`` saved by an older torch (its ParameterDict has no ``_keys``, so
  the vector is read from the module's ``_parameters``), with CUDA storages.

``load_authors_embedding`` loads it with ``weights_only=True`` and only
``torch.nn.ParameterDict`` allow-listed, on CPU; anything else in the pickle is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anogen.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported by the one loader that needs it: planning never loads torch
    import torch

__all__ = [
    "check_authors_repo",
    "published_support_dir",
    "published_support_files",
    "published_template",
    "published_embedding",
    "load_authors_embedding",
]

ROOT = "DIFFUSION"
SUPPORT_DIR = f"{ROOT}/images/train_images"
TEMPLATE_DIR = f"{ROOT}/images/mask_template"
TEMPLATE_NAME = "mask.png"
EMBEDDING_DIR = f"{ROOT}/logs"
EMBEDDING_NAME = "embeddings.pt"
AUTHORS_TOKEN = "*"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def check_authors_repo(repo: str | Path) -> Path:
    """``repo`` as a Path; a ConfigError naming ``authors_repo`` when it is not a clone of theirs."""
    path = Path(repo)
    if not (path / ROOT).is_dir():
        raise ConfigError(
            "authors_repo",
            f"{str(repo)!r} has no {ROOT}/ folder: a clone of https://github.com/gaobb/AnoGen is expected",
        )
    return path


def published_support_dir(repo: str | Path, category: str, defect: str) -> Path:
    return Path(repo) / SUPPORT_DIR / category / defect


def published_support_files(repo: str | Path, category: str, defect: str) -> list[str] | None:
    """File names of the published support images (sorted), or None when the folder is absent."""
    folder = published_support_dir(repo, category, defect)
    if not folder.is_dir():
        return None
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise DataError(folder, "holds no support image (the authors' folders hold 3 .png files each)")
    return names


def published_template(repo: str | Path, category: str, defect: str) -> Path | None:
    """The published box template of (category, defect), or None when there is none (screw)."""
    path = Path(repo) / TEMPLATE_DIR / category / defect / TEMPLATE_NAME
    return path if path.is_file() else None


def published_embedding(repo: str | Path, category: str, defect: str) -> Path:
    return Path(repo) / EMBEDDING_DIR / f"{category}_{defect}" / EMBEDDING_NAME


def load_authors_embedding(path: str | Path) -> tuple[str, torch.Tensor]:
    """(token, float32 vector [dim]) from an authors' ``embeddings.pt``, loaded without running pickle code.

    ``torch.load(weights_only=True)`` with exactly one class allow-listed
    (``torch.nn.ParameterDict``, the container their EmbeddingManager saved); storages are
    mapped to CPU. A file holding any other global, or not exactly one vector, is refused
    with a DataError naming the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist (the authors publish DIFFUSION/logs/<category>_<defect>/embeddings.pt)")
    try:
        with torch.serialization.safe_globals([torch.nn.ParameterDict]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a disallowed global, RuntimeError/zip errors otherwise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            path, f"refused or unreadable as a weights-only torch file ({type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(data, dict) or "string_to_param" not in data:
        raise DataError(path, "is not an embeddings file of the authors' EmbeddingManager (no 'string_to_param')")
    params = data["string_to_param"]
    if isinstance(params, torch.nn.ParameterDict):
        # Older torch: the parameters live in the module's _parameters only (no _keys).
        params = dict(params.__dict__.get("_parameters", {}))
    if not isinstance(params, dict) or len(params) != 1:
        raise DataError(
            path,
            f"expected one placeholder vector in string_to_param, found {len(params) if isinstance(params, dict) else type(params).__name__}",
        )
    ((token, value),) = params.items()
    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2) or (value.dim() == 2 and value.shape[0] != 1):
        raise DataError(
            path, f"string_to_param[{token!r}] must be one vector [1, dim], got {getattr(value, 'shape', type(value))}"
        )
    vector = value.detach().to(torch.float32).reshape(-1).clone()
    if not bool(torch.isfinite(vector).all()):
        raise DataError(path, f"string_to_param[{token!r}] holds non-finite values")
    return str(token), vector
