"""Stable Diffusion 1.x is sampled with the schedule it was trained with, whichever of its published
scheduler files a snapshot holds (tests/sd_scheduler_files.py); ``diffusion.scheduler: file`` reads
the file as diffusers does. The expected values are computed here by hand from the CompVis code."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from anogen.commands.preflight import PreflightReport, _noise_schedule
from anogen.diffusion.backbone import Backbone, read_schedule
from anogen.diffusion.schedule import DDIM_DEFAULTS
from tests.sd_scheduler_files import PUBLISHED

STEPS = 50
BY_NAME = {p.name: p for p in PUBLISHED}

# What each published text leaves out or says otherwise, read against the trained values.
DIFFERING = {
    "V1_4_MAIN_2022_08": {"steps_offset", "set_alpha_to_one", "clip_sample"},
    "V1_4_FP16_2022_08": {"steps_offset", "set_alpha_to_one", "clip_sample"},
    "V1_4_ONNX_2022_09_08": {"steps_offset", "set_alpha_to_one", "clip_sample"},
    "V1_4_ONNX_2022_09_21": {"clip_sample"},
    "V1_4_MAIN_2022_10_07": {"set_alpha_to_one", "clip_sample"},
    "V1_4_MAIN_2022_10_31": {"clip_sample"},
    "V1_4_MAIN_2022_11_03": set(),
    "V1_4_FP16_2022_12_12_SLIP": {"prediction_type"},
    "V1_4_FP16_2022_12_12": set(),
    "V1_5_MAIN_2022_10_20": {"clip_sample"},
    "V1_5_FLAX_2022_10_20": {"clip_sample"},
    "V1_5_MAIN_2022_11_03": set(),
}


def _trained_by_hand():
    """The CompVis stable-diffusion code, by hand: make_beta_schedule("linear", 1000, 0.00085, 0.012),
    make_ddim_timesteps("uniform", 50, 1000) (+1), make_ddim_sampling_parameters (alphas_prev[0] =
    alphas_cumprod[0]), no clipping of the DDIM step's x0."""
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    timesteps = (np.arange(0, 1000, 1000 // STEPS) + 1)[::-1]
    return betas, alphas_cumprod, timesteps, alphas_cumprod[0]


def _snapshot(tmp_path: Path, text: str) -> Path:
    """A model folder as far as the schedule goes: the published file, byte for byte."""
    folder = tmp_path / "snapshot"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_bytes(text.encode())
    return folder


def _backbone(folder: Path, mode: str) -> Backbone:
    """The schedule half of ``load_backbone``: the config it reads, the schedulers it builds."""
    config, source = read_schedule(str(folder), "sd", mode)
    return Backbone("sd", str(folder), None, None, None, None, config, "cpu", source)


def _sample_with_a_perfect_predictor(scheduler, x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: np.ndarray):
    """DDIM (eta 0) from x_T = q(x_T | x0) with the exact noise prediction of the trained schedule."""
    scheduler.set_timesteps(STEPS)
    a = torch.from_numpy(alphas_cumprod)
    first = int(scheduler.timesteps[0])
    x = a[first].sqrt() * x0 + (1 - a[first]).sqrt() * noise
    for t in scheduler.timesteps:
        eps = (x - a[int(t)].sqrt() * x0) / (1 - a[int(t)]).sqrt()
        x = scheduler.step(eps.float(), t, x.float(), eta=0.0).prev_sample.double()
    return x


# ----------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda p: p.name)
def test_each_text_is_the_published_bytes(published):
    data = published.text.encode()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == published.blob


def test_every_text_has_its_expected_differences():
    assert set(DIFFERING) == set(BY_NAME) and len(PUBLISHED) == 12


def test_the_230_byte_file_is_the_one_the_issue_names():
    text = BY_NAME["V1_4_MAIN_2022_10_07"].text
    assert len(text.encode()) == 230
    assert {"clip_sample", "set_alpha_to_one"}.isdisjoint(json.loads(text)) and json.loads(text)["steps_offset"] == 1


def test_the_defaults_table_is_ddims():
    from diffusers import DDIMScheduler

    signature = inspect.signature(DDIMScheduler.__init__).parameters
    assert {name: signature[name].default for name in DDIM_DEFAULTS} == DDIM_DEFAULTS


# ----------------------------------------------------------------------------- trained (the default)


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda p: p.name)
def test_every_published_file_trains_and_samples_with_the_trained_schedule(published, tmp_path):
    backbone = _backbone(_snapshot(tmp_path, published.text), "trained")
    betas, alphas_cumprod, timesteps, final_alpha = _trained_by_hand()
    train = backbone.training_scheduler()
    np.testing.assert_allclose(train.betas.double().numpy(), betas, rtol=2e-6)
    np.testing.assert_allclose(train.alphas_cumprod.double().numpy(), alphas_cumprod, rtol=2e-5)
    ddim = backbone.ddim_scheduler()
    ddim.set_timesteps(STEPS)
    assert ddim.timesteps.tolist() == timesteps.tolist()
    np.testing.assert_allclose(ddim.alphas_cumprod.double().numpy(), alphas_cumprod, rtol=2e-5)
    assert float(ddim.final_alpha_cumprod) == pytest.approx(final_alpha, rel=1e-6)
    assert ddim.config.clip_sample is False and ddim.config.prediction_type == "epsilon"
    # a perfect predictor leads back to x0, beyond [-1, 1] too, at the trained final alpha
    gen = torch.Generator().manual_seed(0)
    x0, noise = 3 * torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=gen)
    out = _sample_with_a_perfect_predictor(backbone.ddim_scheduler(), x0, noise.double(), alphas_cumprod)
    expected = np.sqrt(final_alpha) * x0 + np.sqrt(1 - final_alpha) * noise.double()
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-4)
    record = backbone.schedule_record()
    assert record["source"] == "trained: the CompVis Stable Diffusion training code's values"
    assert (record["clip_sample"], record["set_alpha_to_one"], record["steps_offset"]) == (False, False, 1)


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda p: p.name)
def test_preflight_names_the_keys_the_file_differs_in(published):
    report = PreflightReport()
    _noise_schedule("sd", json.loads(published.text), "trained", report)
    assert report.lines[0] == (
        "noise schedule (trained: the CompVis Stable Diffusion training code's values): num_train_timesteps 1000, "
        "beta_schedule scaled_linear, beta_start 0.00085, beta_end 0.012, steps_offset 1, set_alpha_to_one False, "
        "clip_sample False, prediction_type epsilon, timestep_spacing leading"
    )
    named = set(re.findall(r"(\w+) \(file: ", "\n".join(report.lines[1:])))
    assert named == DIFFERING[published.name], report.lines
    # a value the file states otherwise (not one it omits) may mean a fine-tune: a warning
    assert bool(report.warnings) == (published.name == "V1_4_FP16_2022_12_12_SLIP"), report.warnings


