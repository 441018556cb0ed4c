"""bench/bench_ldm_memory.py --size tiny measures both LDM stages in fresh processes and
reports a bf16 GPU bound per stage; stage 1's checkpointing row keeps less and trains alike."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_ldm_memory.py"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_tiny_run_reports_each_stage(tmp_path):
    out = tmp_path / "memory.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--size", "tiny", "--threads", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    plain, ckpt, gen = result["rows"]
    assert (plain["stage"], ckpt["stage"], gen["stage"]) == ("embedding", "embedding", "generation")
    assert not plain["gradient_checkpointing"] and ckpt["gradient_checkpointing"]
    assert (plain["batch"], gen["batch"]) == (4, 16)
    assert result["stage1_losses_equal"]
    for row in result["rows"]:
        assert row["extra_GiB"] > 0 and sum(row["param_bytes"].values()) > 0
    bounds = result["bf16_gpu_bound_GiB"]
    assert bounds["embedding"] > sum(plain["param_bytes"].values()) / 2**30
    assert "| generation | 16 |" in run.stdout and "UNet gradient checkpointing on" in run.stdout
