"""bench/bench_job_overheads.py --quick runs and reports a before/after pair for each cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_job_overheads.py"


def test_quick_run_reports_every_ratio(tmp_path):
    out = tmp_path / "overheads.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    rows = [results["import"], results["panel"], *results["ssim_filter"].values()]
    rows += list(results["destseg_segmentation"].values())
    assert list(results["ssim_filter"]) == list(results["destseg_segmentation"]) == ["64px"]
    assert results["panel"]["panels"] == 2
    for row in rows:
        assert row["ratio"] > 0 and all(v > 0 for k, v in row.items() if k.endswith("_s") or "_s_" in k)
    labels = ("import (evaluation job)", "example panel", "SSIM filters fwd+bwd, batch 8, 64px")
    for label in (*labels, "DeSTSeg segmentation step, 64px"):
        assert label in run.stdout
