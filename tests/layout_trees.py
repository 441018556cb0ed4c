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
    rows = ["object,split,label,image,mask"]
    for category in categories:
        normal_dir = root / category / "Data" / "Images" / "Normal"
        anomaly_dir = root / category / "Data" / "Images" / "Anomaly"
        mask_dir = root / category / "Data" / "Masks" / "Anomaly"
        for d in (normal_dir, anomaly_dir, mask_dir):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(n_train + n_test_normal):
            name = f"{i:04d}.JPG"
            Image.fromarray(_normal(rng, height, width)).save(normal_dir / name, format="JPEG", quality=95)
            split = "train" if i < n_train else "test"
            rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{name},")
        for i in range(n_anomaly):
            image, mask = _anomalous(rng, height, width)
            Image.fromarray(image).save(anomaly_dir / f"{i:03d}.JPG", format="JPEG", quality=95)
            Image.fromarray(mask * 3).save(mask_dir / f"{i:03d}.png")
            rows.append(
                f"{category},test,anomaly,{category}/Data/Images/Anomaly/{i:03d}.JPG,"
                f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            )
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
