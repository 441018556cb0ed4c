"""Stage 1's job: learn one anomaly embedding (``learn_embedding``) and write its files.

Numbered steps over ``ResumableJob``: start afresh if a manifest exists, resume from the
key-checked checkpoint, train (``anogen.embedding.trainer.EmbeddingTrainer``), export the
vector (diffusers' textual-inversion file), ``loss.csv`` and ``loss.png``, then the manifest.
Losses stay on the device between sync points (reports, checkpoints, every ``SYNC_EVERY``
steps), where their finiteness is checked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.textual_inversion import save_learned_embedding
from anogen.embedding.trainer import EmbeddingTrainer
from anogen.io import MANIFEST_NAME, atomic_write_text
from anogen.plots import plot_loss_curves
from anogen.progress import Progress
from anogen.resumable import ResumableJob

log = logging.getLogger("anogen.embedding")

STAGE = "embedding"
EMBEDDING_FILE = "learned_embeds.safetensors"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
SYNC_EVERY = 50  # steps between host syncs of the loss values (learn_embedding)


# ----------------------------------------------------------------------------- outputs


def write_loss_csv(path: Path, losses: Sequence[float], lr: float) -> None:
    lines = ["step,loss,lr"] + [f"{i + 1},{v:.9g},{lr:.9g}" for i, v in enumerate(losses)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def render_loss_plot(path: Path, losses: Sequence[float], title: str = "embedding loss") -> None:
    """The per-step loss and its moving average against the training step (matplotlib)."""
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
