"""Generation quality (anogen.quality): reference values, IC-LPIPS by hand, no downloads, the CLI, the rule.

The feature networks are randomly initialised files written here (never downloaded), so the numbers
only check the code paths and the reference identities, and every row carries the random-weights note.
"""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anogen import provenance
from anogen.errors import ConfigError, DataError
from anogen.quality import metrics as M
from anogen.quality.networks import load_inception, load_lpips, write_random_weights
from anogen.quality.table import COLUMNS, NOT_CONFIGURED, PEERS, per_category, quality_html

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quality_weights")
    paths = {"inception": folder / "inception.pth", "lpips": folder / "alexnet.pth"}
    write_random_weights(paths["inception"], paths["lpips"], "alex", seed=0)
    return paths


@pytest.fixture(scope="module")
def nets(weights):
    return {"inception": load_inception(weights["inception"]), "lpips": load_lpips(weights["lpips"], "alex")}


def _images(n: int, seed: int, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_inception_score_of_one_repeated_image_is_one(nets):
    repeated = M.as_uint8_tensor(_images(1, 0) * 4, 48)
    logits = M.inception_features(nets["inception"], repeated, 4, "cpu")["logits_unbiased"]
    out = M.inception_score(logits, splits=2, seed=2020)
    assert out["is_mean"] == pytest.approx(1.0, abs=1e-9) and out["is_std"] == pytest.approx(0.0, abs=1e-9)
    varied = M.inception_features(nets["inception"], M.as_uint8_tensor(_images(4, 1), 48), 4, "cpu")
    assert M.inception_score(varied["logits_unbiased"], splits=1, seed=2020)["is_mean"] > 1.0
    assert M.inception_score(varied["logits_unbiased"], splits=10, seed=2020)["is_splits"] == 4  # capped at n


def test_kid_of_identical_sets_is_near_zero_and_of_different_sets_is_not():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(2000, 64)))
    twin = torch.from_numpy(rng.normal(size=(2000, 64)))  # another sample of the same distribution
    shifted = torch.from_numpy(rng.normal(loc=0.5, size=(2000, 64)))
    same = M.kid(a, a, subsets=50, subset_size=50, seed=2020)
    other = M.kid(a, shifted, subsets=50, subset_size=50, seed=2020)
    assert abs(same["kid_mean"]) < 0.02 * other["kid_mean"]
    assert abs(M.kid(a, twin, subsets=50, subset_size=50, seed=2020)["kid_mean"]) < 0.02 * other["kid_mean"]
    assert other["kid_mean"] > 0 and other["kid_subset_size"] == 50
    capped = M.kid(a[:10], shifted, subsets=5, subset_size=1000, seed=2020)
    assert capped["kid_subset_size"] == 10  # the size used is recorded
    assert M.kid(a[:1], shifted, subsets=5, subset_size=1000, seed=2020)["kid_mean"] is None


def test_lpips_of_identical_images_is_zero(nets):
    images = list(M.as_uint8_tensor(_images(3, 2), 48).float() / 255)
    distance = M.lpips_distance(nets["lpips"], 2, "cpu")
    assert np.all(distance(images, images) == 0)
    assert np.all(distance(images, images[::-1])[[0, 2]] > 0)


def test_ic_lpips_matches_a_hand_computation():
    # centres 0 and 1; 0.3 is nearer 0, 5.0 nearer 1; the third centre (100) gets no member
    generated = [0.0, 0.2, 0.3, 1.0, 1.4, 5.0]
    out = M.ic_lpips(generated, [0.0, 1.0, 100.0], lambda a, b: np.abs(np.subtract(a, b)))
    # cluster 0: |0-.2|, |0-.3|, |.2-.3| -> 0.2; cluster 1: .4, 4.0, 3.6 -> 8/3
    assert out["ic_lpips"] == pytest.approx((0.2 + 8 / 3) / 2)
    assert out["clusters"] == [3, 3, 0]
    assert M.ic_lpips([0.0, 5.0], [0.0, 5.0], lambda a, b: np.abs(np.subtract(a, b)))["ic_lpips"] is None


