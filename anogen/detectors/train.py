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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from anogen.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from anogen.detectors.data import (
    DETECTORS,
    SYNTHETIC_SOURCES,
    VARIANTS,
    TrainStream,
    load_generated_items,
    make_loader,
)
from anogen.detectors.precision import MODES as MIXED_PRECISION_MODES
from anogen.detectors.precision import effective_precision
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
        raise ConfigError(f"detectors.{detector}.tau", f"must lie in [0, 1], got {tau}")
    mode = spec.get("mixed_precision", "no")
    if mode not in MIXED_PRECISION_MODES:
        raise ConfigError("detectors.mixed_precision", f"must be one of {MIXED_PRECISION_MODES}, got {mode!r}")
    source = spec.get("synthetic_source", "draem")
    if source not in SYNTHETIC_SOURCES:
        raise ConfigError("detectors.synthetic_source", f"must be one of {SYNTHETIC_SOURCES}, got {source!r}")
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
        mixed_precision=spec.get("mixed_precision", "no"),
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


# ----------------------------------------------------------------------------- speed (runtime-only)
# Neither setting changes what is trained (batches are a pure function of (seed, step) whatever
# the worker count; channels_last is the same function in another memory layout), so both stay
# out of the content key and come from the environment, not the config.
CHANNELS_LAST_ENV = "ANOGEN_DETECTOR_CHANNELS_LAST"  # "0" turns channels_last off on CUDA
WORKERS_ENV = "ANOGEN_DETECTOR_WORKERS"  # loader worker count override
MAX_WORKERS = 16


def use_channels_last(device: str) -> bool:
    """channels_last on CUDA (tensor-core convolutions without layout transposes) unless disabled.
    Off on CPU: there it slows DeSTSeg's student phase down (measured) and changes round-off."""
    return str(device).startswith("cuda") and os.environ.get(CHANNELS_LAST_ENV, "1") != "0"


