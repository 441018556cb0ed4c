"""bench/gpu_check.py end to end on the CPU (tiny models, 64 px): the DAG with a killed and
resumed job, every stage's throughput, the table and the projection."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_gpu_check_cpu_tiny(tmp_path):
    """Through bench/device/run_check.sh, the script a lent GPU machine runs (here with --cpu --tiny)."""
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "device" / "run_check.sh"), "--cpu", "--tiny", "--group", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "OUT": str(out_dir),
            "PYTHON": sys.executable,
            "ANOGEN_WHEELS": str(tmp_path / "no-wheels"),  # this environment has every package
            "ANOGEN_CHECK_WORKDIR": str(tmp_path / "work"),
            "ANOGEN_CHECK_BUDGET_S": "1800",  # far above a slow CI run: nothing may be skipped here
        },
    )
    out = out_dir / "throughput_cpu.json"
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    table = json.loads(out.read_text())
    assert table["format"] == "anogen-throughput/1" and table["device"] == "cpu"
    checks = {c["check"]: c["ok"] for c in table["checks"]}
    assert checks["embedding job killed mid-run"] and checks["killed embedding resumed from its checkpoint"]
    assert checks["whole DAG completed"] and checks["every planned artifact has a manifest"]
    assert all(checks.values()), checks
    for stage in ("embedding", "generation", "detector_draem", "detector_destseg", "evaluation"):
        assert table["stages"][stage]["value"] > 0, stage
    variants = [r["variant"] for r in table["rows"] if r["stage"] == "embedding"]
    assert variants[0].startswith("before") and any("grouped" in v for v in variants)
    memory_row = [r for r in table["rows"] if r["variant"] == "gradient checkpointing (memory)"]
    assert len(memory_row) == 1 and memory_row[0]["value"] > 0  # measured, not ": failed"
    proj = table["projection"]["this run"]
    assert proj["total_gpu_hours"] > 0 and proj["wall_h_4gpu"] <= proj["wall_h_1gpu"]
    assert "=== anogen GPU check on cpu ===" in proc.stdout
    assert table["synthesis"] and all(r["images_per_s_per_worker"] > 0 for r in table["synthesis"])
    assert table["versions"]["snakemake"] and table["versions"]["diffusers"], table["versions"]  # the preflight's
    assert set(table["phase_s"]) >= {"preflight", "DAG", "stage 1", "stage 2", "stage 3", "evaluation"}
    # what a lease brings back: the table, the whole log and the workflow's logs
    assert (out_dir / "gpu_check.log").read_text().count("=== anogen GPU check on cpu ===") == 1
    assert (out_dir / "logs.tgz").stat().st_size > 0
