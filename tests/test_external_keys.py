"""The files from outside the data set that jobs read are in their keys by content, not by path:
the diffusion model (a hub cache's snapshot or a local folder), the DeSTSeg teacher and the
texture folder. Keys are compared before and after a change at the Plan level; the hub cache's
``refs/main`` moving to other UNet weights also goes through a real ``snakemake -n``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anogen.config import deep_update, validate_config
from anogen.data.fingerprint import file_fingerprint
from anogen.data.texture_files import texture_fingerprint
from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.model_files import hub_snapshot, model_files_record, read_files
from anogen.diffusion.published import SUBFOLDERS
from anogen.plan import Plan
from tests import e2e
from tests.hub_fixtures import COMMIT, LDM_REPO, copy_model, fp16_variant_only, install_in_hub_cache, published_model
from tests.test_config_keys import all_keys, changed

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
VARIANTS = ["baseline", "anogen", "generated_only"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {family: published_model(family, root / family) for family in ("ldm", "sd")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.fake_trees import build_fake_mvtec

    return build_fake_mvtec(tmp_path_factory.mktemp("mvtec") / "data", per_folder=5, categories=["bottle"])


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, models):
    """The LDM at COMMIT in an HF cache (refs/main), the cache huggingface_hub reads in this process."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    install_in_hub_cache(models["ldm"], LDM_REPO, cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _config(data: Path, model: str = "tiny:ldm", **over) -> dict:
    raw = {"data_root": str(data), "diffusion": {"model": model}, "detectors": {"variants": VARIANTS}}
    return validate_config(deep_update(raw, over))


def _keys(config: dict) -> dict[str, str]:
    return all_keys(Plan(config))


def _model_readers(keys: dict) -> set[str]:
    """Every artifact that reads the model: embeddings, generations, and the detectors (with their
    evaluations) that train on generated images."""
    stage_1_2 = ("embedding/", "generation/")
    stage_3 = ("detector/", "evaluation/")
    return {"model"} | {
        k for k in keys if k.startswith(stage_1_2) or (k.startswith(stage_3) and not k.endswith("/baseline"))
    }


def _retrain_unet(folder: Path) -> None:
    """Other UNet weights in the same file (what retraining or a repository update leaves)."""
    path = folder / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


# ----------------------------------------------------------------------------- the files the loader reads