def test_box_crop_is_the_grown_bounding_rectangle():
    image = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 8:12] = 1
    assert M.box_crop(image, mask, 0.1).shape == (12, 4, 3)  # rows grow by round(1.0), columns by round(0.4)
    assert M.box_crop(image, mask, 0.5).shape[:2] == (20, 8)
    assert M.box_crop(image, np.zeros_like(mask), 0.1) is image


def test_weights_are_never_downloaded(weights, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    load_inception(weights["inception"])
    load_lpips(weights["lpips"], "alex")


def test_missing_or_wrong_weights_fail_naming_the_key(weights, tmp_path):
    from anogen.quality.networks import weights_info

    with pytest.raises(ConfigError, match="quality.inception_weights"):
        weights_info(None, "quality.inception_weights")
    with pytest.raises(DataError, match="not a file"):
        weights_info(tmp_path / "absent.pth", "quality.lpips_weights")
    with pytest.raises(DataError, match="quality.lpips_weights"):
        load_lpips(weights["inception"], "alex")  # Inception tensors have no features.*
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="not a torchvision alex"):
        load_lpips(tmp_path / "bad.pth", "alex")


def _write_folder(folder: Path, images, masks: Path | None = None) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        if masks is not None:
            masks.mkdir(parents=True, exist_ok=True)
            mask = np.zeros(image.shape[:2], np.uint8)
            mask[8:24, 10 + i % 8 : 30] = 255
            Image.fromarray(mask).save(masks / f"{i:03d}_mask.png")
    return folder


def test_anogen_quality_on_a_folder_not_made_by_the_pipeline(weights, tmp_path, capsys):
    from anogen.cli import main

    peer = tmp_path / "peer_release" / "bottle" / "broken_large"  # e.g. a peer's released set
    _write_folder(peer / "image", _images(6, 3, 40), peer / "mask")
    _write_folder(tmp_path / "real", _images(4, 4, 64), tmp_path / "real_masks")
    _write_folder(tmp_path / "support", _images(2, 5, 64), tmp_path / "support_masks")
    out = tmp_path / "q.csv"
    args = ["quality", "--generated", str(peer / "image"), "--generated-masks", str(peer / "mask")]
    args += ["--real", str(tmp_path / "real"), "--real-masks", str(tmp_path / "real_masks")]
    args += ["--support", str(tmp_path / "support"), "--support-masks", str(tmp_path / "support_masks")]
    args += ["--out", str(out), "--device", "cpu"]
    args += ["--inception-weights", str(weights["inception"]), "--lpips-weights", str(weights["lpips"])]
    args += ["--set", "quality.kid_subsets=5", "quality.image_size=64"]
    assert main(args) == 0
    assert "NOTE: " + provenance.RANDOM_QUALITY_WEIGHTS in capsys.readouterr().out
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        (row,) = list(reader)
    assert (row["n_generated"], row["n_real"], row["n_support"]) == ("6", "4", "2")
    for column in ("is_mean", "ic_lpips", "kid_mean", "crop_is_mean", "crop_ic_lpips", "crop_kid_mean"):
        assert row[column] != "", column
    assert float(row["is_mean"]) >= 1.0 and float(row["ic_lpips"]) >= 0
    assert (row["kid_subsets"], row["kid_subset_size"], row["image_size"], row["is_splits"]) == ("5", "4", "64", "6")
    assert row["inception_sha256"] and row["lpips_net"] == "alex" and row["torch_fidelity_version"] == "0.4.0"
    assert row["note"] == provenance.RANDOM_QUALITY_WEIGHTS
    # no support: IC-LPIPS is left empty, the rest is computed; no weights: the key is named
    at = args.index("--support")
    assert main(args[:at] + args[at + 2 :]) == 0
    with out.open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["ic_lpips"] == "" and row["n_support"] == "0" and row["is_mean"] and row["kid_mean"]
    # real images without masks: no crop KID (generated crops are not compared with whole images)
    at = args.index("--real-masks")
    assert main(args[:at] + args[at + 2 :]) == 0
    with out.open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["kid_mean"] and row["crop_kid_mean"] == "" and row["crop_is_mean"] and row["crop_ic_lpips"]
    assert main(["quality", "--generated", str(peer / "image"), "--out", str(out)]) == 2
    assert "quality.inception_weights" in capsys.readouterr().err


