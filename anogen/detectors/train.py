"""Train one detector (DRAEM or DeSTSeg, one variant) into a keyed directory; resumable.

Files written into ``out_dir``:

- ``model.safetensors``: every tensor of the network (DeSTSeg: teacher included, so the
  directory is self-contained);
- ``model_config.json``: what ``load_trained_detector`` needs to rebuild the network;
- ``train_log.csv``: one row per step (losses, learning rate, seconds since start);
- ``manifest.json`` last (``anogen.io.write_manifest``, stage ``detector``), with
  ``extra``: texture source, teacher status (DeSTSeg), parameter counts, steps, final loss,
  the generated images used (``n_generated_per_defect``; ``generated_per_image``, the first
  N per normal image read, None = all) and whatever the caller passes in ``extra`` (the
  device lease).

Resuming (``anogen.resumable.ResumableJob``): every ``checkpoint_every`` steps
``checkpoints/state.pt`` is replaced atomically, key-checked: network and optimiser states,
GradScaler state, the step, and all RNG states. Batches are a pure function of
``(seed, step)`` (see ``data.py``) and the learning rate a pure function of the step, so
after a SIGKILL a rerun continues from the last checkpoint and, on CPU, ends with bit-identical weights. Once training is done the
checkpoint is replaced by ``checkpoints/finished.json`` (sha256 of the trained files), so a
rerun of the finished job (Snakemake reruns it when a runtime-only param such as
``checkpoint_every`` changes) rewrites the manifest instead of training again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from anogen.checkpoint import capture_rng, restore_rng
from anogen.detectors.data import (
    DETECTORS,
    VARIANTS,
    TrainStream,
    authors_sampling_quirk,
    load_generated_items,
    make_loader,
)
from anogen.detectors.destseg.trainer import DestsegTrainer
from anogen.detectors.draem.trainer import DraemTrainer
from anogen.detectors.speed import speed_setup
from anogen.detectors.synthetic import destseg_rotation_for
from anogen.detectors.textures import TextureSource
from anogen.detectors.train_log import CsvLog, PendingRows, last_logged_loss, progress_text
from anogen.devices import effective_precision, is_cuda
from anogen.errors import ConfigError
from anogen.io import atomic_write_json
from anogen.progress import Progress
from anogen.resumable import ResumableJob

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
LOG_FILE = "train_log.csv"
FILES = (MODEL_FILE, CONFIG_FILE, LOG_FILE)
FORMAT_VERSION = 1


def train_detector(
    *,
    spec: dict[str, Any],
    train_images: Sequence[Path],
    generated_manifests: Sequence[Path],
    out_dir: Path,
    key: str,
    inputs: dict[str, str],
    device: str,
    checkpoint_every: int,
    extra: dict[str, Any] | None = None,
    texture_fallback: Sequence[Path] = (),
    num_workers: int | None = None,
    log_every: int = 10,
    data_root: str | Path | None = None,
    texture_source: str | Path | None = None,
    teacher_weights: str | Path | None = None,
) -> Path:
    """Train, write ``out_dir`` (see module docstring) and return the manifest path.

    ``data_root``: what the generated items' ``source_image`` paths are relative to (the
    workflow passes the data set's root); None only for direct calls, which then take the one
    root that makes every item a training image (``data._data_root_of``).

    ``spec``: exactly ``Plan.spec("detector", ...)`` (detector, variant and category included; the
    generated-branch values only for non-baseline variants, the synthetic source only for
    variants other than generated_only). ``generated_manifests``: stage-2 manifests, whose
    items' data-root-relative ``source_image`` must be ``train_images``. ``extra`` is added
    to the manifest's ``extra`` (the device lease).

    ``texture_source`` (``detectors.texture_source``) and ``teacher_weights``
    (``detectors.destseg.teacher_weights``) are where those files are, runtime values: the plan
    keys their content (``inputs["textures"]``, ``inputs["teacher"]``), not their paths.
    """
    _check_spec(spec)
    detector, variant = spec["detector"], spec["variant"]
    job = ResumableJob(out_dir, stage="detector", key=key, spec=spec, inputs=inputs)
    # 1. sources and the sample stream (first even for a finished job: its inputs are verified
    #    again and the provenance notes of textures and teacher recorded, see step 3)
    train_images = [Path(p) for p in train_images]
    textures, texture_info = _textures(spec, texture_source, texture_fallback)
    # source_image is data-root-relative (a DataError names an item that is no training image)
    generated, quirk = _generated_items(spec, generated_manifests, train_images, data_root)
    # 2. trainer (network, optimisers, loss) and stream
    trainer = build_trainer(spec, device, len(train_images), teacher_weights)
    stream = build_stream(spec, trainer.batch_size, train_images, generated, textures)
    # 3. a finished job rerun by Snakemake (a runtime-only param such as checkpoint_every
    #    changed): the trained files are intact, so only the manifest is redone
    finished = job.finished_record()
    if finished is not None:
        log.info("%s/%s: already trained (%s); rewriting the manifest only", detector, variant, job.finished_path)
        return _write_manifest(job, {**finished["extra"], **(extra or {})})
    # 4. resume from the checkpoint of an interrupted run, if any
    start = _resume(job, trainer, detector, variant)
    if start == 0:
        log.info(
            "%s/%s: training %d steps (batch %d, %d px, %d normal images, %d generated items) on %s",
            *(detector, variant, trainer.total_steps, trainer.batch_size, stream.size),
            *(len(train_images), len(generated), device),
        )
        log.info("parameters: %s; textures: %s", trainer.parameter_counts(), texture_info)
    # 5. the training loop
    speed = speed_setup(trainer, device, num_workers)
    loader = make_loader(
        stream, start, trainer.total_steps, num_workers=speed["loader_workers"], pin_memory=is_cuda(device)
    )
    last = _train_loop(job, trainer, loader, start, checkpoint_every, log_every, f"{detector}/{variant}")
    # 6. export: weights, model config, completion record, manifest last
    _export_model(job.out_dir, trainer, spec)
    sources = {"texture_source": texture_info, "n_train_images": len(train_images), "n_generated_items": len(generated)}
    sources["authors_sampling_quirk"] = quirk
    sources["n_generated_per_defect"] = dict(sorted(Counter(str(item.defect) for item in generated).items()))
    manifest_extra = _manifest_extra(spec, trainer, device, last, job.out_dir, speed, sources)
    job.mark_finished(FILES, manifest_extra)
    return _write_manifest(job, {**manifest_extra, **(extra or {})})


# ----------------------------------------------------------------------------- steps of train_detector


def _generated_items(spec: dict[str, Any], manifests, train_images, data_root) -> tuple[list, dict | None]:
    """The generated items a non-baseline variant trains on (the first ``generated_per_image`` per
    normal image; every item for a spec without it) and, with
    ``detectors.draem.authors_sampling_quirk``, the kept share per defect (None when off)."""
    if spec["variant"] == "baseline":
        return [], None
    items = load_generated_items(manifests, train_images, data_root, spec.get("generated_per_image"))
    if not spec.get("authors_sampling_quirk"):  # a DeSTSeg spec has no such key
        return items, None
    kept, report = authors_sampling_quirk(items, spec["category"], int(spec["seed"]))
    for defect, row in report.items():
        if row["kept"] < row["n"]:
            log.warning(
                "authors' sampling quirk: %s/%s keeps %d of %d generated images",
                spec["category"],
                defect,
                row["kept"],
                row["n"],
            )
    return kept, report


def _check_spec(spec: dict[str, Any]) -> None:
    detector, variant = spec["detector"], spec["variant"]
    if detector not in DETECTORS:
        raise ConfigError("detectors.models", f"unknown detector '{detector}'")
    if variant not in VARIANTS:
        raise ConfigError("detectors.variants", f"unknown variant '{variant}'")
    size = int(spec["image_size"])
    if size < 32 or size % 32:  # the schema checks this too; tests call train_detector directly
        raise ConfigError(
            "detectors.image_size", f"must be a multiple of 32 (both networks downsample 32x), got {size}"
        )
    if detector not in spec:
        raise ConfigError(f"detectors.{detector}", "section missing from the detector spec")


def _textures(spec: dict[str, Any], folder, fallback: Sequence[Path]) -> tuple[TextureSource | None, dict[str, Any]]:
    """The texture source of the synthetic branch (``folder``, else the fallback photographs) and how
    the manifest describes it."""
    if spec["variant"] == "generated_only":
        return None, {"kind": "none", "note": "generated_only uses no synthetic anomalies"}
    if spec["synthetic_source"] == "cutpaste":
        return None, {"kind": "none", "note": "CutPaste anomalies need no textures"}
    textures = TextureSource.from_config(folder, list(fallback))
    return textures, textures.describe()


def build_trainer(spec: dict[str, Any], device: str, n_train: int, teacher_weights: str | Path | None = None):
    """The detector's trainer; ``tau`` is None for a baseline (its spec has none: no weak loss).
    ``teacher_weights``: the DeSTSeg teacher's file (a runtime path; its content is in the key)."""
    section = dict(spec[spec["detector"]])
    if spec["detector"] == "draem":
        cls = DraemTrainer
    else:
        cls = DestsegTrainer
        section["teacher_weights"] = None if teacher_weights is None else str(teacher_weights)
    return cls(
        section,
        seed=int(spec["seed"]),
        tau=spec["tau"] if spec["variant"] != "baseline" else None,
        device=device,
        n_train=n_train,
        mixed_precision=spec["mixed_precision"],
    )


