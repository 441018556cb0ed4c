"""Stage 1's trainer: one anomaly embedding with a mask-weighted textual-inversion loss (Eq. 5-6).

The backbone is frozen. A placeholder token is added to its tokenizer (its embedding row
initialised from ``init_word``) and only that one vector is optimised. The vector is a
separate fp32 ``nn.Parameter``; a forward hook on the text encoder's input-embedding module
splices it into every position holding the placeholder id. No weight of the backbone is
ever written during training (the embedding matrix does not even require a gradient), so
every other parameter, including every other embedding row, stays bit-identical. At the
end the learned vector is written into the placeholder's row.

Per step (``EmbeddingTrainer.step``), with ``batch_size`` samples:

- support items are visited in shuffled epochs (sample number ``s`` uses the
  permutation of epoch ``s // n``, derived from ``(seed, epoch)`` alone), so every support
  image is used equally often and the order does not depend on any generator state;
- each sample is flipped horizontally with probability ``flip_p`` (image and mask
  together) and gets a random prompt template formatted with the placeholder;
- latents are a fresh sample of the VAE's KL posterior (posterior mean/std of each support
  image in each needed orientation are computed once, in fp32, before training; a VQ
  autoencoder gives deterministic latents);
- noise ``eps ~ N(0, 1)``, ``t ~ U{0, .., T-1}``, ``z_t = add_noise(z_0, eps, t)``;
- the loss is ``mean(M * (target - pred)^2)`` over all latent positions and channels,
  where ``M`` is the mask bilinearly resized to the latent size with every value > 0 set
  to 1 (the authors' code); ``mask_loss: false`` gives the plain MSE. The target is
  ``eps`` for epsilon-prediction models and the velocity for v-prediction models.

All randomness comes from two CPU ``torch.Generator`` s seeded from ``spec['seed']``
("data": flips, templates; "noise": KL sample, eps, t), so a run is reproducible on any
device and a resumed run continues the exact random stream.

No per-step host sync: ``step_async()`` keeps the loss on the device; ``flush_losses()``
copies the pending values in one transfer (``anogen.embedding.train.learn_embedding``
flushes at reports, checkpoints and every ``SYNC_EVERY`` steps, and checks finiteness there).
The static-input and CUDA-graph speed paths are in ``anogen.embedding.cuda_graph``; K concepts
on one backbone in ``anogen.embedding.grouped``.

Memory switch (``embedding.gradient_checkpointing``, runtime-only like ``cuda_graph``):
diffusers' ``enable_gradient_checkpointing`` on the UNet, whose blocks then keep only their
inputs and run once more in the backward pass. At full size and batch 4 a step then needs
2.3x less memory beyond the weights, at 1.2x the time (``bench/bench_ldm_memory.py``, on CPU).
The text encoder is left as it is (transformers' CLIP layers checkpoint only in training
mode, and the frozen encoder runs in eval mode). The function is the same, so losses and
vectors equal the plain path within float round-off (tested on CPU; bit for bit in that
benchmark).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anogen.checkpoint import capture_rng, restore_rng
from anogen.devices import autocast, autocast_dtype, grad_scaler, is_cuda
from anogen.embedding.cuda_graph import CudaGraphSteps
from anogen.errors import ConfigError

log = logging.getLogger("anogen.embedding")

SPEC_KEYS = (
    "placeholder_token",
    "init_word",
    "steps",
    "batch_size",
    "learning_rate",
    "scale_lr",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "mask_loss",
    "flip_p",
    "resolution",
    "seed",
    "templates",
    "mixed_precision",
)


# ----------------------------------------------------------------------------- loss


def masked_noise_loss(
    target: torch.Tensor, pred: torch.Tensor, mask_latent: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 6 as the authors coded it: ``mean(mask * (target - pred)^2)`` over ALL elements.

    ``target``/``pred``: [B, C, h, w]; ``mask_latent``: [B, 1, h, w] (or broadcastable) with
    values in {0, 1}, or ``None`` for the plain MSE. Computed in float32. Positions outside
    the mask contribute exactly zero (value and gradient); the mean still divides by the
    number of all elements, so the loss scale depends on the mask area, as in the paper's code.
    """
    sq = (target.float() - pred.float()).pow(2)
    if mask_latent is not None:
        sq = sq * mask_latent.to(sq.dtype)
    return sq.mean()


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask [N, 1, H, W] in [0, 1] -> latent mask: bilinear resize, every value > 0 -> 1."""
    resized = F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)
    return (resized > 0).float()


# ----------------------------------------------------------------------------- data


def _check_items(support_items: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    items = list(support_items)
    if not items:
        raise ValueError("the support set is empty: at least one (image, mask) pair is needed")
    out = []
    for i, pair in enumerate(items):
        image, mask = (np.asarray(a) for a in pair)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"support item {i}: image must be uint8 HxWx3, got {image.dtype} {image.shape}")
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise ValueError(f"support item {i}: mask {mask.shape} does not match image {image.shape[:2]}")
        out.append((image, (mask > 0).astype(np.uint8)))
    return out


def prepare_pixels(
    image: np.ndarray, mask: np.ndarray, resolution: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image/mask -> ([1,3,R,R] in [-1,1], [1,1,R,R] in {0,1}).

    The image is resized bicubically; the mask bilinearly (antialiased when shrinking)
    with every value > 0 kept, so a thin defect never vanishes. ``flip`` mirrors both.
    """
    img = Image.fromarray(image).resize((resolution, resolution), Image.Resampling.BICUBIC)
    msk = Image.fromarray(mask * 255).resize((resolution, resolution), Image.Resampling.BILINEAR)
    img_a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    msk_a = (np.asarray(msk) > 0).astype(np.float32)
    if flip:
        img_a, msk_a = img_a[:, ::-1], msk_a[:, ::-1]
    pixels = torch.from_numpy(np.ascontiguousarray(img_a)).permute(2, 0, 1).unsqueeze(0)
    mask_t = torch.from_numpy(np.ascontiguousarray(msk_a))[None, None]
    return pixels, mask_t


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed % (1 << 64), epoch]).permutation(n)


