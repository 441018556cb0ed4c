"""Scale-out on one machine and exact partial rebuilds, proven with the real snakemake (issue 7)."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys

import pytest

from anogen.config import validate_config
from anogen.data.demo import demo_layout
from anogen.plan import Plan
from tests import e2e

pytestmark = pytest.mark.e2e

LEASE = re.compile(r"device lease (acquired|released) (\{.*\})")


def plan_for(config: dict) -> Plan:
    cfg = validate_config(config)
    return Plan(cfg, layout=demo_layout(cfg["demo"]))


def lease_intervals(workdir) -> list[dict]:
    intervals = []
    for log in (workdir / "results" / "logs").rglob("*.log"):
        events = {m.group(1): json.loads(m.group(2)) for m in LEASE.finditer(log.read_text())}
        if events:
            intervals.append(
                {
                    "log": str(log),
                    "slot": events["acquired"]["slot"],
                    "start": events["acquired"]["time"],
                    "end": events["released"]["time"],
                }
            )
    return intervals


def test_gpu_jobs_never_share_a_slot(tmp_path):
    """8 GPU-declaring jobs with --resources gpu=2 on CPU: at most two at once, never on one slot."""
    locks = tmp_path / "locks"
    config = e2e.e2e_config({"resources": {"gpu_slots": 2, "lock_dir": str(locks)}})
    workdir = e2e.make_workdir(tmp_path / "work", config=config)
    plan = plan_for(config)
    targets = [f"results/embeddings/{c}/{d}/{plan.key('embedding', c, d)}/manifest.json" for c, d in plan.pairs()]
    c = plan.categories[0]
    targets.append(f"results/detectors/{c}/draem/baseline/{plan.key('detector', c, 'draem', 'baseline')}/manifest.json")
    assert len(targets) == 8
    # targets first: --resources takes every following word as another resource
    e2e.run(workdir, *targets, "--cores", "4", "--resources", "gpu=2")

    intervals = lease_intervals(workdir)
    assert len(intervals) == 8, intervals
    assert {i["slot"] for i in intervals} <= {0, 1}
    events = sorted([(i["start"], 1, i["slot"]) for i in intervals] + [(i["end"], -1, i["slot"]) for i in intervals])
    running: collections.Counter = collections.Counter()
    peak = 0
    for _, delta, slot in events:
        running[slot] += delta
        assert running[slot] <= 1, "two jobs held the same device slot at once"
        peak = max(peak, sum(running.values()))
    assert peak == 2, "the two GPU slots were never used concurrently"


# ----------------------------------------------------------------------------- partial rebuilds


def with_change(workdir, tmp_path, change: dict):
    work = e2e.copy_tree(workdir, tmp_path / "work")
    e2e.write_config(work, e2e.e2e_config(change))
    return work


def test_nothing_to_do_after_a_full_run(demo_run):
    assert e2e.planned_jobs(demo_run) == {}


def test_tau_reruns_only_weakly_supervised_detectors(demo_run, tmp_path):
    work = with_change(demo_run, tmp_path, {"detectors": {"tau": 1.0}})
    n = len(plan_for(e2e.e2e_config()).categories) * 2  # categories x {draem, destseg}, variant anogen
    assert e2e.planned_jobs(work) == {"train_detector": n, "evaluate_detector": n, "summarize": 1, "all": 1}


def test_one_box_range_reruns_its_generation_and_category(demo_run, tmp_path):
    plan = plan_for(e2e.e2e_config())
    category, defect = plan.pairs()[0]
    change = {"generation": {"box_ranges": {category: {defect: {"width": [0.2, 0.3], "height": [0.2, 0.3]}}}}}
    work = with_change(demo_run, tmp_path, change)
    assert e2e.planned_jobs(work) == {
        "generate_anomalies": 1,
        "train_detector": 2,
        "evaluate_detector": 2,
        "summarize": 1,
        "all": 1,
    }

    # Run it, then revert: the earlier artifacts are reused, only the summary is redone.
    e2e.run(work)
    e2e.write_config(work, e2e.e2e_config())
    assert set(e2e.planned_jobs(work)) <= {"summarize", "all"}

    # gc lists exactly the directories of the abandoned value, and deleting them is safe.
    out = subprocess.run(
        [sys.executable, "-m", "anogen.cli", "gc", "--configfile", "config/config.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stale = [line.split("\t")[-1] for line in out.splitlines() if line.startswith("stale")]
    assert len(stale) == 5 and sum("/generated/" in s for s in stale) == 1, out
    subprocess.run(
        [sys.executable, "-m", "anogen.cli", "gc", "--configfile", "config/config.yaml", "--delete"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    assert set(e2e.planned_jobs(work)) <= {"summarize", "all"}


def test_embedding_steps_rerun_the_chain_not_the_baselines(demo_run, tmp_path):
    plan = plan_for(e2e.e2e_config())
    steps = e2e.e2e_config()["embedding"]["steps"] + 1
    work = with_change(demo_run, tmp_path, {"embedding": {"steps": steps}})
    n_pairs, n_det = len(plan.pairs()), len(plan.categories) * 2
    assert e2e.planned_jobs(work) == {
        "learn_embedding": n_pairs,
        "generate_anomalies": n_pairs,
        "train_detector": n_det,
        "evaluate_detector": n_det,
        "summarize": 1,
        "all": 1,
    }


def test_detector_budget_leaves_embeddings_and_generations_alone(demo_run, tmp_path):
    plan = plan_for(e2e.e2e_config())
    work = with_change(demo_run, tmp_path, {"detectors": {"draem": {"epochs": 3}}})
    n = len(plan.categories) * 2  # draem x {baseline, anogen}
    assert e2e.planned_jobs(work) == {"train_detector": n, "evaluate_detector": n, "summarize": 1, "all": 1}
