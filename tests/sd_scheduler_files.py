"""Every ``scheduler/scheduler_config.json`` published on a branch of the Stable Diffusion 1.x
repositories, byte for byte, with where it was found.

Source: the hub repositories' own git history, as mirrored on GitHub with their commit ids (a hub
commit id is a git commit id): github.com/wswplay/stable-diffusion-v1-4 (CompVis/stable-diffusion-v1-4:
branches main, fp16, bf16, flax, non-ema, onnx) and github.com/wswplay/stable-diffusion-v1-5 (the same
history in github.com/HDRJ-One/runwayml-stable-diffusion-v1-5 and bigdataai-lab/stable-diffusion-v1-5:
runwayml/stable-diffusion-v1-5, the same six branches), read 2026-12 with
``git log --all -- scheduler/scheduler_config.json`` and ``git cat-file blob``. Each text is recorded
with the commit that wrote it and its git blob id, which ``tests/test_sd_schedule.py`` recomputes from
the text (so a changed byte fails). The branch heads of today: v1-4 main and non-ema
``V1_4_MAIN_2022_11_03``, bf16 and flax ``V1_4_MAIN_2022_10_07`` (the 230-byte file), fp16
``V1_4_FP16_2022_12_12``, onnx ``V1_4_ONNX_2022_09_21``; v1-5 main and non-ema
``V1_5_MAIN_2022_11_03``, bf16 and flax ``V1_5_FLAX_2022_10_20``, fp16 ``V1_4_FP16_2022_12_12``
(the same bytes), onnx ``V1_5_MAIN_2022_10_20``.

Left out: texts only proposed in unmerged pull requests (``refs/pr/*``: later diffusers' full dumps,
DPMSolverMultistepScheduler files, one that sets ``clip_sample: true`` and ``set_alpha_to_one: true``).
Not found: the history of stable-diffusion-v1-5/stable-diffusion-v1-5 (the 2024 re-upload of v1-5),
whose file could not be read here; nothing below is reconstructed.
"""

from __future__ import annotations

from typing import NamedTuple


class PublishedFile(NamedTuple):
    name: str
    repo: str  # on the Hugging Face hub
    commit: str  # the hub commit that wrote this text
    blob: str  # git blob id of the text (sha1 of "blob <size>\0" + bytes)
    published: str  # the branches it was on, and when
    text: str


V1_4_MAIN_2022_08 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.2.2",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "skip_prk_steps": true
}
"""

V1_4_FP16_2022_08 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.2.3",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "skip_prk_steps": true
}
"""

V1_4_ONNX_2022_09_08 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.3.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "skip_prk_steps": true
}
"""

V1_4_ONNX_2022_09_21 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.4.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
"""

V1_4_MAIN_2022_10_07 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.2.2",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "skip_prk_steps": true,
  "steps_offset": 1
}
"""

V1_4_MAIN_2022_10_31 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.7.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
"""

V1_4_MAIN_2022_11_03 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.7.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}
"""

V1_4_FP16_2022_12_12_SLIP = """\
{
  "_class_name": "DDIMScheduler",
  "_diffusers_version": "0.8.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "prediction_type": "v_prediction",
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}"""

V1_4_FP16_2022_12_12 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}"""

