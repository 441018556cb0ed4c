"""The kit that takes the device check to a lent GPU machine (bench/device/): the carried
wheels cover what that machine's image lacks, and bench/gpu_check.py keeps going (and keeps
what it measured) when a phase fails or the lease's budget runs out."""

import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "bench" / "device"
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402


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
