"""Style checks CI runs: ruff (lint and format) on the Python code, snakefmt on the Snakefile and
rules (the `test` extra installs both; `.pre-commit-config.yaml` runs the same checks locally)
and Snakemake's own linter."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import e2e


def _tool(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(exe).exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' (it is part of the test extra)")
    return exe


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["ruff-check", "ruff-format"])
def test_ruff_is_clean(args):
    # Settings in pyproject.toml ([tool.ruff]); the whole repository, tests and benchmarks included.
    proc = subprocess.run([_tool("ruff"), *args, "."], cwd=e2e.REPO, capture_output=True, text=True, timeout=300)
    fix = "ruff check --fix ." if args == ["check"] else "ruff format ."
    assert proc.returncode == 0, f"ruff {' '.join(args)} is not clean (run: {fix}):\n{proc.stdout[-4000:]}"


def test_snakefmt_check_is_clean():
    files = [
        "Snakefile",
        *sorted(str(p.relative_to(e2e.REPO)) for p in (e2e.REPO / "workflow" / "rules").glob("*.smk")),
    ]
    proc = subprocess.run(
        [_tool("snakefmt"), "--check", *files], cwd=e2e.REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"snakefmt would reformat (run: snakefmt {' '.join(files)}):\n{proc.stderr[-4000:]}"


@pytest.mark.e2e
def test_snakemake_lint_is_clean(tmp_path):
    workdir = e2e.make_workdir(tmp_path)
    proc = e2e.run(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr
