"""Paper Table 3 on CPU: does the weak box loss (tau < 1) beat plain box labels?

The experiment (everything but the data comes from the package, unchanged):

- **Data** (``anogen.data.demo_images.render_demo_image``): defect images of one demo category
  (default ``grass_texture``: colour contamination blobs and holes pasted onto crops of a
  scikit-image photograph), rendered at the training size, each with its *exact* defect
  mask and its clean (pre-defect) image. Training items and the held-out test set are
  disjoint image indices of the same generator.
- **Weak labels**: each training defect gets a loose axis-aligned box that contains the
  defect, with box area = r x defect area, r ~ U(box_ratio) (default 2-4), at a random
  offset; so 50-75 % of every box is normal texture. The defect images + box masks are
  written as a stage-2 generation manifest (``anogen.io.write_manifest``, the
  ``extra.items`` contract of ``anogen.generation.run``), with the clean images as the
  source images (the detector's ``train/good`` folder), and read back by
  ``anogen.detectors.data.load_generated_items`` like real generated anomalies.
- **Detector**: DRAEM through ``anogen.detectors.train_detector`` (the workflow's training
  loop, ``TrainStream``, ``DraemTrainer``, the weak focal loss of Eq. 8-9 in
  ``anogen.detectors.losses``), by default variant ``anogen`` as in the paper: each sample
  is a box-labelled defect image with probability ``mix_prob`` (0.5), else DRAEM's
  synthetic branch on the clean images (Perlin anomaly with an exact mask, half of them
  left normal; textures from scikit-image's photographs). The weak loss is applied to the
  box-labelled samples only (``weak_on_synthetic`` false), so tau changes nothing but the
  box supervision. ``--variant generated_only`` trains on the box-labelled images alone.
  One run per (tau, seed); small widths, 32 px and a raised learning rate so that the
  predictions grow confident within a CPU budget.
- **Dropped fraction**: the trainer logs ``weak_dropped`` per step (dropped pixels / all
  pixels of the batch); the bench divides by the batch's box pixels (the batches are a pure
  function of (seed, step), so they are rebuilt here) = the fraction of box pixels whose
  predicted normal probability was >= tau, averaged over the last ``--tail`` of training.
- **Evaluation**: ``anogen.evaluation.evaluate.evaluate_detector`` (the workflow's metrics:
  exact pixel AU-PR / AU-ROC / AUPRO and image AU-ROC / AU-PR) on the held-out test set
  (normal + defect images, exact ground-truth masks), written in the MVTec layout.
  Also recorded, on the training items with the final model: the mean anomaly probability
  on the defect pixels, on the normal pixels inside the boxes, and outside the boxes.

Results: mean +- std over seeds per tau, printed as a markdown table and written with the
raw per-run values as JSON (``--out-json``) and markdown (``--out-md``).

Default (the table in bench/results/tau_cpu.md):
  nice -n 10 python bench/bench_tau.py --out-json bench/results/tau_cpu.json \\
      --out-md bench/results/tau_cpu.md
Smoke run (4 runs of 40 steps, about 25 s of CPU): python bench/bench_tau.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "category": "grass_texture",
    "taus": [1.0, 0.95, 0.9, 0.8],
    "seeds": [0, 1, 2],
    "image_size": 32,
    "n_train_items": 64,
    "n_test_good": 16,
    "n_test_per_defect": 16,
    "box_ratio": [2.0, 4.0],
    "data_seed": 0,
    "epochs": 50,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "recon_width": 8,
    "disc_width": 8,
    "tail": 0.25,
    "variant": "anogen",
    "mix_prob": 0.5,
    "jobs": 2,
}
QUICK: dict[str, Any] = {
    "seeds": [0],
    "n_train_items": 16,
    "n_test_good": 4,
    "n_test_per_defect": 4,
    "epochs": 20,
    "recon_width": 4,
    "disc_width": 4,
}
TRAIN_INDEX_OFFSET = 100_000  # training defects use image indices far from the test indices


# ----------------------------------------------------------------------------- data


def loose_box(mask: np.ndarray, ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A box mask (uint8 {0,1}) containing every pixel of ``mask`` whose area is about
    ``ratio`` x the mask's area (never smaller than the tight bounding box), placed at a
    random offset inside the image. Returns ``(box_mask, (y0, x0, y1, x1))`` (exclusive ends)."""
    size_y, size_x = mask.shape
    ys, xs = np.nonzero(mask)
    ty0, ty1, tx0, tx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    th, tw = ty1 - ty0, tx1 - tx0
    scale = math.sqrt(ratio * len(ys) / (th * tw))
    h = min(size_y, max(th, round(th * scale)))
    w = min(size_x, max(tw, round(tw * scale)))
    # Box start: anywhere that keeps the tight box inside it and the box inside the image.
    y0 = int(rng.integers(max(0, ty1 - h), min(ty0, size_y - h) + 1))
    x0 = int(rng.integers(max(0, tx1 - w), min(tx0, size_x - w) + 1))
    box = np.zeros_like(mask, dtype=np.uint8)
    box[y0 : y0 + h, x0 : x0 + w] = 1
    return box, (y0, x0, y0 + h, x0 + w)


