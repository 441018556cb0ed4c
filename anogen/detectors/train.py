"""Train one detector (DRAEM or DeSTSeg, one variant) into a keyed directory; resumable.

Files written into ``out_dir``:

- ``model.safetensors``: every tensor of the network (DeSTSeg: teacher included, so the
  directory is self-contained);
- ``model_config.json``: what ``load_trained_detector`` needs to rebuild the network;
- ``train_log.csv``: one row per step (losses, learning rate, seconds since start);
- ``manifest.json`` last (``anogen.io.write_manifest``, stage ``detector``), with
  ``extra``: texture source, teacher status (DeSTSeg), parameter counts, steps, final loss,
  and whatever the caller passes in ``extra`` (the device lease).

Resuming: every ``checkpoint_every`` steps ``checkpoints/state.pt`` is replaced atomically
(``anogen.checkpoint``): network and optimiser states, GradScaler state, the step, and all
RNG states. Batches are a pure function of ``(seed, step)`` (see ``data.py``) and the
learning rate a pure function of the step, so after a SIGKILL a rerun continues from the
last checkpoint and, on CPU, ends with bit-identical weights. Once training is done the
checkpoint is replaced by ``checkpoints/finished.json`` (sha256 of the trained files), so a
rerun of the finished job (Snakemake reruns it when a runtime-only param such as
``checkpoint_every`` changes) rewrites the manifest instead of training again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from anogen.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from anogen.detectors.data import (
    DETECTORS,
    VARIANTS,
    TrainStream,
    load_generated_items,
    make_loader,
)
from anogen.detectors.synthetic import destseg_rotation_for
from anogen.detectors.textures import TextureSource
from anogen.errors import ConfigError, IntegrityError
from anogen.io import atomic_write_json, atomic_write_text, sha256_file, write_manifest
from anogen.progress import Progress

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
LOG_FILE = "train_log.csv"
CHECKPOINT = Path("checkpoints") / "state.pt"
FINISHED = Path("checkpoints") / "finished.json"  # lets a rerun of a finished job skip training
FORMAT_VERSION = 1


def _after_step(step: int) -> None:
    """Called after every completed step (``step`` = steps done). Tests replace it."""


def _check_spec(detector: str, variant: str, spec: dict[str, Any]) -> None:
    if detector not in DETECTORS:
        raise ConfigError("detectors.models", f"unknown detector '{detector}'")
    if variant not in VARIANTS:
        raise ConfigError("detectors.variants", f"unknown variant '{variant}'")
    size = int(spec["image_size"])
    if size < 32 or size % 32:
        raise ConfigError(
            "detectors.image_size", f"must be a multiple of 32 (both networks downsample 32x), got {size}"
        )
    tau = float(spec.get("tau", 0.9))
    if not 0.0 <= tau <= 1.0:
        raise ConfigError("detectors.tau", f"must lie in [0, 1], got {tau}")
    if detector not in spec:
        raise ConfigError(f"detectors.{detector}", "section missing from the detector spec")


def build_trainer(detector: str, spec: dict[str, Any], device: str, n_train: int):
    if detector == "draem":
        from anogen.detectors.draem.model import DraemTrainer as cls
    else:
        from anogen.detectors.destseg.model import DestsegTrainer as cls
    return cls(
        dict(spec[detector]),
        seed=int(spec["seed"]),
        tau=float(spec.get("tau", 0.9)),
        device=device,
        n_train=n_train,
    )


class _CsvLog:
    """train_log.csv, appended row by row; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, columns: Sequence[str], resume_step: int):
        self.path = path
        self.columns = ["step", *columns, "seconds"]
        rows: list[dict[str, str]] = []
        if resume_step > 0 and path.exists():
            rows = _complete_rows(path, resume_step)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=self.columns)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in self.columns})

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _complete_rows(path: Path, resume_step: int) -> list[dict[str, str]]:
    """Rows up to ``resume_step``; a row cut short by a kill (or a repeat) is dropped."""
    rows: list[dict[str, str]] = []
    seen: set[int] = set()
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            try:
                step = int(r["step"])
                float(r["seconds"])
            except (TypeError, ValueError, KeyError):
                continue
            if step <= resume_step and step not in seen and None not in r:
                seen.add(step)
                rows.append(r)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def _state(trainer, step: int, key: str) -> dict[str, Any]:
    return {
        "key": key,
        "step": step,
        "total_steps": trainer.total_steps,
        "model": trainer.model.state_dict(),
        "optimizers": {n: o.state_dict() for n, o in trainer.optimizers().items()},
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": capture_rng(),
    }


