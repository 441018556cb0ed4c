"""Checkpoints laid out exactly as published load and run: offline hub ids, the trained noise schedule,
float32 text encoders, fp16 variants, clear errors (tests/hub_fixtures.py builds the layouts)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.model_files import read_files
from anogen.errors import ConfigError
from tests.hub_fixtures import (
    COMMIT,
    REPO_OF_FAMILY,
    copy_model,
    fp16_variant_only,
    install_in_hub_cache,
    published_model,
    text_encoder_in_float16,
)
from tests.sd_scheduler_files import PUBLISHED

BY_NAME = {p.name: p for p in PUBLISHED}

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    return {family: published_model(family, root / family) for family in ("ldm", "sd")}


# ----------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_the_layout_is_the_published_one(models, family):
    folder = models[family]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert not any(name.endswith((".safetensors", "tokenizer.json")) for name in files), files
    encoder, vae = ("bert", "vqvae") if family == "ldm" else ("text_encoder", "vae")
    assert {
        f"{encoder}/pytorch_model.bin",
        f"{vae}/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.bin",
    } <= files
    vocab = {"tokenizer/vocab.txt"} if family == "ldm" else {"tokenizer/vocab.json", "tokenizer/merges.txt"}
    assert vocab <= files
    scheduler = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    if family == "ldm":
        assert scheduler["beta_schedule"] == "linear"
        assert "steps_offset" not in scheduler and "set_alpha_to_one" not in scheduler
        assert json.loads((folder / "tokenizer/tokenizer_config.json").read_text())["model_max_length"] == 512
    assert "scaling_factor" not in json.loads((folder / vae / "config.json").read_text())
    encoder_config = json.loads((folder / encoder / "config.json").read_text())
    assert encoder_config["torch_dtype"] == "float32" and "dtype" not in encoder_config
    # the VAE's attention under its 2022 names
    state = torch.load(folder / vae / "diffusion_pytorch_model.bin", weights_only=True)
    assert any(".query." in k for k in state) and not any(".to_q." in k for k in state)


# ----------------------------------------------------------------------------- the noise schedule


def _compvis_ldm_schedule(steps: int):
    """The CompVis latent-diffusion code, by hand: make_beta_schedule("linear", ...), make_ddim_timesteps
    ("uniform", +1), make_ddim_sampling_parameters (alphas_prev[0] = alphas_cumprod[0])."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    timesteps = np.arange(0, 1000, 1000 // steps) + 1
    return betas, alphas_cumprod, timesteps[::-1], alphas_cumprod[0]


def test_published_ldm_file_trains_and_samples_with_the_trained_schedule(models):
    backbone = load_backbone(str(models["ldm"]))
    betas, alphas_cumprod, timesteps, final_alpha = _compvis_ldm_schedule(50)
    train = backbone.training_scheduler()
    np.testing.assert_allclose(train.betas.double().numpy(), betas, rtol=2e-6)
    np.testing.assert_allclose(train.alphas_cumprod.double().numpy(), alphas_cumprod, rtol=2e-5)
    ddim = backbone.ddim_scheduler()
    ddim.set_timesteps(50)
    assert ddim.timesteps.tolist() == timesteps.tolist()
    assert float(ddim.final_alpha_cumprod) == pytest.approx(final_alpha, rel=1e-6)
    assert ddim.config.clip_sample is False
    record = backbone.schedule_record()
    assert record["beta_schedule"] == "scaled_linear" and record["steps_offset"] == 1
    assert record["set_alpha_to_one"] is False and record["source"].startswith("trained")


def test_the_file_as_published_is_another_schedule(models):
    """``scheduler: file`` reads 'linear' as diffusers does: linear in beta, lower SNR (the issue's figures)."""
    backbone = load_backbone(str(models["ldm"]), scheduler="file")
    betas = np.linspace(0.00085, 0.012, 1000)
    np.testing.assert_allclose(backbone.training_scheduler().betas.double().numpy(), betas, rtol=1e-5)
    _, trained, _, _ = _compvis_ldm_schedule(50)
    as_file = np.cumprod(1.0 - betas)

    def snr(a):
        return a / (1 - a)

    ratios = [round(float(snr(as_file[t]) / snr(trained[t])), 2) for t in (250, 500, 999)]
    assert ratios == [0.64, 0.50, 0.34]
    record = backbone.schedule_record()
    assert record["beta_schedule"] == "linear" and record["steps_offset"] == 0 and record["source"].startswith("file")
    with pytest.raises(ConfigError, match="diffusion.scheduler"):
        load_backbone(str(models["ldm"]), scheduler="published")


