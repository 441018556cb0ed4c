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
