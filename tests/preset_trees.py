"""Fake data trees in the real folder structure of the presets' data sets (tiny images).

- VisA with its 12 categories, the multi-instance ones (candle, capsules, macaroni1/2) with
  several objects per image, as VisA shows them (a 2 x 2 grid of candles, rows of capsules);
- BTAD: ``<product>/{train/ok, test/ok, test/ko, ground_truth/ko}``, masks named like their
  image (.png for 01 and 02, .bmp for 03; images .bmp for 01 and 03, .png for 02);
- MVTec AD 2: ``<scenario>/{train/good, validation/good, test_public/{good, bad,
  ground_truth/bad/<stem>_mask.png}, test_private/*, test_private_mixed/*}``.

Every anomaly mask is a rectangle of a known size (``ANOMALY_SIDE`` of the image side), so
the box ranges learned from them are known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.layout_trees import VISA_CATEGORIES, write_visa_tree

# objects per image (rows, columns) of VisA's multi-instance categories
VISA_INSTANCES = {"candle": (2, 2), "capsules": (3, 4), "macaroni1": (2, 2), "macaroni2": (2, 2)}
MVTEC_AD2_SCENARIOS = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
BTAD_PRODUCTS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
ANOMALY_SIDE = 0.25


def objects(height: int, width: int, grid: tuple[int, int]) -> list[np.ndarray]:
    """One boolean ellipse per grid cell (the instances of a multi-instance image)."""
    rows, cols = grid
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for r in range(rows):
        for c in range(cols):
            cy, cx = (r + 0.5) * height / rows, (c + 0.5) * width / cols
            ry, rx = 0.35 * height / rows, 0.35 * width / cols
            out.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
    return out


def normal_image(rng, height: int, width: int, grid=(1, 1)) -> np.ndarray:
    image = rng.integers(10, 40, (height, width, 3))
    for inside in objects(height, width, grid):
        image[inside] = rng.integers(150, 200, (int(inside.sum()), 3)) * np.array([1.0, 0.8, 0.5])
    return image.astype(np.uint8)


def anomalous_image(rng, height: int, width: int, grid=(1, 1)) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with a rectangle of ANOMALY_SIDE x the image side on its first object."""
    image = normal_image(rng, height, width, grid)
    mask = np.zeros((height, width), np.uint8)
    ys, xs = np.nonzero(objects(height, width, grid)[0])
    h, w = round(ANOMALY_SIDE * height), round(ANOMALY_SIDE * width)
    y0, x0 = int(ys.mean()) - h // 2, int(xs.mean()) - w // 2
    mask[y0 : y0 + h, x0 : x0 + w] = 1
    image[mask > 0] = (20, 200, 230)
    return image, mask


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_visa_preset_tree(root: Path, *, n_train=3, n_test_normal=1, n_anomaly=3, height=48, width=64, seed=0) -> Path:
    """VisA's layout and split_csv/1cls.csv for its 12 categories (JPEG images, masks of small values)."""
    rng = np.random.default_rng(seed)
    return write_visa_tree(
        root,
        VISA_CATEGORIES,
        n_train=n_train,
        n_test_normal=n_test_normal,
        n_anomaly=n_anomaly,
        normal=lambda category: normal_image(rng, height, width, VISA_INSTANCES.get(category, (1, 1))),
        anomalous=lambda category: anomalous_image(rng, height, width, VISA_INSTANCES.get(category, (1, 1))),
        save=_save,
    )