def support_indices(seed: int, start: int, count: int, n: int) -> list[int]:
    """Support items for samples ``start .. start+count-1``: shuffled epochs, stateless."""
    out: list[int] = []
    cache: dict[int, np.ndarray] = {}
    for s in range(start, start + count):
        epoch = s // n
        if epoch not in cache:
            cache[epoch] = _epoch_permutation(seed, epoch, n)
        out.append(int(cache[epoch][s % n]))
    return out


# ----------------------------------------------------------------------------- trainer


def effective_learning_rate(spec: dict, n_devices: int = 1) -> float:
    lr = float(spec["learning_rate"])
    if spec["scale_lr"]:
        lr *= int(spec["batch_size"]) * int(n_devices)
    return lr


def _resolution(backbone, spec: dict) -> int:
    res = spec["resolution"] or backbone.resolution  # null: the model's native resolution
    unet_levels = len(backbone.unet.config.block_out_channels) - 1
    multiple = backbone.vae_scale_factor * 2**unet_levels
    if int(res) % multiple:
        raise ConfigError(
            "embedding.resolution",
            f"{res} px is not a multiple of {multiple} (VAE factor {backbone.vae_scale_factor} x "
            f"{2**unet_levels} UNet downsamplings of {backbone.model})",
        )
    return int(res)


def set_gradient_checkpointing(backbone, enabled: bool) -> None:
    """Turn the UNet's gradient checkpointing on or off (the backbone may be reused by another trainer)."""
    if enabled:
        backbone.unet.enable_gradient_checkpointing()
    else:
        backbone.unet.disable_gradient_checkpointing()


