"""The mutation check (tools/mutants.py, docs/mutation.md): every core mutant is a precise edit of
the current source, a stale one fails loudly, and the fast tests kill every core mutant."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 240  # the check's own budget; the run below allows some slack for a loaded machine


def _load_tool():
    spec = importlib.util.spec_from_file_location("anogen_mutants_tool", REPO / "tools" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


mutants = _load_tool()


def test_every_mutant_is_a_precise_named_edit_of_the_current_source():
    names = [m.name for m in mutants.MUTANTS]
    assert len(names) == len(set(names))
    for m in mutants.MUTANTS:
        text = (REPO / m.file).read_text(encoding="utf-8")
        assert text.count(m.original) == 1, f"stale mutant {m.name}: its snippet is not in {m.file} exactly once"
        assert m.replacement != m.original and m.focus
        files, _ = mutants.SUITES[m.suite]
        assert all((REPO / f).is_file() for f in files)
    # the modules whose formulas decide results all have core mutants
    core_files = {m.file for m in mutants.MUTANTS if m.core}
    assert {
        "anogen/embedding/trainer.py",
        "anogen/generation/inpaint.py",
        "anogen/detectors/losses.py",
        "anogen/detectors/synthetic.py",
        "anogen/evaluation/metrics.py",
        "anogen/keys.py",
        "anogen/plan_stages.py",
    } <= core_files


def test_a_stale_mutant_fails_loudly(tmp_path):
    stale = mutants.Mutant("gone", "anogen/keys.py", "no such line", "x", "keys", "content_keys")
    (tmp_path / "anogen").mkdir()
    (tmp_path / "anogen" / "keys.py").write_text("a = 1\n")
    with pytest.raises(mutants.StaleMutant, match="'gone'.*0 times"):
        mutants.apply(stale, tmp_path)
    (tmp_path / "anogen" / "keys.py").write_text("no such line\nno such line\n")
    with pytest.raises(mutants.StaleMutant, match="2 times"):
        mutants.apply(stale, tmp_path)
    # in a run it is reported as stale (not skipped, not killed), before any test runs
    outcomes = mutants.run_tasks([mutants._Task(stale, "gone", [])], 1, time.monotonic() + 60, 60, fork=False)
    assert [(o.name, o.status) for o in outcomes] == [("gone", "stale")]
    assert "mutation check FAILED" in mutants.report(outcomes, 0.0, False)


def test_a_surviving_mutant_fails_the_check():
    """An edit the tests cannot notice (here an equivalent one) is reported and fails the check."""
    same = mutants.Mutant(
        "same-key-length", "anogen/keys.py", "KEY_LENGTH = 12", "KEY_LENGTH = 6 * 2", "keys", "canonical"
    )
    outcomes, ok = mutants.run_check([same], jobs=1, budget=120, timeout=120, fork=False)
    assert [(o.name, o.status) for o in outcomes] == [("baseline:keys", "passed"), ("same-key-length", "survived")]
    assert not ok
    assert "NOT KILLED: same-key-length (survived)" in mutants.report(outcomes, 1.0, ok)


def test_pytest_args_narrow_a_suite_to_a_mutants_focus():
    assert mutants.pytest_args("metrics", ["8_connected"]) == ["tests/test_metrics.py", "-k", "8_connected"]
    assert mutants.pytest_args("metrics", None) == ["tests/test_metrics.py"]
    files, base = mutants.SUITES["detectors"]
    assert mutants.pytest_args("detectors", ["a", "b or c"]) == [*files, "-k", f"({base}) and ((a) or (b or c))"]


@pytest.mark.slow
def test_fast_tests_kill_every_core_mutant():
    """The check CI runs: 34 mutants, 2 at a time, about 1 min of CPU (2 min wall on a loaded 2-core box)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "mutants.py"), "--budget", str(BUDGET_S)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUDGET_S + 180,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, (
        f"mutation check failed after {seconds:.0f} s:\n{proc.stdout[-6000:]}{proc.stderr[-3000:]}"
    )
    assert "mutation check passed" in proc.stdout