V1_5_MAIN_2022_10_20 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
"""

V1_5_FLAX_2022_10_20 = """\
{
  "_class_name": "FlaxPNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null
}
"""

V1_5_MAIN_2022_11_03 = """\
{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}
"""

PUBLISHED = (
    PublishedFile(
        "V1_4_MAIN_2022_08",
        "CompVis/stable-diffusion-v1-4",
        "4d5006d3bac581bad4474213863450187137f58e",
        "93561f30a14e2a26eb3bf2ce3da74a52b36e90a3",
        "main from 2022-08-20 to 2022-10-07 (the first diffusers upload)",
        V1_4_MAIN_2022_08,
    ),
    PublishedFile(
        "V1_4_FP16_2022_08",
        "CompVis/stable-diffusion-v1-4",
        "a304b1ab1b59dd6c3ba9c40705c29c6de4144096",
        "1e4035afb69595bc715c9547662b91daeda531aa",
        "fp16 from 2022-08-22 to 2022-12-12",
        V1_4_FP16_2022_08,
    ),
    PublishedFile(
        "V1_4_ONNX_2022_09_08",
        "CompVis/stable-diffusion-v1-4",
        "3b6228db95406c454e8642f785588ba45a6057b4",
        "281e8410d083e0a04806f511ba41a776581de993",
        "onnx from 2022-09-08 to 2022-09-21",
        V1_4_ONNX_2022_09_08,
    ),
    PublishedFile(
        "V1_4_ONNX_2022_09_21",
        "CompVis/stable-diffusion-v1-4",
        "0050854a4556632fe275ed384d277830d86b3bb6",
        "5bd71d89282c94a5231d616a899ab47716881607",
        "onnx from 2022-09-21 (still its head)",
        V1_4_ONNX_2022_09_21,
    ),
    PublishedFile(
        "V1_4_MAIN_2022_10_07",
        "CompVis/stable-diffusion-v1-4",
        "52b46db8e14744892bb7ee014fc1cbb8c408643f",
        "773de8680d61a20ed2354925d54cf7b07a0f12d0",
        "main from 2022-10-07 to 2022-10-31; bf16 and flax (still their heads)",
        V1_4_MAIN_2022_10_07,
    ),
    PublishedFile(
        "V1_4_MAIN_2022_10_31",
        "CompVis/stable-diffusion-v1-4",
        "ccf073494fc86e618d75b12536993a85174803c2",
        "a798036963dee21d07d99184250cc0f9fe8f0f15",
        "main from 2022-10-31 to 2022-11-03",
        V1_4_MAIN_2022_10_31,
    ),
    PublishedFile(
        "V1_4_MAIN_2022_11_03",
        "CompVis/stable-diffusion-v1-4",
        "c47dae76a67f9470c56695af441b28f8a16f7056",
        "1a3e6d1a17dd6e722b4d4297023f979170219680",
        "main from 2022-11-03 (still its head, as is non-ema's)",
        V1_4_MAIN_2022_11_03,
    ),
    PublishedFile(
        "V1_4_FP16_2022_12_12_SLIP",
        "CompVis/stable-diffusion-v1-4",
        "37c6ce1573249b406f2d16fd77b77af51c713ebe",
        "99fcb2016900c8dc328827f3f9f51f5b6e1b5d3d",
        "fp16 for 39 seconds on 2022-12-12 (a Stable Diffusion 2 file, replaced by the next commit)",
        V1_4_FP16_2022_12_12_SLIP,
    ),
    PublishedFile(
        "V1_4_FP16_2022_12_12",
        "CompVis/stable-diffusion-v1-4",
        "2880f2ca379f41b0226444936bb7a6766a227587",
        "0b38643e5b34e2a9936c8a3d423df72add6edb35",
        "fp16 from 2022-12-12 (still its head); the same bytes as v1-5's fp16 head (ded79e2, 2022-12-12)",
        V1_4_FP16_2022_12_12,
    ),
    PublishedFile(
        "V1_5_MAIN_2022_10_20",
        "runwayml/stable-diffusion-v1-5",
        "7621c1d34cb8951ae5277a5d1c07c431e46abb48",
        "9b8e2f78682dc088cfd08515e5d3a0a7409d3aac",
        "main from 2022-10-20 to 2022-11-03; onnx (still its head)",
        V1_5_MAIN_2022_10_20,
    ),
    PublishedFile(
        "V1_5_FLAX_2022_10_20",
        "runwayml/stable-diffusion-v1-5",
        "6a72b78fe7d3c8f9e9c0bb554fef5753d274f7b1",
        "54c4a8a9732bce5ea6104de97c9a9d737145600f",
        "bf16 and flax from 2022-10-20 (still their heads)",
        V1_5_FLAX_2022_10_20,
    ),
    PublishedFile(
        "V1_5_MAIN_2022_11_03",
        "runwayml/stable-diffusion-v1-5",
        "ea101a9855575cc2fe60ef17b805a38f392bfc1f",
        "82d05b0e688d7ea94675678646c427907419346e",
        "main from 2022-11-03 (still its head, as is non-ema's)",
        V1_5_MAIN_2022_11_03,
    ),
)
