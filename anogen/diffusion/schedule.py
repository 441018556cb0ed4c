"""The noise schedule a backbone is trained and sampled with (``diffusion.scheduler``).

CompVis/ldm-text2im-large-256 was trained by the CompVis latent-diffusion code, which the AnoGen
authors also ran. That code (``ldm/modules/diffusionmodules/util.py``):
- ``make_beta_schedule("linear", 1000, 0.00085, 0.012)`` is ``linspace(sqrt(0.00085), sqrt(0.012),
  1000) ** 2``: linear in sqrt(beta), which diffusers calls ``scaled_linear``;
- ``make_ddim_timesteps`` takes ``range(0, 1000, 1000 // S)`` and adds 1 (diffusers:
  ``steps_offset: 1`` with ``timestep_spacing: leading``);
- ``make_ddim_sampling_parameters`` takes the last step's previous alpha from ``alphas_cumprod[0]``
  (diffusers: ``set_alpha_to_one: false``).
The repository's diffusers scheduler file says ``beta_schedule: linear`` and has neither of the
other two keys. diffusers reads ``linear`` as linear in beta, so the file as published gives a
signal-to-noise ratio of 0.64x the trained one at t = 250, 0.50x at 500 and 0.34x at 999.

So for the ``ldm`` family, ``diffusion.scheduler: trained`` (the default) uses the values above
whatever the file says; ``file`` uses the file as published. Stable Diffusion 1.x files already
say ``scaled_linear``, ``steps_offset: 1``, ``set_alpha_to_one: false`` (what SD was trained
with), so ``sd`` always uses its file. The values used go into every stage-1 and stage-2
manifest (:func:`schedule_record`).
"""

from __future__ import annotations

from anogen.diffusion.architectures import scheduler_config as ldm_trained_schedule
from anogen.errors import ConfigError

MODES = ("trained", "file")

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
# diffusers' DDIMScheduler defaults for the recorded keys a file may leave out.
_DDIM_DEFAULTS = {
    "trained_betas": None,
    "steps_offset": 0,
    "set_alpha_to_one": True,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def resolve_schedule(family: str, file_config: dict, mode: str) -> tuple[dict, str]:
    """The scheduler config to build the training and DDIM schedulers from, and where it came from."""
    if mode not in MODES:
        raise ConfigError("diffusion.scheduler", f"{mode!r}: expected one of {MODES}")
    if family == "ldm" and mode == "trained":
        return ldm_trained_schedule(), "trained: the CompVis LDM training code's values"
    return dict(file_config), "file: scheduler_config.json as published"


def schedule_record(config: dict, source: str) -> dict:
    """The values that decide the schedule, with diffusers' defaults filled in, and their source."""
    record = {name: config.get(name, _DDIM_DEFAULTS.get(name)) for name in _RECORDED}
    record["source"] = source
    return record
