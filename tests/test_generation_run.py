"""The stage-2 job: outputs and manifest contract, resume after deletion or SIGKILL, export."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.textual_inversion import save_learned_embedding
from anogen.diffusion.tiny import build_tiny_model
from anogen.errors import DataError
from anogen.generation.boxes import Box
from anogen.generation.export import export_generated
from anogen.generation.foreground import build_foreground_set
from anogen.generation.planning import plan_generation
from anogen.generation.run import generate_anomalies, generation_items
from anogen.io import load_manifest, read_image, sha256_file, verify_manifest
from anogen.resumable import KILL_ENV

RES = 64
BATCH = 3
SPEC = {
    "images_per_normal": 4,
    "images_per_box": 2,
    "steps": 3,
    "guidance_scale": 5.0,
    "eta": 0.0,
    "paste_back": False,
    "seed": 0,
    "min_overlap": 0.5,
    "max_tries": 1000,
    "max_normal_images": None,
    "jpeg_quality": None,
    "category": "bottle",
    "defect": "broken_large",
    "box": {"width": [0.2, 0.35], "height": [0.2, 0.35], "rotate": True},
    "texture": False,
    "mixed_precision": "no",
    "resize": "squash",
}
RUNTIME = {"device": "cpu", "channels_last": False, "compile": False}  # speed-only arguments


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: see test_generation_inpaint.py
    yield


def _object(size, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size * 0.33) ** 2
    img = np.empty((size, size, 3), np.float64)
    img[:] = (200, 205, 210)
    img[disc] = (90, 60, 40)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory, RES)
    w["reference"] = _generate(w, w["work"] / "reference")
    return w


def make_world(tmp_path_factory, resolution: int) -> dict:
    """A tiny LDM at ``resolution``, two normal images, their foreground set and an embedding."""
    torch.set_num_threads(1)  # module fixtures run before the function-scoped thread fixture
    base = tmp_path_factory.getbasetemp()
    model = base / f"gen-tiny-ldm-{resolution}"
    if not model.exists():
        build_tiny_model("ldm", model, seed=0, resolution=resolution)
    work = tmp_path_factory.mktemp("genrun")
    root = work / "data"
    folder = root / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    normals = []
    for i in range(2):
        p = folder / f"{i:03d}.png"
        Image.fromarray(_object(80, i)).save(p)  # not the model size: resized on load
        normals.append(p)
    fg = build_foreground_set(
        image_paths=normals,
        data_root=root,
        texture=False,
        template=None,
        iterations=3,
        out_dir=work / "fg",
        key="fgkey",
        inputs={},
        spec={"category": "c"},
    )
    backbone = load_backbone(str(model))
    emb = work / "learned_embeds.safetensors"
    save_learned_embedding(
        emb, "<anomaly>", torch.randn(backbone.embedding_dim, generator=torch.Generator().manual_seed(0))
    )
    support = [_object(64, 10)]
    return dict(model=model, root=root, normals=normals, fg=fg, emb=emb, backbone=backbone, support=support, work=work)


def _generate(w, out_dir, **kw):
    return generate_anomalies(
        normal_images=w["normals"],
        data_root=w["root"],
        foreground_manifest=w["fg"],
        template=None,
        embedding_path=w["emb"],
        model=str(w["model"]),
        revision=None,
        spec=dict(SPEC, **kw.pop("spec", {})),
        out_dir=out_dir,
        key="genkey",
        inputs={"embedding": "e", "foreground": "f"},
        batch_size=kw.pop("batch_size", BATCH),
        support_images=w["support"],
        backbone=w["backbone"],
        extra={"note": "test"},
        **RUNTIME,
        **kw,
    )


def _files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(Path(directory).rglob("*.png"))}


def test_outputs_and_manifest_contract(world):
    manifest_path = world["reference"]
    out = manifest_path.parent
    manifest = verify_manifest(manifest_path)  # every file hashed and intact
    assert manifest["stage"] == "generation" and manifest["key"] == "genkey"
    assert manifest["spec"]["defect"] == "broken_large"
    extra = manifest["extra"]
    items = extra["items"]
    assert extra["n_images"] == len(items) == 8 and extra["note"] == "test" and extra["resolution"] == RES
    assert extra["images_per_second"] > 0
    per_source = {}
    for item in items:
        assert set(item) >= {"image", "mask", "source_image", "box", "seed"}
        per_source[item["source_image"]] = per_source.get(item["source_image"], 0) + 1
        img = read_image(out / item["image"], "RGB")
        mask = np.asarray(Image.open(out / item["mask"]))
        assert img.shape == (RES, RES, 3) and mask.shape == (RES, RES)
        assert set(np.unique(mask)) <= {0, 255}
        box = Box.from_dict(item["box"])
        assert np.array_equal(mask > 0, box.to_mask(RES, RES) > 0)
        assert 0.2 * RES - 1e-9 <= box.w <= 0.35 * RES + 1e-9
        assert item["image"] in manifest["files"] and item["mask"] in manifest["files"]
    assert per_source == {"bottle/train/good/000.png": 4, "bottle/train/good/001.png": 4}
    assert len({i["seed"] for i in items}) == 8
    assert "montage.png" in manifest["files"]
    montage = read_image(out / "montage.png", "RGB")
    assert montage.shape[0] > 3 * 128 and montage.shape[1] > 3 * 128  # grid: support, normal + box, samples
    assert [p.name for p in (out / "images").iterdir()] and not list(out.rglob(".*.tmp"))
    # helper for consumers: verified absolute paths
    assert generation_items(manifest_path)[0]["image"].is_file()


def test_resume_after_deleting_images(world, tmp_path, caplog):
    ref = world["reference"].parent
    out = tmp_path / "gen"
    shutil.copytree(ref, out)
    (out / "manifest.json").unlink()
    plan = [i["image"] for i in load_manifest(world["reference"])["extra"]["items"]]
    whole_batch = plan[BATCH : 2 * BATCH]  # a complete batch: recomputed with the same composition
    single = plan[0]
    for rel in whole_batch + [single]:
        (out / rel).unlink()
    untouched = [p for p in plan if p not in whole_batch + [single]]
    before = {p: os.stat(out / p).st_mtime_ns for p in untouched}
    with caplog.at_level(logging.INFO, logger="anogen.generation"):
        manifest_path = _generate(world, out)
    assert "resuming: 4 of 8" in caplog.text
    manifest = verify_manifest(manifest_path)
    assert manifest["extra"]["n_generated_this_run"] == 4
    assert {p: os.stat(out / p).st_mtime_ns for p in untouched} == before  # not rewritten
    for rel in whole_batch:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes()
    a, b = read_image(out / single), read_image(ref / single)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # batched vs alone: float round-off


def test_resume_after_sigkill_equals_uninterrupted_run(world, tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from pathlib import Path
        from anogen.generation.run import generate_anomalies
        generate_anomalies(
            normal_images=[Path(p) for p in {[str(p) for p in world["normals"]]!r}],
            data_root=Path({str(world["root"])!r}), foreground_manifest=Path({str(world["fg"])!r}), template=None,
            embedding_path=Path({str(world["emb"])!r}), model={str(world["model"])!r}, revision=None,
            spec={SPEC!r}, out_dir=Path({str(out)!r}), key="genkey", inputs={{"embedding": "e", "foreground": "f"}},
            batch_size={BATCH}, **{RUNTIME!r})
    """)
    env = dict(os.environ, **{KILL_ENV: "1"}, OMP_NUM_THREADS="1")  # killed after its first batch
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    lines = (out / "progress.jsonl").read_text().splitlines()
    assert len(lines) == BATCH and all(json.loads(line)["key"] == "genkey" for line in lines)

    manifest_path = _generate(world, out)
    assert load_manifest(manifest_path)["extra"]["n_generated_this_run"] == 8 - BATCH
    ref = world["reference"].parent
    ours, theirs = _files(out), _files(ref)
    assert ours.keys() == theirs.keys()
    for rel in ours:
        if rel != "montage.png":
            assert ours[rel] == theirs[rel], rel
    ref_items = load_manifest(world["reference"])["extra"]["items"]
    assert load_manifest(manifest_path)["extra"]["items"] == ref_items


