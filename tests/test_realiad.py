"""data_layout: realiad on a fake tree with Real-IAD's structure (per-category JSON split files,
five views per sample, per-view labels and masks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anogen.commands.check_data import check_data
from anogen.config import validate_config
from anogen.data.index import GOOD
from anogen.data.layouts import discover, layout_spec, scan_category
from anogen.data.layouts.realiad import sample_of
from anogen.errors import DataError
from anogen.plan import Plan
from tests import e2e
from tests.preset_trees import REALIAD_CATEGORIES, REALIAD_DEFECTS, VIEWS, VISIBLE, make_realiad_tree


def _config(root: Path, **extra) -> dict:
    return validate_config({"data_root": str(root), "data_layout": "realiad", **extra})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_realiad_tree(tmp_path_factory.mktemp("riad") / "Real-IAD", n_ng=3)


def test_listing_and_scan(root):
    config = _config(root)
    layout, rejected = discover(root, layout_spec(config))
    assert not rejected and sorted(layout) == list(REALIAD_CATEGORIES)
    assert layout["audiojack"]["defects"] == list(REALIAD_DEFECTS)
    index = scan_category(root, "audiojack", layout_spec(config))
    assert len(index.train_good) == 2 * len(VIEWS)  # every view of the normal training samples
    assert all(p.parent.parent.name == "OK" for p in index.train_good)
    anomalous = [item for item in index.test if item.is_anomalous]
    assert len(anomalous) == len(REALIAD_DEFECTS) * 3 * len(VISIBLE)
    assert all(item.mask.name == item.path.stem + "_mask.png" for item in anomalous)
    # views of an NG sample in which the defect does not show are normal test images
    good = [item for item in index.test if item.defect == GOOD]
    assert len(good) == len(VIEWS) + len(REALIAD_DEFECTS) * 3 * (len(VIEWS) - len(VISIBLE))


def test_support_views_take_their_whole_sample_out_of_the_test_set(root):
    plan = Plan(_config(root))
    excluded = set(plan.excluded_from_test("audiojack"))
    chosen = {
        plan.category_files("audiojack").relpath(d, n)
        for d in REALIAD_DEFECTS
        for n in plan.support_files("audiojack", d)
    }
    samples = {sample_of(rel) for rel in chosen}
    assert chosen < excluded and {sample_of(rel) for rel in excluded} == samples
    assert len(excluded) == len(samples) * len(VIEWS)  # all five views, the unlabelled ones too
    spec = plan.spec("evaluation", "audiojack", "draem", "anogen")
    assert set(spec["excluded"]) == excluded  # what the evaluation leaves out


def _rewrite(root: Path, category: str, edit) -> Path:
    path = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d["train"].append(dict(d["test"][-1], anomaly_class="OK", mask_path=None)), "both train and test"),
        (lambda d: d["test"][-1].update(anomaly_class="HS", mask_path=None), "has no mask_path"),
        (lambda d: d["meta"].pop("normal_class"), "normal_class"),
        (lambda d: d.pop("train"), '"train"'),
    ],
)
def test_bad_split_files_name_the_file(tmp_path, edit, problem):
    root = make_realiad_tree(tmp_path / "r")
    path = _rewrite(root, "toy_brick", edit)
    with pytest.raises(DataError, match=problem) as info:
        scan_category(root, "toy_brick", layout_spec(_config(root)))
    assert str(path) in str(info.value)


def test_check_data_and_options(root, tmp_path):
    report = check_data(_config(root, generation={"default_box": "learned"}), foreground_images=1)
    assert report.ok, report.problems
    assert report.jobs["generate_anomalies"] == len(REALIAD_CATEGORIES) * len(REALIAD_DEFECTS)
    assert len(report.boxes) == 4
    # the single-view split folder and another resolution are options (and data identity)
    other = make_realiad_tree(tmp_path / "sv", json_dir="realiad_jsons/realiad_jsons_sv")
    (other / "realiad_1024").rename(other / "realiad_512")
    config = _config(other, realiad={"json_dir": "realiad_jsons/realiad_jsons_sv", "image_root": "realiad_512"})
    assert Plan(config).pairs()[0] == ("audiojack", "AK")
    assert Plan(config).dataset_key != Plan(_config(other)).dataset_key
    with pytest.raises(DataError, match="realiad.json_dir"):
        Plan(_config(other)).pairs()


@pytest.mark.e2e
def test_realiad_dry_run(root, tmp_path):
    workdir = e2e.make_workdir(tmp_path / "work", {"data_root": str(root), "data_layout": "realiad"})
    jobs = e2e.planned_jobs(workdir)
    n = len(REALIAD_CATEGORIES) * len(REALIAD_DEFECTS)
    assert jobs["select_support"] == jobs["generate_anomalies"] == n
    assert jobs["estimate_foreground"] == len(REALIAD_CATEGORIES)


@pytest.mark.e2e
def test_learned_boxes_through_the_workflow(root, tmp_path):
    """The jobs on Real-IAD with a learned box range: the generated set records the range it
    learned from its support set's masks, and the support key is one of its inputs."""
    from anogen.io import load_manifest

    extra = {
        "data_root": str(root),
        "data_layout": "realiad",
        "categories": ["audiojack"],
        "defects": {"audiojack": ["AK"]},
        "generation": {"default_box": "learned", "boxes_per_image": 1, "images_per_box": 1, "max_normal_images": 2},
    }
    workdir = e2e.make_workdir(tmp_path / "work", extra)
    e2e.run(workdir, "generated")
    (manifest,) = (workdir / "results" / "generated" / "audiojack" / "AK").glob("*/manifest.json")
    m = load_manifest(manifest)
    box = m["extra"]["box_range"]
    assert box["source"] == "learned" and len(box["components"]) == 3
    assert m["spec"]["box"]["learned"]["rule"] == "components" and "support" in m["inputs"]
    (support,) = (workdir / "results" / "support" / "audiojack" / "AK").glob("*/manifest.json")
    assert m["inputs"]["support"] == load_manifest(support)["key"]