def build_stream(spec: dict[str, Any], batch_size: int, train_images, generated, textures) -> TrainStream:
    """The sample stream of ``spec``: the generated-branch values exist for non-baseline
    variants only, the synthetic source for variants other than generated_only."""
    variant = spec["variant"]
    branch = {name: spec[name] if variant != "baseline" else None for name in _GENERATED_BRANCH}
    source = spec["synthetic_source"] if variant != "generated_only" else None
    return TrainStream(
        detector=spec["detector"],
        variant=variant,
        image_size=int(spec["image_size"]),
        seed=int(spec["seed"]),
        batch_size=batch_size,
        train_images=train_images,
        generated=generated,
        textures=textures,
        **branch,
        synthetic_source=source,
        resize=spec["resize"],
        interpolation=spec[spec["detector"]]["image_interpolation"],
        destseg_rotation=destseg_rotation_for(spec["category"]),
        cutpaste=_cutpaste_args(spec["cutpaste"]) if source == "cutpaste" else None,
    )


_GENERATED_BRANCH = ("mix_prob", "weak_on_synthetic", "generated_normal_prob", "augment_generated")


def _cutpaste_args(section: dict[str, Any]) -> dict[str, Any]:
    """``detectors.cutpaste`` -> keyword arguments of ``CutPasteSynthesizer``."""
    lo, hi = (float(v) for v in section["area_ratio"])
    if not 0 < lo <= hi < 1:  # the schema bounds each end; the order is checked here
        raise ConfigError("detectors.cutpaste.area_ratio", f"needs 0 < min <= max < 1, got [{lo}, {hi}]")
    return {
        "area_ratio": (lo, hi),
        "aspect_ratio": float(section["aspect_ratio"]),
        "color_jitter": float(section["color_jitter"]),
    }