def test_preflight_on_the_230_byte_file():
    report = PreflightReport()
    _noise_schedule("sd", json.loads(BY_NAME["V1_4_MAIN_2022_10_07"].text), "trained", report)
    assert report.lines[1] == (
        "scheduler_config.json differs from the values used: set_alpha_to_one (file: omitted, diffusers' default "
        "True), clip_sample (file: omitted, diffusers' default True)"
    )
    assert report.ok and not report.warnings


# ----------------------------------------------------------------------------- file (as today)


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda p: p.name)
def test_file_mode_reads_the_file_with_diffusers_defaults(published, tmp_path):
    backbone = _backbone(_snapshot(tmp_path, published.text), "file")
    stated = json.loads(published.text)
    ddim = backbone.ddim_scheduler()
    for name, default in DDIM_DEFAULTS.items():
        assert ddim.config[name] == stated.get(name, default), name
    assert backbone.schedule_record()["source"] == "file: scheduler_config.json as published"
    report = PreflightReport()
    _noise_schedule("sd", stated, "file", report)
    omitted = [name for name in DDIM_DEFAULTS if name not in stated]
    assert report.lines[1:] == (
        [f"scheduler_config.json omits {', '.join(omitted)}: diffusers' defaults are used"] if omitted else []
    )


def test_file_mode_clamps_the_230_byte_files_latents(tmp_path):
    """Read as published (clip_sample and set_alpha_to_one default to true), a perfect predictor's
    DDIM run ends on x0 clipped to [-1, 1]: what every stage-2 image got before."""
    backbone = _backbone(_snapshot(tmp_path, BY_NAME["V1_4_MAIN_2022_10_07"].text), "file")
    _, alphas_cumprod, timesteps, _ = _trained_by_hand()
    ddim = backbone.ddim_scheduler()
    ddim.set_timesteps(STEPS)
    assert ddim.timesteps.tolist() == timesteps.tolist() and float(ddim.final_alpha_cumprod) == 1.0
    gen = torch.Generator().manual_seed(0)
    x0, noise = 3 * torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=gen)
    out = _sample_with_a_perfect_predictor(ddim, x0, noise.double(), alphas_cumprod)
    torch.testing.assert_close(out, x0.clamp(-1, 1), rtol=0, atol=2e-4)
