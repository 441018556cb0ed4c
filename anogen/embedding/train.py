"""Stage 1: learn one anomaly embedding with a mask-weighted textual-inversion loss (Eq. 5-6).

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

Speed paths (none changes what is computed; ``embedding.cuda_graph`` is runtime-only, not
part of the content key):

- no per-step host sync: ``step_async()`` keeps the loss on the device; ``flush_losses()``
  copies the pending values in one transfer (``learn_embedding`` flushes at reports,
  checkpoints and every ``SYNC_EVERY`` steps, and checks finiteness there);
- static inputs (``static_inputs=True``, implied by ``cuda_graph``): the posterior
  mean/std and latent masks of all (support item, orientation) pairs are stacked once on
  the device; each step the same CPU draws as the plain path are copied into fixed device
  buffers and gathered with ``index_select`` -- the same values, bit for bit, so the
  plain and static paths give identical vectors and losses (tested on CPU);
- CUDA graph (``cuda_graph=True``, CUDA with bf16 or no autocast only): after
  ``GRAPH_WARMUP`` eager static steps, forward + backward + AdamW step are captured once
  and replayed. AdamW then runs with ``capturable=True`` (same update rule, step count
  kept on the device), so results match the eager path within float round-off, not bit
  for bit; fp16 autocast (GradScaler) falls back to the eager static path. A checkpoint
  resumes under either setting (AdamW's ``capturable`` follows the current run, not the
  checkpoint's); the CPU tests stand in for CUDA with ``tests/cuda_standins.py``;
- ``GroupedEmbeddingTrainer``: K (category, defect) concepts on one frozen backbone in
  one process, one forward/backward of batch K x b per step; each concept keeps its own
  vector, AdamW state and generators, and its loss is computed on its own slice, so the
  gradient of each vector is exactly that of training it alone (equal within float
  round-off of the batched kernels; tested on CPU).

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
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anogen.checkpoint import capture_rng, restore_rng
from anogen.devices import autocast, autocast_dtype, grad_scaler, is_cuda
from anogen.errors import ConfigError
from anogen.io import MANIFEST_NAME, atomic_write_text
from anogen.progress import Progress
from anogen.resumable import ResumableJob

log = logging.getLogger("anogen.embedding")

STAGE = "embedding"
EMBEDDING_FILE = "learned_embeds.safetensors"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
SYNC_EVERY = 50  # steps between host syncs of the loss values (learn_embedding)
GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured

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


class EmbeddingTrainer:
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

    def _prepare_static(self) -> None:
        """Stack posterior mean/std and masks of all (item, orientation) pairs; fixed input buffers."""
        n = len(self.items)
        order = [(i, f) for i in range(n) for f in self.flips_needed]  # row = i * nf + orientation
        self._static_mean = torch.cat([self.posterior[k][0] for k in order])
        self._static_std = torch.cat([self.posterior[k][1] for k in order])
        self._static_mask = torch.cat([self.masks[k] for k in order])
        self._template_ids_dev = self.template_ids.to(self.device)
        b, dev = self.batch_size, self.device
        self._buf = {
            "rows": torch.zeros(b, dtype=torch.long, device=dev),
            "tmpl": torch.zeros(b, dtype=torch.long, device=dev),
            "kl": torch.zeros((b, *self.latent_shape), device=dev),
            "noise": torch.zeros((b, *self.latent_shape), device=dev),
            "timesteps": torch.zeros(b, dtype=torch.long, device=dev),
        }

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

    def _fill_static(self, d: dict[str, Any]) -> None:
        """Copy this step's draws into the fixed device buffers (the only host-to-device traffic)."""
        orientation = (
            d["flips"].long() if len(self.flips_needed) == 2 else torch.zeros(self.batch_size, dtype=torch.long)
        )
        rows = torch.tensor(d["idx"], dtype=torch.long) * len(self.flips_needed) + orientation
        for name, value in (
            ("rows", rows),
            ("tmpl", d["tmpl"]),
            ("kl", d["kl"]),
            ("noise", d["noise"]),
            ("timesteps", d["timesteps"]),
        ):
            self._buf[name].copy_(value, non_blocking=True)

    def _static_batch(self) -> dict[str, Any]:
        """The batch as a function of the fixed buffers only (what a CUDA graph captures)."""
        rows = self._buf["rows"]
        mean = self._static_mean.index_select(0, rows)
        std = self._static_std.index_select(0, rows)
        return {
            "latents": (mean + std * self._buf["kl"]) * self.backbone.scaling_factor,
            "noise": self._buf["noise"],
            "timesteps": self._buf["timesteps"],
            "input_ids": self._template_ids_dev.index_select(0, self._buf["tmpl"]),
            "mask": self._static_mask.index_select(0, rows) if self.mask_loss else None,
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

    def _capture_graph(self) -> None:
        """Record forward + backward + AdamW step on the current buffers (executes nothing)."""
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._optimise(self._static_batch())
        self._graph, self._graph_loss = graph, loss

    def step_async(self) -> torch.Tensor:
        """One optimiser step; returns the loss as a device tensor (no host sync)."""
        if not self.static_inputs:
            loss = self._optimise(self.sample_batch())
        else:
            self._fill_static(self._draw())
            if self.cuda_graph and self._graph is None and self.step_count >= self._graph_start + GRAPH_WARMUP:
                try:
                    self._capture_graph()
                except RuntimeError as exc:  # pragma: no cover - GPU only
                    log.warning("CUDA graph capture failed (%s); continuing eagerly", exc)
                    self.cuda_graph = False
            if self._graph is not None:
                self._graph.replay()
                loss = self._graph_loss.clone()
            elif self.cuda_graph:
                side = torch.cuda.Stream()  # eager warm-up off the default stream, as capture needs
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = self._optimise(self._static_batch())
                torch.cuda.current_stream().wait_stream(side)
            else:
                loss = self._optimise(self._static_batch())
        self.step_count += 1
        self._pending.append(loss)
        return loss

    _graph_start = 0  # step at which this process started (warm-up counts from here)

    @property
    def graph_captured(self) -> bool:
        """Whether steps now replay a captured CUDA graph (a failed capture falls back to eager)."""
        return self._graph is not None

    def _optimizer_for_this_run(self) -> None:
        """After loading a checkpoint: AdamW's ``capturable`` and step counters as THIS run needs.

        ``load_state_dict`` takes ``capturable`` from the checkpoint, and ``cuda_graph`` is not
        in the key, so the run that wrote it may have had the other setting: a graph run's
        state resumed eagerly fails on its next step (capturable needs device step counters),
        and an eager run's state resumed with a graph makes the capture fail. The update rule
        is the same either way; only where the step count lives differs.
        """
        capturable = self.cuda_graph
        for group in self.optimizer.param_groups:
            group["capturable"] = capturable
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st and "step" in st:
                    # a fresh AdamW's layout: a float32 scalar on the parameter's device when
                    # capturable, on the CPU otherwise
                    st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(p.device if capturable else "cpu")

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


class GroupedEmbeddingTrainer:
    """K concepts ((category, defect) support sets) trained together on one frozen backbone.

    Every concept is an ``EmbeddingTrainer`` of its own (vector, AdamW state, generators,
    posterior cache) sharing the one placeholder token; per step their batches are
    concatenated into one text-encoder + UNet pass of batch K x b, where one forward hook
    splices concept k's vector into the placeholder positions of rows k*b .. k*b+b-1. The
    loss of concept k is ``masked_noise_loss`` on its own rows; the sum is backpropagated,
    and since no operation of either network mixes samples of a batch (GroupNorm,
    attention and the loss are per sample) the gradient of vector k is exactly the
    gradient of concept k's loss alone. Results equal training each concept alone up to
    float round-off of the batched kernels. Library capability and benchmark: the DAG
    keeps one job per (category, defect) so partial rebuilds stay per artifact.
    """

    def __init__(
        self,
        backbone,
        concepts: Sequence[Sequence],
        spec: dict,
        *,
        device: str = "cpu",
        n_devices: int = 1,
        gradient_checkpointing: bool,
    ):
        """``spec`` as for ``EmbeddingTrainer`` (its ``mixed_precision`` must not mean fp16)."""
        if not concepts:
            raise ValueError("no concept to train")
        backbone.to(device)
        backbone.freeze()
        self.backbone = backbone
        token_id = backbone.add_placeholder_token(str(spec["placeholder_token"]), spec["init_word"])
        self.trainers = [
            EmbeddingTrainer(
                backbone,
                items,
                spec,
                device=device,
                cuda_graph=False,  # one graph per concept cannot share the batched pass
                n_devices=n_devices,
                gradient_checkpointing=gradient_checkpointing,
                _shared_token_id=token_id,
            )
            for items in concepts
        ]
        first = self.trainers[0]
        if first.grad_scaler is not None:
            raise ConfigError("diffusion.mixed_precision", "grouped concepts need bf16 or fp32 (no fp16 loss scaling)")
        self.token_id = token_id
        self._rows: torch.Tensor | None = None
        self._hook = backbone.input_embeddings().register_forward_hook(self._splice)

    def _splice(self, module, args, output):
        where = (args[0] == self.token_id).unsqueeze(-1)
        return torch.where(where, self._rows.to(output.dtype), output)

    def step(self) -> list[float]:
        """One optimiser step of every concept; returns their losses."""
        return torch.stack(self.step_async()).cpu().tolist()

    def step_async(self) -> list[torch.Tensor]:
        trainers = self.trainers
        batches = [t.sample_batch() for t in trainers]
        b = [bt["latents"].shape[0] for bt in batches]
        for t in trainers:
            t.optimizer.zero_grad(set_to_none=True)
        self._rows = torch.cat([t.vector.expand(n, -1) for t, n in zip(trainers, b)])[:, None, :]
        first = trainers[0]
        cat = {k: torch.cat([bt[k] for bt in batches]) for k in ("latents", "noise", "timesteps")}
        cat["input_ids"] = torch.cat([bt["input_ids"] for bt in batches])
        cat["mask"] = torch.cat([bt["mask"] for bt in batches]) if first.mask_loss else None
        latents, noise, ts = cat["latents"], cat["noise"], cat["timesteps"]
        noisy = first.scheduler.add_noise(latents, noise, ts)
        target = noise if first.prediction_type == "epsilon" else first.scheduler.get_velocity(latents, noise, ts)
        with first._autocast():
            text = self.backbone.encode_text(cat["input_ids"])
            pred = self.backbone.unet(noisy, ts, encoder_hidden_states=text).sample
        losses, start = [], 0
        for n in b:
            sl = slice(start, start + n)
            losses.append(masked_noise_loss(target[sl], pred[sl], None if cat["mask"] is None else cat["mask"][sl]))
            start += n
        torch.stack(losses).sum().backward()
        self._rows = None
        out = []
        for t, loss in zip(trainers, losses):
            t.optimizer.step()
            t.step_count += 1
            t._pending.append(loss.detach())
            out.append(loss.detach())
        return out

    def close(self) -> list[torch.Tensor]:
        """Remove the hook; return every concept's learned vector (CPU). The backbone's row is untouched."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        return [t.vector.detach().cpu().clone() for t in self.trainers]


# ----------------------------------------------------------------------------- outputs


def write_loss_csv(path: Path, losses: Sequence[float], lr: float) -> None:
    lines = ["step,loss,lr"] + [f"{i + 1},{v:.9g},{lr:.9g}" for i, v in enumerate(losses)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def render_loss_plot(path: Path, losses: Sequence[float], title: str = "embedding loss") -> None:
    """The per-step loss and its moving average against the training step (matplotlib)."""
    from anogen.plots import plot_loss_curves

    plot_loss_curves(
        path, np.arange(1, len(losses) + 1), {"loss": losses}, title=title, ylabel="mask-weighted noise MSE (Eq. 6)"
    )


# ----------------------------------------------------------------------------- the job


def learn_embedding(
    *,
    support_items: Sequence,
    model: str,
    revision: str | None,
    spec: dict,
    out_dir: Path,
    key: str,
    inputs: dict,
    device: str,
    checkpoint_every: int,
    cuda_graph: bool,
    gradient_checkpointing: bool,
    n_devices: int = 1,
    model_options: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Learn the anomaly embedding for one support set; return the manifest path.

    ``spec`` is the plan's hashed embedding spec (``Plan.spec("embedding", ...)``), written to the
    manifest as given; ``model_options`` (``variant``, ``scheduler``) go to ``load_backbone``; ``device``, ``checkpoint_every``, ``cuda_graph``, ``gradient_checkpointing``
    and ``n_devices`` are runtime values outside the key. Resumes from ``out_dir/checkpoints/state.pt`` when it
    exists and no manifest does. A directory that already holds a manifest (a completed job
    being rerun) is started afresh: the manifest and the old checkpoint are removed first, so
    an interrupted rerun never looks complete. The final checkpoint is kept (a few KB).
    """
    from anogen.diffusion.backbone import load_backbone

    job = ResumableJob(out_dir, stage=STAGE, key=key, spec=spec, inputs=inputs)
    # 1. a completed job being rerun starts from step 0
    if (job.out_dir / MANIFEST_NAME).exists():
        log.info("%s already holds a manifest: rerunning from step 0", job.out_dir)
        job.start_afresh()
    # 2. the frozen backbone and the trainer of the one placeholder vector
    backbone = load_backbone(model, revision, device, **(model_options or {}))
    trainer = EmbeddingTrainer(
        backbone,
        support_items,
        spec,
        device=device,
        cuda_graph=cuda_graph,
        n_devices=n_devices,
        gradient_checkpointing=gradient_checkpointing,
    )
    # 3. an interrupted run continues from its checkpoint
    resumed_from = _resume(job, trainer)
    _log_start(trainer, model, device)
    # 4. the step loop, checkpointing every `checkpoint_every` steps
    steps_per_second = _train(job, trainer, int(spec["steps"]), int(checkpoint_every))
    trainer.close()
    # 5. the vector and the loss curve, then the manifest (last)
    files = _export(job.out_dir, trainer, key)
    run = _run_record(trainer, model, device, resumed_from, steps_per_second)
    manifest = job.write_manifest(files, extra={**run, **(extra or {})})
    log.info("done: final loss %s, %s", run["final_loss"], manifest)
    return manifest


def _run_record(
    trainer: EmbeddingTrainer, model: str, device: str, resumed_from: int, steps_per_second: float | None
) -> dict[str, Any]:
    """The manifest's ``extra``: what was trained where, and how the run went."""
    return {
        "family": trainer.backbone.family,
        "noise_schedule": trainer.backbone.schedule_record(),
        "model": model,
        "model_files": trainer.backbone.files_record,
        "token": trainer.token,
        "token_id": trainer.token_id,
        "resolution": trainer.resolution,
        "effective_lr": trainer.effective_lr,
        "final_loss": trainer.losses[-1] if trainer.losses else None,
        "steps_per_second": steps_per_second,
        "resumed_from_step": resumed_from,
        "device": device,
        "autocast": str(trainer.autocast_dtype) if trainer.autocast_enabled else None,
        "cuda_graph": trainer.graph_captured,
        "gradient_checkpointing": bool(trainer.backbone.unet.is_gradient_checkpointing),
    }


def _resume(job: ResumableJob, trainer: EmbeddingTrainer) -> int:
    """Load the key-checked checkpoint of an interrupted run into ``trainer``; the step it resumes at."""
    state = job.load_state()
    if state is None:
        return 0
    job.restore(state, trainer.load_state_dict)
    log.info("resuming from %s at step %d of %d", job.checkpoint_path, trainer.step_count, int(trainer.spec["steps"]))
    return trainer.step_count


def _log_start(trainer: EmbeddingTrainer, model: str, device: str) -> None:
    log.info(
        "learning %s on %s (%s, %d px) from %d support images: %d steps, batch %d, lr %.4g, mask_loss=%s, device %s%s%s",
        trainer.token,
        model,
        trainer.backbone.family,
        trainer.resolution,
        len(trainer.items),
        int(trainer.spec["steps"]),
        trainer.batch_size,
        trainer.effective_lr,
        trainer.mask_loss,
        device,
        f", autocast {trainer.autocast_dtype}" if trainer.autocast_enabled else "",
        ", UNet gradient checkpointing" if trainer.backbone.unet.is_gradient_checkpointing else "",
    )


def _train(job: ResumableJob, trainer: EmbeddingTrainer, steps: int, checkpoint_every: int) -> float | None:
    """Run the remaining steps; return this run's steps per second (None when none ran).

    Losses stay on the device between sync points: progress reports (they show a synced
    loss), checkpoints, every ``SYNC_EVERY`` steps, and the step the test kill hook ends with.
    """
    first = trainer.step_count
    t_start = time.perf_counter()
    progress = Progress(steps, logger=log, start=first)
    loss = float("nan")
    while trainer.step_count < steps:
        killed_after = job.kill_pending  # the test SIGKILL follows this step: flush its loss first
        trainer.step_async()
        step = trainer.step_count
        report = step % progress.every == 0 or step == steps
        save = step % checkpoint_every == 0 or step == steps
        if report or save or step % SYNC_EVERY == 0 or killed_after:
            loss = _flush_finite(trainer, step)
        if save:
            job.save_state(trainer.state_dict())
        if report:
            progress.update(step, f"loss {loss:.5f}")
        job.progressed(step)
    ran = trainer.step_count - first
    elapsed = time.perf_counter() - t_start
    return ran / elapsed if ran and elapsed > 0 else None


def _flush_finite(trainer: EmbeddingTrainer, step: int) -> float:
    """Copy the pending losses to the host; a non-finite one stops the job, naming its step."""
    flushed = trainer.flush_losses()
    bad = [i for i, v in enumerate(flushed) if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"embedding loss became {flushed[bad[0]]} at step {step - len(flushed) + 1 + bad[0]}")
    return flushed[-1]


def _export(out_dir: Path, trainer: EmbeddingTrainer, key: str) -> list[str]:
    """Write the learned vector (diffusers' textual-inversion file), loss.csv and loss.png."""
    from anogen.diffusion.textual_inversion import save_learned_embedding

    family = trainer.backbone.family
    save_learned_embedding(
        out_dir / EMBEDDING_FILE,
        trainer.token,
        trainer.vector.detach().cpu(),
        metadata={"family": family, "token_id": trainer.token_id, "key": key},
    )
    write_loss_csv(out_dir / LOSS_CSV, trainer.losses, trainer.effective_lr)
    render_loss_plot(out_dir / LOSS_PNG, trainer.losses, title=f"{trainer.token} loss ({family})")
    return [EMBEDDING_FILE, LOSS_CSV, LOSS_PNG]
