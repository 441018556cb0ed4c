"""Command line: ``anogen preflight``, ``anogen check-data``, ``anogen estimate``, ``anogen quality``, ``anogen keys``, ``anogen gc``.

``anogen preflight --configfile C`` checks, in seconds, everything the config needs from outside
the project before a long run: the diffusion model's files, classes and noise schedule, the
DeSTSeg teacher, the texture folder, the authors' repository, the generation-quality weights, the data set, the free space under
``results_dir``, and prints the run's estimate (``anogen.preflight``); exit status 1 on a problem.

``anogen estimate`` prints the jobs, GPU-hours per stage and the wall time on N GPUs of a
config from a measured throughput table (``anogen.estimate``).

``anogen check-data --configfile C`` reads the config's whole data set once, reports every
problem at once and what the DAG would run (``anogen.data.check``); exit status 1 when a
problem would stop a job.

``anogen quality --generated DIR --real DIR [--support DIR]`` computes IS, KID and IC-LPIPS of any
folder of generated images with the workflow's settings and writes the same CSV columns as
``results/generation_quality.csv`` (``anogen.quality``).

``anogen gc`` lists the keyed artifact directories under the results folder that none of
the given runs refers to any more (left behind by changed config values) and, with
``--delete``, removes them. It is a dry run by default.

Every command that reads a config takes the run's ``--configfile FILE...`` and ``--config
KEY=VALUE...`` with Snakemake's meaning (``anogen.options``): a command line copied from
``snakemake`` checks the config that run sees. ``gc`` keeps further runs with ``--run FILE...``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from anogen.artifacts import STAGES
from anogen.errors import AnogenError
from anogen.options import add_run_options, config_of_args, run_config
from anogen.plan import Plan

STAGE_FOLDERS = sorted({stage.folder.split("/", 1)[0] for stage in STAGES.values()})


def referenced_dirs(plan: Plan) -> set[Path]:
    """Every keyed directory the plan's jobs read or write (anogen.artifacts.STAGES)."""
    return {Path(plan.path(stage, *values)).parent for stage in STAGES for values in plan.instances(stage)}


def run_referenced_dirs(config: dict) -> set[Path]:
    """Every keyed directory of the config's run: its own plan's and, with studies, every arm's."""
    from anogen.studies.planner import RunPlan

    run = RunPlan(config)
    dirs = referenced_dirs(run.base)
    for (stage, values, _), plan in run.study_artifacts().items():
        dirs.add(Path(plan.path(stage, *values)).parent)
    return dirs


def keyed_dirs(results: Path) -> list[Path]:
    """Directories named by a 12-hex-digit key below each stage folder."""
    found = []
    for folder in STAGE_FOLDERS:
        base = results / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            name = path.name
            if path.is_dir() and len(name) == 12 and all(ch in "0123456789abcdef" for ch in name):
                found.append(path)
    return sorted(found)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cmd_gc(args) -> int:
    # The run of --configfile (the demo's config without it, unless --run names the runs) and each --run
    runs = ([args.configfile] if args.configfile else []) + args.run
    configs = [run_config(files, args.config or []) for files in runs or [[]]]
    results = {Path(config["results_dir"]) for config in configs}
    keep: set[Path] = set()
    for config in configs:
        keep |= {d.resolve() for d in run_referenced_dirs(config)}
    stale = [d for r in sorted(results) for d in keyed_dirs(r) if d.resolve() not in keep]
    total = 0
    for d in stale:
        size = _size(d)
        total += size
        print(f"{'deleting' if args.delete else 'stale'}\t{size / 1e6:9.1f} MB\t{d}")
        if args.delete:
            shutil.rmtree(d)
    verb = "deleted" if args.delete else "would delete (dry run; pass --delete)"
    print(f"{len(stale)} keyed directories, {total / 1e6:.1f} MB {verb}; {len(keep)} referenced kept")
    return 0


def cmd_keys(args) -> int:
    for d in sorted(run_referenced_dirs(config_of_args(args))):
        print(d)
    return 0


def cmd_estimate(args) -> int:
    from anogen import estimate as est

    config = config_of_args(args)
    found = est.find_table(args.gpu_model, Path(args.results) if args.results else est.RESULTS_DIR)
    if found is None:
        print(
            f"anogen estimate: no throughput measurement for GPU {args.gpu_model or est.DEFAULT_GPU!r} "
            f"under {args.results or est.RESULTS_DIR} (run bench/gpu_check.py on one)",
            file=sys.stderr,
        )
        return 1
    try:
        if config["studies"]:  # `snakemake paper`: the studies' distinct jobs, and each arm alone
            print(est.format_study_report(est.build_study_jobs(config, found[1], found[0]), args.gpus))
            return 0
        estimate = est.build_jobs(config, found[1], found[0])
    except est.MissingMeasurement as missing:
        print(
            f"anogen estimate: {found[0]} has no {missing.args[0]} throughput (a device check cut short?); "
            "rerun bench/gpu_check.py on that GPU, or name another table folder with --results",
            file=sys.stderr,
        )
        return 1
    print(est.format_report(estimate, args.gpus))
    return 0


def cmd_check_data(args) -> int:
    from anogen.data.check import check_data

    config = config_of_args(args)
    report = check_data(
        config, foreground_images=args.foreground_images, echo=lambda line: print(line, file=sys.stderr, flush=True)
    )
    print(report.render())
    return 0 if report.ok else 1