def _restore(trainer, ckpt: dict[str, Any], path: Path, key: str) -> int:
    if ckpt.get("key") != key or ckpt.get("total_steps") != trainer.total_steps:
        raise IntegrityError(
            path,
            f"checkpoint belongs to key {ckpt.get('key')} / {ckpt.get('total_steps')} steps, "
            f"not {key} / {trainer.total_steps}",
            rebuild_hint=f"delete {path}",
        )
    trainer.model.load_state_dict(ckpt["model"])
    for name, opt in trainer.optimizers().items():
        opt.load_state_dict(ckpt["optimizers"][name])
    if trainer.scaler is not None and ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])
    return int(ckpt["step"])


def _default_workers(device: str) -> int:
    if device != "cuda":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def train_detector(
    *,
    detector: str,
    variant: str,
    spec: dict[str, Any],
    train_images: Sequence[Path],
    generated_manifests: Sequence[Path],
    out_dir: Path,
    key: str,
    inputs: dict[str, str],
    device: str = "cpu",
    checkpoint_every: int = 500,
    texture_fallback: Sequence[Path] = (),
    log_every: int = 10,
    extra: dict[str, Any] | None = None,
    category: str | None = None,
    num_workers: int | None = None,
) -> Path:
    """Train, write ``out_dir`` (see module docstring) and return the manifest path.

    ``spec``: {"detector", "variant", "image_size", "seed", "tau", "mix_prob",
    "weak_on_synthetic", "texture_source", "draem": {...} | "destseg": {...}}.
    ``category`` (default: ``spec.get("category")``) selects DeSTSeg's published
    per-category rotation policy (``synthetic.DESTSEG_ROTATION``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if category is None:
        category = spec.get("category")
    _check_spec(detector, variant, spec)
    size, seed = int(spec["image_size"]), int(spec["seed"])
    train_images = [Path(p) for p in train_images]

    textures = None
    texture_info: dict[str, Any] = {"kind": "none", "note": "generated_only uses no synthetic anomalies"}
    if variant != "generated_only":
        textures = TextureSource.from_config(spec.get("texture_source"), list(texture_fallback))
        texture_info = textures.describe()
    generated = (
        load_generated_items(generated_manifests, train_images) if variant != "baseline" else []
    )

    trainer = build_trainer(detector, spec, device, len(train_images))
    rotation = destseg_rotation_for(category)
    stream = TrainStream(
        detector=detector,
        variant=variant,
        image_size=size,
        seed=seed,
        batch_size=trainer.batch_size,
        train_images=train_images,
        generated=generated,
        textures=textures,
        mix_prob=float(spec.get("mix_prob", 0.5)),
        weak_on_synthetic=bool(spec.get("weak_on_synthetic", True)),
        destseg_rotation=rotation,
    )
    total = trainer.total_steps

    ckpt_path = out_dir / CHECKPOINT
    finished = _finished_record(out_dir, key)
    if finished is not None:
        # A completed job rerun by Snakemake (e.g. after a runtime-only param such as
        # checkpoint_every changed): the trained files are intact, so only the manifest is redone.
        log.info("%s/%s: already trained (%s); rewriting the manifest only", detector, variant, out_dir / FINISHED)
        manifest_extra = {**finished["extra"], **(extra or {})}
        return _write_detector_manifest(out_dir, key, spec, inputs, manifest_extra, detector, variant)
    start = 0
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        start = _restore(trainer, ckpt, ckpt_path, key)
        log.info("%s/%s: resuming from %s at step %d of %d", detector, variant, ckpt_path, start, total)
        del ckpt
    else:
        log.info(
            "%s/%s: training %d steps (batch %d, %d px, %d normal images, %d generated items) on %s",
            detector, variant, total, trainer.batch_size, size, len(train_images), len(generated), device,
        )
        log.info("parameters: %s; textures: %s", trainer.parameter_counts(), texture_info)

    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = _default_workers(device) if num_workers is None else int(num_workers)
    loader = make_loader(stream, start, total, num_workers=workers, pin_memory=device == "cuda")
    csv_log = _CsvLog(out_dir / LOG_FILE, trainer.log_columns, start)

    t0 = time.perf_counter()
    progress = Progress(total, logger=log, what=f"{detector}/{variant} step", unit="steps", start=start,
                        every=log_every)
    last: dict[str, float] = {}
    step = start
    try:
        for batch in loader:
            if int(batch["step"]) != step:  # pragma: no cover - loader contract
                raise RuntimeError(f"loader produced step {int(batch['step'])}, expected {step}")
            last = trainer.train_step(batch, step)
            step += 1
            csv_log.write({"step": step, **last, "seconds": time.perf_counter() - t0})
            progress.update(step, lambda: " ".join(
                f"{k} {v:.4f}" for k, v in last.items()
                if k not in ("lr", "phase") and not (isinstance(v, float) and math.isnan(v))
            ) + f" lr {last['lr']:.3g}")
            if step % checkpoint_every == 0 and step < total:
                csv_log.flush()
                save_checkpoint(ckpt_path, _state(trainer, step, key))
            _after_step(step)
    finally:
        csv_log.close()

    # ------------------------------------------------------------------ export
    model_state = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in trainer.model.state_dict().items()
    }
    save_file(model_state, str(out_dir / MODEL_FILE))
    config = {
        "format_version": FORMAT_VERSION,
        "detector": detector,
        "variant": variant,
        "image_size": size,
        detector: trainer.export_config(),
    }
    atomic_write_json(out_dir / CONFIG_FILE, config)
    final_loss = last.get("loss") if last else _last_logged_loss(out_dir / LOG_FILE)
    manifest_extra: dict[str, Any] = {
        "detector": detector,
        "variant": variant,
        "texture_source": texture_info,
        "parameters": trainer.parameter_counts(),
        "steps": total,
        "batch_size": trainer.batch_size,
        "n_train_images": len(train_images),
        "n_generated_items": len(generated),
        "final_loss": final_loss,
        "device": device,
    }
    if detector == "destseg":
        manifest_extra.update(trainer.teacher_info)
        manifest_extra["rotation"] = {"category": category, "rotate_90": rotation[0], "random_rotate": rotation[1]}
    # Record completion before dropping the (large) resumable state: a rerun of this finished
    # job verifies the trained files against this record instead of training again.
    atomic_write_json(out_dir / FINISHED, {
        "key": key,
        "files": {name: sha256_file(out_dir / name) for name in (MODEL_FILE, CONFIG_FILE, LOG_FILE)},
        "extra": manifest_extra,
    })
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    manifest_extra.update(extra or {})
    return _write_detector_manifest(out_dir, key, spec, inputs, manifest_extra, detector, variant)


def _write_detector_manifest(out_dir, key, spec, inputs, manifest_extra, detector, variant) -> Path:
    manifest = write_manifest(
        out_dir,
        stage="detector",
        key=key,
        spec=spec,
        inputs=inputs,
        files=[MODEL_FILE, CONFIG_FILE, LOG_FILE],
        extra=manifest_extra,
    )
    log.info("%s/%s: done, %s", detector, variant, manifest)
    return manifest


def _finished_record(out_dir: Path, key: str) -> dict[str, Any] | None:
    """The completion record of an earlier run of this job, if its files are all intact."""
    path = out_dir / FINISHED
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("key") != key:
        return None
    for name, digest in record.get("files", {}).items():
        if not (out_dir / name).is_file() or sha256_file(out_dir / name) != digest:
            return None
    return record


def _last_logged_loss(path: Path) -> float | None:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return float(rows[-1]["loss"]) if rows else None
    except (OSError, ValueError, KeyError):
        return None
