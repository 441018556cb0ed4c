"""Blended latent diffusion inside a box (paper Eq. 7) with DDIM and classifier-free guidance.

Notation: ``t_1 > t_2 > ... > t_S`` are the DDIM timesteps (``scheduler.timesteps``),
``z_n = E(I_n)`` the latent of the normal image, ``M`` the box mask at latent size.

- ``z_n`` is the **mean** of the VAE posterior (``latent_dist.mean``, times the scaling
  factor), not a sample: the background then does not depend on the sample's seed, every
  sample of one normal image shares the same reference latent, and ``paste_back=False``
  reproduces the normal image as closely as the autoencoder can. (For a VQ autoencoder the
  pre-quantisation latent is used.)
- Initial latent: ``eps ~ N(0, I)`` from the image's generator;
  ``z_{t_1} = q(z_n, t_1, eps) * (1 - M) + eps * M`` -- Eq. 7 at the first timestep with
  the same noise on both sides (inside the box this is pure noise, as in plain sampling).
- Step ``i`` (timestep ``t_i``): the UNet predicts the noise (classifier-free guidance with
  the empty prompt when ``guidance_scale > 1``, diffusers' convention; at or below 1 the
  conditional prediction alone, without an unconditional pass), the DDIM step gives ``z'`` at ``s_i = t_i - T // S`` (the scheduler's own "previous
  timestep"; equal to ``t_{i+1}``), then
      ``z_{s_i} = q(z_n, s_i, eps_i) * (1 - M) + z' * M``      for i < S,
      ``z_final = z_n * (1 - M) + z' * M``                       for i = S (noise level 0),
  with ``q(z, s, eps) = sqrt(abar_s) z + sqrt(1 - abar_s) eps`` and fresh ``eps_i`` per step.
  Outside the box the final latent is therefore exactly ``z_n``.
- Random draws per image, all from that image's own CPU ``torch.Generator``, in this order:
  the initial noise; then per step the DDIM variance noise (only when ``eta > 0``) followed
  by the forward noise ``eps_i`` (not drawn at the last step). Noise never depends on the
  other images of the batch, so an image regenerated alone equals its batched version
  (up to float round-off of batched kernels).
- Latent mask: the box mask is area-averaged over each latent cell (VAE factor f x f
  pixels) and thresholded at 0.5; if that leaves a box without any latent cell (a box
  thinner than about half a cell), cells with any overlap are used for that image instead.
- ``paste_back=True`` copies the original pixels outside the pixel box mask after decoding,
  so the uint8 output equals the normal image outside the box exactly.
- Autocast (bf16/fp16) wraps only the UNet and only on CUDA; latent arithmetic, the VAE and
  the scheduler run in float32. ``prepare_for_inference`` additionally stores the frozen
  UNet's weights in that dtype: autocast caches its weight casts only for parameters that
  require grad, so frozen float32 weights would be re-cast at every op of every step.
- Speed switches of ``prepare_for_inference`` (config ``generation.channels_last`` /
  ``generation.compile``; runtime-only, not in the content key, like ``batch_size``): the
  UNet and VAE in channels_last memory format, and the UNet wrapped in ``torch.compile``
  (timesteps are then passed as 0-d tensors so one graph serves every step). Both compute
  the same function; outputs agree within float round-off (tested on CPU). Attention
  already runs through PyTorch's fused SDPA (diffusers' default ``AttnProcessor2_0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anogen.devices import autocast, autocast_dtype


def prepare_for_inference(
    backbone,
    mixed_precision: str,
    *,
    channels_last: bool,
    compile: bool,
    compile_backend: str = "inductor",
):
    """On CUDA with mixed precision, keep the UNet's weights in the autocast dtype (see above);
    optionally channels_last weights and a compiled UNet (speed only, see module doc)."""
    dtype = autocast_dtype(mixed_precision, backbone.device)
    if dtype is not None:
        backbone.unet.to(dtype)
    if channels_last:
        backbone.unet.to(memory_format=torch.channels_last)
        backbone.vae.to(memory_format=torch.channels_last)
    if compile and not getattr(backbone, "unet_compiled", False):
        backbone.unet = torch.compile(backbone.unet, backend=compile_backend, dynamic=False)
        backbone.unet_compiled = True
    return backbone


def uses_guidance(guidance_scale: float) -> bool:
    """Classifier-free guidance is on only above 1 (diffusers' ``guidance_scale > 1``).

    At 1 the guided prediction equals the conditional one; below 1 there is no unconditional
    pass either, so every ``guidance_scale <= 1`` samples exactly as ``guidance_scale = 1``.
    """
    return guidance_scale > 1.0


def encode_mean(backbone, pixels01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] NCHW -> scaled latents: the posterior mean (deterministic)."""
    out = backbone.vae.encode((pixels01 * 2 - 1).to(backbone.device, torch.float32))
    if hasattr(out, "latent_dist"):
        latents = out.latent_dist.mean
    else:  # VQModel: pre-quantisation latents; decode() quantises
        latents = out.latents
    return latents.float() * backbone.scaling_factor


def latent_mask(box_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel box masks N,1,H,W in {0,1} -> latent masks N,1,h,w in {0,1} (see module doc)."""
    m = box_masks.float()
    frac = F.adaptive_avg_pool2d(m, size)
    half = (frac >= 0.5).float()
    anyo = (frac > 0).float()
    empty = half.flatten(1).sum(1) == 0
    return torch.where(empty[:, None, None, None], anyo, half)


def _expand(embeds: torch.Tensor, n: int) -> torch.Tensor:
    if embeds.dim() == 2:
        embeds = embeds[None]
    if embeds.shape[0] == n:
        return embeds
    if embeds.shape[0] != 1:
        raise ValueError(f"text embeddings batch {embeds.shape[0]} matches neither 1 nor {n}")
    return embeds.expand(n, *embeds.shape[1:])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float NCHW in [0, 1] -> uint8 N,H,W,3 (round to nearest)."""
    arr = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 N,H,W,3 (or list of HxWx3) -> float32 NCHW in [0, 1]."""
    arr = np.stack(list(images)) if isinstance(images, list) else np.asarray(images)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------- the steps of inpaint


def _check_inputs(backbone, images: torch.Tensor, box_masks: torch.Tensor, generators: list, steps: int) -> None:
    n, res = images.shape[0], backbone.resolution
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (res, res):
        raise ValueError(f"images must be N,3,{res},{res}, got {tuple(images.shape)}")
    if tuple(box_masks.shape) != (n, 1, res, res):
        raise ValueError(f"box_masks must be {n},1,{res},{res}, got {tuple(box_masks.shape)}")
    if len(generators) != n:
        raise ValueError(f"need one generator per image: {len(generators)} for {n} images")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


@dataclass
class _Schedule:
    """The DDIM scheduler set to ``steps`` and the forward process ``q`` on its alphas."""

    scheduler: Any
    timesteps: list[int]
    ratio: int  # T // S: from a timestep to the scheduler's "previous timestep"
    abar: torch.Tensor  # alphas_cumprod, float64

    @classmethod
    def ddim(cls, backbone, steps: int) -> _Schedule:
        scheduler = backbone.ddim_scheduler()
        scheduler.set_timesteps(steps)
        ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        return cls(scheduler, [int(t) for t in scheduler.timesteps], ratio, scheduler.alphas_cumprod.to(torch.float64))

    def q(self, z: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        a = self.abar[t]
        return float(a.sqrt()) * z + float((1 - a).sqrt()) * eps


@dataclass
class _Draws:
    """Every random draw of the trajectory, per image in the documented order.

    Made up front on the CPU and copied once: a per-step host-to-device copy would stall the
    host until the GPU has finished the step, serialising kernel launches and execution.
    """

    noise: torch.Tensor  # [draw, image, C, h, w]
    eta: float

    @classmethod
    def make(cls, generators: list, latent_shape: tuple, n_steps: int, eta: float, device) -> _Draws:
        draws = []
        for g in generators:
            seq = [torch.randn(latent_shape, generator=g, dtype=torch.float32)]
            for i in range(n_steps):
                if eta > 0:
                    seq.append(torch.randn(latent_shape, generator=g, dtype=torch.float32))
                if i < n_steps - 1:
                    seq.append(torch.randn(latent_shape, generator=g, dtype=torch.float32))
            draws.append(torch.stack(seq))
        return cls(torch.stack(draws, dim=1).to(device), eta)

    @property
    def initial(self) -> torch.Tensor:
        return self.noise[0]

    def variance(self, i: int) -> torch.Tensor | None:
        """Step ``i``'s DDIM variance noise (None when ``eta == 0``: deterministic DDIM)."""
        return self.noise[1 + i * 2] if self.eta > 0 else None

    def forward(self, i: int) -> torch.Tensor:
        """Step ``i``'s forward noise ``eps_i`` (after its variance noise, if any)."""
        return self.noise[1 + i * 2 + 1] if self.eta > 0 else self.noise[1 + i]


def _device_timesteps(backbone, timesteps: list[int]) -> torch.Tensor | None:
    """For a compiled UNet, all timesteps as one int64 tensor on the device, built once per call
    (it would specialise on a Python int: one recompilation per timestep; and a fresh 0-d tensor
    per UNet call is a host-to-device copy per step). None for an eager UNet, which takes ints."""
    if not getattr(backbone, "unet_compiled", False):
        return None
    return torch.tensor(timesteps, dtype=torch.int64, device=backbone.device)


def _guided_noise(
    backbone, z, t: int, context, guidance_scale: float, mixed_precision: str, t_device=None
) -> torch.Tensor:
    """The UNet's noise prediction at ``t`` (``t_device``: the same as a 0-d device tensor, for a
    compiled UNet), classifier-free guided when ``uses_guidance``."""
    cfg = uses_guidance(guidance_scale)
    model_in = torch.cat([z, z]) if cfg else z
    t_arg = t if t_device is None else t_device
    with autocast(mixed_precision, backbone.device):
        eps_pred = backbone.unet(model_in, t_arg, encoder_hidden_states=context).sample
    eps_pred = eps_pred.float()
    if not cfg:
        return eps_pred
    e_u, e_c = eps_pred.chunk(2)
    return e_u + guidance_scale * (e_c - e_u)


def _reference(schedule: _Schedule, draws: _Draws, z0: torch.Tensor, i: int):
    """(target timestep, forward noise, outside latent) after step ``i``: ``q(z_n, s_i, eps_i)``, or
    ``z_n`` itself after the last step (noise level 0, target None)."""
    if i == len(schedule.timesteps) - 1:
        return None, None, z0
    target_t = schedule.timesteps[i] - schedule.ratio
    if target_t < 0:  # cannot happen with DDIM's spacing; guard the invariant
        raise RuntimeError(f"DDIM previous timestep {target_t} < 0 before the last step")
    fwd_noise = draws.forward(i)
    return target_t, fwd_noise, schedule.q(z0, target_t, fwd_noise)


def _decode(backbone, z: torch.Tensor, images: torch.Tensor, box_masks: torch.Tensor, paste_back: bool):
    out = backbone.decode_latents(z).float().cpu()
    if paste_back:
        out = torch.where(box_masks > 0, out, images.cpu())
    return out


@torch.no_grad()
def inpaint(
    backbone,
    images: torch.Tensor,
    box_masks: torch.Tensor,
    prompt_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor,
    generators: list[torch.Generator],
    steps: int,
    guidance_scale: float,
    *,
    eta: float,
    paste_back: bool,
    mixed_precision: str,
    return_trace: bool = False,
):
    """Generate inside each box of ``images`` (N,3,R,R in [0,1], R = backbone.resolution).

    Returns float32 N,3,R,R in [0, 1] on the CPU, or ``(images, trace)`` when
    ``return_trace``; the trace holds CPU tensors: ``z0``, ``mask`` (latent), ``initial``,
    ``timesteps``, ``alphas_cumprod`` and per step ``t``, ``target_t`` (None = clean, i.e.
    the last step), ``denoised`` (z'), ``reference`` (the outside latent) and ``latent``
    (after blending).
    """
    _check_inputs(backbone, images, box_masks, generators, steps)
    n, device = images.shape[0], backbone.device
    images, box_masks = images.float(), (box_masks > 0).float()
    schedule = _Schedule.ddim(backbone, steps)

    # encode: the normal images' latents, the latent box mask and the initial latent
    z0 = encode_mean(backbone, images)
    m = latent_mask(box_masks, tuple(z0.shape[2:])).to(device)
    keep = 1.0 - m
    draws = _Draws.make(generators, tuple(z0.shape[1:]), len(schedule.timesteps), eta, device)
    z = schedule.q(z0, schedule.timesteps[0], draws.initial) * keep + draws.initial * m

    cond = _expand(prompt_embeds.to(device), n)
    context = torch.cat([_expand(uncond_embeds.to(device), n), cond]) if uses_guidance(guidance_scale) else cond
    trace: dict[str, Any] | None = None
    if return_trace:
        trace = {"z0": z0.cpu(), "mask": m.cpu(), "initial": z.cpu(), "steps": []}
        trace.update(timesteps=schedule.timesteps, alphas_cumprod=schedule.abar.clone())

    t_device = _device_timesteps(backbone, schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        # loop step: guided noise prediction, DDIM step to s_i, then blend (Eq. 7)
        t_arg = None if t_device is None else t_device[i]
        eps_pred = _guided_noise(backbone, z, t, context, guidance_scale, mixed_precision, t_arg)
        step = schedule.scheduler.step(eps_pred, t, z, eta=eta, variance_noise=draws.variance(i))
        denoised = step.prev_sample
        target_t, fwd_noise, reference = _reference(schedule, draws, z0, i)
        z = reference * keep + denoised * m
        if trace is not None:
            trace["steps"].append(
                {
                    "t": t,
                    "target_t": target_t,
                    "denoised": denoised.cpu(),
                    "reference": reference.cpu(),
                    "noise": None if fwd_noise is None else fwd_noise.cpu(),
                    "latent": z.cpu(),
                }
            )

    out = _decode(backbone, z, images, box_masks, paste_back)
    return (out, trace) if trace is not None else out
