"""Stage 2 job: generate anomalous images for one (category, defect) from normal images.

One model load per job. For every normal image (in the order given):

- its foreground mask comes from the category's foreground manifest (sha256-verified), or,
  when the defect has a box template (``spec["template"]``: the authors' hand-drawn
  ``mask_template`` or ``generation.templates``), the template replaces it: boxes are kept
  when more than ``template.containment`` of them lies inside it (the authors' ``> 0.75``);
- ``images_per_normal`` (N, the paper's N) images are generated from it: ceil(N /
  ``images_per_box``) distinct boxes are drawn on it (at the model resolution) with a numpy
  generator seeded by ``derive_seed("boxes", seed, category, defect, stem)``, every box gets
  ``images_per_box`` samples, each with its own CPU ``torch.Generator`` seeded by
  ``derive_seed("sample", seed, category, defect, stem, box, sample)``, and the first N of
  them in the order (box 0: samples 0..images_per_box-1, box 1: ...) are kept.

Seeds come from sha256 (never Python's ``hash()``), so any single image can be regenerated
alone, and the set does not depend on ``batch_size`` beyond float round-off. Nor do seeds
depend on N, and boxes are drawn one after the other (``sample_boxes_for``): the first k images
per normal image of a run with N > k have the boxes, seeds and names of a run with N = k
(the pixels too, bit for bit, when both runs sample them in the same batches, e.g.
``batch_size`` 1; else up to the round-off above). A detector that reads N = k therefore
takes the items with ``index_in_image < k`` of one larger generated set.

Outputs (all at the diffusion model's resolution, e.g. 256 px for LDM, 512 px for SD; the
detectors resize anyway): ``images/<stem>_b<i>_s<j>.png`` (``.jpg``, JPEG, with
``generation.jpeg_quality``), ``masks/<stem>_b<i>_s<j>.png`` (the box,
0/255: the weak label), ``montage.png`` and, last, ``manifest.json`` whose
``extra["items"]`` is the contract read by the detectors: ``image``, ``mask``,
``source_image`` (data-root-relative POSIX path), ``box`` (pixels at ``resolution``),
``seed``, plus ``box_index``/``sample_index`` and ``index_in_image`` (0..N-1, = box_index x
images_per_box + sample_index: the item's place in the order above, which detectors cut at k).

Resume: each image and its mask are written atomically, then a line with their sha256 is
appended to ``progress.jsonl``. A rerun skips every planned image whose record matches the
files on disk; the plan is cut into the same fixed batches as an uninterrupted run, so a
job killed between batches resumes to bit-identical outputs. (The tests' kill hook is
``anogen.resumable.ResumableJob.progressed``, one unit per written batch; the manifest goes
last through ``ResumableJob.write_manifest``.)

The plan (boxes, seeds, names) is made in ``anogen.generation.planning``; the files and their
progress lines are written by ``anogen.generation.resume``; this module loads the model and samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anogen.data.images import load_image
from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.textual_inversion import load_learned_embedding, read_embedding_metadata
from anogen.errors import ConfigError
from anogen.generation.boxes import resolve_box_range
from anogen.generation.inpaint import from_uint8, inpaint, prepare_for_inference, to_uint8
from anogen.generation.montage import make_montage
from anogen.generation.planning import PlannedImage, plan_generation
from anogen.generation.resume import already_done, write_batch
from anogen.io import atomic_save_image, load_manifest, read_image, verify_file
from anogen.progress import Progress
from anogen.resumable import ResumableJob

log = logging.getLogger("anogen.generation")

MONTAGE_SAMPLES = 8  # generated images shown in the montage


def _chunks(seq: list, size: int) -> Iterable[list]:
    for k in range(0, len(seq), size):
        yield seq[k : k + size]


# ----------------------------------------------------------------------------- model, images, sampling


@dataclass
class _Sampler:
    """The prepared model with the learned token and the two prompts' text embeddings."""

    backbone: Any
    token: str
    prompt_embeds: torch.Tensor
    uncond_embeds: torch.Tensor

    @property
    def resolution(self) -> int:
        return self.backbone.resolution


