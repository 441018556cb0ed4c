"""Foreground masks: GrabCut on objects, fallbacks, textures, templates, the per-category set."""

import numpy as np
import pytest
from PIL import Image

from anogen.errors import DataError
from anogen.generation.foreground import build_foreground_set, estimate_foreground, estimate_foreground_with_method
from anogen.io import load_manifest, verify_manifest


def _object_image(size=128, radius=36, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= radius**2
    img = np.empty((size, size, 3), np.float64)
    img[:] = (205, 200, 190)
    img[disc] = (70, 110, 40)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), disc


def test_grabcut_finds_a_centred_object():
    img, disc = _object_image()
    mask = estimate_foreground(img, "grabcut", 5)
    assert mask.dtype == np.uint8 and mask.shape == disc.shape and set(np.unique(mask)) <= {0, 1}
    iou = (mask.astype(bool) & disc).sum() / (mask.astype(bool) | disc).sum()
    assert iou > 0.85


def test_large_image_is_processed_at_work_size_and_returned_full_size():
    img, disc = _object_image(size=600, radius=170)
    mask, method = estimate_foreground_with_method(img, "grabcut", 3)
    assert mask.shape == (600, 600) and method == "grabcut"
    iou = (mask.astype(bool) & disc).sum() / (mask.astype(bool) | disc).sum()
    assert iou > 0.85


def test_flat_image_falls_back_and_is_never_empty():
    flat = np.full((64, 64, 3), 120, np.uint8)
    mask, method = estimate_foreground_with_method(flat, "grabcut", 5)
    assert method in ("otsu", "full") and mask.mean() >= 0.01


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown foreground method"):
        estimate_foreground(np.zeros((8, 8, 3), np.uint8), "magic", 1)


def _write_images(root, n=2, size=96):
    paths = []
    folder = root / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(n):
        img, _ = _object_image(size=size, radius=size // 4, seed=i)
        p = folder / f"{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def test_build_foreground_set_writes_masks_and_manifest_last(tmp_path):
    root = tmp_path / "data"
    paths = _write_images(root)
    out = tmp_path / "fg"
    manifest_path = build_foreground_set(
        image_paths=paths,
        data_root=root,
        texture=False,
        template=None,
        iterations=3,
        out_dir=out,
        key="k1",
        inputs={"data": "d"},
        spec={"category": "c"},
    )
    manifest = verify_manifest(manifest_path)
    assert manifest["stage"] == "foreground" and manifest["key"] == "k1"
    items = manifest["extra"]["items"]
    assert [i["source_image"] for i in items] == ["bottle/train/good/000.png", "bottle/train/good/001.png"]
    for item in items:
        mask = np.asarray(Image.open(out / item["mask"]))
        assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 255}
        assert 0.1 < item["fraction"] < 0.4 and item["method"] == "grabcut"
    assert set(manifest["files"]) == {"masks/000.png", "masks/001.png"}


def test_texture_and_template(tmp_path):
    root = tmp_path / "data"
    paths = _write_images(root)
    m = build_foreground_set(
        image_paths=paths,
        data_root=root,
        texture=True,
        template=None,
        iterations=1,
        out_dir=tmp_path / "tex",
        key="k",
        inputs={},
        spec={"category": "c"},
    )
    assert all(i["fraction"] == 1.0 and i["method"] == "texture" for i in load_manifest(m)["extra"]["items"])

    template = tmp_path / "template.png"
    t = np.zeros((24, 24), np.uint8)
    t[:, :12] = 255  # left half
    Image.fromarray(t).save(template)
    m = build_foreground_set(
        image_paths=paths,
        data_root=root,
        texture=False,
        template=template,
        iterations=1,
        out_dir=tmp_path / "tpl",
        key="k",
        inputs={},
        spec={"category": "c"},
    )
    item = load_manifest(m)["extra"]["items"][0]
    mask = np.asarray(Image.open(tmp_path / "tpl" / item["mask"])) > 0
    assert item["method"] == "template" and mask.shape == (96, 96)
    assert mask[:, :48].all() and not mask[:, 48:].any()


def test_unreadable_image_is_named(tmp_path):
    root = tmp_path / "data"
    paths = _write_images(root, n=1)
    bad = paths[0].parent / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="bad.png"):
        build_foreground_set(
            image_paths=[paths[0], bad],
            data_root=root,
            texture=False,
            template=None,
            iterations=1,
            out_dir=tmp_path / "fg",
            key="k",
            inputs={},
            spec={"category": "c"},
        )
    assert not (tmp_path / "fg" / "manifest.json").exists()
