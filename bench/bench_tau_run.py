"""bench_tau.py's runs: one DRAEM training per (tau, seed) on the box-labelled images, its
dropped fraction of box pixels, its evaluation and its probabilities on the training items."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anogen.config import validate_config
from anogen.data.layouts import scan_category
from anogen.detectors import load_trained_detector, train_detector
from anogen.detectors.data import TrainStream, load_binary_mask, load_generated_items, load_rgb
from anogen.detectors.textures import TextureSource
from anogen.evaluation.evaluate import evaluate_detector


def detector_spec(cfg: dict[str, Any], tau: float, seed: int) -> dict[str, Any]:
    return {
        "detector": "draem",
        "variant": cfg["variant"],
        "image_size": int(cfg["image_size"]),
        "seed": int(seed),
        "tau": float(tau),
        "mix_prob": 1.0 if cfg["variant"] == "generated_only" else float(cfg["mix_prob"]),
        "weak_on_synthetic": False,
        "generated_normal_prob": 0.0,
        "augment_generated": False,
        "mixed_precision": "no",
        "resize": "squash",
        "synthetic_source": "draem",
        "texture_source": None,
        "category": cfg["category"],
        "draem": {
            "epochs": int(cfg["epochs"]),
            "batch_size": int(cfg["batch_size"]),
            "learning_rate": float(cfg["learning_rate"]),
            "schedule": "original",
            "recon_base_width": int(cfg["recon_width"]),
            "disc_base_width": int(cfg["disc_width"]),
            "ssim_weight": 1.0,
            "focal_gamma": 2.0,
            "focal_smooth": 1e-5,
            "ssim_value_range": None,
            "score_pool": 21,
            "image_interpolation": "pil_bicubic",  # the kernel its recorded results were made with
        },
    }


def box_pixels_per_step(spec: dict[str, Any], train_images, generated, n_steps: int) -> np.ndarray:
    """Box pixels of the weak samples of each step's batch, from the same pure-function
    stream the trainer read (``TrainStream.batch(step)`` depends on (seed, step) only)."""

    textures = None
    if spec["variant"] != "generated_only":
        textures = TextureSource.from_config(spec["texture_source"], [])
    stream = TrainStream(
        detector="draem",
        variant=spec["variant"],
        image_size=spec["image_size"],
        seed=spec["seed"],
        batch_size=spec["draem"]["batch_size"],
        train_images=train_images,
        generated=generated,
        textures=textures,
        mix_prob=spec["mix_prob"],
        weak_on_synthetic=spec["weak_on_synthetic"],
        generated_normal_prob=spec["generated_normal_prob"],
        augment_generated=spec["augment_generated"],
        synthetic_source=spec["synthetic_source"] if spec["variant"] != "generated_only" else None,
        resize=spec["resize"],
        interpolation=spec["draem"]["image_interpolation"],
    )
    out = np.empty(n_steps)
    for step in range(n_steps):
        b = stream.batch(step)
        out[step] = float(b["mask"][b["weak"]].sum())
    return out


def train_item_probabilities(predictor, generated, exact: dict[str, str], size: int) -> dict[str, float]:
    """Mean anomaly probability of the final model on the training items: on the defect
    pixels, on the normal pixels inside the boxes, and outside the boxes."""

    images = (
        np.stack([load_rgb(it.image, size, "squash", "pil_bicubic") for it in generated]).astype(np.float32) / 255.0
    )
    boxes = np.stack([load_binary_mask(it.mask, size) for it in generated]).astype(bool)
    defects = np.stack([load_binary_mask(it.manifest.parent / exact[it.name], size) for it in generated]).astype(bool)
    _, maps = predictor.predict(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    p_normal = 1.0 - maps
    out = {
        "p_anomaly_defect": float(maps[defects].mean()),
        "p_anomaly_box_normal": float(maps[boxes & ~defects].mean()),
        "p_anomaly_outside_box": float(maps[~boxes].mean()),
    }
    for t in (0.8, 0.9, 0.95):
        out[f"box_normal_p_normal_ge_{t:g}"] = float((p_normal[boxes & ~defects] >= t).mean())
        out[f"defect_p_normal_ge_{t:g}"] = float((p_normal[defects] >= t).mean())
    return out


def run_one(cfg: dict[str, Any], data: dict[str, Any], tau: float, seed: int, out_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(int(cfg["threads"]))
    spec = detector_spec(cfg, tau, seed)
    model_dir = out_dir / f"tau{tau:g}_seed{seed}"
    t0 = time.perf_counter()
    train_detector(
        spec=spec,
        train_images=data["train_images"],
        generated_manifests=[data["manifest"]],
        out_dir=model_dir,
        key=f"tau{tau:g}-s{seed}",
        inputs={},
        device="cpu",
        checkpoint_every=10**9,
        log_every=10**9,
        num_workers=0,
    )
    train_s = time.perf_counter() - t0

    with open(model_dir / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    generated = load_generated_items([data["manifest"]], data["train_images"], data["root"])
    box_px = box_pixels_per_step(spec, data["train_images"], generated, len(rows))
    batch_px = spec["draem"]["batch_size"] * spec["image_size"] ** 2
    # dropped pixels per step (weak_dropped is a fraction of all pixels of the batch)
    dropped_px = np.array([float(r["weak_dropped"]) for r in rows]) * batch_px
    focal = np.array([float(r["focal"]) for r in rows])
    tail = max(1, int(round(len(rows) * float(cfg["tail"]))))

    def fraction(sl) -> float:  # pooled over the steps: batches without boxes count nothing
        return float(dropped_px[sl].sum() / max(box_px[sl].sum(), 1.0))

    bounds = np.linspace(0, len(rows), 11).round().astype(int)
    deciles = [fraction(slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    predictor = load_trained_detector(model_dir)
    index = scan_category(data["root"], cfg["category"])
    config = validate_config({"data_root": str(data["root"])})
    eval_spec = {**config["evaluation"], "resize": config["resize"], "image_interpolation": "pil_bicubic"}
    eval_spec.update(resolution=int(cfg["image_size"]), aupro_fpr_limit=0.3, n_visualizations=0, excluded=[])
    eval_spec.update(category=cfg["category"], detector="draem", variant=f"tau{tau:g}")
    manifest = evaluate_detector(
        predictor=predictor,
        test_items=index.test,
        data_root=data["root"],
        spec=eval_spec,
        out_dir=model_dir / "evaluation",
        key=f"eval-tau{tau:g}-s{seed}",
        inputs={},
        batch_size=8,
    )
    metrics = json.loads(manifest.with_name("metrics.json").read_text())
    probs = train_item_probabilities(predictor, generated, data["exact"], int(cfg["image_size"]))
    return {
        "tau": tau,
        "seed": seed,
        "steps": len(rows),
        "train_seconds": round(train_s, 1),
        "dropped_box_fraction_tail": fraction(slice(len(rows) - tail, len(rows))),
        "dropped_box_fraction_by_decile": deciles,
        "focal_tail": float(focal[-tail:].mean()),
        **{k: metrics[k] for k in ("pixel_aupr", "pixel_auroc", "pixel_aupro", "image_auroc", "image_aupr")},
        **probs,
    }


def run_job(args: tuple) -> dict[str, Any]:
    """One (tau, seed) run: the unit of the driver's process pool (a spawned process logs warnings only)."""
    cfg, data, tau, seed, out_dir = args
    logging.basicConfig(level=logging.WARNING)
    return run_one(cfg, data, tau, seed, out_dir)