def _sd_layout(models, tmp_path: Path, layout: str) -> tuple[Path, str | None]:
    """A folder in ``layout``: as published (.bin), fp16 variant only, .safetensors beside the .bin
    (with other weights, so loading tells which one was read), or a UNet and a text encoder in
    sharded .safetensors (diffusers renames the VAE's 2022 attention names in one file only)."""
    from safetensors.torch import save_file

    folder = copy_model(models["sd"], tmp_path / layout)
    if layout == "fp16":
        fp16_variant_only(folder, "sd")
        return folder, "fp16"
    for part in ("unet", "vae", "text_encoder") if layout == "both" else ("unet", "text_encoder"):
        sub = folder / SUBFOLDERS["sd"][part]
        (weights,) = sub.glob("*.bin")
        state = {k: v.contiguous() for k, v in torch.load(weights, weights_only=True).items()}
        stem = "model" if part == "text_encoder" else "diffusion_pytorch_model"
        if layout == "both":
            save_file({k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, sub / f"{stem}.safetensors")
        elif layout == "sharded":
            weights.unlink()
            names = sorted(state)
            shards = {f"{stem}-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
            for shard, keys in shards.items():
                save_file({k: state[k] for k in keys}, sub / shard)
            weight_map = {k: shard for shard, keys in shards.items() for k in keys}
            (sub / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder, None


_OPENED = """
import sys
from anogen.diffusion.backbone import load_backbone
load_backbone(sys.argv[1], variant=sys.argv[2] or None)
"""


def _opened_by_the_loader(model: str, variant: str | None, root: Path, tmp_path: Path, env: dict) -> set[str]:
    """The files below ``root`` a fresh process opens while ``load_backbone`` runs (strace: the
    Python reads and those of the Rust tokenizers and safetensors alike)."""
    log = tmp_path / "strace.log"
    cmd = ["strace", "-f", "-e", "trace=openat", "-o", str(log), sys.executable, "-c", _OPENED, model, variant or ""]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix = f"{root}/"
    opened = set()
    for line in log.read_text().splitlines():
        if "ENOENT" in line or "O_DIRECTORY" in line or '"' not in line:
            continue
        path = line.split('"')[1]
        if path.startswith(prefix):
            opened.add(path[len(prefix) :])
    return opened


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see every file a process opens")
@pytest.mark.parametrize("layout", ["ldm", "sd", "fp16", "both", "sharded", "hub"])
def test_read_files_are_exactly_what_load_backbone_opens(models, tmp_path, layout):
    env = {**os.environ, "PYTHONPATH": str(e2e.REPO), "HF_HUB_OFFLINE": "1"}
    variant = None
    if layout in ("ldm", "sd"):
        model = root = models[layout]
    elif layout == "hub":
        root = install_in_hub_cache(models["ldm"], LDM_REPO, tmp_path / "hub")
        model, env["HF_HUB_CACHE"] = LDM_REPO, str(tmp_path / "hub")
    else:
        root, variant = _sd_layout(models, tmp_path, layout)
        model = root
    listed = set(read_files(Path(root), variant))
    assert listed == _opened_by_the_loader(str(model), variant, Path(root), tmp_path, env)
    if layout == "both":
        assert "unet/diffusion_pytorch_model.safetensors" in listed and "unet/diffusion_pytorch_model.bin" not in listed
    if layout == "sharded":
        assert {
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "text_encoder/model.safetensors.index.json",
        } <= listed


@pytest.mark.parametrize("layout", ["both", "sharded"])
def test_the_read_files_alone_load_the_same_weights(models, tmp_path, layout):
    """Without strace too: a copy holding only the listed files loads, with the weights of the full
    folder (``both``: the .safetensors hold other values than the .bin, so the wrong one would show)."""
    folder, variant = _sd_layout(models, tmp_path, layout)
    pruned = tmp_path / "pruned"
    for rel in read_files(folder, variant):
        (pruned / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, pruned / rel)
    full, alone = load_backbone(str(folder), variant=variant), load_backbone(str(pruned), variant=variant)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(full, name).state_dict(), getattr(alone, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert alone.tokenizer.get_vocab() == full.tokenizer.get_vocab()


def test_a_hub_file_is_identified_by_its_blob(models, hub_cache):
    record = model_files_record(LDM_REPO, None, None)
    assert record["source"] == "hub" and record["snapshot"] == COMMIT
    unet = (models["ldm"] / "unet" / "diffusion_pytorch_model.bin").read_bytes()
    assert record["files"]["unet/diffusion_pytorch_model.bin"] == {"sha256": hashlib.sha256(unet).hexdigest()}
    assert set(record["files"]) == set(read_files(models["ldm"], None))
    # resolved as huggingface_hub resolves it, by branch and by commit
    from huggingface_hub import snapshot_download

    for revision in (None, "main", COMMIT):
        want = Path(snapshot_download(LDM_REPO, revision=revision, local_files_only=True, cache_dir=str(hub_cache)))
        assert hub_snapshot(LDM_REPO, revision) == want
    assert hub_snapshot(LDM_REPO, "v2") is None and model_files_record("CompVis/not-cached", None, None) is None


# ----------------------------------------------------------------------------- the model in the keys


def test_a_new_snapshot_reruns_stages_1_and_2_and_what_reads_them(models, data, hub_cache, tmp_path):
    config = _config(data, LDM_REPO)
    before = _keys(config)
    retrained = copy_model(models["ldm"], tmp_path / "retrained")
    _retrain_unet(retrained)
    install_in_hub_cache(retrained, LDM_REPO, hub_cache, commit=OTHER_COMMIT)  # `hf download`: refs/main moves
    after = _keys(config)
    assert changed(before, after) == _model_readers(before)
    # a config pinned to the first commit keeps its keys; refs/main back gives the first keys again
    pinned = _config(data, LDM_REPO, diffusion={"revision": COMMIT})
    assert _keys(pinned) == before
    (hub_cache / f"models--{LDM_REPO.replace('/', '--')}" / "refs" / "main").write_text(COMMIT)
    assert _keys(config) == before


def test_a_snapshot_that_changes_no_read_file_reruns_nothing(models, data, hub_cache, tmp_path):
    config = _config(data, LDM_REPO)
    before = _keys(config)
    updated = copy_model(models["ldm"], tmp_path / "updated")
    (updated / "README.md").write_text("a model card edited upstream\n")
    install_in_hub_cache(updated, LDM_REPO, hub_cache, commit=OTHER_COMMIT)
    assert Plan(config).model_files()["snapshot"] == OTHER_COMMIT
    assert _keys(config) == before


def test_a_local_folder_is_keyed_by_its_files_not_its_path(models, data, tmp_path):
    folder = copy_model(models["ldm"], tmp_path / "models" / "ldm")
    before = _keys(_config(data, str(folder)))
    moved = folder.rename(tmp_path / "ldm-moved")  # mv keeps every file's mtime
    config = _config(data, str(moved))
    assert _keys(config) == before
    plan = Plan(config)
    assert plan.job("embedding", "bottle", "broken_large").runtime["model"] == str(moved)
    assert plan.model_files()["folder"] == str(moved.resolve())
    (moved / "NOTES.txt").write_text("not read by the loader\n")
    assert _keys(config) == before
    _retrain_unet(moved)
    assert changed(before, _keys(config)) == _model_readers(before)


def test_planning_a_study_looks_the_model_up_once(hub_cache, monkeypatch):
    import anogen.plan
    from anogen.config import load_config_file
    from anogen.studies.planner import RunPlan
    from tests.test_studies import DEMO_STUDY

    calls = []

    def counted(*args):
        calls.append(args)
        return model_files_record(*args)

    monkeypatch.setattr(anogen.plan, "model_files_record", counted)
    monkeypatch.chdir(e2e.REPO)
    raw = yaml.safe_load(DEMO_STUDY.read_text())
    path = hub_cache.parent / "study.yaml"
    path.write_text(yaml.safe_dump(deep_update(raw, {"diffusion": {"model": LDM_REPO}})))
    run = RunPlan(load_config_file(path))
    assert len(run.plans) > 2 and run.study_artifacts()
    assert calls == [(LDM_REPO, None, None)]


# ----------------------------------------------------------------------------- teacher and textures


def test_editing_the_teacher_reruns_only_the_destseg_detectors(data, tmp_path):
    teacher = tmp_path / "weights" / "resnet18.pth"
    teacher.parent.mkdir()
    teacher.write_bytes(b"first weights")
    config = _config(data, detectors={"destseg": {"teacher_weights": str(teacher)}})
    before = _keys(config)
    teacher.write_bytes(b"other weights")
    os.utime(teacher, ns=(teacher.stat().st_atime_ns, teacher.stat().st_mtime_ns + 10**9))
    after = _keys(config)
    assert changed(before, after) == {
        f"{stage}/bottle/destseg/{v}" for stage in ("detector", "evaluation") for v in VARIANTS
    }
    moved = tmp_path / "elsewhere" / "resnet18.pth"
    moved.parent.mkdir()
    teacher.rename(moved)
    plan = Plan(_config(data, detectors={"destseg": {"teacher_weights": str(moved)}}))
    assert all_keys(plan) == after and plan.job("detector", "bottle", "destseg", "baseline").runtime[
        "teacher_weights"
    ] == str(moved)
    assert plan.inputs("detector", "bottle", "destseg", "anogen")["teacher"] == file_fingerprint(moved)
    assert "teacher" not in plan.inputs("detector", "bottle", "draem", "anogen")


def _texture_folder(root: Path) -> Path:
    for rel in ("banded/banded_0001.jpg", "dotted/sub/dotted_0001.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), len(rel), np.uint8)).save(root / rel)
    return root


def test_adding_a_texture_reruns_only_the_detectors_that_paste_textures(data, tmp_path):
    folder = _texture_folder(tmp_path / "dtd" / "images")
    config = _config(data, detectors={"texture_source": str(folder)})
    before = _keys(config)
    (folder / "notes.txt").write_text("no image: not read\n")
    assert _keys(config) == before
    shutil.copy2(folder / "banded" / "banded_0001.jpg", folder / "banded" / "banded_0002.jpg")
    after = _keys(config)
    assert changed(before, after) == {
        f"{stage}/bottle/{m}/{v}"
        for stage in ("detector", "evaluation")
        for m in ("draem", "destseg")
        for v in ("baseline", "anogen")
    }
    moved = folder.parent.rename(tmp_path / "dtd-moved")
    plan = Plan(_config(data, detectors={"texture_source": str(moved / "images")}))
    assert all_keys(plan) == after
    assert plan.job("detector", "bottle", "draem", "anogen").runtime["texture_source"] == str(moved / "images")
    assert plan.job("detector", "bottle", "draem", "generated_only").runtime["texture_source"] is None
    # CutPaste pastes no textures: its detectors do not read the folder
    cutpaste = _config(data, detectors={"texture_source": str(moved / "images"), "synthetic_source": "cutpaste"})
    first = _keys(cutpaste)
    shutil.copy2(moved / "images" / "banded" / "banded_0001.jpg", moved / "images" / "banded" / "banded_0003.jpg")
    assert _keys(cutpaste) == first


# ----------------------------------------------------------------------------- what the manifests record


def test_a_detector_manifest_records_the_texture_folder_as_keyed(data, tmp_path):
    from anogen.detectors.train import train_detector
    from tests.test_detectors_train import _spec

    folder = _texture_folder(tmp_path / "dtd")
    plan = Plan(_config(data, detectors={"texture_source": str(folder)}))
    manifest = train_detector(
        spec=_spec("draem", "baseline", draem={"epochs": 1}),
        train_images=_train_images(tmp_path),
        generated_manifests=[],
        out_dir=tmp_path / "d",
        key="x" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
        texture_source=str(folder),
    )
    textures = json.loads(manifest.read_text())["extra"]["texture_source"]
    assert textures == {
        "kind": "folder",
        "folder": str(folder),
        "n_images": 2,
        "fingerprint": plan.inputs("detector", "bottle", "draem", "baseline")["textures"],
    }
    assert textures["fingerprint"] == texture_fingerprint(folder)


def _train_images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = tmp_path / "train" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- a real dry run


def _finished_tree(workdir: Path) -> None:
    """Every output of the planned DAG as an empty file, marked up to date by ``--touch`` (a finished
    run without running a job)."""
    for line in e2e.run(workdir, "-n").stdout.splitlines():
        if line.strip().startswith("output:"):
            for path in line.split(":", 1)[1].split(","):
                (workdir / path.strip()).parent.mkdir(parents=True, exist_ok=True)
                (workdir / path.strip()).touch()
    e2e.run(workdir, "--touch")


@pytest.mark.e2e
def test_snakemake_plans_stages_1_and_2_again_after_refs_main_moves(models, hub_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))  # the snakemake process reads the same cache
    workdir = e2e.make_workdir(tmp_path / "work", extra={"diffusion": {"model": LDM_REPO}})
    _finished_tree(workdir)
    assert e2e.planned_jobs(workdir) == {}
    retrained = copy_model(models["ldm"], tmp_path / "retrained")
    _retrain_unet(retrained)
    install_in_hub_cache(retrained, LDM_REPO, hub_cache, commit=OTHER_COMMIT)
    pairs, categories = 7, 3
    assert e2e.planned_jobs(workdir) == {
        "learn_embedding": pairs,
        "generate_anomalies": pairs,
        "train_detector": categories * 2,  # the anogen variant of draem and destseg; no baseline
        "evaluate_detector": categories * 2,
        "summarize": 1,
        "all": 1,
    }
