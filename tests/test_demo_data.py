"""The offline demo data set: layout, determinism, exact masks, atomic and safe writing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import anogen.data.demo as demo
import anogen.data.demo_images as demo_images
from anogen.data.demo import (
    DEMO_DEFAULTS,
    demo_layout,
    generate_demo_dataset,
    is_demo_folder,
    read_demo_spec,
)
from anogen.data.demo_images import render_demo_image
from anogen.data.layouts import list_categories, list_defects, scan_category
from anogen.errors import ConfigError, DataError

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
SMALL = {"image_size": 48, "n_train_good": 2, "n_test_good": 1, "n_test_per_defect": 2}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo_mvtec"
    spec = {"root": str(root)}
    start = time.perf_counter()
    generate_demo_dataset(spec)
    elapsed = time.perf_counter() - start
    print(f"default demo set generated in {elapsed:.2f} s")
    assert elapsed < 30  # budget is 5 s on one idle core; generous for a loaded CI machine
    return spec, root


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix == ".png"
    }


def test_defaults_match_schema():
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["properties"]["demo"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == DEMO_DEFAULTS
    # data_root has no default (a run never falls back to the demo); the demo config names it.
    assert "default" not in schema["properties"]["data_root"]
    demo = yaml.safe_load((SCHEMA.parents[2] / "config" / "config.yaml").read_text())
    assert demo["data_root"] == demo["demo"]["root"] == DEMO_DEFAULTS["root"]


def test_layout_without_disk(tmp_path):
    root = tmp_path / "not_there"
    layout = demo_layout({"root": str(root)})
    assert not root.exists()
    assert len(layout) >= 3
    assert any(v["texture"] and not v["grayscale"] for v in layout.values())
    assert any(not v["texture"] for v in layout.values())
    assert any(v["grayscale"] for v in layout.values())
    assert all(2 <= len(v["defects"]) <= 3 for v in layout.values())
    with pytest.raises(ConfigError, match="demo.colour"):
        demo_layout({"colour": 1})
    with pytest.raises(ConfigError, match="demo.image_size"):
        demo_layout({"image_size": 8})


def test_layout_matches_disk_and_scans(default_set):
    spec, root = default_set
    layout = demo_layout(spec)
    assert list_categories(root) == sorted(layout)
    for category, info in layout.items():
        assert list_defects(root, category) == info["defects"]
        index = scan_category(root, category, min_shots=3)
        assert index.grayscale == info["grayscale"]
        assert len(index.train_good) == DEMO_DEFAULTS["n_train_good"]
        assert len(index.good_test) == DEMO_DEFAULTS["n_test_good"]
        for defect in info["defects"]:
            assert len(index.defect_items(defect)) == DEMO_DEFAULTS["n_test_per_defect"]
        with Image.open(index.train_good[0]) as img:
            assert img.size == (128, 128)
            assert img.mode == ("L" if info["grayscale"] else "RGB")
    assert read_demo_spec(root) == demo.normalize_demo_spec(spec)
    assert json.loads((root / "demo_spec.json").read_text())["layout"] == layout


def test_masks_exact(default_set):
    spec, root = default_set
    for category, info in demo_layout(spec).items():
        normal_pixels = []
        for defect in info["defects"]:
            for i in range(DEMO_DEFAULTS["n_test_per_defect"]):
                stored = np.asarray(Image.open(root / category / "test" / defect / f"{i:03d}.png"))
                stored_mask = np.asarray(Image.open(root / category / "ground_truth" / defect / f"{i:03d}_mask.png"))
                assert set(np.unique(stored_mask)) == {0, 255}
                image, mask, clean = render_demo_image(spec, category, f"test/{defect}", i)
                assert (image == stored).all()
                assert (mask * 255 == stored_mask).all()
                changed = image != clean
                if changed.ndim == 3:
                    changed = changed.any(axis=2)
                assert (changed == (mask == 1)).all(), (category, defect, i)
                if not info["texture"]:  # object defects lie on the object
                    rng = demo_images._item_rng(0, category, f"test/{defect}", i)
                    _, ctx = demo_images._RENDERERS[category](rng, 128)
                    assert not (mask.astype(bool) & ~ctx["fg"]).any()
            normal_pixels.append(clean)
        # normal images vary
        goods = [render_demo_image(spec, category, "train/good", i)[0] for i in range(3)]
        assert not (goods[0] == goods[1]).all() and not (goods[1] == goods[2]).all()
        assert render_demo_image(spec, category, "train/good", 0)[1] is None


def test_deterministic_bytes(tmp_path):
    a = generate_demo_dataset({**SMALL, "root": str(tmp_path / "a")})
    b = generate_demo_dataset({**SMALL, "root": str(tmp_path / "b")})
    fa, fb = _files(a), _files(b)
    assert fa and fa == fb
    c = generate_demo_dataset({**SMALL, "seed": 1, "root": str(tmp_path / "c")})
    fc = _files(c)
    assert fc.keys() == fa.keys() and any(fa[k] != fc[k] for k in fa)
    with Image.open(a / "brick_gray" / "train" / "good" / "000.png") as img:
        assert img.size == (48, 48)


def test_regenerate_and_refuse_foreign(tmp_path):
    root = tmp_path / "demo_mvtec"
    spec = {**SMALL, "root": str(root)}
    root.mkdir()  # Snakemake creates the output's folder before the job: empty is fine
    generate_demo_dataset(spec)
    generate_demo_dataset({**spec, "seed": 3})  # replaces an earlier demo set
    assert read_demo_spec(root)["seed"] == 3
    # Snakemake deletes the declared output demo_spec.json before a rerun
    (root / "demo_spec.json").unlink()
    assert is_demo_folder(root)
    generate_demo_dataset(spec)
    assert (root / "demo_spec.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["demo_mvtec"]  # no temp folders left

    foreign = tmp_path / "mydata"
    (foreign / "bottle").mkdir(parents=True)
    (foreign / "bottle" / "keep.txt").write_text("precious")
    with pytest.raises(DataError) as exc:
        generate_demo_dataset({**SMALL, "root": str(foreign)})
    assert str(foreign) in str(exc.value) and "refusing to overwrite" in str(exc.value)
    assert (foreign / "bottle" / "keep.txt").read_text() == "precious"


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "demo_mvtec"
    calls = {"n": 0}
    real_save = demo._save_png

    def failing_save(path, array):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(demo, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset({**SMALL, "root": str(root)})
    assert list(tmp_path.iterdir()) == []
