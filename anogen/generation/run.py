"""Stage 2 job: generate anomalous images for one (category, defect) from normal images.

One model load per job. For every normal image (in the order given):

- its foreground mask comes from the category's foreground manifest (sha256-verified), or,
  when the defect has a box template (``spec["template"]``: the authors' hand-drawn
  ``mask_template`` or ``generation.templates``), the template replaces it: boxes are kept
  when more than ``template.containment`` of them lies inside it (the authors' ``> 0.75``);
- ``boxes_per_image`` distinct boxes are drawn on it (at the model resolution) with a numpy
  generator seeded by ``derive_seed("boxes", seed, category, defect, stem)``;
- every box gets ``images_per_box`` samples, each with its own CPU ``torch.Generator``
  seeded by ``derive_seed("sample", seed, category, defect, stem, box, sample)``.

Seeds come from sha256 (never Python's ``hash()``), so any single image can be regenerated
alone, and the set does not depend on ``batch_size`` beyond float round-off.

Outputs (all at the diffusion model's resolution, e.g. 256 px for LDM, 512 px for SD; the
detectors resize anyway): ``images/<stem>_b<i>_s<j>.png``, ``masks/<same>.png`` (the box,
0/255: the weak label), ``montage.png`` and, last, ``manifest.json`` whose
``extra["items"]`` is the contract read by the detectors: ``image``, ``mask``,
``source_image`` (data-root-relative POSIX path), ``box`` (pixels at ``resolution``),
``seed``, plus ``box_index``/``sample_index``.

Resume: each image and its mask are written atomically, then a line with their sha256 is
appended to ``progress.jsonl``. A rerun skips every planned image whose record matches the
files on disk; the plan is cut into the same fixed batches as an uninterrupted run, so a
job killed between batches resumes to bit-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anogen.errors import ConfigError, DataError
from anogen.generation.boxes import Box, sample_boxes
from anogen.generation.inpaint import from_uint8, inpaint, prepare_for_inference, to_uint8
from anogen.generation.montage import make_montage
from anogen.io import atomic_save_image, load_manifest, read_image, sha256_file, verify_file, write_manifest
from anogen.keys import canonical_json
from anogen.progress import Progress

log = logging.getLogger("anogen.generation")

PROGRESS_NAME = "progress.jsonl"
KILL_ENV = "ANOGEN_TEST_KILL_AFTER_BATCHES"


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the canonical JSON of ``parts`` (stable across processes and hosts)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()
    return int(digest[:16], 16) & ((1 << 63) - 1)


@dataclass(frozen=True)
class PlannedImage:
    name: str  # file name under images/ and masks/
    image_index: int  # index into the normal images
    box_index: int
    sample_index: int
    box: Box
    seed: int

    @property
    def image(self) -> str:
        return f"images/{self.name}"

    @property
    def mask(self) -> str:
        return f"masks/{self.name}"


def _load_image(path: Path, size: int, resize: str = "squash") -> np.ndarray:
    try:
        from anogen.data.mvtec import load_image
    except ImportError:  # pragma: no cover - written in parallel
        from PIL import Image

        arr = read_image(path, "RGB")
        return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))
    return load_image(path, size=size, resize=resize)


def _relpath(root: Path, path: Path) -> str:
    return Path(os.path.relpath(Path(path), Path(root))).as_posix()


def _get(spec: dict, key: str, default: Any = ...) -> Any:
    if key in spec:
        return spec[key]
    if default is ...:
        raise ConfigError(f"generation.{key}", "missing from the generation spec")
    return default


def _foreground_at(manifest_path: Path, manifest: dict, rel_mask: str, size: int, resize: str = "squash") -> np.ndarray:
    """The foreground mask (stored at the image's own size) in the same geometry as the image."""
    import cv2

    from anogen.data.geometry import to_square

    full = verify_file(manifest_path, rel_mask, manifest)
    mask = to_square((read_image(full, "L") > 0).astype(np.uint8), resize)
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def _box_template(spec: dict, template: Path | None, resolution: int) -> np.ndarray | None:
    """The defect's box template at ``resolution``, checked against the sha256 the key was made with."""
    from anogen.generation.foreground import load_box_template

    wanted = spec.get("template")
    if wanted is None:
        if template is not None:
            raise ConfigError(
                "generation.templates", f"a template ({template}) was given but the generation spec has none"
            )
        return None
    if template is None:
        raise ConfigError(
            "generation.templates", "the generation spec names a box template but no template file was given"
        )
    if sha256_file(template) != wanted["sha256"]:
        raise DataError(
            template, "box template changed since the workflow was planned; rerun snakemake so the key follows it"
        )
    return load_box_template(template, resolution, resolution)


def plan_generation(
    *,
    normal_images: list[Path],
    data_root: Path,
    foreground_manifest: Path | None,
    spec: dict,
    resolution: int,
    template: Path | None = None,
) -> tuple[list[Path], list[str], list[PlannedImage]]:
    """Boxes and seeds of every image to generate: (normal images used, their root-relative paths, plan).

    With a box template (``spec["template"]`` and its file ``template``) every image's boxes
    are drawn on the template, strictly more than ``containment`` inside;
    ``foreground_manifest`` is then not read (it may be None).
    """
    category, defect = _get(spec, "category"), _get(spec, "defect")
    seed = int(_get(spec, "seed"))
    box_spec = _get(spec, "box")
    resize = str(_get(spec, "resize", "squash"))  # boxes are drawn on the foreground in the model's geometry
    limit = _get(spec, "max_normal_images", None)
    images = [Path(p) for p in normal_images]
    if limit is not None:
        images = images[: int(limit)]
    if not images:
        raise DataError(data_root, f"no normal training images for category '{category}'")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise DataError(p, f"two normal images share the stem '{p.stem}' ({stems[p.stem]})")
        stems[p.stem] = p

    template_mask = _box_template(spec, Path(template) if template is not None else None, resolution)
    if template_mask is None:
        if foreground_manifest is None:
            raise ConfigError(
                "generation.templates", f"{category}/{defect} has neither a box template nor a foreground set"
            )
        fg_manifest = load_manifest(foreground_manifest)
        masks = {item["source_image"]: item["mask"] for item in fg_manifest["extra"]["items"]}
        overlap, strict, overlap_key = float(_get(spec, "min_overlap")), False, "generation.min_overlap"
    else:
        overlap, strict = float(spec["template"]["containment"]), True
        overlap_key = "generation.template_containment"
    rels = [_relpath(data_root, p) for p in images]
    plan: list[PlannedImage] = []
    for index, (path, rel) in enumerate(zip(images, rels)):
        if template_mask is not None:
            fg = template_mask
        else:
            if rel not in masks:
                raise DataError(foreground_manifest, f"has no foreground mask for {rel}; rebuild the foreground set")
            fg = _foreground_at(Path(foreground_manifest), fg_manifest, masks[rel], resolution, resize)
        rng = np.random.default_rng(derive_seed("boxes", seed, category, defect, path.stem))
        boxes = sample_boxes(
            rng,
            fg,
            int(_get(spec, "boxes_per_image")),
            box_spec["width"],
            box_spec["height"],
            bool(box_spec.get("rotate", False)),
            overlap,
            int(_get(spec, "max_tries")),
            image_name=str(path),
            defect=defect,
            strict=strict,
            overlap_key=overlap_key,
        )
        for b, box in enumerate(boxes):
            for j in range(int(_get(spec, "images_per_box"))):
                plan.append(
                    PlannedImage(
                        name=f"{path.stem}_b{b}_s{j}.png",
                        image_index=index,
                        box_index=b,
                        sample_index=j,
                        box=box,
                        seed=derive_seed("sample", seed, category, defect, path.stem, b, j),
                    )
                )
    return images, rels, plan


# ----------------------------------------------------------------------------- progress


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
        if isinstance(rec, dict) and rec.get("key") == key and "name" in rec:
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


def _append_progress(out_dir: Path, record: dict) -> None:
    with open(out_dir / PROGRESS_NAME, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _chunks(seq: list, size: int) -> Iterable[list]:
    for k in range(0, len(seq), size):
        yield seq[k : k + size]


# ----------------------------------------------------------------------------- the job


def generate_anomalies(
    *,
    normal_images: list[Path],
    data_root: Path,
    foreground_manifest: Path | None,
    embedding_path: Path,
    model: str,
    revision: str | None,
    spec: dict,
    out_dir: Path,
    key: str,
    inputs: dict[str, str],
    batch_size: int = 8,
    device: str = "cpu",
    mixed_precision: str = "auto",
    extra: dict | None = None,
    support_images: list[np.ndarray] | tuple = (),
    backbone=None,
    channels_last: bool = False,
    compile: bool = False,
    template: Path | None = None,
) -> Path:
    """Generate the (category, defect) set into ``out_dir``; return the manifest path.

    ``backbone`` (optional) is an already loaded Backbone of ``model`` to reuse (tests,
    benchmarks); the learned token is added to it or, if present, its row overwritten.
    """
    from anogen.diffusion.backbone import load_backbone
    from anogen.diffusion.textual_inversion import load_learned_embedding

    out_dir = Path(out_dir)
    data_root = Path(data_root)
    if batch_size < 1:
        raise ConfigError("generation.batch_size", f"must be >= 1, got {batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)

    t_load = time.monotonic()
    if backbone is None:
        backbone = load_backbone(model, revision, device)
    prepare_for_inference(backbone, mixed_precision, channels_last=channels_last, compile=compile)
    res = backbone.resolution
    token, vector = load_learned_embedding(embedding_path)
    check_embedding_width(embedding_path, vector, backbone)
    backbone.set_token_embedding(token, vector)
    with torch.no_grad():
        prompt_embeds = backbone.encode_text(backbone.tokenize([token])).float()
        uncond_embeds = backbone.encode_text(backbone.tokenize([""])).float()
    log.info(
        "loaded %s (%s, %d px) and token %s in %.1f s", model, backbone.family, res, token, time.monotonic() - t_load
    )

    images, rels, plan = plan_generation(
        normal_images=normal_images,
        data_root=data_root,
        foreground_manifest=Path(foreground_manifest) if foreground_manifest is not None else None,
        spec=spec,
        resolution=res,
        template=template,
    )
    progress = _read_progress(out_dir, key)
    done = {item.name for item in plan if _is_done(out_dir, item, progress.get(item.name))}
    total = len(plan)
    if done:
        log.info("resuming: %d of %d images already generated", len(done), total)

    steps = int(_get(spec, "steps"))
    guidance = float(_get(spec, "guidance_scale"))
    eta = float(_get(spec, "eta", 0.0))
    paste_back = bool(_get(spec, "paste_back", False))
    resize = str(_get(spec, "resize", "squash"))
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

    cache: dict[int, np.ndarray] = {}

    def normal(index: int) -> np.ndarray:
        if index not in cache:
            if len(cache) > 4 * batch_size:
                cache.clear()
            cache[index] = _load_image(images[index], res, resize)
        return cache[index]

    def write_batch(pending: list[PlannedImage], arrays: np.ndarray, box_np: list[np.ndarray]) -> None:
        for it, arr, bm in zip(pending, arrays, box_np):
            atomic_save_image(out_dir / it.image, arr)
            atomic_save_image(out_dir / it.mask, (bm * 255).astype(np.uint8))
            _append_progress(
                out_dir,
                {
                    "key": key,
                    "name": it.name,
                    "seed": it.seed,
                    "image_sha256": sha256_file(out_dir / it.image),
                    "mask_sha256": sha256_file(out_dir / it.mask),
                },
            )

    generated = 0
    batches = 0
    t0 = time.monotonic()
    n_done = len(done)
    progress = Progress(total, logger=log, what="generated", unit="images", start=n_done)
    # PNG encoding and fsyncs of batch k overlap the sampling of batch k+1 (one writer
    # thread, at most one batch in flight; its errors surface at the next batch).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anogen-writer") as writer:
        in_flight = None
        for chunk in _chunks(plan, batch_size):
            pending = [item for item in chunk if item.name not in done]
            if not pending:
                continue
            pixels = from_uint8([normal(it.image_index) for it in pending])
            box_np = [it.box.to_mask(res, res) for it in pending]
            box_masks = torch.from_numpy(np.stack(box_np))[:, None].float()
            gens = [torch.Generator().manual_seed(it.seed) for it in pending]
            out = inpaint(
                backbone,
                pixels,
                box_masks,
                prompt_embeds,
                uncond_embeds,
                gens,
                steps,
                guidance,
                eta=eta,
                paste_back=paste_back,
                mixed_precision=mixed_precision,
            )
            arrays = to_uint8(out)
            if in_flight is not None:
                in_flight.result()
            in_flight = writer.submit(write_batch, pending, arrays, box_np)
            done.update(it.name for it in pending)
            generated += len(pending)
            n_done += len(pending)
            batches += 1
            progress.update(n_done)
            if kill_after and batches >= kill_after:
                in_flight.result()
                os.kill(os.getpid(), signal.SIGKILL)
        if in_flight is not None:
            in_flight.result()
    elapsed = time.monotonic() - t0
    ips = generated / elapsed if generated else None

    # ---------------------------------------------------------------- montage + manifest
    first = plan[0]
    same_image = [it for it in plan if it.image_index == first.image_index]
    shown = plan[: min(len(plan), 8)]
    montage = make_montage(
        list(support_images),
        normal(first.image_index),
        [it.box for it in same_image if it.sample_index == 0],
        [read_image(out_dir / it.image, "RGB") for it in shown],
        title=f"{_get(spec, 'category')} / {_get(spec, 'defect')}  ({total} images, token {token})",
    )
    atomic_save_image(out_dir / "montage.png", montage)

    items = [
        {
            "image": it.image,
            "mask": it.mask,
            "source_image": rels[it.image_index],
            "box": it.box.as_dict(),
            "seed": it.seed,
            "box_index": it.box_index,
            "sample_index": it.sample_index,
        }
        for it in plan
    ]
    files = [it.image for it in plan] + [it.mask for it in plan] + ["montage.png"]
    manifest_extra = {
        "items": items,
        "n_images": total,
        "n_generated_this_run": generated,
        "images_per_second": ips,
        "resolution": res,
        "family": backbone.family,
        "model": model,
        "revision": revision,
        "token": token,
        "prompt": token,
        "device": device,
        "batch_size": batch_size,
        "channels_last": channels_last,
        "compile": compile,
        "box_region": "template" if template is not None else "foreground",
        "template": str(template) if template is not None else None,
        **(extra or {}),
    }
    log.info("wrote %d images to %s (%s images/s this run)", total, out_dir, "n/a" if ips is None else f"{ips:.3f}")
    return write_manifest(
        out_dir, stage="generation", key=key, spec=spec, inputs=inputs, files=files, extra=manifest_extra
    )


def check_embedding_width(embedding_path: Path, vector: torch.Tensor, backbone) -> None:
    """Refuse an embedding whose width is not the text encoder's, naming what to change.

    The authors' published embeddings are 1280-d (LDMBert of CompVis/ldm-text2im-large-256);
    a CLIP-based model (768-d) or a tiny test model cannot use them.
    """
    from anogen.diffusion.textual_inversion import read_embedding_metadata

    width, expected = int(vector.numel()), int(backbone.embedding_dim)
    if width == expected:
        return
    try:
        imported = read_embedding_metadata(embedding_path).get("source") == "authors"
    except Exception:  # metadata is informative only
        imported = False
    where = (
        "the authors' published embedding (embedding.source: authors) was learned on "
        "CompVis/ldm-text2im-large-256, whose LDMBert text encoder is 1280-d; set diffusion.model to "
        "that model (or a copy), or learn the embeddings here (embedding.source: learn)"
        if imported
        else "the embedding was made for another diffusion model; rerun stage 1 for this one"
    )
    raise ConfigError(
        "diffusion.model",
        f"{embedding_path} holds a {width}-d vector but the text encoder of {backbone.model} "
        f"({backbone.family}) is {expected}-d: {where}",
    )


def generation_items(manifest_path: str | Path, verify: bool = True) -> list[dict]:
    """The items of a generation manifest, with ``image``/``mask`` as absolute, verified paths."""
    manifest_path = Path(manifest_path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.json"
    manifest = load_manifest(manifest_path)
    out = []
    for item in manifest["extra"]["items"]:
        entry = dict(item)
        for field in ("image", "mask"):
            entry[field] = (
                verify_file(manifest_path, item[field], manifest) if verify else manifest_path.parent / item[field]
            )
        out.append(entry)
    return out
