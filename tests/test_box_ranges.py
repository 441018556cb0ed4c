"""Learned box ranges (generation.box_ranges / default_box: learned) and ``anogen box-ranges``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anogen.cli import main as cli_main
from anogen.commands.box_ranges import learn_all
from anogen.config import validate_config
from anogen.data.box_ranges import compare_ranges, handset_ranges, interval_iou, reference_from_file
from anogen.errors import ConfigError, DataError
from anogen.generation.boxes import learned_box_range, mask_component_sizes, resolve_box_range
from anogen.io import load_manifest
from anogen.plan import Plan
from tests.test_generation_run import SPEC, _generate, world  # noqa: F401 (world is a fixture)

ROOT = Path(__file__).resolve().parents[1]
LEARNED = {"margin": 0.4, "min_size": 0.03, "min_component": 0.05}
LAYOUT = {
    "cat_a": {"defects": ["hole", "scratch"], "texture": False},
    "cat_b": {"defects": ["crack"], "texture": False},
}


def _mask(height, width, *rects):
    mask = np.zeros((height, width), np.uint8)
    for y0, x0, h, w in rects:
        mask[y0 : y0 + h, x0 : x0 + w] = 1
    return mask


# ----------------------------------------------------------------------------- the learned range


def test_component_sizes_ignore_specks():
    mask = _mask(100, 200, (10, 10, 20, 40), (60, 100, 30, 10), (95, 195, 1, 1))  # the 1-px speck is dropped
    assert sorted(mask_component_sizes(mask, 0.05)) == [(0.05, 0.3), (0.2, 0.2)]
    assert len(mask_component_sizes(mask, 0.0)) == 3
    assert mask_component_sizes(np.zeros((8, 8), np.uint8), 0.05) == []


def test_learned_range_by_hand():
    masks = [_mask(100, 100, (0, 0, 10, 20)), _mask(100, 100, (50, 50, 30, 40))]
    box = learned_box_range(masks, LEARNED, rotate=False)
    assert box["width"] == pytest.approx([0.2 / 1.4, 0.4 * 1.4], abs=1e-4)
    assert box["height"] == pytest.approx([0.1 / 1.4, 0.3 * 1.4], abs=1e-4)
    assert box["components"] == [[0.2, 0.1], [0.4, 0.3]] and box["rotate"] is False
    # clipped to [min_size, 1]
    big = learned_box_range([_mask(50, 50, (0, 0, 50, 2))], LEARNED, rotate=True)
    assert big["width"] == [0.03, pytest.approx(0.056)] and big["height"] == [pytest.approx(0.7143), 1.0]
    assert big["rotate"] is True


def test_learned_range_needs_anomalous_pixels():
    with pytest.raises(DataError, match="support set of c/d.*all empty"):
        learned_box_range([np.zeros((8, 8), np.uint8)], LEARNED, False, "support set of c/d")


def test_resolve_keeps_a_handset_box():
    box = {"width": [0.1, 0.2], "height": [0.3, 0.4], "rotate": True}
    assert resolve_box_range(box) == box
    learned = resolve_box_range({"learned": LEARNED, "rotate": False}, [_mask(10, 10, (0, 0, 5, 5))])
    assert learned["source"] == "learned" and learned["width"] == learned["height"]


# ----------------------------------------------------------------------------- config and keys


def _plan(generation):
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["generation"].update(generation)
    return Plan(validate_config(raw), layout=copy.deepcopy(LAYOUT))


def test_learned_per_defect_per_category_and_as_default():
    hand = {"width": [0.1, 0.2], "height": [0.1, 0.2], "rotate": False}
    p = _plan({"box_ranges": {"cat_a": {"hole": "learned", "scratch": hand}, "cat_b": "learned"}})
    assert p.learns_box("cat_a", "hole") and p.learns_box("cat_b", "crack") and not p.learns_box("cat_a", "scratch")
    new_rule = {"rule": "components", "min_size": 0.03, "min_component": 0.05, "min_fill": 0.3}
    new_rule.update(size_jitter=0.4, angle_jitter=20, elongation=2.0)
    assert p.box("cat_a", "hole") == {"learned": new_rule, "rotate": "auto"}
    assert "support" in p.upstream("generation", "cat_a", "hole")
    assert "support" not in p.upstream("generation", "cat_a", "scratch")
    p = _plan({"default_box": "learned", "box_ranges": {"cat_a": {"scratch": hand}}})
    assert [p.learns_box(c, d) for c, d in p.pairs()] == [True, False, True]


@pytest.mark.parametrize(
    "base, changed",
    [
        ({}, {"size_jitter": 0.6}),
        ({}, {"elongation": 3}),
        ({"rule": "range", "rotate": False}, {"rule": "range", "rotate": False, "margin": 0.6}),
    ],
)
def test_learned_box_settings_change_only_learned_generations(base, changed):
    base = _plan({"box_ranges": {"cat_a": {"hole": "learned"}}, "learned_box": base})
    wider = _plan({"box_ranges": {"cat_a": {"hole": "learned"}}, "learned_box": changed})
    for c, d in base.pairs():
        same = base.key("generation", c, d) == wider.key("generation", c, d)
        assert same == ((c, d) != ("cat_a", "hole")), (c, d)
        assert base.key("embedding", c, d) == wider.key("embedding", c, d)


def test_the_range_rule_keeps_its_earlier_spec_and_reads_only_its_values():
    old = _plan({"default_box": "learned", "learned_box": {"rule": "range", "rotate": False}})
    assert old.box("cat_a", "hole") == {"learned": LEARNED, "rotate": False}  # the spec (and key) of before
    jittered = _plan({"default_box": "learned", "learned_box": {"rule": "range", "rotate": False, "size_jitter": 1}})
    assert jittered.key("generation", "cat_a", "hole") == old.key("generation", "cat_a", "hole")
    auto = _plan({"default_box": "learned", "learned_box": {"rule": "range"}})
    assert auto.box("cat_a", "hole") == {"learned": {**LEARNED, "elongation": 2.0}, "rotate": "auto"}
    # components, rotate false: elongation decides nothing, so it is in no key
    flat = {"default_box": "learned", "learned_box": {"rotate": False}}
    assert _plan(flat).key("generation", "cat_a", "hole") == _plan(
        {**flat, "learned_box": {"rotate": False, "elongation": 5}}
    ).key("generation", "cat_a", "hole")
    # no learned range anywhere: learned_box is in no key, and the keys are those of before
    plain, tuned = _plan({}), _plan({"learned_box": {"margin": 0.6}})
    assert all(plain.key("generation", c, d) == tuned.key("generation", c, d) for c, d in plain.pairs())


@pytest.mark.parametrize(
    "generation, key",
    [
        ({"default_box": "learn"}, "generation.default_box"),
        ({"box_ranges": {"cat_a": {"hole": "learnt"}}}, "generation.box_ranges.cat_a.hole"),
        ({"learned_box": {"margin": -0.1}}, "generation.learned_box.margin"),
        ({"learned_box": {"min_size": 0}}, "generation.learned_box.min_size"),
    ],
)
def test_bad_learned_values_name_the_key(generation, key):
    with pytest.raises(ConfigError) as info:
        validate_config({"data_root": "/d", "generation": generation})
    assert info.value.key.startswith(key)


# ----------------------------------------------------------------------------- the generation job


def test_generation_records_the_learned_range(world, tmp_path):  # noqa: F811
    support_mask = _mask(64, 64, (10, 10, 16, 12))
    spec = {"box": {"learned": LEARNED, "rotate": False}}
    manifest = load_manifest(_generate(world, tmp_path / "learned", spec=spec, support_masks=[support_mask]))
    box = manifest["extra"]["box_range"]
    assert box["source"] == "learned" and box["components"] == [[0.1875, 0.25]]
    assert box["width"] == pytest.approx([0.1875 / 1.4, 0.1875 * 1.4], abs=1e-4)
    res = manifest["extra"]["resolution"]
    for item in manifest["extra"]["items"]:
        placed = item["box"]  # pixels at the model resolution
        assert box["width"][0] * res <= placed["w"] <= box["width"][1] * res and placed["angle"] == 0
        assert box["height"][0] * res <= placed["h"] <= box["height"][1] * res
    hand = load_manifest(world["reference"])["extra"]["box_range"]
    assert hand == SPEC["box"]


def test_generation_without_support_masks_refuses_a_learned_range(world, tmp_path):  # noqa: F811
    with pytest.raises(DataError, match="learned"):
        _generate(world, tmp_path / "none", spec={"box": {"learned": LEARNED, "rotate": False}})


# ----------------------------------------------------------------------------- anogen box-ranges


def test_interval_iou_and_verdicts():
    assert interval_iou([0.1, 0.2], [0.1, 0.2]) == pytest.approx(1.0)
    assert interval_iou([0.4, 0.4], [0.4, 0.4]) == pytest.approx(1.0)  # point ranges have a length
    assert interval_iou([0.1, 0.2], [0.3, 0.4]) == 0.0
    hand = {"width": [0.1, 0.2], "height": [0.1, 0.2]}
    assert compare_ranges({"width": [0.11, 0.21], "height": [0.1, 0.2]}, hand) == "agree"
    assert compare_ranges({"width": [0.01, 0.05], "height": [0.1, 0.2]}, hand) == "smaller"
    assert compare_ranges({"width": [0.3, 0.5], "height": [0.1, 0.2]}, hand) == "larger"
    assert compare_ranges({"width": [0.05, 0.5], "height": [0.1, 0.2]}, hand) == "partial"


def test_the_authors_73_ranges_are_the_reference():
    ref = reference_from_file(ROOT / "config" / "mvtec.yaml")
    assert len(ref) == 73 and ref[("hazelnut", "hole")]["width"] == [0.1, 0.15]
    assert handset_ranges({"generation": {"box_ranges": {"a": "learned", "b": {"x": "learned"}}}}) == {}


def _mvtec_tree(root: Path) -> Path:
    """One category, two defects; anomalies are rectangles of known sizes (fractions of 80 px)."""
    sizes = {"hole": [(8, 8), (12, 10), (16, 16), (8, 12)], "scratch": [(40, 4), (48, 4), (32, 4), (44, 8)]}
    image = np.full((80, 80, 3), 128, np.uint8)
    for sub in ("train/good", "test/good"):
        (root / "widget" / sub).mkdir(parents=True)
        Image.fromarray(image).save(root / "widget" / sub / "000.png")
    for defect, shapes in sizes.items():
        (root / "widget" / "test" / defect).mkdir(parents=True)
        (root / "widget" / "ground_truth" / defect).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            Image.fromarray(image).save(root / "widget" / "test" / defect / f"{i:03d}.png")
            mask = _mask(80, 80, (20, 20, h, w)) * 255
            Image.fromarray(mask).save(root / "widget" / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def test_box_ranges_command_learns_from_the_support_masks_only(tmp_path, capsys):
    root = _mvtec_tree(tmp_path / "mvtec")
    hole = {"width": [0.1, 0.2], "height": [0.1, 0.2], "rotate": False}
    raw = {"data_root": str(root), "generation": {"box_ranges": {"widget": {"hole": hole}}}}
    config = validate_config(raw)
    rows = learn_all(config)
    plan = Plan(config)
    for row in rows:
        chosen = plan.support_files("widget", row.defect)
        assert len(row.learned["components"]) == 3 == len(chosen)
    hole_row, scratch_row = rows
    assert hole_row.verdict == "agree" and scratch_row.handset is None
    # the test mask left out of the support set is never read: replacing it changes nothing
    left_out = next(
        n for n in ("000.png", "001.png", "002.png", "003.png") if n not in plan.support_files("widget", "scratch")
    )
    gt = root / "widget" / "ground_truth" / "scratch" / left_out.replace(".png", "_mask.png")
    Image.fromarray(_mask(80, 80, (0, 0, 80, 80)) * 255).save(gt)
    assert learn_all(config)[1].learned == scratch_row.learned

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    csv_path = tmp_path / "ranges.csv"
    assert cli_main(["box-ranges", "--configfile", str(config_file), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "| widget | hole |" in out and "1 defect types compared: agree 1" in out
    assert csv_path.read_text().splitlines()[0].startswith("category,defect,learned_width")
    # a reference file: the bare {category: {defect: box}} format
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"widget": {"scratch": {"width": [0.5, 0.6], "height": [0.05, 0.1]}}}))
    assert cli_main(["box-ranges", "--configfile", str(config_file), "--reference", str(ref)]) == 0
    assert "| widget | scratch |" in capsys.readouterr().out


def test_check_data_warns_about_a_learned_range_of_nearly_the_whole_image(tmp_path):
    from anogen.commands.check_data import check_data
    from tests.fake_trees import build_fake_mvtec

    root = build_fake_mvtec(tmp_path / "mvtec", categories=("bottle",))  # masks: the whole 8 x 8 image
    config = validate_config({"data_root": str(root), "generation": {"default_box": "learned"}})
    report = check_data(config, foreground_images=1)
    # one 8 x 8 rectangle; its sides x 1 / 1.4 at the least (size_jitter 0.4), clipped to 1
    assert report.boxes["bottle/broken_large"]["width"] == [pytest.approx(1 / 1.4, abs=1e-4), 1.0]
    assert any("bottle/broken_large: the box range learned" in w for w in report.warnings)


def test_the_range_rule_turns_boxes_when_most_components_are_elongated():
    bars = [_mask(100, 100, (10, 10, 60, 8)), _mask(100, 100, (10, 10, 8, 50))]  # 8 x 60, 50 x 8
    auto = {**LEARNED, "elongation": 2.0}
    assert learned_box_range(bars, auto, "auto")["rotate"] is True
    blobs = bars[:1] + [_mask(100, 100, (10, 10, 20, 20)), _mask(100, 100, (50, 50, 30, 25))]
    assert learned_box_range(blobs, auto, "auto")["rotate"] is False


def test_generation_draws_boxes_from_the_learned_components(world, tmp_path):  # noqa: F811
    bar = _mask(64, 64, (8, 20, 40, 8))  # 8 wide x 40 tall: elongated, at 90 degrees
    learned = {"rule": "components", "min_size": 0.03, "min_component": 0.05, "min_fill": 0.3}
    learned.update(size_jitter=0.25, angle_jitter=5.0, elongation=2.0)
    spec = {"box": {"learned": learned, "rotate": "auto"}}
    manifest = load_manifest(_generate(world, tmp_path / "components", spec=spec, support_masks=[bar]))
    box = manifest["extra"]["box_range"]
    assert box["source"] == "learned" and box["rule"] == "components"
    assert box["components"] == [[0.625, 0.125, 90.0, 1.0]]
    res = manifest["extra"]["resolution"]
    for item in manifest["extra"]["items"]:
        placed = item["box"]  # the bar's long side, standing within 5 degrees of upright
        assert 0.625 / 1.25 * res - 1e-6 <= placed["w"] <= 0.625 * 1.25 * res + 1e-6
        assert 0.125 / 1.25 * res - 1e-6 <= placed["h"] <= 0.125 * 1.25 * res + 1e-6
        assert 85 <= placed["angle"] <= 95


# ----------------------------------------------------------------------------- bench/box_fit.py


def _authors_masks(root: Path, shapes: dict) -> Path:
    """A tree laid out like the authors' repo: DIFFUSION/images/train_images/<c>/<d>_mask/<stem>_mask.png."""
    import cv2

    for (category, defect), masks in shapes.items():
        folder = root / "DIFFUSION" / "images" / "train_images" / category / f"{defect}_mask"
        folder.mkdir(parents=True)
        for i, draw in enumerate(masks):
            mask = np.zeros((100, 100), np.uint8)
            draw(mask, cv2)
            Image.fromarray(mask * 255).save(folder / f"{i:03d}_mask.png")
    return root


