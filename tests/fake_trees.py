"""Small fake data trees for planning tests: real names, a few tiny images each."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from anogen.data.mvtec_counts import MVTEC_AD_COUNTS


def _png(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def build_fake_mvtec(root: Path, per_folder: int = 4, categories=None) -> Path:
    """MVTec AD's 15 categories and 73 defect types, ``per_folder`` 8x8 images per folder."""
    image, mask = _png(0), _png(255)
    for category, (_, _, defects) in MVTEC_AD_COUNTS.items():
        if categories is not None and category not in categories:
            continue
        for sub in ("train/good", "test/good"):
            folder = root / category / sub
            folder.mkdir(parents=True)
            for i in range(per_folder):
                (folder / f"{i:03d}.png").write_bytes(image)
        for defect in defects:
            images, masks = root / category / "test" / defect, root / category / "ground_truth" / defect
            images.mkdir(parents=True)
            masks.mkdir(parents=True)
            for i in range(per_folder):
                (images / f"{i:03d}.png").write_bytes(image)
                (masks / f"{i:03d}_mask.png").write_bytes(mask)
    return root


def build_mvtec_counts_tree(root: Path, categories=None) -> Path:
    """MVTec AD's categories and defect types with the published number of files in every folder
    (``anogen.data.mvtec_counts``), each an 8x8 image: what the test split and support sets plan on."""
    image, mask = _png(0), _png(255)
    for category, (n_train, n_good, defects) in MVTEC_AD_COUNTS.items():
        if categories is not None and category not in categories:
            continue
        folders = {"train/good": n_train, "test/good": n_good, **{f"test/{d}": n for d, n in defects.items()}}
        for sub, n in folders.items():
            folder = root / category / sub
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i:03d}.png").write_bytes(image)
        for defect, n in defects.items():
            masks = root / category / "ground_truth" / defect
            masks.mkdir(parents=True)
            for i in range(n):
                (masks / f"{i:03d}_mask.png").write_bytes(mask)
    return root


def build_fake_authors_repo(root: Path, data_root: Path, dim: int = 1280) -> Path:
    """A stand-in for a clone of the authors' repository over a fake MVTec tree: for every
    defect folder of ``data_root``, 3 published support images (by name), a box template and
    an ``embeddings.pt`` in the authors' format (string_to_token, ParameterDict string_to_param)."""
    import torch

    mask = _png(255)
    for category_dir in sorted(p for p in Path(data_root).iterdir() if p.is_dir()):
        category = category_dir.name
        for defect_dir in sorted(p for p in (category_dir / "test").iterdir() if p.is_dir() and p.name != "good"):
            defect = defect_dir.name
            support = root / "DIFFUSION" / "images" / "train_images" / category
            (support / defect).mkdir(parents=True, exist_ok=True)
            (support / f"{defect}_mask").mkdir(parents=True, exist_ok=True)
            for image in sorted(defect_dir.iterdir())[:3]:
                (support / defect / image.name).write_bytes(image.read_bytes())
                (support / f"{defect}_mask" / f"{image.stem}_mask.png").write_bytes(mask)
            template = root / "DIFFUSION" / "images" / "mask_template" / category / defect / "mask.png"
            template.parent.mkdir(parents=True, exist_ok=True)
            template.write_bytes(mask)
            params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(1, dim))})
            path = root / "DIFFUSION" / "logs" / f"{category}_{defect}" / "embeddings.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"string_to_token": {"*": torch.tensor(1008)}, "string_to_param": params}, path)
    return root


def small_foreground_config(root: Path, box: dict, **generation) -> dict:
    """A raw config over a fake bottle tree whose foreground (a ``foreground_template``) is the
    centre quarter of the image side (1/16 of its area): ``broken_large`` gets ``box``,
    ``broken_small`` the default 10-30% range; ``generation`` adds generation values."""
    data = root / "data"
    if not data.is_dir():
        build_fake_mvtec(data, categories=["bottle"])
    template = np.zeros((8, 8), np.uint8)
    template[3:5, 3:5] = 255
    Image.fromarray(template).save(root / "foreground.png")
    return {
        "data_root": str(data),
        "results_dir": str(root / "results"),
        "categories": ["bottle"],
        "defects": {"bottle": ["broken_large", "broken_small"]},
        "category_options": {"bottle": {"foreground_template": str(root / "foreground.png")}},
        "generation": {"box_ranges": {"bottle": {"broken_large": box}}, **generation},
    }
