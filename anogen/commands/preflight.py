"""``anogen preflight``: in seconds, before a run of hours, check everything a config needs from outside.

Each check reads files only (configs, indices, the teacher's weights for its sha256), never loads a
diffusion model: the diffusion model (the classes ``model_index.json`` names, every file they
read, what the config files say about dtypes, the noise schedule that will be used, the image
size it implies), the DeSTSeg teacher weights (layout, sha256), the texture folder, the authors'
repository when named, the data set (``anogen check-data``'s report), and the free space under
``results_dir`` against what the run will write (``anogen.artifact_sizes``); then the run's
``anogen estimate``. Every problem is listed; the exit status is 1 when there is one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anogen import estimate as est
from anogen.authors import check_authors_repo
from anogen.commands.check_data import check_data
from anogen.config import check_required_sources
from anogen.diffusion.model_files import component_class, local_model_root, missing_model_files
from anogen.diffusion.published import SUBFOLDERS
from anogen.diffusion.schedule import file_differences, omitted_keys, resolve_schedule, schedule_record
from anogen.errors import AnogenError
from anogen.options import config_of_args
from anogen.plan import Plan
from anogen.provenance import (
    FALLBACK_TEXTURES,
    RANDOM_MODEL,
    RANDOM_QUALITY_WEIGHTS,
    RANDOM_TEACHER,
    is_random_model,
)
from anogen.quality.networks import load_inception, load_lpips, weights_info
from anogen.quality.table import NOT_CONFIGURED


@dataclass
class PreflightReport:
    """What was checked, section by section, with each problem and warning where it was found."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # the model's native resolution, when the model could be read (sizes the generated images)
    resolution: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def section(self, title: str) -> None:
        self.lines.append(f"\n== {title}")

    def problem(self, message: str) -> None:
        self.problems.append(message)
        self.lines.append(f"PROBLEM  {message}")

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            self.lines.append(f"warning  {message}")

    def render(self) -> str:
        if self.problems:
            verdict = [f"\npreflight: {len(self.problems)} problem(s), {len(self.warnings)} warning(s):"]
            verdict += [f"  - {p}" for p in self.problems]
        else:
            verdict = [f"\npreflight: ready ({len(self.warnings)} warning(s))"]
        return "\n".join([*self.lines, *verdict]).lstrip("\n")


def preflight(
    config: dict, *, gpus: int = 1, foreground_images: int = 4, echo: Callable[[str], None] | None = None
) -> PreflightReport:
    """Run every check on a validated config (``load_config_file``)."""
    report = PreflightReport()
    plan = Plan(config)
    checks = (_check_model, _check_teacher, _check_textures, _check_authors, _check_quality, _check_data, _check_space)
    for check in checks:
        if echo:
            echo(f"preflight: {check.__name__[len('_check_') :]} ...")
        try:
            check(plan, report, gpus=gpus, foreground_images=foreground_images)
        except AnogenError as exc:
            report.problem(str(exc))
    return report


# ----------------------------------------------------------------------------- the diffusion model


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _check_model(plan: Plan, report: PreflightReport, **_) -> None:
    from anogen.diffusion.backbone import family_of_index, read_model_index  # torch: the cli stays torch-free

    diffusion = plan.config["diffusion"]
    model = plan.model_path
    report.section(f"diffusion model: {diffusion['model']}")
    if plan.tiny_family:
        report.warn(f"diffusion.model {diffusion['model']!r}: {RANDOM_MODEL}")
        report.resolution = int(diffusion["tiny"]["resolution"])
        if not Path(model).is_dir():
            report.lines.append(f"built by rule tiny_model into {model} (random weights, {report.resolution} px)")
            return
    index = read_model_index(model, diffusion["revision"])
    family = family_of_index(model, index)
    sub = SUBFOLDERS[family]
    for part in ("text_encoder", "tokenizer", "unet", "vae", "scheduler"):
        cls = component_class(index, sub[part])
        report.lines.append(f"{part:<12} {sub[part] + '/':<14} {cls.__module__.split('.')[0]}.{cls.__name__}")
    root = local_model_root(model, diffusion["revision"])
    if root is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        (report.problem if offline else report.warn)(
            f"diffusion.model {model!r} is not in the local Hugging Face cache"
            + (
                " and HF_HUB_OFFLINE is set: run `hf download " + model + "` first"
                if offline
                else ": the first job would download it, which compute nodes without network cannot"
            )
        )
        return
    report.lines.append(f"files: {root}")
    for missing in missing_model_files(root, index, sub, diffusion["variant"]):
        report.problem(f"diffusion.model: {missing}")
    _dtypes_and_size(root, sub, family, plan, report)
    scheduler_file = root / sub["scheduler"] / "scheduler_config.json"
    if scheduler_file.is_file():
        _noise_schedule(family, _json(scheduler_file), diffusion["scheduler"], report)
    if is_random_model(str(root)) and not plan.tiny_family:
        report.warn(f"diffusion.model {model!r}: {RANDOM_MODEL}")


