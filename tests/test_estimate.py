"""anogen estimate: work model, list schedule and the command line, against hand-computed values."""

import json

import pytest

from anogen import estimate as est
from anogen.cli import main
from anogen.config import load_config_file, validate_config

REPO = est.RESULTS_DIR.parents[1]


def _table(tmp_path, **stages):
    t = {
        "format": est.FORMAT,
        "gpu_model": "Test GPU 9000",
        "device": "cuda",
        "date": "2026-01-01",
        "source": "test",
        "stages": stages,
    }
    (tmp_path / "throughput_test.json").write_text(json.dumps(t))
    return t


def small_gpu_table(tmp_path):
    """Round rates at 64 px: 1 embedding step/s, 1 image/s at 10 DDIM steps, 4 detector images/s."""
    return _table(
        tmp_path,
        embedding={"value": 1.0, "unit": "steps/s"},
        generation={"value": 1.0, "unit": "images/s", "steps": 10},
        detector_draem={"value": 4.0, "unit": "images/s", "image_size": 64},
        detector_destseg={"value": 4.0, "unit": "images/s", "image_size": 64},
        evaluation={"value": 2.0, "unit": "images/s"},
    )


def test_list_schedule_hand_cases():
    J = est.Job
    # independent jobs 5,4,3,3 on 2 GPUs, longest first: {5,3} {4,3} -> 8
    jobs = [J("a", "x", 5), J("b", "x", 4), J("c", "x", 3), J("d", "x", 3)]
    assert est.list_schedule(jobs, 2) == 8
    assert est.list_schedule(jobs, 1) == 15
    # a chain waits: b needs a (2 s); c (1 s) free. 2 GPUs: a|c at 0, b starts at 2 -> 5
    jobs = [J("a", "x", 2), J("b", "x", 3, ("a",)), J("c", "x", 1)]
    assert est.list_schedule(jobs, 2) == 5
    # the GPU that is free first idles until b's dependency finishes
    jobs = [J("a", "x", 4), J("b", "x", 1, ("a",))]
    assert est.list_schedule(jobs, 3) == 5


def test_mvtec_config_uses_published_counts_and_seeded_h200():
    config = load_config_file(REPO / "config" / "mvtec.yaml")
    e = est.estimate(config, gpu_model="H200")
    assert e is not None and e.table["source"].startswith("earlier closing note")
    assert "published MVTec AD counts" in e.counts.source
    jobs = e.stage_jobs()
    assert jobs == {"embedding": 73, "generation": 73, "detector": 60, "evaluation": 60}
    hours = e.stage_hours()
    assert hours["embedding"] == pytest.approx(73 * 6000 / 6.2 / 3600)
    n_train = sum(tr * len(d) for tr, _, d in est.MVTEC_AD.values())
    assert hours["generation"] == pytest.approx(n_train * 2 * 2 / 8.7 / 3600)
    # DRAEM: 700 epochs x ceil(n/8) x 8 images per category, x2 variants
    draem = sum(700 * -(-tr // 8) * 8 for tr, _, _ in est.MVTEC_AD.values()) * 2 / 100.0
    destseg = 15 * 2 * 5000 * 32 / 333.0
    assert hours["detector"] == pytest.approx((draem + destseg) / 3600)


def test_detector_waits_for_generation_and_pixel_scaling(tmp_path):
    small_gpu_table(tmp_path)
    cfg = validate_config(
        {
            "categories": ["bottle"],
            "defects": {"bottle": ["contamination"]},
            "data_root": str(tmp_path / "none"),
            "embedding": {"steps": 10},
            "generation": {"steps": 20, "boxes_per_image": 1, "images_per_box": 1, "max_normal_images": 3},
            "detectors": {
                "models": ["draem"],
                "variants": ["anogen"],
                "image_size": 128,
                "draem": {"epochs": 2, "batch_size": 2},
            },
        }
    )
    e = est.estimate(cfg, results_dir=tmp_path, gpu_model="gpu 9000")
    by = {j.name: j for j in e.jobs}
    assert by["embedding/bottle/contamination"].seconds == 10
    # 3 images at half the measured rate (20 vs 10 DDIM steps)
    assert by["generation/bottle/contamination"].seconds == pytest.approx(6)
    # 2 epochs x ceil(209/2)=105 steps x 2 = 420 images at 4 img/s x (64/128)^2 = 1 img/s
    det = by["detector/bottle/draem/anogen"]
    assert det.seconds == pytest.approx(420) and det.deps == ("generation/bottle/contamination",)
    # evaluation reads every test image of the category: 20 good + 20 + 22 + 21 defective
    assert by["evaluation/bottle/draem/anogen"].seconds == pytest.approx((20 + 20 + 22 + 21) / 2)
    # everything is one chain: the wall time on 4 GPUs is the sum
    assert est.list_schedule(e.jobs, 4) == pytest.approx(10 + 6 + 420 + 41.5)
    assert est.estimate(cfg, results_dir=tmp_path, gpu_model="A100") is None


def test_cli_prints_stages_and_total(capsys):
    assert main(["estimate", "--configfile", str(REPO / "config" / "mvtec.yaml"), "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    for word in (
        "embedding",
        "generation",
        "detector",
        "evaluation",
        "total",
        "wall time on 4 GPUs",
        "throughput_h200.json",
        "earlier closing note",
    ):
        assert word in out
    assert main(["estimate", "--configfile", str(REPO / "config" / "mvtec.yaml"), "--gpu-model", "B200"]) == 1
    assert "no throughput measurement" in capsys.readouterr().err


def test_a_table_cut_short_stops_naming_it_and_failed_checks_are_shown(tmp_path, capsys):
    """gpu_check writes its table after every phase: one whose lease ended early lacks stages."""
    t = _table(tmp_path, embedding={"value": 5.0, "unit": "steps/s"})
    cfg = str(REPO / "config" / "mvtec.yaml")
    args = ["estimate", "--configfile", cfg, "--gpu-model", "gpu 9000", "--results", str(tmp_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "throughput_test.json has no generation throughput" in err and "gpu_check" in err
    t["stages"].update(
        generation={"value": 1.0, "unit": "images/s", "steps": 50},
        detector_draem={"value": 100.0, "unit": "images/s", "image_size": 256},
        detector_destseg={"value": 100.0, "unit": "images/s", "image_size": 256},
    )
    t["checks"] = [{"check": "stage 3 phase", "ok": False, "detail": "skipped"}, {"check": "x", "ok": True}]
    (tmp_path / "throughput_test.json").write_text(json.dumps(t))
    assert main(args) == 0
    assert "WARNING: that device check failed 1 check(s): stage 3 phase" in capsys.readouterr().out
