"""What one generation job will make: the boxes and seeds of every image, before any model loads.

The order and the seeds are those described in ``anogen.generation.run`` (its module doc): boxes
are drawn per normal image with a numpy generator seeded by
``derive_seed("boxes", seed, category, defect, stem)``, on the defect's box template when it has
one, else on the image's foreground from the category's foreground manifest (sha256-verified).
``anogen.generation.placement`` (check-data) draws the same boxes with ``derive_seed``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anogen.data.geometry import to_square
from anogen.data.index import relative_to_root
from anogen.errors import ConfigError, DataError
from anogen.generation.boxes import Box, resolve_box_range, sample_boxes_for
from anogen.generation.foreground import load_box_template
from anogen.io import load_manifest, read_image, sha256_file, verify_file
from anogen.keys import canonical_json


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the canonical JSON of ``parts`` (stable across processes and hosts)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()
    return int(digest[:16], 16) & ((1 << 63) - 1)


@dataclass(frozen=True)
class PlannedImage:
    name: str  # file name under images/ and masks/
    image_index: int  # index into the normal images
    box_index: int
    sample_index: int
    index_in_image: int  # box_index * images_per_box + sample_index: the first N of them are kept
    box: Box
    seed: int
    image_suffix: str = ".png"  # ".jpg" with generation.jpeg_quality

    @property
    def image(self) -> str:
        return f"images/{Path(self.name).stem}{self.image_suffix}"

    @property
    def mask(self) -> str:
        return f"masks/{self.name}"


def _foreground_at(manifest_path: Path, manifest: dict, rel_mask: str, size: int, resize: str) -> np.ndarray:
    """The foreground mask (stored at the image's own size) in the same geometry as the image."""
    full = verify_file(manifest_path, rel_mask, manifest)
    mask = to_square((read_image(full, "L") > 0).astype(np.uint8), resize)
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def _box_template(spec: dict, template: Path | None, resolution: int) -> np.ndarray | None:
    """The defect's box template at ``resolution``, checked against the sha256 the key was made with."""
    wanted = spec.get("template")  # present only for a defect with a box template
    if wanted is None:
        if template is not None:
            raise ConfigError(
                "generation.templates", f"a template ({template}) was given but the generation spec has none"
            )
        return None
    if template is None:
        raise ConfigError(
            "generation.templates", "the generation spec names a box template but no template file was given"
        )
    if sha256_file(template) != wanted["sha256"]:
        raise DataError(
            template, "box template changed since the workflow was planned; rerun snakemake so the key follows it"
        )
    return load_box_template(template, resolution, resolution)


@dataclass(frozen=True)
class _BoxRegion:
    """Where one defect's boxes go: its box template (strictly more than ``containment``
    inside) or each image's foreground (at least ``min_overlap`` on it)."""

    region: Callable[[Path, str], np.ndarray]  # (image path, root-relative path) -> mask at the resolution
    overlap: float
    strict: bool
    overlap_key: str


def _box_region(spec: dict, template: Path | None, foreground_manifest: Path | None, resolution: int) -> _BoxRegion:
    template_mask = _box_template(spec, template, resolution)
    if template_mask is not None:
        containment = float(spec["template"]["containment"])
        return _BoxRegion(lambda path, rel: template_mask, containment, True, "generation.template_containment")
    if foreground_manifest is None:
        raise ConfigError(
            "generation.templates",
            f"{spec['category']}/{spec['defect']} has neither a box template nor a foreground set",
        )
    fg_manifest = load_manifest(foreground_manifest)
    masks = {item["source_image"]: item["mask"] for item in fg_manifest["extra"]["items"]}

    def foreground(path: Path, rel: str) -> np.ndarray:
        if rel not in masks:
            raise DataError(foreground_manifest, f"has no foreground mask for {rel}; rebuild the foreground set")
        # boxes are drawn on the foreground in the model's geometry
        return _foreground_at(foreground_manifest, fg_manifest, masks[rel], resolution, spec["resize"])

    if spec.get("foreground_containment") is not None:  # the authors' Otsu foreground (Plan._generation_spec)
        containment = float(spec["foreground_containment"])
        return _BoxRegion(foreground, containment, True, "generation.template_containment")
    return _BoxRegion(foreground, float(spec["min_overlap"]), False, "generation.min_overlap")


def _normal_images_used(normal_images: Sequence[Path], data_root: Path, spec: dict) -> list[Path]:
    images = [Path(p) for p in normal_images]
    if spec["max_normal_images"] is not None:
        images = images[: int(spec["max_normal_images"])]
    if not images:
        raise DataError(data_root, f"no normal training images for category '{spec['category']}'")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise DataError(p, f"two normal images share the stem '{p.stem}' ({stems[p.stem]})")
        stems[p.stem] = p
    return images


def _plan_image(
    spec: dict, index: int, path: Path, foreground: np.ndarray, where: _BoxRegion, box: dict
) -> list[PlannedImage]:
    """The first ``images_per_normal`` (box, sample) pairs of one normal image (box range ``box``),
    box by box, ``images_per_box`` seeded samples each (the last box may be cut short)."""
    category, defect, seed = spec["category"], spec["defect"], int(spec["seed"])
    n_images, per_box = int(spec["images_per_normal"]), int(spec["images_per_box"])
    rng = np.random.default_rng(derive_seed("boxes", seed, category, defect, path.stem))
    boxes = sample_boxes_for(
        rng,
        foreground,
        math.ceil(n_images / per_box),
        box,
        where.overlap,
        int(spec["max_tries"]),
        image_name=str(path),
        defect=defect,
        strict=where.strict,
        overlap_key=where.overlap_key,
    )
    return [
        PlannedImage(
            name=f"{path.stem}_b{b}_s{j}.png",
            image_index=index,
            box_index=b,
            sample_index=j,
            index_in_image=b * per_box + j,
            box=boxes[b],
            seed=derive_seed("sample", seed, category, defect, path.stem, b, j),
            image_suffix=".png" if spec["jpeg_quality"] is None else ".jpg",
        )
        for b, j in (divmod(k, per_box) for k in range(n_images))
    ]


def plan_generation(
    *,
    normal_images: list[Path],
    data_root: Path,
    foreground_manifest: Path | None,
    spec: dict,
    resolution: int,
    template: Path | None = None,
    box: dict | None = None,
) -> tuple[list[Path], list[str], list[PlannedImage]]:
    """Boxes and seeds of every image to generate: (normal images used, their root-relative paths, plan).

    With a box template (``spec["template"]`` and its file ``template``) every image's boxes
    are drawn on the template, strictly more than ``containment`` inside;
    ``foreground_manifest`` is then not read (it may be None). ``box`` is the resolved box
    range (:func:`anogen.generation.boxes.resolve_box_range`); None = the spec's hand-set one.
    """
    box = resolve_box_range(spec["box"]) if box is None else box
    images = _normal_images_used(normal_images, Path(data_root), spec)
    where = _box_region(
        spec,
        Path(template) if template is not None else None,
        Path(foreground_manifest) if foreground_manifest is not None else None,
        resolution,
    )
    rels = [relative_to_root(data_root, p) for p in images]
    plan: list[PlannedImage] = []
    for index, (path, rel) in enumerate(zip(images, rels)):
        plan += _plan_image(spec, index, path, where.region(path, rel), where, box)
    return images, rels, plan
