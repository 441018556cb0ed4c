"""Small VisA-layout and Folder-layout data sets written by the tests (tiny real images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)


def _normal(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A bright ellipse (the 'object') on a dark noisy background."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height / 2 + rng.uniform(-1, 1), width / 2 + rng.uniform(-1, 1)
    inside = ((yy - cy) / (0.35 * height)) ** 2 + ((xx - cx) / (0.35 * width)) ** 2 <= 1
    image = rng.integers(10, 40, (height, width, 3))
    image[inside] = rng.integers(150, 200, (int(inside.sum()), 3)) * np.array([1.0, 0.8, 0.5])
    return image.astype(np.uint8)


def _anomalous(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    image = _normal(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    y0, x0 = int(height * rng.uniform(0.35, 0.5)), int(width * rng.uniform(0.35, 0.5))
    mask[y0 : y0 + max(3, height // 6), x0 : x0 + max(3, width // 6)] = 1
    image[mask > 0] = (20, 200, 230)
    return image, mask


def make_visa_tree(
    root: Path,
    categories=("candle",),
    *,
    n_train: int = 6,
    n_test_normal: int = 3,
    n_anomaly: int = 4,
    height: int = 32,
    width: int = 48,
    seed: int = 0,
) -> Path:
    """``<root>/<c>/Data/Images/{Normal,Anomaly}/*.JPG``, ``Masks/Anomaly/*.png`` and
    ``split_csv/1cls.csv``, as VisA ships them (masks hold small values, not 255)."""
    rng = np.random.default_rng(seed)
    return write_visa_tree(
        root,
        categories,
        n_train=n_train,
        n_test_normal=n_test_normal,
        n_anomaly=n_anomaly,
        normal=lambda category: _normal(rng, height, width),
        anomalous=lambda category: _anomalous(rng, height, width),
        save=_save_jpeg_95,
    )


def _save_jpeg_95(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".JPG":
        Image.fromarray(array).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(path)


def write_visa_tree(root: Path, categories, *, n_train, n_test_normal, n_anomaly, normal, anomalous, save) -> Path:
    """VisA's files and ``split_csv/1cls.csv`` for ``categories``: ``normal(category)`` and
    ``anomalous(category)`` make the images (and mask), ``save(path, array)`` writes one file."""
    rows = ["object,split,label,image,mask"]
    for category in categories:
        for i in range(n_train + n_test_normal):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            save(root / rel, normal(category))
            rows.append(f"{category},{'train' if i < n_train else 'test'},normal,{rel},")
        for i in range(n_anomaly):
            image, mask = anomalous(category)
            image_rel, mask_rel = (
                f"{category}/Data/Images/Anomaly/{i:03d}.JPG",
                f"{category}/Data/Masks/Anomaly/{i:03d}.png",
            )
            save(root / image_rel, image)
            save(root / mask_rel, mask * 3)
            rows.append(f"{category},test,anomaly,{image_rel},{mask_rel}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_folder_tree(
    root: Path, *, n_normal: int = 8, n_abnormal: int = 4, size: int = 40, mask_suffix: str = "_mask", seed: int = 1
) -> Path:
    """anomalib Folder layout: ``good/``, ``defect/``, ``masks/<stem>_mask.png`` (plus a
    ``notes.txt`` that ``extensions`` must skip)."""
    rng = np.random.default_rng(seed)
    for d in ("good", "defect", "masks"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        Image.fromarray(_normal(rng, size, size)).save(root / "good" / f"n{i:02d}.png")
    for i in range(n_abnormal):
        image, mask = _anomalous(rng, size, size)
        Image.fromarray(image).save(root / "defect" / f"a{i:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"a{i:02d}{mask_suffix}.png")
    (root / "good" / "notes.txt").write_text("not an image\n")
    return root


def folder_config(name: str = "widget", **extra) -> dict:
    opts = {
        "normal_dir": f"{name}/good",
        "abnormal_dir": f"{name}/defect",
        "mask_dir": f"{name}/masks",
        "extensions": [".png"],
        "normal_split_ratio": 0.25,
        "seed": 0,
    }
    opts.update(extra)
    return {"data_layout": "folder", "folder": {"categories": {name: opts}}}
