"""Helpers for tests/test_reliability.py: private device slots, killing a running snakemake
with its whole process group, and digests of the artifacts that must come out identical."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests import e2e

MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- running snakemake


def private_env(lock_dir: Path, slots: int = 2) -> dict:
    """e2e.env() with this test's own device-slot lock files.

    The default /tmp/anogen-gpu-slots is shared by every anogen run on the machine, so a test
    would otherwise queue behind unrelated runs. Slots are a runtime knob: not in any content
    key and not a Snakemake param, so outputs and rerun decisions are unaffected.
    """
    env = e2e.env()
    env["ANOGEN_LOCK_DIR"] = str(lock_dir)
    env["ANOGEN_GPU_SLOTS"] = str(slots)
    return env


def run(workdir: Path, *args: str, env: dict, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    """``e2e.run`` with an explicit environment; ``--cores 2`` unless ``args`` give --cores."""
    cores = [] if "--cores" in args else ["--cores", "2"]
    cmd = e2e.snakemake_cmd(workdir, *cores, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def start(workdir: Path, *args: str, env: dict, log: Path) -> subprocess.Popen:
    """Start snakemake in its own session (so its jobs share its process group)."""
    cmd = e2e.snakemake_cmd(workdir, "--cores", "2", *args)
    out = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    finally:
        out.close()


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def kill_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL snakemake and every job process in its group; return the pids that were in it."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    members = group_members(pgid)
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = group_members(pgid)
    assert not left, f"processes survived SIGKILL of group {pgid}: {left}"
    return members


def wait_for(
    proc: subprocess.Popen,
    condition: Callable[[], object],
    what: str,
    log: Path,
    timeout: float = 900,
    poll: float = 0.02,
):
    """Poll ``condition`` until it returns something truthy; fail if snakemake ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(
                f"snakemake ended ({proc.returncode}) before {what}:\n" + log.read_text(errors="replace")[-6000:]
            )
        time.sleep(poll)
    kill_group(proc)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- artifacts


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def keyed_dirs(results: Path, stage: str) -> list[Path]:
    """Keyed directories of one stage (``embeddings``, ``generated``, ``detectors`` ...)."""
    depth = {"support": 3, "foreground": 2, "embeddings": 3, "generated": 3, "detectors": 4, "evaluation": 4}[stage]
    return sorted(p for p in (results / stage).glob("/".join(["*"] * depth)) if p.is_dir())


def unfinished(results: Path, stage: str, marker: str) -> list[Path]:
    """Keyed directories of ``stage`` that hold ``marker`` (a glob) but no manifest yet."""
    return [d for d in keyed_dirs(results, stage) if not (d / MANIFEST).exists() and any(d.glob(marker))]


def progress_names(gen_dir: Path) -> list[str]:
    """Names recorded in a generation directory's progress.jsonl (complete lines only)."""
    path = gen_dir / "progress.jsonl"
    if not path.is_file():
        return []
    names = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            names.append(json.loads(line)["name"])
        except (ValueError, KeyError, TypeError):
            pass
    return names


def digests(workdir: Path, categories: list[str] | None = None) -> dict[str, str]:
    """sha256 of every artifact that must be reproduced exactly, keyed by its results-relative path.

    Embeddings, generated images and masks, detector weights and evaluation metrics (values
    only: metrics.json holds no timings). Logs, loss curves with timings, montages and
    manifests (which record run times and resume counts) are left out on purpose.
    """
    results = workdir / "results"
    out: dict[str, str] = {}

    def add(path: Path) -> None:
        out[path.relative_to(results).as_posix()] = sha256(path)

    for d in keyed_dirs(results, "embeddings"):
        add(d / "learned_embeds.safetensors")
    for d in keyed_dirs(results, "generated"):
        for sub in ("images", "masks"):
            for p in sorted((d / sub).glob("*.png")):
                add(p)
    for d in keyed_dirs(results, "detectors"):
        add(d / "model.safetensors")
    for d in keyed_dirs(results, "evaluation"):
        add(d / "metrics.json")
    if categories is not None:
        out = {k: v for k, v in out.items() if k.split("/")[1] in categories}
    return out


def log_text(workdir: Path, rule: str, keyed_dir: Path) -> str:
    """The log of the job that writes ``keyed_dir`` (results/logs/<rule>/<wildcards>/<key>.log)."""
    rel = keyed_dir.relative_to(workdir / "results" / _STAGE_OF[rule])
    return (workdir / "results" / "logs" / rule / rel.parent / f"{rel.name}.log").read_text(errors="replace")


_STAGE_OF = {
    "select_support": "support",
    "estimate_foreground": "foreground",
    "learn_embedding": "embeddings",
    "generate_anomalies": "generated",
    "train_detector": "detectors",
    "evaluate_detector": "evaluation",
}
