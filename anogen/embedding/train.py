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
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anogen.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from anogen.devices import autocast
from anogen.errors import ConfigError, IntegrityError
from anogen.io import MANIFEST_NAME, atomic_write_text, write_manifest
from anogen.progress import Progress

log = logging.getLogger("anogen.embedding")

STAGE = "embedding"
EMBEDDING_FILE = "learned_embeds.safetensors"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "state.pt"
KILL_ENV = "ANOGEN_TEST_KILL_AT_STEP"  # test hook: SIGKILL this process after that step

SPEC_KEYS = (
    "placeholder_token", "init_word", "steps", "batch_size", "learning_rate", "scale_lr",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "mask_loss", "flip_p",
    "resolution", "seed", "checkpoint_every", "templates",
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


def prepare_pixels(image: np.ndarray, mask: np.ndarray, resolution: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
    if spec.get("scale_lr", False):
        lr *= int(spec["batch_size"]) * int(n_devices)
    return lr


def _resolution(backbone, spec: dict) -> int:
    res = spec.get("resolution") or backbone.resolution
    unet_levels = len(backbone.unet.config.block_out_channels) - 1
    multiple = backbone.vae_scale_factor * 2**unet_levels
    if int(res) % multiple:
        raise ConfigError(
            "embedding.resolution",
            f"{res} px is not a multiple of {multiple} (VAE factor {backbone.vae_scale_factor} x "
            f"{2**unet_levels} UNet downsamplings of {backbone.model})",
        )
    return int(res)


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
        mixed_precision: str = "auto",
        n_devices: int = 1,
    ):
        missing = [k for k in SPEC_KEYS if k not in spec]
        if missing:
            raise ConfigError("embedding", f"missing keys {missing} (the config schema fills defaults)")
        self.backbone = backbone
        self.spec = spec
        self.device = device
        self.items = _check_items(support_items)
        self.seed = int(spec["seed"])
        self.batch_size = int(spec["batch_size"])
        self.flip_p = float(spec["flip_p"])
        self.mask_loss = bool(spec["mask_loss"])
        self.templates = list(spec["templates"])
        self.token = str(spec["placeholder_token"])
        self.resolution = _resolution(backbone, spec)
        self.effective_lr = effective_learning_rate(spec, n_devices)

        self.scheduler = backbone.training_scheduler()
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                "diffusion.model",
                f"{backbone.model} predicts {self.prediction_type!r}; stage 1 supports "
                "'epsilon' and 'v_prediction' models",
            )
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

        # Autocast: on CUDA with mixed_precision 'auto'; fp32 master vector always.
        self.autocast_enabled = device.startswith("cuda") and mixed_precision == "auto"
        self.autocast_dtype = None
        if self.autocast_enabled:
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.grad_scaler = (
            torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None
        )

        backbone.to(device)
        backbone.freeze()
        self.token_id = backbone.add_placeholder_token(self.token, spec["init_word"])
        emb = backbone.input_embeddings()
        emb.weight.requires_grad_(False)
        self.vector = torch.nn.Parameter(emb.weight[self.token_id].detach().to(device, torch.float32).clone())
        self._hook = emb.register_forward_hook(self._splice)

        self.template_ids = backbone.tokenize([t.format(self.token) for t in self.templates])
        for t, ids in zip(self.templates, self.template_ids):
            if not bool((ids == self.token_id).any()):
                raise ConfigError(
                    "embedding.templates",
                    f"{t!r} formatted with {self.token!r} loses the placeholder token "
                    f"(truncated at {backbone.max_length} tokens?)",
                )

        self._prepare_support()

        self.optimizer = torch.optim.AdamW(
            [self.vector],
            lr=self.effective_lr,
            betas=(float(spec["adam_beta1"]), float(spec["adam_beta2"])),
            eps=float(spec["adam_epsilon"]),
            weight_decay=float(spec["weight_decay"]),
        )
        self.generators = {
            "data": torch.Generator().manual_seed(self.seed % (1 << 63)),
            "noise": torch.Generator().manual_seed((self.seed + 1) % (1 << 63)),
        }
        self.step_count = 0
        self.losses: list[float] = []

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
    def sample_batch(self) -> dict[str, Any]:
        """Draw the next batch from the explicit generators (advances them)."""
        b, n = self.batch_size, len(self.items)
        g_data, g_noise = self.generators["data"], self.generators["noise"]
        idx = support_indices(self.seed, self.step_count * b, b, n)
        flips = (torch.rand(b, generator=g_data) < self.flip_p).tolist()
        tmpl = torch.randint(len(self.templates), (b,), generator=g_data)
        kl = torch.randn((b, *self.latent_shape), generator=g_noise)
        noise = torch.randn((b, *self.latent_shape), generator=g_noise)
        timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=g_noise)
        keys = list(zip(idx, flips))
        mean = torch.cat([self.posterior[k][0] for k in keys])
        std = torch.cat([self.posterior[k][1] for k in keys])
        latents = (mean + std * kl.to(self.device)) * self.backbone.scaling_factor
        return {
            "keys": keys,
            "latents": latents,
            "noise": noise.to(self.device),
            "timesteps": timesteps.to(self.device),
            "input_ids": self.template_ids[tmpl],
            "mask": torch.cat([self.masks[k] for k in keys]) if self.mask_loss else None,
        }

    def _autocast(self):
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return autocast(self.device)

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

    def step(self) -> float:
        batch = self.sample_batch()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_on(batch)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.step_count += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

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
        with torch.no_grad():
            self.vector.copy_(state["vector"].to(self.vector))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.step_count = int(state["step"])
        self.losses = [float(v) for v in state["losses"].tolist()]
        restore_rng(state["rng"], self.generators)


