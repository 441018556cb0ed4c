"""profiles/slurm on a real (single-node, throw-away) Slurm: tests/slurm_cluster.py.

The cluster mirrors what the profile asks for: every partition it names exists, the node
declares enough CPUs and memory for the largest request (the 2-core CI machine oversubscribes,
nothing is enforced with task/none) and has a fake GPU of the profile's ``gpu_model``, if any.
The only command-line overrides are the ones a cluster without accounting needs (squeue as
status command, a 1 s first status check) and keeping successful jobs' Slurm logs, so the
profile is otherwise tested as shipped.

Runs in a temporary copy of the workflow (Snakefile, workflow/, config/, envs/, and a link
to anogen/): nothing is written into the repository. ``pytest -m slurm -s`` prints the wall
times.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import pytest_cluster

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
SMALL_CONFIG = Path(__file__).resolve().parent / "configs" / "slurm_small.yaml"
GPU_RULES = ("learn_embedding", "generate_anomalies", "train_detector", "evaluate_detector")

# What a laptop / CI cluster without slurmdbd needs on top of the profile, and the per-job
# Slurm logs the checks below read (the profile keeps them too; this keeps the test independent).
OVERRIDES = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--slurm-keep-successful-logs",
]

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


def load_profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def cluster_shape(profile: dict) -> dict:
    """Partitions, CPUs, memory and GPU type a test cluster needs to accept the profile's jobs."""
    sections = [profile.get("default-resources") or {}, *(profile.get("set-resources") or {}).values()]
    partitions = ["debug"]
    cpus = [os.cpu_count() or 1, *(profile.get("set-threads") or {}).values()]
    memory = [32000]  # at least the largest mem_mb a rule declares itself (16000 today)
    gpu_models = set()
    for section in sections:
        if section.get("slurm_partition") and section["slurm_partition"] not in partitions:
            partitions.append(section["slurm_partition"])
        cpus += [section.get("cpus_per_task") or 0, (section.get("cpus_per_gpu") or 0) * (section.get("gpu") or 1)]
        memory.append(section.get("mem_mb") or 0)
        if section.get("gpu_model"):
            gpu_models.add(section["gpu_model"])
    assert len(gpu_models) <= 1, f"the test cluster has one GPU type, the profile asks for {gpu_models}"
    return {
        "partitions": tuple(partitions),
        "cpus": max(int(c) for c in cpus),
        "memory_mb": max(int(m) for m in memory),
        "gpu_type": next(iter(gpu_models), None),
    }


@pytest.fixture(scope="module")
def cluster():
    with pytest_cluster(**cluster_shape(load_profile())) as running:
        yield running


