"""``anogen estimate``: the jobs, GPU-hours per stage and wall time on N GPUs of a config
from a measured throughput table (the model: ``anogen.estimate``)."""

from __future__ import annotations

import sys
from pathlib import Path

from anogen import estimate as est
from anogen.options import config_of_args


def run(args) -> int:
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
