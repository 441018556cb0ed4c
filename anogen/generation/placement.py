"""Whether each defect's boxes can be placed, checked before a run (``anogen check-data``, ``anogen preflight``).

The generation job draws ceil(N / images_per_box) boxes on every normal image with
:func:`~anogen.generation.boxes.sample_boxes_for` and stops with a DataError when one of them gets
no placement in ``generation.max_tries`` draws: after the embedding, hours into a run. Here the
same draws are made first, for every planned defect of an object category, on the few normal
images check-data estimates the foreground on (``--foreground-images``, default 4):

- with the job's generator seed per image, box count, box range (hand-set, ``default_box``, or
  learned from the support masks the support job will copy), constraint (at least
  ``generation.min_overlap`` on the foreground; more than ``generation.template_containment`` on
  a box template or the authors' Otsu foreground) and draw budget;
- on the region the job would use: the category's foreground as its foreground job makes it
  (GrabCut, the authors' Otsu, ``foreground_template``), or the defect's box template;
- at ``RESOLUTION`` px. The job draws at the diffusion model's resolution (256 px for the paper's
  LDM, where these are the job's own draws); the fractions hardly depend on it, and a draw costs
  its box's pixels, so a defect that cannot be placed costs seconds here even for a 512 px model.

Texture categories are not checked (the whole image is foreground) unless a defect has a box
template. A defect's check stops at its first failing image, as the job does. For that image the
best fraction of a box on the region among the draws of its first box is found by asking
``sample_boxes_for`` again, with the same seed, for more than the best so far: its draws do not
depend on the threshold, so the last answer is the best of the job's draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from anogen.data.box_ranges import support_masks
from anogen.data.geometry import to_square
from anogen.errors import DataError
from anogen.generation.boxes import Box, resolve_box_range, sample_boxes_for

RESOLUTION = 256
# Each round of the best-overlap search raises the best (by _MARGIN at least); about
# ln(max_tries) rounds are expected.
_ROUNDS = 64
_MARGIN = 1e-9


@dataclass(frozen=True)
class Placement:
    """One defect's check. ``image``: the first image checked on which a box could not be placed
    (None: every box was placed); ``best``: the best fraction of a box on the region among that
    image's draws (None: no box of the range fits inside the image)."""

    category: str
    defect: str
    images: int
    box: dict  # the range checked: width, height, rotate (+ source: learned)
    source: str  # where the range comes from, in words
    overlap_key: str
    region: str  # "foreground" or "box template"
    required: float
    strict: bool
    max_tries: int
    image: str | None = None
    best: float | None = None

    @property
    def ok(self) -> bool:
        return self.image is None

    def problem(self) -> str:
        """What stops the defect's generation job, the best overlap found and the settings to change."""
        need = f"{'more than' if self.strict else 'at least'} {100 * self.required:.3g}% needed"
        if self.best is None:
            found = f"no box of this range fits inside the image in {self.max_tries} draws"
        else:
            found = f"the best of its {self.max_tries} draws puts {100 * self.best:.1f}% of a box on it, {need}"
        return (
            f"{self.category}/{self.defect}: its boxes (width {self.box['width']}, height {self.box['height']} of "
            f"the image, rotate {self.box['rotate']}; {self.source}) cannot be placed on the {self.region} of {self.image} "
            f"({found}), so its generation job would stop there. Change generation.box_ranges.{self.category}."
            f"{self.defect} (smaller boxes) or {self.overlap_key}"
        )


def _region(mask: np.ndarray, resize: str) -> np.ndarray:
    """A foreground mask stored at its image's size, in the geometry the job draws on (square, ``RESOLUTION``)."""
    import cv2  # not at the head: check-data uses this module and loads no cv2 until it draws

    square = to_square((np.asarray(mask) > 0).astype(np.uint8), resize)
    return cv2.resize(square, (RESOLUTION, RESOLUTION), interpolation=cv2.INTER_NEAREST)