def _noise_schedule(family: str, file_config: dict, mode: str, report: PreflightReport) -> None:
    """Every value that decides the sampler, where it comes from, and each key the file has otherwise."""
    values, source = resolve_schedule(family, file_config, mode)
    record = schedule_record(values, source)
    del record["source"]
    betas = record.pop("trained_betas")
    if betas is not None:  # a list of 1000 numbers: its length says enough
        record["trained_betas"] = f"({len(betas)} values)"
    shown = ", ".join(f"{k} {v}" for k, v in record.items())
    report.lines.append(f"noise schedule ({source}): {shown}")
    if mode == "file":
        omitted = omitted_keys(file_config)
        if omitted:
            report.lines.append(f"scheduler_config.json omits {', '.join(omitted)}: diffusers' defaults are used")
        return
    differs = file_differences(file_config, values)
    if differs:
        report.lines.append(
            "scheduler_config.json differs from the values used: "
            + ", ".join(f"{k} (file: {v})" for k, v in differs.items())
        )
    # The Stable Diffusion 1.x files published on the hub omit keys but, bar a slip undone within a
    # minute, never state another value: one that does may be a model fine-tuned with that schedule.
    # (The LDM's 'linear' is CompVis' name for scaled_linear, a known misnomer: not warned of.)
    stated = [k for k in differs if k in file_config]
    if family == "sd" and stated:
        report.warn(
            f"diffusion.scheduler 'trained': the model's scheduler file states {', '.join(stated)} other than "
            "Stable Diffusion 1.x was trained with; a model fine-tuned with the file's schedule needs "
            "diffusion.scheduler: file"
        )


def _dtypes_and_size(root: Path, sub: dict, family: str, plan: Plan, report: PreflightReport) -> None:
    """What the component configs say about precision (loaded in float32 regardless), the image
    size the UNet and VAE imply, and the text encoder's width against imported embeddings."""
    configs = {p: root / sub[p] / "config.json" for p in ("unet", "vae", "text_encoder")}
    if not all(path.is_file() for path in configs.values()):
        return  # reported as missing files
    unet, vae, encoder = (_json(configs[p]) for p in ("unet", "vae", "text_encoder"))
    saved = encoder.get("torch_dtype") or encoder.get("dtype") or "float32"
    report.lines.append(
        f"text encoder saved as {saved}" + ("" if saved == "float32" else " (loaded as float32: autocast decides)")
    )
    report.resolution = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    report.lines.append(f"native resolution {report.resolution} px (UNet {unet['sample_size']} latent x VAE f8)")
    width = encoder.get("d_model") or encoder.get("hidden_size")
    report.lines.append(f"text encoder width {width}")
    imported = [p for p in plan.pairs() if plan.embedding_source(*p) is not None]
    if imported and width != 1280:
        report.problem(
            f"embedding.source 'authors': the published embeddings are 1280-d (LDMBert), {root} has a {width}-d text encoder"
        )


# ----------------------------------------------------------------------------- stage 3's sources


def _check_teacher(plan: Plan, report: PreflightReport, **_) -> None:
    """The teacher as the DeSTSeg job will load it (``load_teacher_weights``: file, kind, layout, sha256)."""
    from anogen.detectors.destseg.trainer import load_teacher_weights  # torch: the cli stays torch-free

    det = plan.config["detectors"]
    if "destseg" not in det["models"]:
        return
    report.section("DeSTSeg teacher")
    section = det["destseg"]
    state, info = load_teacher_weights(section["teacher_weights"], section["teacher"])
    if state is None:
        report.warn(f"no ImageNet ResNet18 weights: {RANDOM_TEACHER}")
        return
    weights = info["teacher_weights"]
    report.lines.append(
        f"{weights['path']} ({weights['origin']}): teacher {info['teacher_source']}, layout {info['teacher_layout']}, "
        f"{len(state)} tensors, sha256 {weights['sha256']}"
    )