def test_impossible_box_constraint_names_image_and_defect(world):
    spec = dict(SPEC, min_overlap=1.0, box={"width": [0.9, 0.9], "height": [0.9, 0.9], "rotate": False}, max_tries=20)
    with pytest.raises(DataError) as info:
        plan_generation(
            normal_images=world["normals"],
            data_root=world["root"],
            foreground_manifest=world["fg"],
            spec=spec,
            resolution=RES,
        )
    assert "000.png" in str(info.value) and "broken_large" in str(info.value)


def test_plan_is_deterministic_and_independent_of_batch_size(world):
    kw = dict(normal_images=world["normals"], data_root=world["root"], foreground_manifest=world["fg"], resolution=RES)
    a = plan_generation(spec=SPEC, **kw)[2]
    b = plan_generation(spec=SPEC, **kw)[2]
    c = plan_generation(spec=dict(SPEC, seed=1), **kw)[2]
    assert a == b and [i.seed for i in a] != [i.seed for i in c]
    limited = plan_generation(spec=dict(SPEC, max_normal_images=1), **kw)
    assert len(limited[0]) == 1 and len(limited[2]) == 4 and limited[2] == a[:4]


def test_export_layout(world, tmp_path):
    out_root = tmp_path / "export"
    out_root.mkdir()
    (out_root / "stale.txt").write_text("old export")
    export_generated([world["reference"]], out_root, {"config": {"generation": {"steps": 3}}, "run": "test"})
    assert not (out_root / "stale.txt").exists()
    images = sorted((out_root / "bottle" / "broken_large" / "images").iterdir())
    masks = sorted((out_root / "bottle" / "broken_large" / "masks").iterdir())
    assert len(images) == len(masks) == 8 and [p.name for p in images] == [p.name for p in masks]
    dataset = json.loads((out_root / "dataset.json").read_text())
    assert dataset["n_images"] == 8 and dataset["sets"][0]["key"] == "genkey"
    item = dataset["sets"][0]["items"][0]
    assert sha256_file(out_root / item["image"]) == item["image_sha256"]
    assert set(item) >= {"image", "mask", "source_image", "box", "seed"}
    readme = (out_root / "README.md").read_text()
    assert "weak" in readme and "genkey" in readme and "broken_large" in readme
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