# ----------------------------------------------------------------------------- outputs


def write_loss_csv(path: Path, losses: Sequence[float], lr: float) -> None:
    lines = ["step,loss,lr"] + [f"{i + 1},{v:.9g},{lr:.9g}" for i, v in enumerate(losses)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def render_loss_plot(path: Path, losses: Sequence[float], title: str = "embedding loss") -> None:
    """The per-step loss and its moving average against the training step (matplotlib)."""
    from anogen.plots import plot_loss_curves

    plot_loss_curves(path, np.arange(1, len(losses) + 1), {"loss": losses}, title=title,
                     ylabel="mask-weighted noise MSE (Eq. 6)")


# ----------------------------------------------------------------------------- the job


def _kill_hook_step() -> int | None:
    value = os.environ.get(KILL_ENV)
    return int(value) if value else None


def learn_embedding(
    *,
    support_items: Sequence,
    model: str,
    revision: str | None,
    spec: dict,
    out_dir: Path,
    key: str,
    inputs: dict,
    device: str = "cpu",
    mixed_precision: str = "auto",
    n_devices: int = 1,
    extra: dict | None = None,
) -> Path:
    """Learn the anomaly embedding for one support set; return the manifest path.

    Resumes from ``out_dir/checkpoints/state.pt`` when it exists and no manifest does. A
    directory that already holds a manifest (a completed job being rerun) is started
    afresh: the manifest and the old checkpoint are removed first, so an interrupted rerun
    never looks complete. The final checkpoint is kept (a few KB).
    """
    from anogen.diffusion.backbone import load_backbone
    from anogen.diffusion.textual_inversion import save_learned_embedding

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if (out_dir / MANIFEST_NAME).exists():
        log.info("%s already holds a manifest: rerunning from step 0", out_dir)
        (out_dir / MANIFEST_NAME).unlink()
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)

    backbone = load_backbone(model, revision, device)
    trainer = EmbeddingTrainer(
        backbone, support_items, spec, device=device, mixed_precision=mixed_precision, n_devices=n_devices
    )
    steps = int(spec["steps"])
    every = int(spec["checkpoint_every"])

    state = load_checkpoint(ckpt_path)
    resumed_from = 0
    if state is not None:
        if state.get("key") != key:
            raise IntegrityError(
                ckpt_path,
                f"checkpoint was written for key {state.get('key')!r}, not {key!r}",
                rebuild_hint=f"delete {ckpt_path.parent} to restart this job from step 0",
            )
        try:
            trainer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise IntegrityError(
                ckpt_path, f"checkpoint does not fit this job ({exc})",
                rebuild_hint=f"delete {ckpt_path.parent} to restart this job from step 0",
            ) from exc
        resumed_from = trainer.step_count
        log.info("resuming from %s at step %d of %d", ckpt_path, resumed_from, steps)

    log.info(
        "learning %s on %s (%s, %d px) from %d support images: %d steps, batch %d, lr %.4g, "
        "mask_loss=%s, device %s%s",
        trainer.token, model, backbone.family, trainer.resolution, len(trainer.items), steps,
        trainer.batch_size, trainer.effective_lr, trainer.mask_loss, device,
        f", autocast {trainer.autocast_dtype}" if trainer.autocast_enabled else "",
    )
    kill_at = _kill_hook_step()
    t_start = time.perf_counter()
    progress = Progress(steps, logger=log, start=resumed_from)
    while trainer.step_count < steps:
        loss = trainer.step()
        step = trainer.step_count
        if not math.isfinite(loss):
            raise FloatingPointError(f"embedding loss became {loss} at step {step}")
        if step % every == 0 or step == steps:
            save_checkpoint(ckpt_path, {**trainer.state_dict(), "key": key})
        progress.update(step, f"loss {loss:.5f}")
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    ran = trainer.step_count - resumed_from
    elapsed = time.perf_counter() - t_start
    steps_per_second = ran / elapsed if ran and elapsed > 0 else None
    trainer.close()

    vector = trainer.vector.detach().cpu()
    save_learned_embedding(
        out_dir / EMBEDDING_FILE, trainer.token, vector,
        metadata={"family": backbone.family, "token_id": trainer.token_id, "key": key},
    )
    write_loss_csv(out_dir / LOSS_CSV, trainer.losses, trainer.effective_lr)
    render_loss_plot(out_dir / LOSS_PNG, trainer.losses, title=f"{trainer.token} loss ({backbone.family})")
    final_loss = trainer.losses[-1] if trainer.losses else None
    manifest = write_manifest(
        out_dir,
        stage=STAGE,
        key=key,
        spec=spec,
        inputs=inputs,
        files=[EMBEDDING_FILE, LOSS_CSV, LOSS_PNG],
        extra={
            "family": backbone.family,
            "model": model,
            "token": trainer.token,
            "token_id": trainer.token_id,
            "resolution": trainer.resolution,
            "effective_lr": trainer.effective_lr,
            "final_loss": final_loss,
            "steps_per_second": steps_per_second,
            "resumed_from_step": resumed_from,
            "device": device,
            "autocast": str(trainer.autocast_dtype) if trainer.autocast_enabled else None,
            **(extra or {}),
        },
    )
    log.info("done: final loss %s, %s", final_loss, manifest)
    return manifest