def test_sd_with_a_2022_scheduler_file_samples_with_the_trained_schedule(models, tmp_path):
    """CompVis/stable-diffusion-v1-4's 230-byte file (no clip_sample, no set_alpha_to_one) through
    ``load_backbone``: trained values by default, the file with diffusers' defaults under ``file``
    (every published version: tests/test_sd_schedule.py)."""
    folder = copy_model(models["sd"], tmp_path / "sd")
    (folder / "scheduler" / "scheduler_config.json").write_text(BY_NAME["V1_4_MAIN_2022_10_07"].text)
    _, _, timesteps, final_alpha = _compvis_ldm_schedule(50)  # the same CompVis functions and values
    ddim = load_backbone(str(folder)).ddim_scheduler()
    ddim.set_timesteps(50)
    assert ddim.timesteps.tolist() == timesteps.tolist() and ddim.config.clip_sample is False
    assert float(ddim.final_alpha_cumprod) == pytest.approx(final_alpha, rel=1e-6)
    as_file = load_backbone(str(folder), scheduler="file").ddim_scheduler()
    assert as_file.config.clip_sample is True and float(as_file.final_alpha_cumprod) == 1.0


# ----------------------------------------------------------------------------- precision and variants


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_a_float16_text_encoder_loads_in_float32_and_trains(models, tmp_path, family):
    from anogen.embedding import EmbeddingTrainer
    from tests.test_embedding import make_items, make_spec

    folder = copy_model(models[family], tmp_path / family)
    text_encoder_in_float16(folder, family)
    backbone = load_backbone(str(folder))
    assert {p.dtype for m in (backbone.text_encoder, backbone.unet, backbone.vae) for p in m.parameters()} == {
        torch.float32
    }
    trainer = EmbeddingTrainer(
        backbone, make_items(), make_spec(steps=1), cuda_graph=False, gradient_checkpointing=False
    )
    assert np.isfinite(trainer.step())


