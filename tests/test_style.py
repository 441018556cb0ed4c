"""Style checks CI runs: snakefmt on the Snakefile and rules (the `test` extra installs it) and
Snakemake's own linter."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import e2e


def _snakefmt() -> list[str]:
    exe = shutil.which("snakefmt") or str(Path(sys.executable).with_name("snakefmt"))
    if not Path(exe).exists():
        pytest.fail("snakefmt is not installed: pip install -e '.[test]' (it is part of the test extra)")
    return [exe]


def test_snakefmt_check_is_clean():
    files = ["Snakefile", *sorted(str(p.relative_to(e2e.REPO)) for p in (e2e.REPO / "workflow" / "rules").glob("*.smk"))]
    proc = subprocess.run([*_snakefmt(), "--check", *files], cwd=e2e.REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"snakefmt would reformat (run: snakefmt {' '.join(files)}):\n{proc.stderr[-4000:]}"


@pytest.mark.e2e
def test_snakemake_lint_is_clean(tmp_path):
    workdir = e2e.make_workdir(tmp_path)
    proc = e2e.run(workdir, "--lint")
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr
