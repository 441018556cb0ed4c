"""The workflow as a user meets it (lint: tests/test_style.py; the report: tests/test_report.py):
the planned DAG for the demo and for MVTec AD, and the export target."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from tests import e2e

pytestmark = pytest.mark.e2e


def _bench_tree():
    spec = importlib.util.spec_from_file_location("bench_dryrun", e2e.REPO / "bench" / "bench_dryrun.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_plans_one_embedding_and_generation_per_pair(tmp_path):
    workdir = e2e.make_workdir(tmp_path, config=yaml.safe_load((e2e.REPO / "config" / "config.yaml").read_text()))
    jobs = e2e.planned_jobs(workdir)
    assert jobs["learn_embedding"] == jobs["generate_anomalies"] == jobs["select_support"] == 7
    assert jobs["train_detector"] == jobs["evaluate_detector"] == 3 * 2 * 2
    assert jobs["summarize"] == 1 and jobs["demo_data"] == 1 and jobs["tiny_model"] == 1


def test_mvtec_config_plans_73_defect_types(tmp_path):
    bench = _bench_tree()
    counts = bench.build_tree(tmp_path / "mvtec")
    assert counts["defects"] == 73
    config = yaml.safe_load((e2e.REPO / "config" / "mvtec.yaml").read_text())
    workdir = e2e.make_workdir(tmp_path / "work", config=config)
    jobs = e2e.planned_jobs(workdir, "--config", f"data_root={tmp_path / 'mvtec'}")
    assert jobs["learn_embedding"] == jobs["generate_anomalies"] == jobs["select_support"] == 73
    assert jobs["estimate_foreground"] == 15
    assert jobs["train_detector"] == jobs["evaluate_detector"] == 15 * 2 * 2
    assert "demo_data" not in jobs and "tiny_model" not in jobs


def test_export_target(demo_run, tmp_path):
    # the report built from the same run is checked in tests/test_report.py
    work = e2e.copy_tree(demo_run, tmp_path / "work")
    e2e.run(work, "export_generated")
    (marker,) = list((work / "results" / "export").glob("generated-*/dataset.json"))
    root = marker.parent
    assert (root / "README.md").is_file()
    images = list(root.glob("*/*/images/*.png"))
    masks = list(root.glob("*/*/masks/*.png"))
    n_train = e2e.e2e_config()["demo"]["n_train_good"]
    assert len(images) == len(masks) == 7 * n_train * 4
    json.loads(marker.read_text())


def test_summary_has_every_demo_category(demo_run):
    import csv

    rows = list(csv.DictReader((demo_run / "results" / "summary.csv").open()))
    cats = {r["category"] for r in rows}
    assert cats == {"grass_texture", "brick_gray", "nut_object", "mean"}
    assert len(rows) == (3 + 1) * 2 * 2
    table = list(csv.reader((demo_run / "results" / "table1.csv").open()))
    header = table[0]
    assert "draem delta" in header and "destseg delta" in header


def test_demo_results_say_what_they_were_computed_from(demo_run):
    """Random model, random teacher and fallback textures: on every manifest they touch and every row."""
    import csv

    from anogen import provenance

    results = demo_run / "results"

    def notes(path):
        return set(json.loads(path.read_text()).get("notes", []))

    for stage in ("embeddings", "generated"):
        for manifest in (results / stage).rglob("manifest.json"):
            assert provenance.RANDOM_MODEL in notes(manifest), manifest
    for stage in ("detectors", "evaluation"):
        for manifest in (results / stage).rglob("manifest.json"):
            detector, variant = manifest.parts[-4], manifest.parts[-3]
            found = notes(manifest)
            assert (provenance.RANDOM_MODEL in found) == (variant != "baseline"), manifest
            assert (provenance.RANDOM_TEACHER in found) == (detector == "destseg"), manifest
            assert provenance.FALLBACK_TEXTURES in found, manifest
    for manifest in (results / "support").rglob("manifest.json"):
        assert notes(manifest) == set(), manifest  # real (demo) images: nothing to say
    rows = list(csv.DictReader((results / "summary.csv").open()))
    for row in rows:
        assert provenance.FALLBACK_TEXTURES in row["note"], row
        assert (provenance.RANDOM_TEACHER in row["note"]) == (row["detector"] == "destseg"), row
        assert (provenance.RANDOM_MODEL in row["note"]) == (row["variant"] == "anogen"), row
    for row in csv.DictReader((results / "table1.csv").open()):
        assert provenance.RANDOM_MODEL in row["note"] and provenance.RANDOM_TEACHER in row["note"], row


def test_every_manifest_key_recomputes_from_its_recorded_spec_and_inputs(demo_run):
    """A user who checks a manifest against the key its folder is named by finds them equal."""
    from anogen.keys import content_key

    manifests = [
        m
        for stage in ("support", "foreground", "embeddings", "generated", "detectors", "evaluation")
        for m in (demo_run / "results" / stage).rglob("manifest.json")
    ]
    assert len(manifests) == 7 + 3 + 7 + 7 + 12 + 12
    for path in manifests:
        manifest = json.loads(path.read_text())
        assert manifest["key"] == path.parent.name, path
        assert content_key(manifest["spec"], manifest["inputs"]) == manifest["key"], path
