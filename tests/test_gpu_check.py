"""bench/gpu_check.py end to end on the CPU (tiny models, 64 px): the DAG with a killed and
resumed job, every stage's throughput, the table and the projection."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_gpu_check_cpu_tiny(tmp_path):
    out = tmp_path / "throughput_cpu.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_check.py"),
            "--cpu",
            "--tiny",
            "--group",
            "2",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
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
    proj = table["projection"]["this run"]
    assert proj["total_gpu_hours"] > 0 and proj["wall_h_4gpu"] <= proj["wall_h_1gpu"]
    assert "=== anogen GPU check on cpu ===" in proc.stdout
    assert table["synthesis"] and all(r["images_per_s_per_worker"] > 0 for r in table["synthesis"])
