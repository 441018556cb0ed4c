"""The kit that takes the device check to a lent GPU machine (bench/device/): the carried
wheels cover what that machine's image lacks, and bench/gpu_check.py keeps going (and keeps
what it measured) when a phase fails or the lease's budget runs out."""

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "bench" / "device"
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
import gpu_check_report  # noqa: E402
import gpu_check_stages  # noqa: E402


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _pins() -> dict[str, str]:
    pins = {}
    for line in _lines(KIT / "wheels.txt"):
        name, sep, version = line.partition("==")
        assert sep and version, f"wheels.txt: {line!r} is not pinned as name==version"
        assert _norm(name) not in pins, f"wheels.txt: {name} twice (pip --no-deps would install both)"
        pins[_norm(name)] = version
    return pins


def test_wheels_cover_what_the_device_image_lacks():
    """Walk anogen's runtime requirements as Python 3.12 on x86-64 Linux sees them; a package the
    image has ends the walk (its own needs are the image's), any other must be carried."""
    image = {_norm(n) for n in _lines(KIT / "image-packages.txt")}
    pins = _pins()
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}
    env.update(sys_platform="linux", platform_machine="x86_64")
    needed, stack, seen = {}, [("anogen", None)], set()
    while stack:
        name, parent = stack.pop()
        if _norm(name) in seen:
            continue
        seen.add(_norm(name))
        if name != "anogen":
            if _norm(name) in image:
                continue
            needed[_norm(name)] = parent
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                stack.append((req.name, name))
    missing = {n: p for n, p in needed.items() if n not in pins}
    assert not missing, (
        f"not carried to the GPU machine (package: needed by): {missing}; add to bench/device/wheels.txt"
    )
    assert "diffusers" in needed and "snakemake" in needed  # the walk saw the packages the image lacks


def test_wheel_pins_are_the_tested_versions():
    for name, version in _pins().items():
        try:
            here = md.version(name)
        except md.PackageNotFoundError:
            continue  # a pin for the device alone (none today)
        assert here == version, f"wheels.txt pins {name}=={version}, the tested environment has {here}"


def test_device_scripts_parse():
    for script in ("fetch_wheels.sh", "run_check.sh"):
        subprocess.run(["bash", "-n", str(KIT / script)], check=True)


_FAKE_PIP = """#!/usr/bin/env bash
# stands in for `python -m pip download ... -d DEST name==version`: writes that wheel's name
dest=""; req=""
while [ $# -gt 0 ]; do
    case "$1" in -d) dest=$2; shift ;; *==*) req=$1 ;; esac
    shift
done
touch "$dest/${req%%==*}-${req##*==}-py3-none-any.whl"
"""


def test_fetch_wheels_starts_from_an_empty_folder(tmp_path):
    """A wheel of an earlier pin left in the folder would be installed beside the new one."""
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PIP)
    fake.chmod(0o755)
    dest = tmp_path / "whl"
    dest.mkdir()
    (dest / "diffusers-0.1.0-py3-none-any.whl").touch()
    env = {**os.environ, "PYTHON": str(fake), "WHEELS": str(dest)}
    subprocess.run(["bash", str(KIT / "fetch_wheels.sh")], check=True, env=env, capture_output=True)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}-{v}-py3-none-any.whl" for n, v in _wheel_pins())


def _wheel_pins() -> list[tuple[str, str]]:
    return [tuple(line.split("==", 1)) for line in _lines(KIT / "wheels.txt")]


def _run(tmp_path, budget_s=None):
    args = SimpleNamespace(cpu=True, tiny=True, device="cpu", budget_s=budget_s)
    return gpu_check.CheckRun(args, "cpu", tmp_path / "t.json")


