"""The README's demo study, run as written in a fresh checkout: two studies, four arms, one DAG
that trains three detectors (tau 0.90 and N = 4 are one arm), one generated set read as N = 2 and
N = 4, a table per study with the paper's columns, and an added arm that reruns only its own jobs."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anogen.io import load_manifest
from anogen.studies.table_rows import STUDY_COLUMNS
from tests import e2e
from tests.test_readme_commands import fresh_checkout, readme_statements

pytestmark = pytest.mark.e2e

STUDY_CONFIG = "config/demo-study.yaml"


def readme_demo_study_command() -> list[str]:
    """The README's demo study line, run through this interpreter's snakemake."""
    lines = [s for s in readme_statements() if STUDY_CONFIG in s and s.startswith(".venv/bin/snakemake")]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    return [sys.executable, "-m", "snakemake", *words[1:]]


def _snakemake(checkout: Path, words: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(words, cwd=checkout, capture_output=True, text=True, timeout=1500, env=e2e.env())
    assert proc.returncode == 0, f"{words}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    checkout = fresh_checkout(tmp_path_factory.mktemp("study") / "checkout")
    return checkout, _snakemake(checkout, readme_demo_study_command())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_shared_artifact_is_built_once(finished):
    checkout, proc = finished
    log = proc.stdout + proc.stderr
    # 4 arms, 3 detectors: tau 0.90 (demo_tau) is N = 4 (demo_n); nut_object's 3 defects
    for rule, n in {"train_detector": 3, "evaluate_detector": 3, "generate_anomalies": 3, "study_table": 2}.items():
        assert log.count(f"rule {rule}:") == n, (rule, log.count(f"rule {rule}:"))
    generated = sorted((checkout / "results" / "generated" / "nut_object").glob("*/*/manifest.json"))
    assert len(generated) == 3
    for manifest in generated:  # the pool: N = 4 per normal image
        items = load_manifest(manifest)["extra"]["items"]
        assert {item["index_in_image"] for item in items} == {0, 1, 2, 3}


def test_the_n2_arm_reads_the_first_two_of_the_shared_set(finished):
    checkout, _ = finished
    readers = {}
    for manifest in (checkout / "results" / "detectors" / "nut_object" / "draem" / "anogen").glob("*/manifest.json"):
        data = load_manifest(manifest)
        readers[data["extra"]["generated_per_image"]] = data
    assert sorted(readers) == [2, 4]
    assert readers[2]["inputs"] == readers[4]["inputs"]  # the same generated sets (and data)
    n_normal = 16  # demo.n_train_good
    for n, data in readers.items():
        assert set(data["extra"]["n_generated_per_defect"].values()) == {n_normal * n}


def test_each_study_has_its_table_with_the_paper_columns(finished):
    checkout, _ = finished
    for study, arms in {"demo_tau": ["tau_0.90", "tau_0.50"], "demo_n": ["N2", "N4"]}.items():
        folder = checkout / "results" / "studies" / study
        rows = _rows(folder / "table.csv")
        assert list(rows[0]) == list(STUDY_COLUMNS)
        assert {"paper_pixel_aupr", "diff_pixel_aupr", "test_set"} <= set(rows[0])
        means = [r for r in rows if r["category"] == "mean"]
        assert [r["arm"] for r in means] == arms
        assert len({r["test_set"] for r in rows if r["category"] == "mean"}) == 1  # one test set per study
        # every arm has the config's support sets: its study's test set is the config's own
        assert all(
            r["n_test"] and r["base_n_test"] == r["n_test"] and r["base_test_set"] == r["test_set"] for r in rows
        )
        assert all("random diffusion model" in r["note"] for r in rows)
        # a demo category is no MVTec category: no paper value is set beside the demo's numbers
        assert all(r["paper_pixel_aupr"] == "" for r in rows)
        assert (folder / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "random" in (folder / "section.html").read_text()
    metrics = json.loads(next((checkout / "results" / "evaluation").rglob("metrics.json")).read_text())
    assert len(metrics["test_set"]) == 12


def test_adding_an_arm_reruns_only_its_jobs_and_its_table(finished, tmp_path):
    checkout, _ = finished
    config = yaml.safe_load((checkout / STUDY_CONFIG).read_text())
    config["studies"]["demo_tau"]["arms"].append({"name": "tau_0.30", "x": 0.3, "set": {"detectors": {"tau": 0.3}}})
    extended = checkout / "config" / "demo-study-more.yaml"
    extended.write_text(yaml.safe_dump(config, sort_keys=False))
    words = [w if w != STUDY_CONFIG else str(extended) for w in readme_demo_study_command()]
    proc = _snakemake(checkout, [*words[:3], "-n", *words[3:]])
    counts = e2e.job_counts(proc.stdout)
    assert counts == {"train_detector": 1, "evaluate_detector": 1, "study_table": 1, "paper": 1}, counts


def test_paper_without_studies_stops_with_the_reason(finished):
    checkout, _ = finished
    cmd = [sys.executable, "-m", "snakemake", "-n", "paper", "--cores", "1"]  # the demo config: no studies
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=300, env=e2e.env())
    assert proc.returncode != 0
    assert "this config has no studies" in proc.stdout + proc.stderr