def _check_textures(plan: Plan, report: PreflightReport, **_) -> None:
    from anogen.detectors.textures import TextureSource  # torch (anogen.detectors): the cli stays torch-free

    det = plan.config["detectors"]
    if not det["models"] or det["synthetic_source"] == "cutpaste":
        return
    report.section("texture source (synthetic anomalies)")
    check_required_sources(plan.config)
    if not det["texture_source"]:
        report.warn(FALLBACK_TEXTURES)
        return
    source = TextureSource.from_folder(det["texture_source"])
    report.lines.append(f"{det['texture_source']}: {len(source.files)} images")


def _check_quality(plan: Plan, report: PreflightReport, **_) -> None:
    """The generation-quality weights: both files load offline (else no quality table, said once)."""
    q = plan.config["quality"]
    report.section("generation-quality weights")
    if not plan.computes_quality:
        if q["inception_weights"] or q["lpips_weights"]:
            report.warn(f"only one of quality.inception_weights / quality.lpips_weights is set: {NOT_CONFIGURED}")
        else:
            report.lines.append(NOT_CONFIGURED)
        return
    loaders = {"inception_weights": load_inception, "lpips_weights": lambda p: load_lpips(p, q["lpips_net"])}
    for key, load in loaders.items():
        info = weights_info(q[key], f"quality.{key}")
        load(info.path)
        report.lines.append(f"{info.path} (quality.{key}): loads, sha256 {info.sha256}")
        if info.random:
            report.warn(RANDOM_QUALITY_WEIGHTS)


def _check_authors(plan: Plan, report: PreflightReport, **_) -> None:
    repo = plan.config["authors_repo"]
    if repo:
        report.section("authors' repository")
        report.lines.append(f"{check_authors_repo(repo)}: a clone of the authors' repository")


# ----------------------------------------------------------------------------- data, space, time


def _check_data(plan: Plan, report: PreflightReport, *, foreground_images: int, **_) -> None:
    report.section("data set")
    if plan.is_demo and not Path(plan.config["data_root"]).is_dir():
        report.lines.append(f"made by rule demo_data into {plan.config['data_root']}")
        return
    data = check_data(plan.config, foreground_images=foreground_images)
    report.lines += data.lines
    for message in data.problems:
        report.problem(message)
    for message in data.warnings:
        report.warn(message)


def _check_space(plan: Plan, report: PreflightReport, *, gpus: int, **_) -> None:
    from anogen import artifact_sizes as sizes  # torch: the cli stays torch-free

    report.section("disk space and time")
    found = est.find_table()
    if found is None:
        report.warn("no throughput table in bench/results: neither disk space nor time estimated")
        return
    studies = est.build_study_jobs(plan.config, found[1], found[0]) if plan.config["studies"] else None
    # with studies, `snakemake paper`: every distinct artifact of their arms
    estimate = studies.shared if studies else est.build_jobs(plan.config, found[1], found[0])
    resolution = report.resolution or int(plan.config["detectors"]["image_size"])
    need = sizes.run_bytes(plan, estimate, resolution, concurrent_jobs=gpus)
    results = plan.config["results_dir"]
    where = sizes.nearest_existing(results)
    free = shutil.disk_usage(where).free
    report.lines.append(
        f"{results}: a run from scratch writes about {sizes.human(need['total'])} ("
        + ", ".join(f"{k} {sizes.human(v)}" for k, v in need.items() if k != "total")
        + f"); {sizes.human(free)} free on {where}"
    )
    if free < need["total"]:
        report.problem(
            f"results_dir {results}: {sizes.human(free)} free on {where}, the run needs about "
            f"{sizes.human(need['total'])} (detector checkpoints dominate)"
        )
    report.lines.append(est.format_study_report(studies, gpus) if studies else est.format_report(estimate, gpus))


def run(args) -> int:
    report = preflight(
        config_of_args(args),
        gpus=args.gpus,
        foreground_images=args.foreground_images,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(report.render())
    return 0 if report.ok else 1