def _load_sampler(
    backbone, *, model, revision, model_options, device, embedding_path, mixed_precision, channels_last, compile
):
    """Load ``model`` (unless given), prepare it for inference and add the learned token."""
    t_load = time.monotonic()
    if backbone is None:
        backbone = load_backbone(model, revision, device, **(model_options or {}))
    prepare_for_inference(backbone, mixed_precision, channels_last=channels_last, compile=compile)
    token, vector = load_learned_embedding(embedding_path)
    check_embedding_width(embedding_path, vector, backbone)
    backbone.set_token_embedding(token, vector)
    with torch.no_grad():
        prompt_embeds = backbone.encode_text(backbone.tokenize([token])).float()
        uncond_embeds = backbone.encode_text(backbone.tokenize([""])).float()
    log.info(
        "loaded %s (%s, %d px) and token %s in %.1f s",
        model,
        backbone.family,
        backbone.resolution,
        token,
        time.monotonic() - t_load,
    )
    return _Sampler(backbone, token, prompt_embeds, uncond_embeds)


class _NormalImages:
    """The normal images at the model resolution, decoded once while their batches need them."""

    def __init__(self, paths: list[Path], size: int, resize: str, keep: int):
        self.paths, self.size, self.resize, self.keep = paths, size, resize, keep
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, index: int) -> np.ndarray:
        if index not in self._cache:
            if len(self._cache) > self.keep:
                self._cache.clear()
            self._cache[index] = load_image(self.paths[index], size=self.size, resize=self.resize)
        return self._cache[index]


def _sample_batch(sampler: _Sampler, spec: dict, pending: list[PlannedImage], normals: _NormalImages):
    """Inpaint one batch: (uint8 images N,R,R,3, box masks as R x R {0,1} arrays)."""
    res = sampler.resolution
    pixels = from_uint8([normals(it.image_index) for it in pending])
    box_np = [it.box.to_mask(res, res) for it in pending]
    box_masks = torch.from_numpy(np.stack(box_np))[:, None].float()
    out = inpaint(
        sampler.backbone,
        pixels,
        box_masks,
        sampler.prompt_embeds,
        sampler.uncond_embeds,
        [torch.Generator().manual_seed(it.seed) for it in pending],
        int(spec["steps"]),
        float(spec["guidance_scale"]),
        eta=float(spec["eta"]),
        paste_back=bool(spec["paste_back"]),
        mixed_precision=spec["mixed_precision"],
    )
    return to_uint8(out), box_np


def _sample_missing(job, sampler, spec, plan, done, normals, batch_size) -> tuple[int, float]:
    """Sample every planned image not ``done``, in the fixed batches of an uninterrupted run.

    Returns (images generated, seconds). PNG encoding and fsyncs of batch k overlap the
    sampling of batch k+1 (one writer thread, at most one batch in flight; its errors
    surface at the next batch).
    """
    progress = Progress(len(plan), logger=log, what="generated", unit="images", start=len(done))
    generated = batches = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anogen-writer") as writer:
        in_flight = None
        for chunk in _chunks(plan, batch_size):
            pending = [item for item in chunk if item.name not in done]
            if not pending:
                continue
            arrays, box_np = _sample_batch(sampler, spec, pending, normals)
            if in_flight is not None:
                in_flight.result()
            in_flight = writer.submit(write_batch, job.out_dir, job.key, pending, arrays, box_np, spec["jpeg_quality"])
            generated += len(pending)
            batches += 1
            progress.update(len(done) + generated)
            if job.kill_pending:  # the test kill lands between batches, after this one is written
                in_flight.result()
            job.progressed(batches)
        if in_flight is not None:
            in_flight.result()
    return generated, time.monotonic() - t0


def _write_montage(out_dir: Path, plan, normals: _NormalImages, support_images, title: str) -> None:
    """Support images, the first normal image with its boxes, and the first generated images."""
    first = plan[0]
    boxes = [it.box for it in plan if it.image_index == first.image_index and it.sample_index == 0]
    shown = [read_image(out_dir / it.image, "RGB") for it in plan[:MONTAGE_SAMPLES]]
    montage = make_montage(list(support_images), normals(first.image_index), boxes, shown, title=title)
    atomic_save_image(out_dir / "montage.png", montage)


def _manifest_items(plan: list[PlannedImage], rels: list[str]) -> list[dict]:
    """The contract read by the detectors (module doc)."""
    return [
        {
            "image": it.image,
            "mask": it.mask,
            "source_image": rels[it.image_index],
            "box": it.box.as_dict(),
            "seed": it.seed,
            "box_index": it.box_index,
            "sample_index": it.sample_index,
            "index_in_image": it.index_in_image,
        }
        for it in plan
    ]


# ----------------------------------------------------------------------------- the job