def snakemake(cluster, workdir: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(cluster.env)
    env.pop("SNAKEMAKE_PROFILE", None)
    # Jobs inherit this environment (sbatch --export=ALL): put this interpreter's scripts first.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(PROFILE), *OVERRIDES, *args]
    start = time.monotonic()
    try:
        result = subprocess.run(
            cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(
            f"snakemake did not finish in {timeout:.0f} s\n{out[-4000:]}\n{err[-8000:]}\n"
            + cluster.run("squeue", "--states=all", check=False).stdout
            + "\n"
            + cluster.log_tail()
        )
    wall = time.monotonic() - start
    if result.returncode != 0:
        pytest.fail(
            f"snakemake exited with {result.returncode} after {wall:.0f} s: {' '.join(cmd)}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-12000:]}\n" + cluster.log_tail()
        )
    return result, wall


def slurm_jobs(cluster) -> dict[str, dict[str, str]]:
    """Every job slurmctld still remembers (MinJobAge), as {job id: scontrol fields}."""
    out = cluster.run("scontrol", "-o", "show", "job", check=False).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def logged_jobs(workdir: Path) -> dict[str, list[str]]:
    """{rule: [Slurm job ids]} from the plugin's per-job logs (.snakemake/slurm_logs/rule_<rule>/...)."""
    found: dict[str, list[str]] = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = log.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        found.setdefault(rule, []).append(log.stem)
    return found


def test_profile_has_no_workstation_gpu_cap():
    profile = load_profile()
    assert profile["executor"] == "slurm"
    assert not any(str(r).startswith("gpu") for r in profile.get("resources") or []), (
        "gpu cap leaked from profiles/local"
    )
    for rule in GPU_RULES:
        assert profile["set-resources"][rule]["gpu"] == 1, rule


def test_profile_submits_gpu_job(cluster, tmp_path, record_property):
    """A two-rule workflow whose rules borrow the profile's names: the GPU rule gets the GPU settings."""
    (tmp_path / "Snakefile").write_text(
        """
rule all:
    input: "gpu.txt", "cpu.txt"

rule learn_embedding:
    output: "gpu.txt"
    resources: gpu=1
    shell: "echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}} SLURM_JOB_ID=${{SLURM_JOB_ID:-unset}} THREADS={threads} > {output}"

rule select_support:
    output: "cpu.txt"
    shell: "echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}} SLURM_JOB_ID=${{SLURM_JOB_ID:-unset}} > {output}"
"""
    )
    _, wall = snakemake(cluster, tmp_path, timeout=300)
    print(f"\nslurm toy workflow (2 jobs): {wall:.1f} s wall")
    record_property("slurm_wall_s", round(wall, 1))

    gpu = dict(kv.split("=", 1) for kv in (tmp_path / "gpu.txt").read_text().split())
    cpu = dict(kv.split("=", 1) for kv in (tmp_path / "cpu.txt").read_text().split())
    assert gpu["SLURM_JOB_ID"].isdigit() and cpu["SLURM_JOB_ID"].isdigit()
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0", "Slurm should have bound the fake GPU"
    assert cpu["CUDA_VISIBLE_DEVICES"] == "unset"
    profile = load_profile()
    # The nested Snakemake runs with --cores all, so threads are capped at the node's real cores.
    assert gpu["THREADS"] == str(min(profile["set-threads"]["learn_embedding"], os.cpu_count() or 1))

    logs = logged_jobs(tmp_path)
    assert logs.get("learn_embedding") == [gpu["SLURM_JOB_ID"]], logs
    assert logs.get("select_support") == [cpu["SLURM_JOB_ID"]], logs

    jobs = slurm_jobs(cluster)
    gpu_job, cpu_job = jobs[gpu["SLURM_JOB_ID"]], jobs[cpu["SLURM_JOB_ID"]]
    settings = profile["set-resources"]["learn_embedding"]
    assert gpu_job["JobState"] == cpu_job["JobState"] == "COMPLETED"
    assert gpu_job["Partition"] == settings.get("slurm_partition", cluster.partition)
    assert cpu_job["Partition"] == cluster.partition
    assert "gpu:" in gpu_job.get("TresPerJob", "") and "gpu" not in cpu_job.get("TresPerJob", "")
    assert gpu_job["NumCPUs"] == str(settings["cpus_per_gpu"])
    assert gpu_job["JobName"].startswith(profile.get("slurm-jobname-prefix", ""))


@pytest.mark.slow
def test_demo_dag_on_slurm(cluster, tmp_path, record_property):
    """The demo DAG (reduced by tests/configs/slurm_small.yaml), every job through Slurm."""
    for name in ("Snakefile", "workflow", "config", "envs"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, tmp_path / name)
    # The workflow imports the checkout's anogen (workflow.basedir, scripts' parents[1]).
    (tmp_path / "anogen").symlink_to(REPO / "anogen", target_is_directory=True)

    # Given with --configfile, a file is the whole config: the demo's first, then the reduction.
    result, wall = snakemake(
        cluster, tmp_path, "--configfile", str(tmp_path / "config" / "config.yaml"), str(SMALL_CONFIG), timeout=1500
    )
    print(f"\nslurm demo DAG: {wall:.1f} s wall")
    record_property("slurm_wall_s", round(wall, 1))

    small = yaml.safe_load(SMALL_CONFIG.read_text())
    categories = small["categories"]
    models, variants = small["detectors"]["models"], small["detectors"]["variants"]
    with open(tmp_path / "results" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = {(r["category"], r["detector"], r["variant"]) for r in rows if r["category"] != "mean"}
    assert runs == {(c, m, v) for c in categories for m in models for v in variants}, rows
    means = {(r["detector"], r["variant"]) for r in rows if r["category"] == "mean"}
    assert means == {(m, v) for m in models for v in variants}, rows
    for row in rows:
        if row["category"] != "mean":
            assert row["image_auroc"] != "", row

    # Every job that did work ran as a Slurm job (its plugin log exists) ...
    logs = logged_jobs(tmp_path)
    expected = {"demo_data", "tiny_model", "select_support", "estimate_foreground", *GPU_RULES, "summarize"}
    assert expected <= set(logs), f"rules without a Slurm log: {expected - set(logs)}"
    jobs = slurm_jobs(cluster)
    for rule, ids in logs.items():
        for job_id in ids:
            if job_id in jobs:
                assert jobs[job_id]["JobState"] == "COMPLETED", (rule, jobs[job_id])
    # ... and each GPU stage's device lease deferred to Slurm (anogen.devices), which bound the fake GPU.
    for stage in ("embeddings", "generated", "detectors", "evaluation"):
        manifests = list((tmp_path / "results" / stage).rglob("manifest.json"))
        assert manifests, f"no {stage} manifests"
        for manifest in manifests:
            lease = json.loads(manifest.read_text()).get("extra", {}).get("lease")
            assert lease is not None, f"{manifest} records no device lease"
            assert lease["reason"] == "slurm assigns devices" and lease["slot"] is None, (manifest, lease)
            assert lease["cuda_visible_devices"] == "0", (manifest, lease)
    assert "Nothing to be done" not in result.stdout + result.stderr