def to_channels_last(trainer) -> None:
    """Weights in channels_last; NCHW batches need no conversion (a convolution with
    channels_last weights returns channels_last, so the layout propagates from the first layer)."""
    trainer.model.to(memory_format=torch.channels_last)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _default_workers(device: str) -> int:
    """Loader workers: none on CPU (the jobs already fill the cores); on CUDA the CPUs of this
    node shared among its device slots, one left for the training process, at most 16.
    Synthesis costs ~5-20 ms per 256 px sample on one core (bench_detector_throughput.py), so
    DRAEM's ~250+ img/s need about 4-8 workers and DeSTSeg more."""
    override = os.environ.get(WORKERS_ENV)
    if override is not None and override.strip():
        return max(0, int(override))
    if device != "cuda":
        return 0
    slots = int(os.environ.get("ANOGEN_GPU_SLOTS") or 0) or max(1, torch.cuda.device_count())
    return max(0, min(MAX_WORKERS, _usable_cpus() // slots - 1))


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

    ``spec``: {"detector", "variant", "image_size", "seed", "tau" (the detector's resolved
    tau), "mix_prob", "weak_on_synthetic", "generated_normal_prob", "augment_generated",
    "synthetic_source", "cutpaste", "texture_source", "mixed_precision",
    "draem": {...} | "destseg": {...}} (missing keys: the neutral values of ``TrainStream``,
    fp32, the DRAEM-style synthetic source).
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
    source = spec.get("synthetic_source", "draem")
    texture_info: dict[str, Any] = {"kind": "none", "note": "generated_only uses no synthetic anomalies"}
    if variant != "generated_only" and source == "cutpaste":
        texture_info = {"kind": "none", "note": "CutPaste anomalies need no textures"}
    elif variant != "generated_only":
        textures = TextureSource.from_config(spec.get("texture_source"), list(texture_fallback))
        texture_info = textures.describe()
    generated = load_generated_items(generated_manifests, train_images) if variant != "baseline" else []

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
        generated_normal_prob=float(spec.get("generated_normal_prob", 0.0)),
        augment_generated=bool(spec.get("augment_generated", False)),
        synthetic_source=source,
        cutpaste=_cutpaste_args(spec.get("cutpaste")) if source == "cutpaste" else None,
        resize=str(spec.get("resize", "squash")),
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
            detector,
            variant,
            total,
            trainer.batch_size,
            size,
            len(train_images),
            len(generated),
            device,
        )
        log.info("parameters: %s; textures: %s", trainer.parameter_counts(), texture_info)

    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = use_channels_last(device)
    if channels_last:
        to_channels_last(trainer)
    workers = _default_workers(device) if num_workers is None else int(num_workers)
    loader = make_loader(stream, start, total, num_workers=workers, pin_memory=device == "cuda")
    csv_log = _CsvLog(out_dir / LOG_FILE, trainer.log_columns, start)

    t0 = time.perf_counter()
    progress = Progress(
        total, logger=log, what=f"{detector}/{variant} step", unit="steps", start=start, every=log_every
    )
    last: dict[str, float] = {}
    step = start
    try:
        for batch in loader:
            if int(batch["step"]) != step:  # pragma: no cover - loader contract
                raise RuntimeError(f"loader produced step {int(batch['step'])}, expected {step}")
            last = trainer.train_step(batch, step)
            step += 1
            csv_log.write({"step": step, **last, "seconds": time.perf_counter() - t0})
            progress.update(
                step,
                lambda last=last: (
                    " ".join(
                        f"{k} {v:.4f}"
                        for k, v in last.items()
                        if k not in ("lr", "phase") and not (isinstance(v, float) and math.isnan(v))
                    )
                    + f" lr {last['lr']:.3g}"
                ),
            )
            if step % checkpoint_every == 0 and step < total:
                csv_log.flush()
                save_checkpoint(ckpt_path, _state(trainer, step, key))
            _after_step(step)
    finally:
        csv_log.close()

    # ------------------------------------------------------------------ export
    model_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in trainer.model.state_dict().items()}
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
        "precision": {
            "mixed_precision": spec.get("mixed_precision", "no"),
            "effective": effective_precision(spec.get("mixed_precision", "no"), device),
        },
        "synthetic_source": source if variant != "generated_only" else None,
        "channels_last": channels_last,
        "loader_workers": workers,
    }
    if variant != "baseline":
        manifest_extra["tau"] = float(spec.get("tau", 0.9))
    if detector == "destseg":
        manifest_extra.update(trainer.teacher_info)
        manifest_extra["rotation"] = {"category": category, "rotate_90": rotation[0], "random_rotate": rotation[1]}
    # Record completion before dropping the (large) resumable state: a rerun of this finished
    # job verifies the trained files against this record instead of training again.
    atomic_write_json(
        out_dir / FINISHED,
        {
            "key": key,
            "files": {name: sha256_file(out_dir / name) for name in (MODEL_FILE, CONFIG_FILE, LOG_FILE)},
            "extra": manifest_extra,
        },
    )
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    manifest_extra.update(extra or {})
    return _write_detector_manifest(out_dir, key, spec, inputs, manifest_extra, detector, variant)


def _cutpaste_args(section: dict[str, Any] | None) -> dict[str, Any]:
    """``detectors.cutpaste`` -> keyword arguments of ``CutPasteSynthesizer``."""
    section = section or {}
    args: dict[str, Any] = {}
    if "area_ratio" in section:
        lo, hi = (float(v) for v in section["area_ratio"])
        if not 0 < lo <= hi < 1:
            raise ConfigError("detectors.cutpaste.area_ratio", f"needs 0 < min <= max < 1, got [{lo}, {hi}]")
        args["area_ratio"] = (lo, hi)
    for name in ("aspect_ratio", "color_jitter"):
        if name in section:
            args[name] = float(section[name])
    return args


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
