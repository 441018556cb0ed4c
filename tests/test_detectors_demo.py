"""Issue 5's proof on the demo data: a short CPU DRAEM run lowers its loss and beats chance."""

import csv

import pytest
import torch

from anogen.data.demo import DEMO_DEFAULTS, generate_demo_dataset
from anogen.data.layouts import scan_category
from anogen.detectors import load_trained_detector, train_detector
from anogen.evaluation.evaluate import evaluate_detector


@pytest.mark.slow
def test_short_draem_run_on_demo_beats_chance(tmp_path):
    torch.set_num_threads(1)
    root = generate_demo_dataset({**DEMO_DEFAULTS, "root": str(tmp_path / "demo")})
    category = "grass_texture"
    index = scan_category(root, category)
    spec = {
        "category": category,
        "detector": "draem",
        "variant": "baseline",
        "image_size": 64,
        "seed": 0,
        "mixed_precision": "no",
        "resize": "squash",
        "synthetic_source": "draem",
        "texture_source": None,
        "draem": {
            "epochs": 50,
            "batch_size": 8,
            "learning_rate": 1e-4,
            "schedule": "original",
            "recon_base_width": 16,
            "disc_base_width": 8,
            "ssim_weight": 1.0,
            "focal_gamma": 2.0,
            "focal_smooth": 1e-5,
            "score_pool": 21,
            # The default (null) infers the SSIM range from the reconstruction as the
            # official code does; this 50-epoch, 16-wide run reconstructs below -0.5
            # early on (range 2) and lands at image AU-ROC 0.55 on these 20 images,
            # against 0.66 with range 1 (and 0.86 with range 1 + focal smoothing).
            "ssim_value_range": 1.0,
            "image_interpolation": "pil_bicubic",
        },
    }
    out = tmp_path / "draem"
    train_detector(
        spec=spec,
        train_images=index.train_good,
        generated_manifests=[],
        out_dir=out,
        key="demo",
        inputs={},
        device="cpu",
        checkpoint_every=500,
    )
    losses = [float(r["loss"]) for r in csv.DictReader((out / "train_log.csv").open())]
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    import json

    from anogen.config import validate_config

    config = validate_config({"data_root": str(root)})
    eval_spec = {**config["evaluation"], "resolution": 128, "aupro_fpr_limit": 0.3, "n_visualizations": 0}
    eval_spec.update(category=category, detector="draem", variant="baseline", excluded=[], resize=config["resize"])
    eval_spec["image_interpolation"] = "pil_bicubic"  # as the detector above was trained
    manifest = evaluate_detector(
        predictor=load_trained_detector(out),
        test_items=index.test,
        data_root=root,
        spec=eval_spec,
        out_dir=tmp_path / "eval",
        key="demo",
        inputs={},
        batch_size=8,
    )
    metrics = json.loads(manifest.with_name("metrics.json").read_text())
    assert metrics["image_auroc"] > 0.6, metrics
    assert metrics["pixel_auroc"] > 0.55, metrics
