"""Boxes that cannot be placed are found by check-data (and preflight) before any job runs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anogen.commands.check_data import check_data
from anogen.config import validate_config
from anogen.errors import DataError
from anogen.generation.boxes import Box, sample_boxes
from anogen.generation.placement import RESOLUTION, best_overlap
from tests.fake_trees import small_foreground_config

BIG = {"width": [0.9, 0.9], "height": [0.9, 0.9], "rotate": False}
SMALL = {"width": [0.2, 0.2], "height": [0.2, 0.2], "rotate": False}


def _fraction(box: Box, region: np.ndarray) -> float:
    raster = box.to_mask(*region.shape)
    return float((raster & region).sum()) / float(raster.sum())


def test_a_box_too_large_for_the_foreground_is_named_with_its_best_overlap(tmp_path):
    """transistor/misplaced's case: a 0.9 x 0.9 box needs half its area on a foreground of 1/16
    of the image. Wherever it is drawn it covers the whole foreground square, so every draw has
    (64 px)^2 / (0.9 x 256 px)^2 = 7.7% on it."""
    report = check_data(validate_config(small_foreground_config(tmp_path, BIG, max_tries=200)), foreground_images=2)
    (problem,) = report.problems
    assert problem.startswith("bottle/broken_large: ") and "hand-set" in problem
    assert "generation.box_ranges.bottle.broken_large" in problem and "generation.min_overlap" in problem
    assert "the best of its 200 draws puts 7.7% of a box on it, at least 50% needed" in problem
    big, small = report.placement["bottle/broken_large"], report.placement["bottle/broken_small"]
    assert big.best == pytest.approx(64**2 / (0.9 * RESOLUTION) ** 2, abs=0.002)
    assert big.image.endswith("000.png") and big.images == 2
    assert small.ok and small.best is None  # the default 10-30% boxes fit beside it
    assert any("1 of 2 defect types placeable: not broken_large" in line for line in report.lines)


def test_a_placeable_tree_passes(tmp_path):
    report = check_data(validate_config(small_foreground_config(tmp_path, SMALL)), foreground_images=2)
    assert report.ok, report.problems
    assert all(p.ok for p in report.placement.values()) and len(report.placement) == 2


def test_a_box_template_names_its_containment(tmp_path):
    """On a box template the job keeps a box with MORE than template_containment (0.75) inside:
    a 0.9 box on the left half of the image has at most 128 / 230.4 = 55.6% inside."""
    template = np.zeros((RESOLUTION, RESOLUTION), np.uint8)
    template[:, : RESOLUTION // 2] = 255
    Image.fromarray(template).save(tmp_path / "left.png")
    raw = small_foreground_config(tmp_path, BIG, max_tries=200)
    raw["generation"]["templates"] = {"bottle": {"broken_large": str(tmp_path / "left.png")}}
    report = check_data(validate_config(raw), foreground_images=1)
    (problem,) = report.problems
    assert "generation.template_containment" in problem and "box template" in problem
    assert "more than 75% needed" in problem
    assert report.placement["bottle/broken_large"].best == pytest.approx(128 / (0.9 * RESOLUTION), abs=0.01)


def test_a_learned_range_is_read_from_the_support_masks(tmp_path):
    """The fake support masks are all anomalous: the learned boxes span >= 1/1.4 of the image."""
    raw = small_foreground_config(tmp_path, "learned", max_tries=50)
    raw["generation"]["box_ranges"] = {"bottle": "learned"}
    report = check_data(validate_config(raw), foreground_images=1)
    assert len(report.problems) == 2, report.problems
    assert all("learned from the support masks" in p for p in report.problems)
    assert report.placement["bottle/broken_small"].box["width"] == [pytest.approx(1 / 1.4, abs=1e-4), 1.0]


def test_texture_categories_are_not_checked(tmp_path):
    raw = small_foreground_config(tmp_path, BIG)
    raw["category_options"] = {"bottle": {"texture": True}}
    report = check_data(validate_config(raw), foreground_images=1)
    assert report.ok and not report.placement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_best_overlap_is_the_best_of_the_jobs_draws(seed):
    """At the threshold it returns, sample_boxes (same seed and budget) places a box with exactly that
    overlap; asked for more, it cannot."""
    rng = np.random.default_rng(100 + seed)
    region = np.zeros((64, 64), np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, 48, size=2)
        region[y : y + 16, x : x + 12] = 1
    box = {"width": [0.3, 0.6], "height": [0.3, 0.6], "rotate": True}
    best = best_overlap(seed, region, box, 300, "d")

    def draw(overlap):
        args = (box["width"], box["height"], True, overlap, 300, "image", "d")
        return sample_boxes(np.random.default_rng(seed), region, 1, *args)

    (found,) = draw(best)
    assert _fraction(found, region) == pytest.approx(best)
    with pytest.raises(DataError):
        draw(best + 1e-6)


def test_a_box_that_never_fits_has_no_best_overlap(tmp_path):
    """A whole-image box turned by a random angle never fits inside the image."""
    assert (
        best_overlap(0, np.ones((32, 32), np.uint8), {"width": [1, 1], "height": [1, 1], "rotate": True}, 50, "d")
        is None
    )
    whole = {"width": [1.0, 1.0], "height": [1.0, 1.0], "rotate": True}
    report = check_data(validate_config(small_foreground_config(tmp_path, whole, max_tries=50)), foreground_images=1)
    (problem,) = report.problems
    assert "no box of this range fits inside the image in 50 draws" in problem
