"""The noise schedule a backbone is trained and sampled with (``diffusion.scheduler``).

Both families were trained by CompVis code with the same schedule: CompVis/ldm-text2im-large-256
by latent-diffusion (which the AnoGen authors also ran), Stable Diffusion 1.x by stable-diffusion
(``configs/stable-diffusion/v1-inference.yaml``: ``linear_start 0.00085``, ``linear_end 0.012``,
``timesteps 1000``, the DDPM defaults ``beta_schedule "linear"`` and ``parameterization "eps"``).
Their ``ldm/modules/diffusionmodules/util.py`` and ``ldm/models/diffusion/ddim.py``:
- ``make_beta_schedule("linear", 1000, 0.00085, 0.012)`` is ``linspace(sqrt(0.00085), sqrt(0.012),
  1000) ** 2``: linear in sqrt(beta), which diffusers calls ``scaled_linear``;
- ``make_ddim_timesteps`` takes ``range(0, 1000, 1000 // S)`` and adds 1 (diffusers:
  ``steps_offset: 1`` with ``timestep_spacing: leading``);
- ``make_ddim_sampling_parameters`` takes the last step's previous alpha from ``alphas_cumprod[0]``
  (diffusers: ``set_alpha_to_one: false``);
- the DDIM step never clips its x0 estimate (diffusers: ``clip_sample: false``).

The published diffusers files do not all say so, and diffusers fills a key a file leaves out
with its DDIMScheduler default (``steps_offset 0``, ``set_alpha_to_one true``, ``clip_sample
true``). The LDM's file says ``beta_schedule: linear``, which diffusers reads as linear in beta
(a signal-to-noise ratio of 0.64x the trained one at t = 250, 0.50x at 500, 0.34x at 999), and
omits the two DDIM keys. Most Stable Diffusion 1.x files of 2022 omit ``clip_sample`` (and the
first ones ``steps_offset`` and ``set_alpha_to_one`` too): read as they are, DDIM sampling clips
every x0 estimate to [-1, 1] and ends on alpha 1 (tests/sd_scheduler_files.py holds them all).

So ``diffusion.scheduler: trained`` (the default) uses the trained values above for both
families, whatever the file says or omits; ``file`` uses the file with diffusers' defaults filled
in. The values used go into every stage-1 and stage-2 manifest (:func:`schedule_record`);
``anogen preflight`` prints them and names each key where the file differs
(:func:`file_differences`).
"""

from __future__ import annotations

from anogen.diffusion.architectures import scheduler_config as compvis_schedule
from anogen.errors import ConfigError

MODES = ("trained", "file")

FILE_SOURCE = "file: scheduler_config.json as published"
TRAINED_SOURCE = {
    "ldm": "trained: the CompVis LDM training code's values",
    "sd": "trained: the CompVis Stable Diffusion training code's values",
}

# What decides the noise levels and the DDIM step; recorded in manifests.
_RECORDED = (
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "trained_betas",
    "steps_offset",
    "set_alpha_to_one",
    "clip_sample",
    "prediction_type",
    "timestep_spacing",
)
# diffusers' DDIMScheduler defaults for the recorded keys (a file may leave any out;
# tests/test_sd_schedule.py checks them against DDIMScheduler's signature).
DDIM_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "trained_betas": None,
    "steps_offset": 0,
    "set_alpha_to_one": True,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def trained_schedule() -> dict:
    """The CompVis training and DDIM-sampling values, every recorded key stated."""
    return {**compvis_schedule(), "trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "leading"}


def resolve_schedule(family: str, file_config: dict, mode: str) -> tuple[dict, str]:
    """The scheduler config to build the training and DDIM schedulers from, and where it came from."""
    if mode not in MODES:
        raise ConfigError("diffusion.scheduler", f"{mode!r}: expected one of {MODES}")
    if mode == "trained":
        return trained_schedule(), TRAINED_SOURCE[family]
    return dict(file_config), FILE_SOURCE


def schedule_record(config: dict, source: str) -> dict:
    """The values that decide the schedule, with diffusers' defaults filled in, and their source."""
    record = {name: config.get(name, DDIM_DEFAULTS[name]) for name in _RECORDED}
    record["source"] = source
    return record


def file_differences(file_config: dict, used: dict) -> dict[str, str]:
    """Each recorded key whose value in use is not what diffusers reads from the file: key -> what
    the file gives (``"linear"``, or ``"omitted, diffusers' default True"``)."""
    as_read, in_use = schedule_record(file_config, ""), schedule_record(used, "")
    return {
        name: str(file_config[name]) if name in file_config else f"omitted, diffusers' default {as_read[name]}"
        for name in _RECORDED
        if as_read[name] != in_use[name]
    }


def omitted_keys(file_config: dict) -> list[str]:
    """The recorded keys the file leaves out (``file`` mode fills them with diffusers' defaults)."""
    return [name for name in _RECORDED if name not in file_config]