def test_the_report_page_has_the_table_the_mean_row_and_the_peers():
    base = {c: "" for c in COLUMNS}
    rows = [
        {**base, "category": "a", "defect": "x", "is_mean": "1.5", "ic_lpips": "0.2", "kid_mean": "0.1", "note": "n1"},
        {**base, "category": "a", "defect": "y", "is_mean": "2.5", "ic_lpips": "0.4", "kid_mean": "", "note": "n1"},
        {**base, "category": "b", "defect": "x", "is_mean": "3.0", "ic_lpips": "0.6", "kid_mean": "0.3", "note": ""},
    ]
    table = dict(per_category(rows))
    assert table["a"][:3] == [2.0, pytest.approx(0.3), 0.1] and table["mean"][:3] == [2.5, 0.45, 0.2]
    page = quality_html(rows)
    for name, is_, ic, _ in PEERS:
        assert name in page and f"{is_:.3f}" in page and f"{ic:.3f}" in page
    assert "not strictly comparable" in page and "<b>n1</b>" in page and "2.500" in page
    assert (
        "not computed" in NOT_CONFIGURED and NOT_CONFIGURED[:40] in (REPO / "workflow/report/workflow.rst").read_text()
    )


# ----------------------------------------------------------------------------- the plan and the rule


def _plan(extra: dict | None = None):
    from anogen.config import deep_update, validate_config
    from anogen.data.demo import demo_layout
    from anogen.plan import Plan
    from tests import e2e

    cfg = validate_config(deep_update(e2e.e2e_config(), extra or {}))
    return Plan(cfg, layout=demo_layout(cfg["demo"]))


def test_no_quality_job_without_weights_and_keys_follow_the_weights_content(weights, tmp_path):
    assert _plan().instances("quality") == []
    configured = {"quality": {"inception_weights": str(weights["inception"]), "lpips_weights": str(weights["lpips"])}}
    plan = _plan(configured)
    assert plan.instances("quality") == plan.pairs()
    c, d = plan.pairs()[0]
    job = plan.job("quality", c, d)
    assert job.spec["inception_sha256"] and job.inputs["generation"] == plan.key("generation", c, d)
    assert len(job.spec["excluded"]) == plan.config["support"]["shots"]
    assert "batch_size" in job.runtime and "batch_size" not in job.spec
    moved = tmp_path / "moved.pth"
    moved.write_bytes(Path(weights["lpips"]).read_bytes())
    assert _plan(json.loads(json.dumps(configured).replace(str(weights["lpips"]), str(moved)))).key(
        "quality", c, d
    ) == (job.key)  # the path is runtime, the content is the key
    assert _plan({**configured, "quality": {**configured["quality"], "seed": 1}}).key("quality", c, d) != job.key
    missing = {"quality": {"inception_weights": str(tmp_path / "none.pth"), "lpips_weights": str(moved)}}
    with pytest.raises(ConfigError, match="quality.inception_weights"):
        _plan(missing).key("quality", c, d)
    assert provenance.RANDOM_QUALITY_WEIGHTS in provenance.plan_warnings(plan.config)
    assert provenance.RANDOM_QUALITY_WEIGHTS not in provenance.plan_warnings(_plan().config)


