"""Command line: ``anogen preflight``, ``anogen check-data``, ``anogen estimate``, ``anogen quality``, ``anogen keys``, ``anogen gc``.

Argument parsing and dispatch only: each command is a module of ``anogen.commands`` (its
``run(args)``), over the library.

``anogen preflight --configfile C`` checks, in seconds, everything the config needs from outside
the project before a long run: the diffusion model's files, classes and noise schedule, the
DeSTSeg teacher, the texture folder, the authors' repository, the generation-quality weights, the data set, the free space under
``results_dir``, and prints the run's estimate (``anogen.commands.preflight``); exit status 1 on a problem.

``anogen estimate`` prints the jobs, GPU-hours per stage and the wall time on N GPUs of a
config from a measured throughput table (``anogen.estimate``).

``anogen check-data --configfile C`` reads the config's whole data set once, reports every
problem at once and what the DAG would run (``anogen.commands.check_data``); exit status 1 when a
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
import sys
from pathlib import Path

from anogen.commands import box_ranges, check_data, estimate, gc, keys, preflight, quality
from anogen.errors import AnogenError
from anogen.options import add_run_options


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
    q.set_defaults(func=quality.run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anogen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gc_parser = sub.add_parser("gc", help="list (and with --delete remove) keyed directories no config refers to")
    add_run_options(
        gc_parser,
        configfile_help="the config file(s) of a run whose artifacts are kept, as for snakemake "
        "(default: config/config.yaml unless --run is given)",
        hint="; another run to keep: --run FILE...",
    )
    gc_parser.add_argument(
        "--run",
        nargs="+",
        action="append",
        default=[],
        metavar="FILE",
        help="the config file(s) of another run whose artifacts are kept (one --run per run; --config applies "
        "to every run)",
    )
    gc_parser.add_argument("--delete", action="store_true", help="really delete (default: dry run)")
    gc_parser.set_defaults(func=gc.run)
    keys_parser = sub.add_parser("keys", help="print the keyed directories of a config")
    add_run_options(keys_parser)
    keys_parser.set_defaults(func=keys.run)
    estimate_parser = sub.add_parser(
        "estimate", help="GPU-hours per stage and wall time on N GPUs from measured throughput"
    )
    add_run_options(estimate_parser)
    estimate_parser.add_argument("--gpus", type=int, default=1, help="GPUs to schedule the jobs on (default 1)")
    estimate_parser.add_argument("--gpu-model", default=None, help="GPU model of the throughput table (default H200)")
    estimate_parser.add_argument("--results", default=None, help="folder of throughput_*.json (default bench/results)")
    estimate_parser.set_defaults(func=estimate.run)
    check = sub.add_parser("check-data", help="read the whole data set once, report every problem and what would run")
    add_run_options(check)
    check.add_argument(
        "--foreground-images",
        type=int,
        default=4,
        help="normal images per category on which GrabCut's foreground coverage is measured",
    )
    check.set_defaults(func=check_data.run)
    pre = sub.add_parser("preflight", help="check everything a run needs from outside the project, in seconds")
    add_run_options(pre)
    pre.add_argument("--gpus", type=int, default=1, help="GPUs the run will use (time estimate, checkpoints at once)")
    pre.add_argument("--foreground-images", type=int, default=4, help="as for check-data")
    pre.set_defaults(func=preflight.run)
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
    boxes.set_defaults(func=box_ranges.run)
    _add_quality_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AnogenError as exc:
        print(f"anogen: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