def test_a_failing_phase_is_reported_and_the_check_goes_on(tmp_path):
    run = _run(tmp_path)

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access")

    assert run.phase("stage 1", broken) is None
    assert run.phase("stage 2", lambda: [{"stage": "generation", "variant": "x", "value": 3.0}]) is not None
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["checks"] == [
        {"check": "stage 1 phase", "ok": False, "detail": "RuntimeError: CUDA error: an illegal memory access"}
    ]
    assert set(saved["phase_s"]) == {"stage 1", "stage 2"}


def test_a_phase_past_the_budget_is_skipped_not_run(tmp_path):
    run = _run(tmp_path, budget_s=5)
    ran = []
    assert run.phase("stage 2", lambda: ran.append(1), need_s=120) is None
    assert not ran and not run.checks[0]["ok"] and run.checks[0]["detail"].startswith("skipped:")
    assert json.loads((tmp_path / "t.json").read_text())["checks"][0]["check"] == "stage 2 phase"


def test_preflight_names_a_missing_module(monkeypatch):
    monkeypatch.setattr(gpu_check, "RUNTIME_MODULES", ("yaml", "no_such_module_for_anogen"))
    with pytest.raises(RuntimeError, match=r"no_such_module_for_anogen.*fetch_wheels\.sh"):
        gpu_check.preflight(SimpleNamespace(device="cpu"))


# phases for the child-process test below: gpu_check.py --phase imports them from here
def _phase_sticky_error(args):
    os.kill(os.getpid(), 9)  # as a process whose CUDA context a sticky error poisoned dies


def _phase_pid(args, tag):
    return [{"stage": "generation", "variant": tag, "value": 1.0, "pid": os.getpid(), "device": args.device}]


def test_each_phase_runs_in_its_own_process(tmp_path):
    """A phase that dies (a sticky CUDA error poisons its context for good) fails alone; the
    next phase runs in a fresh process, with the check's own arguments."""
    run = _run(tmp_path)
    run.args.argv = ["--cpu", "--tiny"]
    assert run.phase("stage 1", run.in_child("tests.test_device_kit:_phase_sticky_error")) is None
    rows = run.phase("stage 2", run.in_child("tests.test_device_kit:_phase_pid", "after"))
    assert rows[0]["variant"] == "after" and rows[0]["device"] == "cpu"
    assert rows[0]["pid"] != os.getpid()
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [c["check"] for c in saved["checks"]] == ["stage 1 phase"]
    assert "exited" in saved["checks"][0]["detail"]


def test_stage1_row_says_whether_a_cuda_graph_ran(monkeypatch):
    """On the CPU stand-ins for CUDA (tests/cuda_standins.py): a captured graph is labelled
    so; a failed capture (the trainer goes on eagerly) is labelled and fails a check."""
    from bench_generation import build_backbone

    import anogen.embedding.trainer as trainer_mod
    from tests import cuda_standins

    cuda_standins.simulate_cuda_device(monkeypatch, trainer_mod)
    cuda_standins.cuda_autocast_on_cpu(monkeypatch)
    cuda_standins.cuda_graphs_on_cpu(monkeypatch)
    args = SimpleNamespace(device="cpu", cpu=True, tiny=True)
    backbone, _ = build_backbone("ldm", "tiny", 64, "cpu")
    kw = {"static_inputs": True, "cuda_graph": True}
    row = gpu_check_stages._stage1_variant(args, backbone, 0, "CUDA graph", kw, "async", 1)
    assert (row["variant"], row["cuda_graph"]) == ("CUDA graph", True) and row["value"] > 0

    def failing_capture(graph, *a, **k):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", failing_capture)
    row = gpu_check_stages._stage1_variant(args, backbone, 1, "CUDA graph", kw, "async", 1)
    assert row["variant"] == "CUDA graph NOT captured: eager static buffers" and row["cuda_graph"] is False
    checks = []
    gpu_check_report.record_graph_checks(checks, [row])
    assert checks == [
        {
            "check": "stage-1 benchmark ran as a CUDA graph",
            "ok": False,
            "detail": "capture failed: the eager path was timed",
        }
    ]
