"""bench_tau.py's data: demo defect images labelled by loose boxes (a stage-2 generation
manifest) and the MVTec-layout test set with exact masks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from anogen.data.demo import DEMO_CATEGORIES
from anogen.data.demo_images import render_demo_image
from anogen.io import atomic_save_image, write_manifest

TRAIN_INDEX_OFFSET = 100_000  # training defects use image indices far from the test indices


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