def cmd_preflight(args) -> int:
    from anogen.preflight import preflight

    config = config_of_args(args)
    report = preflight(
        config,
        gpus=args.gpus,
        foreground_images=args.foreground_images,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(report.render())
    return 0 if report.ok else 1


def cmd_box_ranges(args) -> int:
    from anogen.data import box_ranges

    config = config_of_args(args)
    reference = box_ranges.reference_from_file(args.reference) if args.reference else None
    rows = box_ranges.learn_all(config, reference)
    print(box_ranges.render(rows))
    if args.csv:
        Path(args.csv).write_text(box_ranges.to_csv(rows), encoding="utf-8")
    return 0


def cmd_quality(args) -> int:
    from anogen.config import deep_update
    from anogen.options import parse_set_items, snakemake_config, validated_run_config
    from anogen.quality.run import folder_quality
    from anogen.quality.table import write_csv

    # No config file: the schema's defaults (the workflow's settings), not the demo's config.
    raw = snakemake_config(args.configfile or [], args.config or [], no_file={"data_root": "."})
    config = validated_run_config(deep_update(raw, parse_set_items(args.set)))
    quality = config["quality"]
    weights = {
        "inception": args.inception_weights or quality["inception_weights"],
        "lpips": args.lpips_weights or quality["lpips_weights"],
    }
    device = args.device or _default_device()
    masks = {"generated": args.generated_masks, "real": args.real_masks, "support": args.support_masks}
    row = folder_quality(
        generated=args.generated, real=args.real, support=args.support, masks=masks,
        quality=quality, resize=config["resize"], weights=weights, device=device,
    )  # fmt: skip
    write_csv([row], args.out)
    shown = ("is_mean", "is_std", "ic_lpips", "kid_mean", "kid_std", "crop_is_mean", "crop_ic_lpips", "crop_kid_mean")
    print(
        ", ".join(f"{k}={row[k]}" for k in shown)
        + f"\nwrote {args.out}"
        + (f"\nNOTE: {row['note']}" if row["note"] else "")
    )
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_quality_parser(sub) -> None:
    q = sub.add_parser("quality", help="IS, KID and IC-LPIPS of any folder of generated images (same CSV columns)")
    q.add_argument(
        "--generated",
        type=Path,
        required=True,
        help="folder of generated images (searched recursively, mask folders left out; only its image/ if it has one)",
    )
    q.add_argument("--real", type=Path, default=None, help="real anomalies of the same defect type (KID's reference)")
    q.add_argument(
        "--support",
        type=Path,
        default=None,
        help="support anomalies: IC-LPIPS's cluster centres (quality.ic_lpips_centres: support)",
    )
    for name in ("generated", "real", "support"):
        q.add_argument(
            f"--{name}-masks",
            type=Path,
            default=None,
            help=f"masks of --{name} (same names, or <stem>_mask.png): box-crop columns",
        )
    q.add_argument(
        "--inception-weights", default=None, help="torch-fidelity Inception-v3 file (else quality.inception_weights)"
    )
    q.add_argument("--lpips-weights", default=None, help="torchvision backbone file (else quality.lpips_weights)")
    add_run_options(q, configfile_help="take the quality section from these config files (default: schema defaults)")
    q.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY.SUB=VALUE",
        help="nested values over the config (quality.image_size=256)",
    )
    q.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    q.add_argument("--out", type=Path, default=Path("generation_quality.csv"), help="CSV to write")
    q.set_defaults(func=cmd_quality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anogen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gc = sub.add_parser("gc", help="list (and with --delete remove) keyed directories no config refers to")
    add_run_options(
        gc,
        configfile_help="the config file(s) of a run whose artifacts are kept, as for snakemake "
        "(default: config/config.yaml unless --run is given)",
        hint="; another run to keep: --run FILE...",
    )
    gc.add_argument(
        "--run",
        nargs="+",
        action="append",
        default=[],
        metavar="FILE",
        help="the config file(s) of another run whose artifacts are kept (one --run per run; --config applies "
        "to every run)",
    )
    gc.add_argument("--delete", action="store_true", help="really delete (default: dry run)")
    gc.set_defaults(func=cmd_gc)
    keys = sub.add_parser("keys", help="print the keyed directories of a config")
    add_run_options(keys)
    keys.set_defaults(func=cmd_keys)
    estimate = sub.add_parser("estimate", help="GPU-hours per stage and wall time on N GPUs from measured throughput")
    add_run_options(estimate)
    estimate.add_argument("--gpus", type=int, default=1, help="GPUs to schedule the jobs on (default 1)")
    estimate.add_argument("--gpu-model", default=None, help="GPU model of the throughput table (default H200)")
    estimate.add_argument("--results", default=None, help="folder of throughput_*.json (default bench/results)")
    estimate.set_defaults(func=cmd_estimate)
    check = sub.add_parser("check-data", help="read the whole data set once, report every problem and what would run")
    add_run_options(check)
    check.add_argument(
        "--foreground-images",
        type=int,
        default=4,
        help="normal images per category on which GrabCut's foreground coverage is measured",
    )
    check.set_defaults(func=cmd_check_data)
    pre = sub.add_parser("preflight", help="check everything a run needs from outside the project, in seconds")
    add_run_options(pre)
    pre.add_argument("--gpus", type=int, default=1, help="GPUs the run will use (time estimate, checkpoints at once)")
    pre.add_argument("--foreground-images", type=int, default=4, help="as for check-data")
    pre.set_defaults(func=cmd_preflight)
    boxes = sub.add_parser(
        "box-ranges", help="learn every planned defect's box range from its support masks; compare with hand-set ranges"
    )
    add_run_options(boxes)
    boxes.add_argument(
        "--reference",
        default=None,
        help="YAML with hand-set ranges (a config's generation.box_ranges, or {category: {defect: box}}); "
        "default: the config's own generation.box_ranges",
    )
    boxes.add_argument("--csv", default=None, help="also write the table as CSV here")
    boxes.set_defaults(func=cmd_box_ranges)
    _add_quality_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AnogenError as exc:
        print(f"anogen: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