def _resume(job: ResumableJob, trainer, detector: str, variant: str) -> int:
    """The step to start at: that of the checkpoint of an interrupted run, else 0 (afresh)."""
    state = job.load_state()
    if state is None:
        job.start_afresh()
        return 0
    start = job.restore(state, lambda s: _restore(trainer, s))
    log.info(
        "%s/%s: resuming from %s at step %d of %d", detector, variant, job.checkpoint_path, start, trainer.total_steps
    )
    return start


def _state(trainer, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "total_steps": trainer.total_steps,
        "model": trainer.model.state_dict(),
        "optimizers": {n: o.state_dict() for n, o in trainer.optimizers().items()},
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": capture_rng(),
    }


def _restore(trainer, state: dict[str, Any]) -> int:
    if state.get("total_steps") != trainer.total_steps:
        raise ValueError(f"it was written for {state.get('total_steps')} steps, not {trainer.total_steps}")
    trainer.model.load_state_dict(state["model"])
    for name, opt in trainer.optimizers().items():
        opt.load_state_dict(state["optimizers"][name])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    return int(state["step"])


def _train_loop(job: ResumableJob, trainer, loader, start: int, checkpoint_every: int, log_every: int, what: str):
    """Steps ``start..total``: one log row each, a checkpoint every ``checkpoint_every``
    steps, the kill hook after each. Returns the last step's losses ({} if none ran).

    The losses stay on the device and reach the host every ``log_every`` steps, at checkpoints
    and at the end (``train_log.PendingRows``), so the host queues the next step while the device works;
    the rows written are the same, one per step."""
    total = trainer.total_steps
    csv_log = CsvLog(job.out_dir / LOG_FILE, trainer.log_columns, start)
    rows = PendingRows(csv_log)
    progress = Progress(total, logger=log, what=f"{what} step", unit="steps", start=start, every=log_every)
    t0 = time.perf_counter()
    step = start
    try:
        for batch in loader:
            if int(batch["step"]) != step:  # pragma: no cover - loader contract
                raise RuntimeError(f"loader produced step {int(batch['step'])}, expected {step}")
            losses = trainer.train_step(batch, step)
            step += 1
            rows.add({"step": step, **losses, "seconds": time.perf_counter() - t0})
            checkpoint = step % checkpoint_every == 0 and step < total
            if step % log_every == 0 or checkpoint or step == total:
                rows.flush()
            progress.update(step, lambda: progress_text(rows.flush()))  # a line due by time syncs too
            if checkpoint:
                csv_log.flush()
                job.save_state(_state(trainer, step))
            job.progressed(step)
        rows.flush()  # (after a failure, the rows since the last checkpoint are dropped on resume anyway)
    finally:
        csv_log.close()
    return rows.last