def build_data(work: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Write the MVTec-layout test set, the clean training images and the box-labelled
    defect images (+ generation manifest) under ``work``; return their description."""
    from anogen.data.demo import DEMO_CATEGORIES
    from anogen.data.demo_images import render_demo_image
    from anogen.io import atomic_save_image, write_manifest

    category, size = cfg["category"], int(cfg["image_size"])
    spec = {"seed": int(cfg["data_seed"]), "image_size": size}
    defects = DEMO_CATEGORIES[category]["defects"]
    root = work / "data"
    cat = root / category

    for i in range(int(cfg["n_test_good"])):
        image, _, _ = render_demo_image(spec, category, "test/good", i)
        atomic_save_image(cat / "test" / "good" / f"{i:03d}.png", image)
    for defect in defects:
        for i in range(int(cfg["n_test_per_defect"])):
            image, mask, _ = render_demo_image(spec, category, f"test/{defect}", i)
            atomic_save_image(cat / "test" / defect / f"{i:03d}.png", image)
            atomic_save_image(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask * np.uint8(255))

    gen = work / "generated"
    rng = np.random.default_rng([int(cfg["data_seed"]), 0xB0C5])
    lo, hi = cfg["box_ratio"]
    items, files, ratios, exact = [], [], [], {}
    for k in range(int(cfg["n_train_items"])):
        defect = defects[k % len(defects)]
        image, mask, clean = render_demo_image(spec, category, f"test/{defect}", TRAIN_INDEX_OFFSET + k)
        box, coords = loose_box(mask, float(rng.uniform(lo, hi)), rng)
        source = cat / "train" / "good" / f"{k:03d}.png"
        atomic_save_image(source, clean)
        name = f"{k:03d}_{defect}"
        atomic_save_image(gen / "images" / f"{name}.png", image)
        atomic_save_image(gen / "masks" / f"{name}.png", box * np.uint8(255))
        atomic_save_image(gen / "exact" / f"{name}.png", mask * np.uint8(255))
        files += [f"images/{name}.png", f"masks/{name}.png"]
        items.append(
            {
                "image": f"images/{name}.png",
                "mask": f"masks/{name}.png",
                "source_image": f"{category}/train/good/{k:03d}.png",
                "box": list(coords),
            }
        )
        ratios.append(float(box.sum() / mask.sum()))
        exact[f"images/{name}.png"] = f"exact/{name}.png"
    manifest = write_manifest(
        gen,
        stage="generation",
        key="bench-tau-boxes",
        spec={
            "bench": "bench_tau",
            "category": category,
            "image_size": size,
            "data_seed": cfg["data_seed"],
            "box_ratio": [lo, hi],
        },
        files=files,
        extra={"items": items, "note": "demo defects (exact masks kept in exact/) labelled by loose boxes"},
    )
    return {
        "root": root,
        "manifest": manifest,
        "exact": exact,
        "train_images": sorted((cat / "train" / "good").glob("*.png")),
        "box_to_defect_area": {
            "mean": float(np.mean(ratios)),
            "min": float(np.min(ratios)),
            "max": float(np.max(ratios)),
        },
        "box_fraction_of_image": float(
            np.mean([np.prod(np.subtract(it["box"][2:], it["box"][:2])) for it in items]) / size**2
        ),
    }


# ----------------------------------------------------------------------------- one run


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
    from anogen.detectors.data import TrainStream
    from anogen.detectors.textures import TextureSource

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
    import torch

    from anogen.detectors.data import load_binary_mask, load_rgb

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
    import csv

    import torch

    from anogen.config import validate_config
    from anogen.data.layouts import scan_category
    from anogen.detectors import load_trained_detector, train_detector
    from anogen.detectors.data import load_generated_items
    from anogen.evaluation.evaluate import evaluate_detector

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


def _run_job(args: tuple) -> dict[str, Any]:
    cfg, data, tau, seed, out_dir = args
    logging.basicConfig(level=logging.WARNING)
    return run_one(cfg, data, tau, seed, out_dir)


# ----------------------------------------------------------------------------- report

COLUMNS = [
    ("dropped_box_fraction_tail", "dropped box px"),
    ("pixel_aupr", "pixel AU-PR"),
    ("pixel_auroc", "pixel AU-ROC"),
    ("image_auroc", "image AU-ROC"),
    ("p_anomaly_box_normal", "p_anom box-normal (train)"),
    ("p_anomaly_defect", "p_anom defect (train)"),
]


def summarise(runs: list[dict[str, Any]], taus: list[float]) -> list[dict[str, Any]]:
    table = []
    for tau in taus:
        rs = [r for r in runs if r["tau"] == tau]
        if not rs:
            continue
        row: dict[str, Any] = {"tau": tau, "n_seeds": len(rs)}
        for key, _ in COLUMNS:
            vals = np.array([r[key] for r in rs], dtype=float)
            row[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    head = "| tau | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in table:
        cells = [f"{row['tau']:g}"]
        for key, _ in COLUMNS:
            m, s = row[key]["mean"], row[key]["std"]
            cells.append(f"{m:.4f} ± {s:.4f}" if row["n_seeds"] > 1 else f"{m:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_differences(runs: list[dict[str, Any]], key: str = "pixel_aupr") -> dict[float, dict[str, Any]]:
    """Per tau: ``key`` minus the tau = 1 run of the same seed (same data, same init)."""
    base = {r["seed"]: r[key] for r in runs if r["tau"] == 1.0}
    out: dict[float, dict[str, Any]] = {}
    for tau in sorted({r["tau"] for r in runs if r["tau"] != 1.0}, reverse=True):
        d = np.array([r[key] - base[r["seed"]] for r in runs if r["tau"] == tau and r["seed"] in base])
        if d.size:
            out[tau] = {
                "mean": float(d.mean()),
                "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                "per_seed": [float(x) for x in d],
            }
    return out


def markdown_report(result: dict[str, Any]) -> str:
    """The table plus what produced it: settings, wall time, load, paired differences."""
    cfg, data = result["config"], result["data"]
    lines = [
        "# Weak box loss (tau), paper Table 3, measured on CPU (`bench/bench_tau.py`)",
        "",
        f"DRAEM (variant `{cfg['variant']}`, recon/disc widths {cfg['recon_width']}/{cfg['disc_width']}, "
        f"{cfg['image_size']} px, batch {cfg['batch_size']}, Adam {cfg['learning_rate']:g}, "
        f"{cfg['epochs']} epochs = {result['runs'][0]['steps'] if result['runs'] else '?'} steps) trained on "
        f"{data['n_train_items']} demo `{data['category']}` defect images labelled only by loose boxes "
        f"(box area = {data['box_to_defect_area']['mean']:.2f} x defect area on average, "
        f"range {data['box_to_defect_area']['min']:.2f}-{data['box_to_defect_area']['max']:.2f}); "
        f"tau in {cfg['taus']}, seeds {cfg['seeds']}; test: {cfg['n_test_good']} normal + "
        f"{cfg['n_test_per_defect']} per defect type, exact masks. Mean ± std over seeds.",
        "",
        "`dropped box px`: fraction of box pixels with predicted normal probability >= tau "
        f"(weight 0 in Eq. 9), pooled over the last {cfg['tail']:.0%} of training. "
        "`p_anom box-normal` / `p_anom defect`: mean anomaly probability of the final model on the "
        "training images, on the normal pixels inside the boxes and on the defect pixels.",
        "",
        markdown(result["table"]).rstrip(),
        "",
        "Pixel AU-PR minus the tau = 1 run of the same seed (paired):",
        "",
        "| tau | Δ pixel AU-PR (mean ± std) | per seed |",
        "|---|---|---|",
    ]
    for tau, d in paired_differences(result["runs"]).items():
        per = ", ".join(f"{x:+.4f}" for x in d["per_seed"])
        lines.append(f"| {tau:g} | {d['mean']:+.4f} ± {d['std']:.4f} | {per} |")
    load0, load1 = result["load_average_start"], result["load_average_end"]
    lines += [
        "",
        f"Wall time {result['wall_seconds']:.0f} s with {cfg['jobs']} runs in parallel (one torch "
        f"thread each) on {result['host']['cpus']} cores; 1-minute load average {load0[0]:.1f} at the "
        f"start, {load1[0]:.1f} at the end.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny widths and data, 10 epochs")
    ap.add_argument("--category", help=f"demo category (default {DEFAULTS['category']})")
    ap.add_argument("--taus", type=float, nargs="+", help=f"default {DEFAULTS['taus']}")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"detector seeds (default {DEFAULTS['seeds']})")
    ap.add_argument("--image-size", type=int, help=f"default {DEFAULTS['image_size']}")
    ap.add_argument(
        "--n-train-items", type=int, help=f"box-labelled defect images (default {DEFAULTS['n_train_items']})"
    )
    ap.add_argument("--n-test-good", type=int, help=f"default {DEFAULTS['n_test_good']}")
    ap.add_argument("--n-test-per-defect", type=int, help=f"default {DEFAULTS['n_test_per_defect']}")
    ap.add_argument(
        "--box-ratio", type=float, nargs=2, help=f"box area / defect area range (default {DEFAULTS['box_ratio']})"
    )
    ap.add_argument("--data-seed", type=int, help=f"default {DEFAULTS['data_seed']}")
    ap.add_argument("--epochs", type=int, help=f"passes over the training items (default {DEFAULTS['epochs']})")
    ap.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    ap.add_argument(
        "--learning-rate", type=float, help=f"Adam, DRAEM's 'original' schedule (default {DEFAULTS['learning_rate']})"
    )
    ap.add_argument("--recon-width", type=int, help=f"DRAEM recon_base_width (default {DEFAULTS['recon_width']})")
    ap.add_argument("--disc-width", type=int, help=f"DRAEM disc_base_width (default {DEFAULTS['disc_width']})")
    ap.add_argument(
        "--tail",
        type=float,
        help=f"fraction of training the dropped fraction is averaged over (default {DEFAULTS['tail']})",
    )
    ap.add_argument(
        "--variant",
        choices=["generated_only", "anogen"],
        help="generated_only: box-labelled defects only; anogen: mixed with DRAEM's "
        f"synthetic branch (exact masks, half normal) (default {DEFAULTS['variant']})",
    )
    ap.add_argument(
        "--mix-prob", type=float, help=f"anogen variant: share of box-labelled samples (default {DEFAULTS['mix_prob']})"
    )
    ap.add_argument("--jobs", type=int, help=f"runs in parallel, one torch thread each (default {DEFAULTS['jobs']})")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp dir)")
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--out-md", type=Path, default=None)
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="only re-render --out-md (or print) from a JSON written by an earlier run",
    )
    args = ap.parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.quick:
        cfg.update(QUICK)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
    cfg["threads"] = 1
    cfg["quick"] = bool(args.quick)
    cfg["work"], cfg["out_json"], cfg["out_md"] = args.work, args.out_json, args.out_md
    cfg["from_json"] = args.from_json
    return cfg


def main(argv=None) -> dict[str, Any]:
    cfg = parse_args(argv)
    from_json = cfg.pop("from_json")
    if from_json is not None:
        result = json.loads(from_json.read_text())
        md = markdown_report(result)
        if cfg["out_md"]:
            cfg["out_md"].write_text(md)
        print(md)
        return result
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(cfg.pop("work") or tempfile.mkdtemp(prefix="bench_tau_"))
    out_json, out_md = cfg.pop("out_json"), cfg.pop("out_md")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    data = build_data(work, cfg)
    jobs = [(cfg, data, float(tau), int(seed), work / "runs") for seed in cfg["seeds"] for tau in cfg["taus"]]
    runs: list[dict[str, Any]] = []

    def report(done: bool) -> dict[str, Any]:
        """The result so far (written after every finished run, so a cut-short run leaves
        the completed seeds behind)."""
        ordered = sorted(runs, key=lambda r: (r["seed"], -r["tau"]))
        return {
            "config": cfg,
            "complete": done,
            "data": {k: data[k] for k in ("box_to_defect_area", "box_fraction_of_image")}
            | {"n_train_items": cfg["n_train_items"], "category": cfg["category"]},
            "table": summarise(ordered, [float(t) for t in cfg["taus"]]),
            "runs": ordered,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "load_average_start": [round(x, 2) for x in load0],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "work": str(work),
        }

    def save(result: dict[str, Any]) -> None:
        if out_json:
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")

    if int(cfg["jobs"]) > 1:
        import multiprocessing
        from concurrent.futures import as_completed

        with ProcessPoolExecutor(int(cfg["jobs"]), mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_run_job, j) for j in jobs]):
                runs.append(future.result())
                save(report(False))
    else:
        for j in jobs:
            runs.append(_run_job(j))
            save(report(False))
    result = report(True)
    save(result)
    wall = result["wall_seconds"]
    md = markdown_report(result)
    print(md)
    print(
        f"wall {wall:.0f} s, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}, "
        f"box/defect area {data['box_to_defect_area']['mean']:.2f}, work dir {work}"
    )
    if out_md:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(md)
    return result


if __name__ == "__main__":
    main()