def test_box_fit_script_on_a_fake_authors_tree(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("box_fit", ROOT / "bench" / "box_fit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def crack(length):  # a 4-px line at 30 degrees through the centre
        dx, dy = length / 2 * np.cos(np.pi / 6), length / 2 * np.sin(np.pi / 6)
        return lambda m, cv2: cv2.line(m, (round(50 - dx), round(50 - dy)), (round(50 + dx), round(50 + dy)), 1, 4)

    def hole(side):
        return lambda m, cv2: m.__setitem__((slice(40, 40 + side), slice(30, 30 + side)), 1)

    repo = _authors_masks(
        tmp_path / "AnoGen", {("tile", "crack"): map(crack, (60, 70, 80)), ("w", "hole"): map(hole, (10, 12, 14))}
    )
    out_csv = tmp_path / "fit.csv"
    results = bench.main(["--authors-repo", str(repo), "--draws", "30", "--csv", str(out_csv), "--show", "tile/crack"])
    crack_fit, hole_fit = results[("tile", "crack")], results[("w", "hole")]
    # thin diagonal lines: the old rule's short side is that of a bounding box (>= 0.3 / 1.4), never a line's
    assert crack_fit["new"]["size"] == [True] * 3 and crack_fit["old"]["size"] == [False] * 3
    assert crack_fit["new"]["area_max"] < 0.85 * 1.4 * 0.06 * 1.4 and crack_fit["old"]["area_median"] > 0.1
    # ... though each held-out line's bounding box lies "inside" the old range (the 62% definition)
    assert crack_fit["new"]["inside"] == [None] * 3 and crack_fit["old"]["inside"] == [True] * 3
    # squares: both rules fit; a square's box is its own size, the old range's spans 1.4^2 either way
    assert hole_fit["new"]["size"] == hole_fit["old"]["size"] == [True] * 3
    assert hole_fit["new"]["iou"] == [True] * 3
    printed = capsys.readouterr().out
    assert "2 defect types, 6 held-out masks" in printed and "tile/crack: box/image median" in printed
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("category,defect,old_inside,old_size") and len(rows) == 3
