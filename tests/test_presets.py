"""The presets config/visa.yaml, config/btad.yaml and config/mvtec-ad2.yaml on fake trees of
their data sets' real folder structure: they validate, ``anogen check-data`` finds no problem
(and learns every defect's box range), and ``snakemake -n`` plans the expected jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anogen.commands.check_data import check_data
from anogen.config import load_config_file
from anogen.plan import Plan
from tests import e2e
from tests.layout_trees import VISA_CATEGORIES
from tests.preset_trees import (
    ANOMALY_SIDE,
    BTAD_PRODUCTS,
    MVTEC_AD2_SCENARIOS,
    VISA_INSTANCES,
    make_btad_tree,
    make_mvtec_ad2_tree,
    make_visa_preset_tree,
)

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "visa": (make_visa_preset_tree, list(VISA_CATEGORIES), "anomaly"),
    "btad": (make_btad_tree, list(BTAD_PRODUCTS), "ko"),
    "mvtec-ad2": (make_mvtec_ad2_tree, list(MVTEC_AD2_SCENARIOS), "bad"),
}


def preset(name: str, data_root: Path) -> dict:
    return load_config_file(ROOT / "config" / f"{name}.yaml", {"data_root": str(data_root)})


@pytest.fixture(scope="module", params=sorted(PRESETS))
def tree(request, tmp_path_factory):
    name = request.param
    make, categories, defect = PRESETS[name]
    root = make(tmp_path_factory.mktemp(name) / "data")
    return name, root, categories, defect


def test_preset_plans_every_category_with_learned_boxes(tree):
    name, root, categories, defect = tree
    config = preset(name, root)
    plan = Plan(config)
    assert plan.categories == categories
    assert plan.pairs() == [(c, defect) for c in categories]
    for c in categories:
        assert plan.learns_box(c, defect)
        # the support set whose masks the range is learned from is a keyed input of the generation
        assert plan.upstream("generation", c, defect)["support"] == ("support", (c, defect))
        assert plan.inputs("generation", c, defect)["support"] == plan.key("support", c, defect)


def test_check_data_on_the_preset_tree(tree):
    name, root, categories, defect = tree
    report = check_data(preset(name, root), foreground_images=2)
    assert report.ok, report.problems
    assert report.jobs["generate_anomalies"] == len(categories)
    # every defect's box range learned from its support masks: the fake anomalies are rectangles of
    # ANOMALY_SIDE x the side (on the square the model sees: pad halves the short side's fraction)
    assert sorted(report.boxes) == sorted(f"{c}/{defect}" for c in categories)
    for box in report.boxes.values():
        long_sides = {c[0] for c in box["components"]}  # [long side, short side, angle, weight]
        assert len(box["components"]) == 3 and max(long_sides) == pytest.approx(ANOMALY_SIDE, abs=0.02)
        assert box["width"][0] < ANOMALY_SIDE < box["width"][1]


def test_visa_multi_instance_foreground_covers_every_instance(tmp_path):
    """capsules, candle, macaroni1/2: check-data's coverage report counts one region per instance."""
    root = make_visa_preset_tree(tmp_path / "visa")
    config = preset("visa", root)
    config["categories"] = sorted(VISA_INSTANCES) + ["cashew"]
    report = check_data(config, foreground_images=2)
    assert report.ok, report.problems
    for category, (rows, cols) in VISA_INSTANCES.items():
        assert report.regions[category] == rows * cols, category
        assert any(f"{rows * cols:g} separate region(s)" in line for line in report.lines)
    assert report.regions["cashew"] == 1


def test_mvtec_ad2_reads_test_public_only(tmp_path):
    root = make_mvtec_ad2_tree(tmp_path / "mvtec_ad_2")
    plan = Plan(preset("mvtec-ad2", root))
    for scenario in MVTEC_AD2_SCENARIOS:
        files = plan.category_files(scenario)
        listed = [*files.train_good, *(p for paths in files.test.values() for p in paths)]
        assert listed and all("test_private" not in p.as_posix() and "validation" not in p.as_posix() for p in listed)
        assert all(p.parent.name == "good" for p in files.train_good)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_dry_run(tmp_path, name):
    make, categories, _ = PRESETS[name]
    root = make(tmp_path / "data")
    config = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    config["data_root"] = str(root)
    workdir = e2e.make_workdir(tmp_path / "work", config=config)
    jobs = e2e.planned_jobs(workdir)
    n = len(categories)
    assert jobs["select_support"] == jobs["learn_embedding"] == jobs["generate_anomalies"] == n
    assert jobs["train_detector"] == n * 2 * 2 and jobs["evaluate_detector"] == n * 2 * 2
    assert "demo_data" not in jobs
