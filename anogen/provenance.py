"""Notes on results that are not what a real run computes, carried from job to job.

Four things make a number incomparable with the paper although it looks like one: a randomly
initialised diffusion model (the demo's ``tiny:ldm``), a randomly initialised DeSTSeg teacher
(no ImageNet weights), synthetic anomalies cut from the fallback texture source instead of
DTD, and random Inception / LPIPS weights under the generation-quality metrics. Whoever detects one calls :func:`record` with its note; ``anogen.jobs`` opens a
:func:`collecting` context per job seeded with the notes of every input manifest, and
``anogen.io.write_manifest`` stores the union as the manifest's ``notes``. So a note travels with
the Merkle chain: the embedding of a random model carries it, the generations made with that
embedding, the detectors trained on them and their evaluations too, and ``summary.csv`` /
``table1.csv`` show it on every affected row.

:func:`plan_warnings` predicts the same notes from a config before any job starts, so the console
shows them once at the start of the run (``workflow/rules/common.smk``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from anogen.errors import ConfigError, DataError

# not "tiny": bench/gpu_check.py's full-size random LDM carries the same marker
RANDOM_MODEL = "random diffusion model (randomly initialised weights): generated anomalies are not an LDM's"
RANDOM_TEACHER = "random DeSTSeg teacher (no ImageNet ResNet18 weights)"
RANDOM_QUALITY_WEIGHTS = (
    "random generation-quality weights (randomly initialised Inception-v3 / LPIPS backbone): "
    "IS, IC-LPIPS and KID are not comparable with any published number"
)
# A weights file written by anogen.quality.networks.write_random_weights has ``<file>.<suffix>`` beside it.
RANDOM_QUALITY_MARKER_SUFFIX = "anogen_random.json"
FALLBACK_TEXTURES = "synthetic anomalies from scikit-image photographs, not DTD (detectors.texture_source unset)"

# Marker file a random model folder carries (written by anogen.diffusion.tiny and by
# bench/gpu_check.py for its full-size random LDM).
RANDOM_MODEL_MARKER = "anogen_tiny.json"

_current: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("anogen_notes", default=None)


@contextlib.contextmanager
def collecting(inherited: Iterable[str] = ()) -> Iterator[set[str]]:
    """Collect notes for one job, starting from ``inherited`` (its input manifests' notes)."""
    notes = set(inherited)
    token = _current.set(notes)
    try:
        yield notes
    finally:
        _current.reset(token)


def record(note: str) -> None:
    """Add ``note`` to the current job's notes (a no-op outside a job, e.g. in a library call)."""
    notes = _current.get()
    if notes is not None:
        notes.add(note)


def current() -> list[str] | None:
    """The current job's notes, sorted; ``None`` outside a job."""
    notes = _current.get()
    return None if notes is None else sorted(notes)


def manifest_notes(manifest_path: str | Path) -> list[str]:
    """The ``notes`` of a manifest (``[]`` when it has none or cannot be read)."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("notes") or [])
    except (OSError, ValueError):
        return []


def is_random_model(model: str) -> bool:
    """True for the explicit demo request (``tiny:<family>``) or a folder built by it."""
    return model.startswith("tiny:") or (Path(model) / RANDOM_MODEL_MARKER).is_file()


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch (planning must stay cheap)."""
    import os

    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]) / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "torch" / "hub"


def find_hub_resnet18() -> Path | None:
    """torchvision's ImageNet ResNet18 file in the torch hub cache, if it is there."""
    folder = torch_hub_dir() / "checkpoints"
    found = sorted(folder.glob("resnet18-*.pth")) if folder.is_dir() else []
    return found[0] if found else None


def plan_warnings(config: dict) -> list[str]:
    """The notes a run of ``config`` will carry, predicted before any job starts."""
    notes = []
    det = config["detectors"]
    if is_random_model(config["diffusion"]["model"]) and any(v != "baseline" for v in det["variants"]):
        notes.append(RANDOM_MODEL)
    ds = det["destseg"]
    if (
        "destseg" in det["models"]
        and not ds["teacher_weights"]
        and ds["teacher"] != "timm_a1"
        and find_hub_resnet18() is None
    ):
        notes.append(RANDOM_TEACHER)
    uses_textures = det["synthetic_source"] == "draem"
    if uses_textures and not det["texture_source"] and any(v != "generated_only" for v in det["variants"]):
        notes.append(FALLBACK_TEXTURES)
    quality = config.get("quality") or {}
    weights = [quality.get("inception_weights"), quality.get("lpips_weights")]
    if all(weights) and any(Path(f"{w}.{RANDOM_QUALITY_MARKER_SUFFIX}").is_file() for w in weights):
        notes.append(RANDOM_QUALITY_WEIGHTS)
    return notes


# torchvision names its weight files resnet18-<first 8 hex of the file's sha256>.pth:
# IMAGENET1K_V1 (resnet18-f37072fd.pth) and the same weights' older file (resnet18-5c106cde.pth).
TORCHVISION_RESNET18_SHA256 = ("f37072fd", "5c106cde")
TIMM_A1_SOURCE = "https://huggingface.co/timm/resnet18.a1_in1k (model.safetensors)"


def check_teacher_file(teacher: str | None, path: Path | None, sha256: str | None) -> None:
    """Refuse a teacher file that is not what ``detectors.destseg.teacher`` asks for.

    ``timm_a1`` needs a file (the torch hub cache holds torchvision's weights) and refuses
    torchvision's own files, recognised by their sha256; timm's resnet18.a1_in1k has the
    same tensor names (layout ``torchvision``), so the name of the choice is what tells them apart.
    """
    if teacher != "timm_a1":
        return
    if path is None:
        raise ConfigError(
            "detectors.destseg.teacher_weights",
            f"detectors.destseg.teacher timm_a1 needs timm's resnet18.a1_in1k weights: download {TIMM_A1_SOURCE} "
            "and set this key to the file (the torch hub cache holds torchvision's weights)",
        )
    if sha256 is not None and sha256[:8] in TORCHVISION_RESNET18_SHA256:
        raise DataError(
            path,
            f"is torchvision's IMAGENET1K_V1 ResNet18 (resnet18-{sha256[:8]}.pth), not timm's resnet18.a1_in1k "
            f"that detectors.destseg.teacher timm_a1 asks for ({TIMM_A1_SOURCE})",
        )