def make_btad_tree(root: Path, *, n_train=4, n_test_ok=2, n_ko=3, size=48, seed=0) -> Path:
    """BTech_Dataset_transformed/: 01, 02, 03 with BTAD's folder names and file endings."""
    rng = np.random.default_rng(seed)
    for product, (image_ext, mask_ext) in BTAD_PRODUCTS.items():
        height, width = (size, size) if product != "03" else (size * 3 // 4, size)
        for i in range(n_train):
            _save(root / product / "train" / "ok" / f"{i:04d}{image_ext}", normal_image(rng, height, width))
        for i in range(n_test_ok):
            _save(root / product / "test" / "ok" / f"{i:04d}{image_ext}", normal_image(rng, height, width))
        for i in range(n_ko):
            image, mask = anomalous_image(rng, height, width)
            _save(root / product / "test" / "ko" / f"{100 + i:04d}{image_ext}", image)
            _save(root / product / "ground_truth" / "ko" / f"{100 + i:04d}{mask_ext}", mask * 255)
    return root


def make_mvtec_ad2_tree(root: Path, *, n_train=4, n_test_good=2, n_bad=3, height=36, width=72, seed=0) -> Path:
    """mvtec_ad_2/: 8 scenarios; the private test sets hold images without ground truth."""
    rng = np.random.default_rng(seed)
    for scenario in MVTEC_AD2_SCENARIOS:
        base = root / scenario
        for i in range(n_train):
            _save(base / "train" / "good" / f"{i:03d}_regular.png", normal_image(rng, height, width))
        _save(base / "validation" / "good" / "000_regular.png", normal_image(rng, height, width))
        for i in range(n_test_good):
            _save(base / "test_public" / "good" / f"{i:03d}_regular.png", normal_image(rng, height, width))
        for i in range(n_bad):
            image, mask = anomalous_image(rng, height, width)
            _save(base / "test_public" / "bad" / f"{i:03d}_regular.png", image)
            _save(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", mask * 255)
        for private in ("test_private", "test_private_mixed"):
            _save(base / private / f"{0:03d}_regular.png", normal_image(rng, height, width))
    return root


REALIAD_CATEGORIES = ("audiojack", "toy_brick")
REALIAD_DEFECTS = ("AK", "HS")  # pit, scratch
VIEWS = ("C1", "C2", "C3", "C4", "C5")
VISIBLE = ("C1", "C2", "C3")  # the defect of an NG sample shows in these views; C4, C5 are labelled OK


def _realiad_view(rng, base: Path, name: str, sample: str, label: str, cam: str, defect, size: int) -> dict:
    """Write one view (and its mask when the defect shows in it); return its split-file record."""
    stem = f"{base.name}_{name}_{label}_{cam}_20231021{name}"
    rel = f"{sample}/{stem}.jpg"
    record = {"category": label, "anomaly_class": defect or "OK", "image_path": rel, "mask_path": None}
    if defect:
        image, mask = anomalous_image(rng, size, size)
        record["mask_path"] = f"{sample}/{stem}_mask.png"
        _save(base / record["mask_path"], mask * 255)
    else:
        image = normal_image(rng, size, size)
    _save(base / rel, image)
    return record


def make_realiad_tree(
    root: Path, *, n_train=2, n_test_ok=1, n_ng=2, size=32, seed=0, json_dir="realiad_jsons/realiad_jsons"
) -> Path:
    """Real-IAD: ``realiad_1024/<c>/{OK/S0001, NG/<code>/S0101}/<c>_<id>_<OK|NG>_<C1..C5>_<time>.jpg`` (masks
    ``<stem>_mask.png`` beside the anomalous views) and ``<json_dir>/<c>.json`` split files, one record per view."""
    import json

    rng = np.random.default_rng(seed)
    for category in REALIAD_CATEGORIES:
        base = root / "realiad_1024" / category
        split = {"train": [], "test": []}
        for s in range(1, n_train + n_test_ok + 1):
            side = "train" if s <= n_train else "test"
            for cam in VIEWS:
                split[side].append(_realiad_view(rng, base, f"{s:04d}", f"OK/S{s:04d}", "OK", cam, None, size))
        sample = 100
        for code in REALIAD_DEFECTS:
            for _ in range(n_ng):
                sample += 1
                folder = f"NG/{code}/S{sample:04d}"
                for cam in VIEWS:
                    defect = code if cam in VISIBLE else None
                    split["test"].append(_realiad_view(rng, base, f"{sample:04d}", folder, "NG", cam, defect, size))
        meta = {"prefix": "", "normal_class": "OK", "pre_transform": None}
        (root / json_dir).mkdir(parents=True, exist_ok=True)
        (root / json_dir / f"{category}.json").write_text(json.dumps({"meta": meta, **split}, indent=1))
    return root