def _constraint(spec: dict) -> tuple[str, float, bool, str]:
    """(region, required fraction, strictly more, its config key) as the job keeps a box (``planning._box_region``)."""
    if spec.get("template") is not None:
        return "box template", float(spec["template"]["containment"]), True, "generation.template_containment"
    if spec.get("foreground_containment") is not None:  # the authors' Otsu foreground
        return "foreground", float(spec["foreground_containment"]), True, "generation.template_containment"
    return "foreground", float(spec["min_overlap"]), False, "generation.min_overlap"


def _fraction(box: Box, region: np.ndarray) -> float:
    raster = box.to_mask(*region.shape)
    return float(np.count_nonzero(raster & region)) / float(raster.sum())


def best_overlap(seed: int, region: np.ndarray, box: dict, max_tries: int, defect: str) -> float | None:
    """The largest fraction of a box on ``region`` among the ``max_tries`` draws the job makes for an
    image's first box (seed ``seed``); None when none of them fits inside the image."""
    best = None
    for _ in range(_ROUNDS):
        # more than the best so far (by _MARGIN: its own box, at the threshold, passes by round-off)
        threshold = 0.0 if best is None else best + _MARGIN
        try:
            (found,) = sample_boxes_for(np.random.default_rng(seed), region, 1, box, threshold, max_tries, "", defect)
        except DataError:
            return best
        best = _fraction(found, region)
        if best >= 1.0:
            return best
    return best


def check_defect(spec: dict, box: dict, source: str, regions: list[tuple[str, np.ndarray]], *, seed_of) -> Placement:
    """Draw the job's boxes of one defect (generation ``spec``, resolved range ``box``) on each
    (image path, region at ``RESOLUTION``) until an image fails. ``seed_of(stem)``: the job's seed."""
    region_name, required, strict, key = _constraint(spec)
    n = math.ceil(int(spec["images_per_normal"]) / int(spec["images_per_box"]))
    tries = int(spec["max_tries"])
    result = Placement(
        spec["category"], spec["defect"], len(regions), box, source, key, region_name, required, strict, tries
    )
    for image, region in regions:
        seed = seed_of(Path(image).stem)
        try:
            sample_boxes_for(
                np.random.default_rng(seed),
                region,
                n,
                box,
                required,
                tries,
                image,
                spec["defect"],
                strict=strict,
                overlap_key=key,
            )
        except DataError:
            best = best_overlap(seed, region, box, tries, spec["defect"])
            return replace(result, image=image, best=best)
    return result


def _box_range(plan, category: str, defect: str, spec: dict) -> tuple[dict, str]:
    """The resolved box range of the job and where it comes from; a learned one from the support
    masks the support job will copy (read as ``anogen box-ranges`` reads them)."""
    gen = plan.config["generation"]
    if "learned" in spec["box"]:
        masks = support_masks(plan, category, defect)
        return resolve_box_range(
            spec["box"], masks, f"support set of {category}/{defect}"
        ), "learned from the support masks"
    listed = gen["box_ranges"].get(category, {})
    source = "hand-set" if isinstance(listed, dict) and defect in listed else "generation.default_box"
    return resolve_box_range(spec["box"]), source


def check_placement(
    plan, category: str, defect: str, foregrounds: list[tuple[str, np.ndarray | None]]
) -> Placement | None:
    """Check (category, defect) of ``plan`` on ``foregrounds``: (normal image path, the category's
    foreground at the image's size; None for a texture). None where nothing is checked (a texture
    without a box template, no image)."""
    # check-data (a light command) imports this module: cv2 only once it checks boxes
    from anogen.generation.foreground import load_box_template  # loads cv2
    from anogen.generation.planning import derive_seed  # loads cv2

    spec = plan.spec("generation", category, defect)
    template = plan.box_template(category, defect)
    if template is not None:
        mask = load_box_template(template, RESOLUTION, RESOLUTION)
        regions = [(image, mask) for image, _ in foregrounds]
    elif plan.texture(category):
        return None
    else:
        regions = [(image, _region(mask, spec["resize"])) for image, mask in foregrounds]
    if not regions:
        return None
    box, source = _box_range(plan, category, defect, spec)

    def seed_of(stem: str) -> int:
        return derive_seed("boxes", int(spec["seed"]), category, defect, stem)

    return check_defect(spec, box, source, regions, seed_of=seed_of)