@pytest.mark.e2e
def test_quality_rule_on_the_demo_run_and_its_report(demo_run, weights, tmp_path):
    """The demo run copied, one (category, defect) configured with random weights: only the quality jobs run."""
    import yaml

    from tests import e2e

    work = e2e.copy_tree(demo_run, tmp_path / "work")
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    plan = _plan()
    category, defect = plan.pairs()[0]
    config.update(categories=[category], defects={category: [defect]})
    config["quality"] = {"inception_weights": str(weights["inception"]), "lpips_weights": str(weights["lpips"])}
    config["quality"].update(kid_subsets=5, image_size=64, batch_size=16)
    e2e.write_config(work, config)
    # the `quality` target plans only the quality jobs (an option before it ends --quiet's list of values)
    assert e2e.planned_jobs(work, "--cores", "2", "quality") == {
        "generation_quality": 1,
        "quality_table": 1,
        "quality": 1,
    }
    assert e2e.planned_jobs(work)["generation_quality"] == 1  # and the default target has them when configured
    e2e.run(work, "quality")
    with (work / "results" / "generation_quality.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["category"], row["defect"]) == (category, defect)
    assert row["generation_key"] == plan.key("generation", category, defect)
    assert int(row["n_real"]) == e2e.e2e_config()["demo"]["n_test_per_defect"] - plan.config["support"]["shots"]
    assert row["is_mean"] and row["crop_is_mean"] and row["ic_lpips"]
    assert (row["kid_mean"] != "") == (int(row["n_real"]) >= 2)  # the unbiased KID needs two real images
    assert provenance.RANDOM_QUALITY_WEIGHTS in row["note"] and provenance.RANDOM_MODEL in row["note"]
    # the report of the `quality` target (the restricted plan's detectors are not the demo run's)
    e2e.run(work, "--report", "report.zip", "quality")
    import zipfile

    with zipfile.ZipFile(work / "report.zip") as zf:
        (item,) = [n for n in zf.namelist() if n.endswith("/generation_quality.html")]
        page = zf.read(item).decode()
    assert "AnomalyDiffusion" in page and provenance.RANDOM_QUALITY_WEIGHTS in page and "mean" in page


def test_estimate_counts_the_quality_jobs_only_when_configured(tmp_path):
    from anogen import estimate as est
    from anogen.config import deep_update, load_config_file
    from anogen.data.mvtec_counts import MVTEC_AD_COUNTS

    mvtec = load_config_file(REPO / "config" / "mvtec.yaml")
    assert "quality" not in est.estimate(mvtec, gpu_model="H200").stage_jobs()
    quality = {"quality": {"inception_weights": "/w/inception.pth", "lpips_weights": "/w/alexnet.pth"}}
    configured = deep_update(mvtec, quality)
    seeded = est.estimate(configured, gpu_model="H200")  # the H200 table has no quality entry
    assert seeded.stage_jobs()["quality"] == 73 and seeded.stage_hours()["quality"] == 0
    assert any("generation quality not measured" in n for n in seeded.notes)
    table = json.loads((est.RESULTS_DIR / "throughput_h200.json").read_text())
    table["stages"]["quality"] = {"inception_images_per_s": 100.0, "lpips_pairs_per_s": 1000.0, "overhead_s": 5.0}
    (tmp_path / "throughput_test.json").write_text(json.dumps({**table, "gpu_model": "Test GPU 9000"}))
    e = est.estimate(configured, results_dir=tmp_path, gpu_model="gpu 9000")
    # bottle/broken_large by hand: 209 normal x 2 boxes x 2 images, 20 real less 3 support
    n_gen = 209 * 2 * 2
    assert MVTEC_AD_COUNTS["bottle"][2]["broken_large"] == 20
    pairs = 2 * (n_gen * 3 + 3 * (n_gen / 3) * (n_gen / 3 - 1) / 2)
    expected = 2 * (n_gen + 17 + 3) / 100.0 + pairs / 1000.0 + 5.0
    (job,) = [j for j in e.jobs if j.name == "quality/bottle/broken_large"]
    assert job.seconds == pytest.approx(expected) and job.deps == ("generation/bottle/broken_large",)
    assert "quality" in est.format_report(e, 4)


def test_preflight_loads_the_quality_weights_or_says_why_there_is_no_table(weights, tmp_path):
    from anogen.preflight import PreflightReport, _check_quality

    report = PreflightReport()
    _check_quality(_plan(), report)
    assert NOT_CONFIGURED in report.lines and report.ok and not report.warnings
    configured = {"inception_weights": str(weights["inception"]), "lpips_weights": str(weights["lpips"])}
    report = PreflightReport()
    _check_quality(_plan({"quality": configured}), report)
    assert report.ok and report.warnings == [provenance.RANDOM_QUALITY_WEIGHTS]
    assert sum("loads, sha256" in line for line in report.lines) == 2
    report = PreflightReport()
    _check_quality(_plan({"quality": {"inception_weights": str(weights["inception"])}}), report)
    assert report.ok and "only one of" in report.warnings[0]
    with pytest.raises(DataError, match="quality.lpips_weights"):
        _check_quality(
            _plan({"quality": {**configured, "lpips_weights": str(weights["inception"])}}), PreflightReport()
        )
