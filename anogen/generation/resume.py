"""The generated files of one generation job and their progress record, so that a rerun resumes.

Each image and its mask are written atomically, then a line with their sha256 is appended to
``progress.jsonl``; a rerun skips every planned image whose record (of the same key) matches the
files on disk (``anogen.generation.run``, "Resume").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from anogen.generation.planning import PlannedImage
from anogen.io import atomic_path, atomic_save_image, sha256_file
from anogen.resumable import ResumableJob

log = logging.getLogger("anogen.generation")

PROGRESS_NAME = "progress.jsonl"


def _read_progress(out_dir: Path, key: str) -> dict[str, dict]:
    path = out_dir / PROGRESS_NAME
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: ignore it
            continue
        if isinstance(rec, dict) and rec.get("key") == key and "name" in rec:  # another key's line: not ours
            records[rec["name"]] = rec
    return records


def _is_done(out_dir: Path, item: PlannedImage, rec: dict | None) -> bool:
    if rec is None or rec.get("seed") != item.seed:
        return False
    for rel, field in ((item.image, "image_sha256"), (item.mask, "mask_sha256")):
        full = out_dir / rel
        if not full.is_file() or sha256_file(full) != rec.get(field):
            return False
    return True


def already_done(job: ResumableJob, plan: list[PlannedImage]) -> set[str]:
    """Names of the planned images an earlier run of this key wrote and recorded intact."""
    progress = _read_progress(job.out_dir, job.key)
    done = {item.name for item in plan if _is_done(job.out_dir, item, progress.get(item.name))}
    if done:
        log.info("resuming: %d of %d images already generated", len(done), len(plan))
    return done


def _append_progress(out_dir: Path, record: dict) -> None:
    with open(out_dir / PROGRESS_NAME, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_generated_image(path: Path, array: np.ndarray, jpeg_quality: int | None) -> None:
    """A generated image, atomically: lossless PNG, or with ``jpeg_quality`` JPEG with Pillow's
    defaults otherwise (4:2:0 chroma subsampling, baseline): at 75 the very bytes of the authors'
    ``Image.fromarray(x).save("....jpg")`` (Pillow's default quality is libjpeg's 75)."""
    if jpeg_quality is None:
        atomic_save_image(path, array)
        return
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="JPEG", quality=int(jpeg_quality))


def write_batch(
    out_dir: Path, key: str, pending: list[PlannedImage], arrays: np.ndarray, box_np: list, quality
) -> None:
    """Each image and its mask atomically, then its progress line (with both sha256)."""
    for it, arr, bm in zip(pending, arrays, box_np):
        save_generated_image(out_dir / it.image, arr, quality)
        atomic_save_image(out_dir / it.mask, (bm * 255).astype(np.uint8))
        record = {"key": key, "name": it.name, "seed": it.seed}
        record.update(image_sha256=sha256_file(out_dir / it.image), mask_sha256=sha256_file(out_dir / it.mask))
        _append_progress(out_dir, record)
