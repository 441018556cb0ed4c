"""Stage-3 training: sample streams, generated sets, resume after SIGKILL, a short real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anogen.data.index import relative_to_root
from anogen.detectors import load_trained_detector, train_detector
from anogen.detectors.data import (
    KIND_GENERATED,
    TrainStream,
    load_generated_items,
)
from anogen.detectors.textures import TextureSource
from anogen.errors import DataError, IntegrityError
from anogen.io import write_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


# ----------------------------------------------------------------------------- a tiny data set


def _stripes(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = 128 + 50 * np.sin(xx * 0.8 + rng.uniform(0, 2 * np.pi)) + rng.normal(0, 6, (size, size))
    return np.clip(np.stack([img, img * 0.9, img * 0.7], -1), 0, 255)


def _draw_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
    r = rng.uniform(size / 12, size / 7)
    m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    out = img.copy()
    out[m] = rng.choice([20.0, 240.0])
    return out, m


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """16 normal training textures (48 px), a held-out test set and one generation manifest."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    train = []
    for i in range(16):
        p = root / "train" / "good" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_stripes(rng).astype(np.uint8)).save(p)
        train.append(p)
    test_images, labels = [], []
    for i in range(20):
        img = _stripes(rng)
        if i % 2:
            img, _ = _draw_defect(img, rng)
        test_images.append(img.astype(np.uint8))
        labels.append(i % 2)
    # A generation manifest: defects drawn inside random boxes of training images.
    gen = root / "generated"
    items, files = [], []
    for i in range(8):
        src = train[i % len(train)]
        img = np.asarray(Image.open(src)).astype(np.float64)
        y0, x0 = rng.integers(4, 24, 2)
        h, w = rng.integers(10, 20, 2)
        box = np.zeros((48, 48), np.uint8)
        box[y0 : y0 + h, x0 : x0 + w] = 255
        inner = box > 0
        img[inner] = 0.5 * img[inner] + 0.5 * np.array([30.0, 200.0, 60.0])
        name = f"{i:04d}.png"
        (gen / "images").mkdir(parents=True, exist_ok=True)
        (gen / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(gen / "images" / name)
        Image.fromarray(box).save(gen / "masks" / name)
        files += [f"images/{name}", f"masks/{name}"]
        items.append(
            {
                "image": f"images/{name}",
                "mask": f"masks/{name}",
                "source_image": relative_to_root(root, src),
                "box": {"x": int(x0), "y": int(y0), "w": int(w), "h": int(h)},
                "seed": i,
            }
        )
    manifest = write_manifest(gen, stage="generation", key="gen000000000", spec={}, files=files, extra={"items": items})
    return {"root": root, "train": train, "test": test_images, "labels": labels, "manifest": manifest}


def _spec(detector: str, variant: str, **over) -> dict:
    """A full detector spec, keyed as ``Plan.spec("detector", ...)`` writes it."""
    spec = {
        "category": "tiny",
        "detector": detector,
        "variant": variant,
        "image_size": 32,
        "seed": 0,
        "mixed_precision": "no",
        "resize": "squash",
        "synthetic_source": "draem",
    }
    if variant != "baseline":
        spec.update(tau=0.9, mix_prob=0.5, weak_on_synthetic=True, generated_normal_prob=0.0, augment_generated=False)
    if detector == "draem":
        spec["draem"] = {
            "epochs": 6,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "schedule": "original",
            "recon_base_width": 8,
            "disc_base_width": 8,
            "ssim_weight": 1.0,
            "focal_gamma": 2.0,
            "focal_smooth": 1e-5,
            "ssim_value_range": None,
            "score_pool": 21,
            "image_interpolation": "pil_bicubic",
        }
    else:
        spec["destseg"] = {
            "steps": 6,
            "student_steps": 3,
            "batch_size": 2,
            "student_lr": 0.4,
            "seg_lr_residual": 0.1,
            "seg_lr_head": 0.01,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "focal_gamma": 4.0,
            "top_k": 100,
            "image_interpolation": "pil_bicubic",
            "teacher": "torchvision_v1",
            # At 32 px with batch 2 the student's layer4 is 1x1 and SGD at lr 0.4 blows up
            # within two steps once its residual BN gammas start at 0 (timm's zero_init_last,
            # the default since it is the official init); at 64 px / batch 8 it trains fine.
            "zero_init_last": False,
        }
    for k, v in over.items():
        if isinstance(v, dict):
            spec[k].update(v)
        else:
            spec[k] = v
    return spec


# ----------------------------------------------------------------------------- streams

# The values TrainStream's callers pass unless a test says otherwise.
STREAM = dict(
    mix_prob=0.5,
    weak_on_synthetic=True,
    generated_normal_prob=0.0,
    augment_generated=False,
    synthetic_source="draem",
    resize="squash",
    interpolation="pil_bicubic",
)


def test_generated_items_are_verified(tiny, tmp_path):
    items = load_generated_items([tiny["manifest"]], tiny["train"], tiny["root"])
    assert len(items) == 8
    assert items[0].source == tiny["train"][0]
    # a damaged cached image stops the run with a message naming it
    import shutil

    copy = tmp_path / "gen"
    shutil.copytree(tiny["manifest"].parent, copy)
    victim = copy / "images" / "0003.png"
    victim.write_bytes(victim.read_bytes()[:-20])
    with pytest.raises(IntegrityError, match="0003.png"):
        load_generated_items([copy / "manifest.json"], tiny["train"], tiny["root"])


def test_generated_sources_resolve_against_the_data_root(tiny, tmp_path):
    """``source_image`` is data-root-relative: ``root / source_image`` must be a training image."""
    items = load_generated_items([tiny["manifest"]], tiny["train"], tiny["root"])
    manifest = json.loads(tiny["manifest"].read_text())
    rels = [it["source_image"] for it in manifest["extra"]["items"]]
    assert rels[0] == "train/good/000.png"
    assert [it.source for it in items] == [tiny["root"] / r for r in rels]
    # without a root, the one root that makes every item a training image (train_detector's call)
    assert load_generated_items([tiny["manifest"]], tiny["train"], None) == items
    # a source that is not a training image names the manifest and the item
    with pytest.raises(DataError, match=r"manifest.json.*0000.png.*train/good/000.png"):
        load_generated_items([tiny["manifest"]], tiny["train"][1:], tiny["root"])
    with pytest.raises(DataError, match=r"manifest.json.*0000.png"):
        load_generated_items([tiny["manifest"]], tiny["train"][1:], None)
    # a wrong data root is not rescued by a path-suffix guess
    with pytest.raises(DataError, match="not one of the training images"):
        load_generated_items([tiny["manifest"]], tiny["train"], tmp_path)


def test_stream_is_a_pure_function_of_seed_and_step(tiny):
    textures = TextureSource.from_config(None)
    items = load_generated_items([tiny["manifest"]], tiny["train"], tiny["root"])

    def make(variant, **kw):
        return TrainStream(
            detector="draem",
            variant=variant,
            image_size=32,
            seed=7,
            batch_size=8,
            train_images=tiny["train"],
            generated=items,
            textures=textures,
            **{**STREAM, **kw},
        )

    a, b = make("anogen"), make("anogen")
    b.batch(5)  # a different history must not matter
    for step in (0, 3, 11):
        ba, bb = a.batch(step), b.batch(step)
        for k in ba:
            assert torch.equal(ba[k], bb[k]), k
    kinds = torch.cat([a.batch(s)["kind"] for s in range(6)])
    assert (kinds == KIND_GENERATED).any() and (kinds != KIND_GENERATED).any()
    batch = a.batch(0)
    gen = batch["kind"] == KIND_GENERATED
    assert batch["weak"][gen].all()  # generated samples always use the weak loss
    assert batch["weak"][~gen].all()  # weak_on_synthetic=True
    assert not make("anogen", weak_on_synthetic=False).batch(0)["weak"][~gen].any()
    base = make("baseline").batch(0)
    assert not base["weak"].any() and not (base["kind"] == KIND_GENERATED).any()
    only = make("generated_only").batch(0)
    assert (only["kind"] == KIND_GENERATED).all() and only["mask"].amax(dim=(1, 2, 3)).min() == 1
    # generated samples: the clean target is the source normal image, mask is the box
    m = batch["mask"][gen]
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    # an epoch visits every training image once (the permutation), 2 steps of 8 here
    seen = sorted(make("baseline")._normal_index(s, i) for s in range(2) for i in range(8))
    assert seen == list(range(16))


# ----------------------------------------------------------------------------- resume after SIGKILL

_RUNNER = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO)
    import torch
    torch.set_num_threads(1)
    import anogen.resumable as R
    from anogen.detectors import train as T
    cfg = json.loads(Path(sys.argv[1]).read_text())
    kill_at = cfg.pop("kill_at")
    if kill_at:
        def _hook(job, step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        R.after_progress = _hook
    cfg["train_images"] = [Path(p) for p in cfg["train_images"]]
    cfg["generated_manifests"] = [Path(p) for p in cfg["generated_manifests"]]
    cfg["out_dir"] = Path(cfg["out_dir"])
    T.train_detector(**cfg)
    """
)


def _run_sub(tmp_path: Path, cfg: dict, kill_at: int | None) -> subprocess.CompletedProcess:
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    cfg_file = tmp_path / f"cfg_{kill_at}.json"
    cfg_file.write_text(json.dumps({**cfg, "kill_at": kill_at}, default=str))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(cfg_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _resume_case(tiny, tmp_path, detector, kill_at, checkpoint_every):
    from safetensors.torch import load_file

    spec = _spec(detector, "anogen")
    common = dict(
        spec=spec,
        device="cpu",
        train_images=[str(p) for p in tiny["train"]],
        generated_manifests=[str(tiny["manifest"])],
        key="k" * 12,
        inputs={"data": "d" * 12},
        checkpoint_every=checkpoint_every,
        log_every=1,
    )
    ref_dir, res_dir = tmp_path / "reference", tmp_path / "resumed"
    train_detector(
        **{**common, "train_images": tiny["train"], "generated_manifests": [tiny["manifest"]]},
        out_dir=ref_dir,
    )
    killed = _run_sub(tmp_path, {**common, "out_dir": str(res_dir)}, kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (res_dir / "checkpoints" / "state.pt").exists()
    assert not (res_dir / "manifest.json").exists()
    resumed = _run_sub(tmp_path, {**common, "out_dir": str(res_dir)}, None)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    a = load_file(ref_dir / "model.safetensors")
    b = load_file(res_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (ref_dir / "model.safetensors").read_bytes() == (res_dir / "model.safetensors").read_bytes()

    # the log has every step once, with the same losses
    def rows(d):
        lines = (d / "train_log.csv").read_text().strip().splitlines()
        return [line.rsplit(",", 1)[0] for line in lines]  # drop the 'seconds' column

    assert rows(ref_dir) == rows(res_dir)
    assert not (res_dir / "checkpoints" / "state.pt").exists()
    assert (res_dir / "checkpoints" / "finished.json").is_file()
    return ref_dir


def test_rerun_of_a_finished_job_rewrites_only_the_manifest(tiny, tmp_path, caplog):
    """Snakemake reruns a finished job when a runtime-only param changes: no retraining."""
    spec = _spec("draem", "baseline")
    kw = dict(
        spec=spec,
        device="cpu",
        train_images=tiny["train"],
        generated_manifests=[],
        out_dir=tmp_path / "d",
        key="k" * 12,
        inputs={},
    )
    train_detector(**kw, checkpoint_every=4)
    before = (tmp_path / "d" / "model.safetensors").read_bytes()
    (tmp_path / "d" / "manifest.json").unlink()  # what Snakemake does before a rerun
    caplog.set_level("INFO")
    train_detector(**kw, checkpoint_every=7, extra={"lease": {"slot": None}})
    assert "already trained" in caplog.text
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["extra"]["lease"] == {"slot": None} and manifest["extra"]["steps"] > 0
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == before
    # a damaged model is never taken as finished: the job trains again
    (tmp_path / "d" / "manifest.json").unlink()
    (tmp_path / "d" / "model.safetensors").write_bytes(before[:100])
    caplog.clear()
    train_detector(**kw, checkpoint_every=4)
    assert "already trained" not in caplog.text
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == before


def test_draem_resume_after_sigkill_is_bit_identical(tiny, tmp_path):
    # 16 images, batch 4 -> 4 steps/epoch, 6 epochs = 24 steps; LR drops at epochs 4.8/5.4.
    ref = _resume_case(tiny, tmp_path, "draem", kill_at=14, checkpoint_every=4)
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["stage"] == "detector" and manifest["inputs"] == {"data": "d" * 12}
    extra = manifest["extra"]
    assert extra["steps"] == 24 and extra["n_generated_items"] == 8
    assert extra["texture_source"]["kind"] == "photographs"
    assert extra["parameters"]["total"] > 0 and extra["final_loss"] > 0


@pytest.mark.slow
def test_destseg_resume_after_sigkill_is_bit_identical(tiny, tmp_path):
    # 6 steps, student phase 0-2, segmentation phase 3-5; checkpoint at 2 and 4, killed at 5.
    ref = _resume_case(tiny, tmp_path, "destseg", kill_at=5, checkpoint_every=2)
    extra = json.loads((ref / "manifest.json").read_text())["extra"]
    assert extra["teacher"] in ("random-init", "imagenet")


# ----------------------------------------------------------------------------- models


def test_destseg_trains_both_phases_and_predicts(tiny, tmp_path):
    spec = _spec("destseg", "generated_only", destseg={"steps": 4, "student_steps": 2})
    manifest = train_detector(
        spec=spec,
        train_images=tiny["train"],
        generated_manifests=[tiny["manifest"]],
        out_dir=tmp_path / "d",
        key="x" * 12,
        inputs={},
        extra={"lease": {"device": "cpu"}},
        device="cpu",
        checkpoint_every=500,
    )
    extra = json.loads(manifest.read_text())["extra"]
    assert extra["lease"] == {"device": "cpu"}
    if extra["teacher"] == "random-init":
        assert extra["teacher_weights"] is None
    assert extra["parameters"]["trainable"] == 32_371_393
    log = (tmp_path / "d" / "train_log.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in log[1:]] == ["1", "1", "2", "2"]  # phases
    det = load_trained_detector(tmp_path / "d")
    scores, maps = det.predict(torch.rand(3, 3, 32, 32))
    assert scores.shape == (3,) and maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert ((maps >= 0) & (maps <= 1)).all()


def test_load_trained_detector_verifies_files(tiny, tmp_path):
    spec = _spec("draem", "baseline", draem={"epochs": 1})
    train_detector(
        spec=spec,
        train_images=tiny["train"],
        generated_manifests=[],
        out_dir=tmp_path / "m",
        key="y" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
    )
    det = load_trained_detector(tmp_path / "m")
    assert det.image_size == 32
    with pytest.raises(ValueError, match="32x32"):
        det.predict(torch.rand(1, 3, 64, 64))
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_trained_detector(tmp_path / "m")


def test_a_detector_without_its_recorded_precision_is_refused(tiny, tmp_path):
    """Prediction autocasts as training did: model_config.json must say how (no guessed default)."""
    from anogen.io import sha256_file

    out = tmp_path / "m"
    spec = _spec("draem", "baseline", draem={"epochs": 1})
    train_detector(
        spec=spec,
        train_images=tiny["train"],
        generated_manifests=[],
        out_dir=out,
        key="y" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
    )
    config = json.loads((out / "model_config.json").read_text())
    assert config["draem"]["mixed_precision"] == "no"
    del config["draem"]["mixed_precision"]
    (out / "model_config.json").write_text(json.dumps(config))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["model_config.json"] = {
        "sha256": sha256_file(out / "model_config.json"),
        "bytes": (out / "model_config.json").stat().st_size,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="draem.mixed_precision"):
        load_trained_detector(out)


def test_bad_config_is_reported(tiny, tmp_path):
    from anogen.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="detectors.image_size"):
        train_detector(
            spec=_spec("draem", "baseline", image_size=48),
            train_images=tiny["train"],
            generated_manifests=[],
            out_dir=tmp_path / "a",
            key="z" * 12,
            inputs={},
            device="cpu",
            checkpoint_every=500,
        )
    with pytest.raises(DataError, match="generated"):
        train_detector(
            spec=_spec("draem", "anogen"),
            train_images=tiny["train"],
            generated_manifests=[],
            out_dir=tmp_path / "b",
            key="z" * 12,
            inputs={},
            device="cpu",
            checkpoint_every=500,
        )


@pytest.mark.slow
def test_short_draem_run_lowers_loss_and_beats_chance(tiny, tmp_path):
    import cv2
    from sklearn.metrics import roc_auc_score

    spec = _spec("draem", "baseline", draem={"epochs": 30, "batch_size": 8})  # 60 steps
    train_detector(
        spec=spec,
        train_images=tiny["train"],
        generated_manifests=[],
        out_dir=tmp_path / "q",
        key="q" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
    )
    import csv

    with open(tmp_path / "q" / "train_log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    det = load_trained_detector(tmp_path / "q")
    x = np.stack([cv2.resize(t, (32, 32), interpolation=cv2.INTER_AREA) for t in tiny["test"]])
    scores, _ = det.predict(torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2))
    auroc = roc_auc_score(tiny["labels"], scores)
    print("image AUROC", auroc)
    assert auroc > 0.5, auroc


def test_loader_workers_give_the_same_model(tiny, tmp_path):
    from safetensors.torch import load_file

    spec = _spec("draem", "anogen", draem={"epochs": 1})
    dirs = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train_detector(
            spec=spec,
            train_images=tiny["train"],
            generated_manifests=[tiny["manifest"]],
            out_dir=out,
            key="w" * 12,
            inputs={},
            num_workers=workers,
            device="cpu",
            checkpoint_every=500,
        )
        dirs.append(out)
    a, b = (load_file(d / "model.safetensors") for d in dirs)
    assert all(torch.equal(a[k], b[k]) for k in a)