def test_an_fp16_variant_only_folder_needs_the_variant(models, tmp_path):
    folder = copy_model(models["sd"], tmp_path / "sd-fp16")
    fp16_variant_only(folder, "sd")
    with pytest.raises(ConfigError, match=r"diffusion\.variant: fp16") as err:
        load_backbone(str(folder))
    assert str(folder / "unet") in str(err.value) and str(folder / "text_encoder") in str(err.value)
    backbone = load_backbone(str(folder), variant="fp16")
    reference = load_backbone(str(models["sd"]))
    for name in ("unet", "vae", "text_encoder"):
        got, want = getattr(backbone, name).state_dict(), getattr(reference, name).state_dict()
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            torch.testing.assert_close(got[key], want[key].half().to(want[key].dtype), rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors


def test_a_missing_file_is_named(models, tmp_path):
    folder = copy_model(models["ldm"], tmp_path / "ldm")
    (folder / "tokenizer" / "vocab.txt").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(ConfigError) as err:
        load_backbone(str(folder))
    message = str(err.value)
    assert str(folder / "tokenizer" / "vocab.txt") in message and "BertTokenizer" in message
    assert str(folder / "unet") in message and "diffusion_pytorch_model.bin" in message


def test_a_placeholder_token_with_an_existing_id_is_refused(models, tmp_path):
    folder = copy_model(models["ldm"], tmp_path / "ldm")
    vocab = (folder / "tokenizer" / "vocab.txt").read_text().splitlines()
    vocab[50] = vocab[40]  # a repeated line: 142 lines, 141 distinct tokens
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    backbone = load_backbone(str(folder))
    with pytest.raises(ConfigError, match=r"embedding.placeholder_token.*'<anomaly>'"):
        backbone.add_placeholder_token("<anomaly>", "defect")
    fresh = load_backbone(str(models["ldm"]))
    with pytest.raises(ConfigError, match=r"embedding.placeholder_token.*'defect'"):
        fresh.add_placeholder_token("defect", "defect")  # a real word
    assert fresh.add_placeholder_token("<anomaly>", "defect") == len(vocab)  # the next free id


# ----------------------------------------------------------------------------- offline hub ids

_OFFLINE_RUN = """
import json, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from tests.test_embedding import make_items, make_spec
from anogen.embedding import learn_embedding
from anogen.generation.foreground import build_foreground_set
from anogen.generation.run import generate_anomalies

work = Path({work!r})
model = {model!r}
manifest = learn_embedding(support_items=make_items(), model=model, revision=None, spec=make_spec(steps=1, resolution=64),
    out_dir=work / "emb", key="k1", inputs={{}}, device="cpu", checkpoint_every=1, cuda_graph=False,
    gradient_checkpointing=False, model_options={{"variant": None, "scheduler": "trained"}})
emb = json.loads(Path(manifest).read_text())
normal = work / "data" / "c" / "train" / "good" / "000.png"
normal.parent.mkdir(parents=True)
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(90, 200, (64, 64, 3), dtype=np.uint8)).save(normal)
fg = build_foreground_set(image_paths=[normal], data_root=work / "data", texture=True, template=None, iterations=1,
    out_dir=work / "fg", key="fgkey", inputs={{}}, spec={{"category": "c"}})
spec = {{"images_per_normal": 1, "images_per_box": 1, "steps": 2, "guidance_scale": 5.0, "eta": 0.0,
    "paste_back": False, "seed": 0, "min_overlap": 0.5, "max_tries": 1000, "max_normal_images": None, "jpeg_quality": None,
    "category": "c", "defect": "d", "box": {{"width": [0.2, 0.3], "height": [0.2, 0.3], "rotate": False}},
    "texture": True, "mixed_precision": "no", "resize": "squash"}}
gen = generate_anomalies(normal_images=[normal], data_root=work / "data", foreground_manifest=fg, template=None,
    embedding_path=work / "emb" / "learned_embeds.safetensors", model=model, revision=None, spec=spec,
    out_dir=work / "gen", key="genkey", inputs={{}}, device="cpu", batch_size=1, channels_last=False,
    compile=False, model_options={{"variant": None, "scheduler": "trained"}})
gen = json.loads(Path(gen).read_text())
print(json.dumps({{"embedding": emb["extra"]["noise_schedule"], "generation": gen["extra"]["noise_schedule"],
    "images": gen["extra"]["n_images"], "loss": emb["extra"]["final_loss"],
    "files": [emb["extra"]["model_files"], gen["extra"]["model_files"]]}}))
"""


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_stage_1_and_2_run_from_an_offline_hub_cache(models, tmp_path, family):
    """A hub id only in the HF cache (snapshots/<commit> + refs/main), HF_HUB_OFFLINE=1, slow-tokenizer
    files only: one stage-1 step and one stage-2 image, each manifest with the schedule it used."""
    cache = tmp_path / "hub"
    install_in_hub_cache(models[family], REPO_OF_FAMILY[family], cache)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    script = _OFFLINE_RUN.format(repo=str(REPO), work=str(tmp_path / "work"), model=REPO_OF_FAMILY[family])
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 1 and np.isfinite(result["loss"])
    for stage in ("embedding", "generation"):
        record = result[stage]
        assert record["beta_schedule"] == "scaled_linear" and record["steps_offset"] == 1, (stage, record)
        assert record["source"].startswith("trained") and record["clip_sample"] is False, (stage, record)
    # each manifest names the snapshot and every file read, by the hash its blob is named after
    unet = (models[family] / "unet" / "diffusion_pytorch_model.bin").read_bytes()
    for record in result["files"]:
        assert (record["source"], record["snapshot"], record["revision"], record["variant"]) == (
            "hub",
            COMMIT,
            None,
            None,
        )
        assert record["files"]["unet/diffusion_pytorch_model.bin"] == {"sha256": hashlib.sha256(unet).hexdigest()}
        assert set(record["files"]) == set(read_files(models[family], None)), record["files"]
