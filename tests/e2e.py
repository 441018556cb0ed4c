"""Helpers for tests that run the real ``snakemake`` on the demo in a temporary folder."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from anogen.config import deep_update

REPO = Path(__file__).resolve().parents[1]
E2E_OVERRIDES = yaml.safe_load((REPO / "tests" / "configs" / "e2e.yaml").read_text())


def e2e_config(extra: dict | None = None) -> dict:
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return deep_update(deep_update(base, E2E_OVERRIDES), extra or {})


def make_workdir(path: Path, extra: dict | None = None, config: dict | None = None) -> Path:
    """A working directory with config/config.yaml (the e2e config plus ``extra``)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config").mkdir(exist_ok=True)
    write_config(path, config if config is not None else e2e_config(extra))
    return path


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def env() -> dict:
    e = dict(os.environ)
    e.pop("SLURM_JOB_ID", None)
    e.setdefault("HF_HUB_OFFLINE", "1")
    return e


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """snakemake on ``workdir``; its config/config.yaml is given as --configfile (a test's own config
    is a run's config, so it may point data_root anywhere; the implicit demo config may not)."""
    config = Path(workdir) / "config" / "config.yaml"
    if config.is_file() and "--configfile" not in args:
        args = ("--configfile", str(config), *args)
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]


def run(workdir: Path, *args: str, check: bool = True, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, "--cores", "2", *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(), cwd=workdir, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(workdir: Path, *args: str) -> collections.Counter:
    """Rule -> number of jobs that ``snakemake -n`` plans."""
    return job_counts(run(workdir, "-n", "--quiet", "rules", *args).stdout)


def job_counts(stdout: str) -> collections.Counter:
    """Rule -> jobs, from the "job count" table snakemake prints."""
    counts: collections.Counter = collections.Counter()
    in_table = False
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