def _export_model(out_dir: Path, trainer, spec: dict[str, Any]) -> None:
    """``model.safetensors`` and ``model_config.json`` (what ``load_trained_detector`` reads)."""
    model_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in trainer.model.state_dict().items()}
    save_file(model_state, str(out_dir / MODEL_FILE))
    detector = spec["detector"]
    config = {
        "format_version": FORMAT_VERSION,
        "detector": detector,
        "variant": spec["variant"],
        "image_size": int(spec["image_size"]),
        detector: trainer.export_config(),
    }
    atomic_write_json(out_dir / CONFIG_FILE, config)


def _manifest_extra(spec, trainer, device: str, last: dict[str, float], out_dir: Path, speed: dict, sources: dict):
    detector, variant = spec["detector"], spec["variant"]
    extra: dict[str, Any] = {
        "detector": detector,
        "variant": variant,
        "texture_source": sources["texture_source"],
        "parameters": trainer.parameter_counts(),
        "steps": trainer.total_steps,
        "batch_size": trainer.batch_size,
        "n_train_images": sources["n_train_images"],
        "n_generated_items": sources["n_generated_items"],
        "n_generated_per_defect": sources["n_generated_per_defect"],
        "generated_per_image": spec.get("generated_per_image"),
        "final_loss": last.get("loss") if last else last_logged_loss(out_dir / LOG_FILE),
        "device": device,
        "precision": {
            "mixed_precision": spec["mixed_precision"],
            "effective": effective_precision(spec["mixed_precision"], device),
        },
        "synthetic_source": spec["synthetic_source"] if variant != "generated_only" else None,
        "image_interpolation": spec[detector]["image_interpolation"],
        "authors_sampling_quirk": sources["authors_sampling_quirk"],
        **speed,
    }
    if variant != "baseline":
        extra["tau"] = float(spec["tau"])
    if detector == "destseg":
        extra.update(trainer.teacher_info)
        r90, small = destseg_rotation_for(spec["category"])
        extra["rotation"] = {"category": spec["category"], "rotate_90": r90, "random_rotate": small}
    return extra


def _write_manifest(job: ResumableJob, manifest_extra: dict[str, Any]) -> Path:
    manifest = job.write_manifest(list(FILES), manifest_extra)
    log.info("%s/%s: done, %s", manifest_extra["detector"], manifest_extra["variant"], manifest)
    return manifest
