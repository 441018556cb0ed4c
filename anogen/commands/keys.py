"""``anogen keys``: print the keyed directories of a config's run (``gc`` keeps the same ones)."""

from __future__ import annotations

from pathlib import Path

from anogen.artifacts import STAGES
from anogen.options import config_of_args
from anogen.plan import Plan
from anogen.studies.planner import RunPlan


def referenced_dirs(plan: Plan) -> set[Path]:
    """Every keyed directory the plan's jobs read or write (anogen.artifacts.STAGES)."""
    return {Path(plan.path(stage, *values)).parent for stage in STAGES for values in plan.instances(stage)}


def run_referenced_dirs(config: dict) -> set[Path]:
    """Every keyed directory of the config's run: its own plan's and, with studies, every arm's."""
    run = RunPlan(config)
    dirs = referenced_dirs(run.base)
    for (stage, values, _), plan in run.study_artifacts().items():
        dirs.add(Path(plan.path(stage, *values)).parent)
    return dirs


def run(args) -> int:
    for d in sorted(run_referenced_dirs(config_of_args(args))):
        print(d)
    return 0