def generate_anomalies(
    *,
    normal_images: list[Path],
    data_root: Path,
    foreground_manifest: Path | None,
    template: Path | None,
    embedding_path: Path,
    model: str,
    revision: str | None,
    spec: dict,
    out_dir: Path,
    key: str,
    inputs: dict[str, str],
    device: str,
    batch_size: int,
    model_options: dict | None = None,
    channels_last: bool,
    compile: bool,
    support_images: Sequence[np.ndarray] = (),
    extra: dict | None = None,
    backbone=None,
    support_masks: Sequence[np.ndarray] = (),
) -> Path:
    """Generate the (category, defect) set into ``out_dir``; return the manifest path.

    ``spec`` is the plan's generation spec (``Plan.spec("generation", ...)``); ``model_options``
    (``variant``, ``scheduler``) go to ``load_backbone``; ``batch_size``,
    ``channels_last`` and ``compile`` are speed-only. ``backbone`` (optional) is an already
    loaded Backbone of ``model`` to reuse (tests, benchmarks); the learned token is added to
    it or, if present, its row overwritten. ``support_masks`` (squared) are what a learned box
    range (``spec["box"]["learned"]``) is made from; the resolved range goes into the manifest.
    """
    box = resolve_box_range(spec["box"], support_masks, f"support set of {spec['category']}/{spec['defect']}")
    job = ResumableJob(out_dir, stage="generation", key=key, spec=spec, inputs=inputs)
    # 1. the model and the learned token
    sampler = _load_sampler(
        backbone,
        model=model,
        revision=revision,
        model_options=model_options,
        device=device,
        embedding_path=embedding_path,
        mixed_precision=spec["mixed_precision"],
        channels_last=channels_last,
        compile=compile,
    )
    # 2. the plan: boxes and seeds of every image to generate
    images, rels, plan = plan_generation(
        normal_images=normal_images,
        data_root=data_root,
        foreground_manifest=foreground_manifest,
        spec=spec,
        resolution=sampler.resolution,
        template=template,
        box=box,
    )
    # 3. resume: what an earlier run of this key already wrote
    done = already_done(job, plan)
    # 4. sample the rest, batch by batch (each batch written, then the kill hook)
    normals = _NormalImages(images, sampler.resolution, spec["resize"], keep=4 * batch_size)
    generated, seconds = _sample_missing(job, sampler, spec, plan, done, normals, batch_size)
    # 5. the montage, then the manifest (last)
    title = f"{spec['category']} / {spec['defect']}  ({len(plan)} images, token {sampler.token})"
    _write_montage(job.out_dir, plan, normals, support_images, title)
    run = {"model": model, "revision": revision, "device": device, "batch_size": batch_size}
    run.update(channels_last=channels_last, compile=compile, template=template, jpeg_quality=spec["jpeg_quality"])
    files = [it.image for it in plan] + [it.mask for it in plan] + ["montage.png"]
    extra = {"box_range": box, **(extra or {})}
    return job.write_manifest(files, _manifest_extra(plan, rels, sampler, generated, seconds, run, extra))


def _manifest_extra(plan, rels, sampler: _Sampler, generated: int, seconds: float, run: dict, extra) -> dict:
    """The manifest's ``extra``: the items (the detectors' contract), counts, speed, model, run switches."""
    ips = generated / seconds if generated else None
    template, quality = run["template"], run["jpeg_quality"]
    log.info("wrote %d images (%s images/s this run)", len(plan), "n/a" if ips is None else f"{ips:.3f}")
    return {
        "items": _manifest_items(plan, rels),
        "n_images": len(plan),
        "n_generated_this_run": generated,
        "images_per_second": ips,
        "resolution": sampler.resolution,
        "family": sampler.backbone.family,
        "noise_schedule": sampler.backbone.schedule_record(),
        "model": run["model"],
        "revision": run["revision"],
        "model_files": sampler.backbone.files_record,
        "token": sampler.token,
        "prompt": sampler.token,
        "device": run["device"],
        "batch_size": run["batch_size"],
        "channels_last": run["channels_last"],
        "compile": run["compile"],
        "image_format": {"format": "png"} if quality is None else {"format": "jpeg", "quality": quality},
        "box_region": "template" if template is not None else "foreground",
        "template": str(template) if template is not None else None,
        **(extra or {}),
    }


def check_embedding_width(embedding_path: Path, vector: torch.Tensor, backbone) -> None:
    """Refuse an embedding whose width is not the text encoder's, naming what to change.

    The authors' published embeddings are 1280-d (LDMBert of CompVis/ldm-text2im-large-256);
    a CLIP-based model (768-d) or a tiny test model cannot use them.
    """
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