class EmbeddingTrainer(CudaGraphSteps):
    """One learnable placeholder vector on a frozen backbone; ``step()`` is one optimiser step.

    Used by ``learn_embedding`` and by ``bench/bench_embedding.py`` (same code path).
    """

    def __init__(
        self,
        backbone,
        support_items: Sequence,
        spec: dict,
        *,
        device: str = "cpu",
        cuda_graph: bool,
        n_devices: int = 1,
        static_inputs: bool = False,
        gradient_checkpointing: bool,
        _shared_token_id: int | None = None,
    ):
        """``spec``: the embedding spec the plan hashed (``Plan.spec("embedding", ...)``; its
        ``mixed_precision`` decides autocast). ``cuda_graph`` and ``static_inputs`` are speed
        switches (equal results; a CUDA graph within float round-off, see the module notes);
        ``gradient_checkpointing`` is the memory switch (same results within float round-off)."""
        missing = [k for k in SPEC_KEYS if k not in spec]
        if missing:
            raise ConfigError("embedding", f"missing keys {missing} (the config schema fills defaults)")
        self.backbone, self.spec, self.device = backbone, spec, device
        self.items = _check_items(support_items)
        self._read_spec(spec, n_devices)
        self._init_scheduler()
        self._init_precision(spec["mixed_precision"], cuda_graph, static_inputs)
        backbone.to(device)
        backbone.freeze()
        set_gradient_checkpointing(backbone, gradient_checkpointing)
        self._init_vector(_shared_token_id)
        self._tokenize_templates()
        self._prepare_support()
        if self.static_inputs:
            self._prepare_static()
        self._init_optimizer()
        self.step_count = 0
        self._losses: list[float] = []
        self._pending: list[torch.Tensor] = []
        self._graph = None
        self._graph_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction steps
    def _read_spec(self, spec: dict, n_devices: int) -> None:
        self.seed = int(spec["seed"])
        self.batch_size = int(spec["batch_size"])
        self.flip_p = float(spec["flip_p"])
        self.mask_loss = bool(spec["mask_loss"])
        self.templates = list(spec["templates"])
        self.token = str(spec["placeholder_token"])
        self.resolution = _resolution(self.backbone, spec)
        self.effective_lr = effective_learning_rate(spec, n_devices)

    def _init_scheduler(self) -> None:
        """The model's training noise schedule; only epsilon and v targets are supported."""
        self.scheduler = self.backbone.training_scheduler()
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                "diffusion.model",
                f"{self.backbone.model} predicts {self.prediction_type!r}; stage 1 supports "
                "'epsilon' and 'v_prediction' models",
            )
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

    def _init_precision(self, mixed_precision: str, cuda_graph: bool, static_inputs: bool) -> None:
        """Autocast as ``anogen.devices`` decides it (the master vector is always fp32)."""
        device = self.device
        self.mixed_precision = mixed_precision
        self.autocast_dtype = autocast_dtype(mixed_precision, device)
        self.autocast_enabled = self.autocast_dtype is not None
        self.grad_scaler = grad_scaler(mixed_precision, device)
        self.cuda_graph = bool(cuda_graph) and is_cuda(device) and self.grad_scaler is None
        if cuda_graph and not self.cuda_graph:
            log.warning("embedding.cuda_graph needs CUDA without fp16 loss scaling; using the eager path")
        self.static_inputs = bool(static_inputs) or self.cuda_graph

    def _init_vector(self, shared_token_id: int | None) -> None:
        """Add the placeholder token; its fp32 vector is spliced in by a forward hook."""
        backbone = self.backbone
        if shared_token_id is None:
            self.token_id = backbone.add_placeholder_token(self.token, self.spec["init_word"])
        else:  # GroupedEmbeddingTrainer added the token and splices every concept's vector itself
            self.token_id = int(shared_token_id)
        emb = backbone.input_embeddings()
        emb.weight.requires_grad_(False)
        self.vector = torch.nn.Parameter(emb.weight[self.token_id].detach().to(self.device, torch.float32).clone())
        self._hook = emb.register_forward_hook(self._splice) if shared_token_id is None else None

    def _tokenize_templates(self) -> None:
        self.template_ids = self.backbone.tokenize([t.format(self.token) for t in self.templates])
        for t, ids in zip(self.templates, self.template_ids):
            if not bool((ids == self.token_id).any()):
                raise ConfigError(
                    "embedding.templates",
                    f"{t!r} formatted with {self.token!r} loses the placeholder token "
                    f"(truncated at {self.backbone.max_length} tokens?)",
                )

    def _init_optimizer(self) -> None:
        """AdamW on the one vector; generators for the data and noise draws, seeded from the spec."""
        spec = self.spec
        self.optimizer = torch.optim.AdamW(
            [self.vector],
            lr=self.effective_lr,
            betas=(float(spec["adam_beta1"]), float(spec["adam_beta2"])),
            eps=float(spec["adam_epsilon"]),
            weight_decay=float(spec["weight_decay"]),
            **({"capturable": True} if self.cuda_graph else {}),
        )
        self.generators = {
            "data": torch.Generator().manual_seed(self.seed % (1 << 63)),
            "noise": torch.Generator().manual_seed((self.seed + 1) % (1 << 63)),
        }

    @property
    def losses(self) -> list[float]:
        """Loss of every step so far (syncs pending device values first)."""
        self.flush_losses()
        return self._losses

    @losses.setter
    def losses(self, values) -> None:
        self._pending = []
        self._losses = list(values)

    def flush_losses(self) -> list[float]:
        """Copy the losses still on the device to the host in one transfer; return them."""
        if not self._pending:
            return []
        values = torch.stack(self._pending).cpu().tolist()
        self._pending = []
        self._losses.extend(values)
        return values

    # ------------------------------------------------------------------ setup
    def _splice(self, module, args, output):
        ids = args[0]
        where = (ids == self.token_id).unsqueeze(-1)
        return torch.where(where, self.vector.to(output.dtype), output)

    @torch.no_grad()
    def _prepare_support(self) -> None:
        """Posterior (mean, std) and latent mask of every support item in each needed orientation."""
        flips = [f for f, needed in ((False, self.flip_p < 1.0), (True, self.flip_p > 0.0)) if needed]
        bb = self.backbone
        self.posterior: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.masks: dict[tuple[int, bool], torch.Tensor] = {}
        mask_area = []
        for i, (image, mask) in enumerate(self.items):
            for flip in flips:
                pixels, mask_px = prepare_pixels(image, mask, self.resolution, flip)
                out = bb.vae.encode(pixels.to(self.device))
                if hasattr(out, "latent_dist"):
                    mean, std = out.latent_dist.mean, out.latent_dist.std
                else:  # VQModel: deterministic latents
                    mean = out.latents
                    std = torch.zeros_like(mean)
                self.posterior[(i, flip)] = (mean.float(), std.float())
                lm = latent_mask(mask_px, tuple(mean.shape[-2:]))
                self.masks[(i, flip)] = lm.to(self.device)
                mask_area.append(float(lm.mean()))
        self.flips_needed = flips
        self.latent_shape = tuple(next(iter(self.posterior.values()))[0].shape[1:])
        if self.mask_loss and min(mask_area) == 0.0:
            log.warning("a support mask is empty at latent size: that sample contributes zero loss")

    def close(self) -> None:
        """Remove the hook and write the learned vector into the placeholder's embedding row."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        with torch.no_grad():
            emb = self.backbone.input_embeddings()
            emb.weight[self.token_id] = self.vector.detach().to(emb.weight)

    # ------------------------------------------------------------------ one step
    def _draw(self) -> dict[str, Any]:
        """This step's random draws on the CPU, in the documented order (advances the generators)."""
        b, n = self.batch_size, len(self.items)
        g_data, g_noise = self.generators["data"], self.generators["noise"]
        idx = support_indices(self.seed, self.step_count * b, b, n)
        flips = torch.rand(b, generator=g_data) < self.flip_p
        tmpl = torch.randint(len(self.templates), (b,), generator=g_data)
        kl = torch.randn((b, *self.latent_shape), generator=g_noise)
        noise = torch.randn((b, *self.latent_shape), generator=g_noise)
        timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=g_noise)
        return {"idx": idx, "flips": flips, "tmpl": tmpl, "kl": kl, "noise": noise, "timesteps": timesteps}

    def sample_batch(self) -> dict[str, Any]:
        """Draw the next batch from the explicit generators (advances them)."""
        d = self._draw()
        if self.static_inputs:
            self._fill_static(d)
            return self._static_batch()
        keys = list(zip(d["idx"], d["flips"].tolist()))
        mean = torch.cat([self.posterior[k][0] for k in keys])
        std = torch.cat([self.posterior[k][1] for k in keys])
        latents = (mean + std * d["kl"].to(self.device)) * self.backbone.scaling_factor
        return {
            "latents": latents,
            "noise": d["noise"].to(self.device),
            "timesteps": d["timesteps"].to(self.device),
            "input_ids": self.template_ids[d["tmpl"]],
            "mask": torch.cat([self.masks[k] for k in keys]) if self.mask_loss else None,
        }

    def _autocast(self):
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        if self.cuda_graph:  # a graph must not capture autocast's weight-cast cache
            return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)
        return autocast(self.mixed_precision, self.device)

    def loss_on(self, batch: dict[str, Any]) -> torch.Tensor:
        """Forward pass: loss of ``batch`` as a differentiable function of ``self.vector``."""
        latents, noise, t = batch["latents"], batch["noise"], batch["timesteps"]
        noisy = self.scheduler.add_noise(latents, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, t)
        with self._autocast():
            text = self.backbone.encode_text(batch["input_ids"])
            pred = self.backbone.unet(noisy, t, encoder_hidden_states=text).sample
        return masked_noise_loss(target, pred, batch["mask"])

    def _optimise(self, batch: dict[str, Any]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_on(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def step_async(self) -> torch.Tensor:
        """One optimiser step; returns the loss as a device tensor (no host sync)."""
        if self.static_inputs:
            loss = self._static_step()
        else:
            loss = self._optimise(self.sample_batch())
        self.step_count += 1
        self._pending.append(loss)
        return loss

    def step(self) -> float:
        """One optimiser step; returns the loss as a float (syncs the host)."""
        self.step_async()
        return self.flush_losses()[-1]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "step": self.step_count,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "rng": capture_rng(self.generators),
            "token_id": self.token_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["token_id"]) != self.token_id or state["vector"].shape != self.vector.shape:
            raise ValueError("checkpoint belongs to a different model or token")
        if self._graph is not None:
            raise RuntimeError("load_state_dict after a CUDA graph was captured")
        with torch.no_grad():
            self.vector.copy_(state["vector"].to(self.vector))
        self.optimizer.load_state_dict(state["optimizer"])
        self._optimizer_for_this_run()
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.step_count = int(state["step"])
        self._graph_start = self.step_count
        self.losses = [float(v) for v in state["losses"].tolist()]
        restore_rng(state["rng"], self.generators)
