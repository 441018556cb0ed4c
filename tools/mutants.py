"""Targeted mutation check: plausible one-line bugs in the code that decides results must fail a test.

Each mutant (listed in ``tools/mutant_list.py``) is a precise, named textual edit (file,
original snippet, replacement) of a module whose formulas decide results: the embedding loss
and latent mask, inpainting and guidance, the weak loss and synthetic anomalies, the metrics,
content keys and planning. For every mutant the
repository's files are copied to a fresh temporary folder, the copy is edited (never the
working tree), and that module's fast tests run against the copy (``pytest -x`` with the copy
as working directory and first on ``PYTHONPATH``): the tests its ``focus`` names, or with
``--full`` every fast test of its module. Runs are forked from a parent that has imported the
heavy third-party modules once (torch, diffusers, scikit-learn), so a run costs about the tests
themselves; ``--no-fork`` starts a fresh interpreter per run instead. A mutant is

- ``killed`` when a test fails (pytest exit code 1), which is what we want;
- ``survived`` when every test passes: the tests miss that bug;
- ``stale`` when its original snippet does not occur exactly once in the file any more (the
  source changed: update the mutant, never drop it silently);
- ``error`` / ``timeout`` for any other pytest outcome (collection error, no test selected, hang).

Before the mutants, each test suite they use runs once on an unmodified copy and must pass, so
a kill always means the edit was noticed. The check succeeds (exit 0) only when every selected
core mutant is killed within the time budget; it prints one line per mutant and the survivors.

    .venv/bin/python tools/mutants.py                  # the core list (what CI runs)
    .venv/bin/python tools/mutants.py --module metrics # the mutants of one module
    .venv/bin/python tools/mutants.py --list           # names, files and suites, nothing run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # the mutants beside this file, however it is loaded

from mutant_list import MUTANTS, SUITES, Mutant, pytest_args  # noqa: E402


class StaleMutant(RuntimeError):
    """A mutant's original snippet no longer occurs exactly once in its file."""


# ----------------------------------------------------------------------------- running


def repo_files(root: Path = REPO) -> list[str]:
    """The repository's files (tracked, and untracked ones git does not ignore)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but outputs
        skip = {".git", ".venv", "results", "resources", ".snakemake", "__pycache__", ".pytest_cache"}
        names = [
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(root).parts)
        ]
    return [n for n in names if (root / n).is_file() and not (root / n).is_symlink()]


def copy_repo(dest: Path, files: list[str], root: Path = REPO) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply(mutant: Mutant, tree: Path) -> None:
    """Edit ``mutant.file`` inside ``tree`` (a copy of the repository); raise if the snippet is stale."""
    path = tree / mutant.file
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    count = text.count(mutant.original)
    if count != 1:
        raise StaleMutant(
            f"mutant {mutant.name!r}: its original snippet occurs {count} times in {mutant.file} "
            f"(expected once): {mutant.original!r} -- update the mutant to the changed source"
        )
    path.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # killed | survived | stale | error | timeout | not run | passed | failed (baseline)
    seconds: float
    detail: str = ""


# Third-party modules the tests import, loaded once by the parent so that each forked run only
# imports anogen (from its copy) and the tests: a fresh interpreter per mutant would spend most
# of its time importing torch, diffusers and scikit-learn again.
PRELOAD = (
    "numpy",
    "torch",
    "torch.nn.functional",
    "scipy.ndimage",
    "sklearn.metrics",
    "PIL.Image",
    "cv2",
    "yaml",
    "jsonschema",
    "skimage.data",
    "diffusers",
    "transformers",
    "safetensors.torch",
    "pytest",
)


def preload() -> None:
    import importlib

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as tests/conftest.py; before torch is imported
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    loaded = [m for m in ("anogen", "tests") if m in sys.modules]
    if loaded:  # a forked run must import these from its own copy
        raise RuntimeError(f"{loaded} imported before forking: the mutants would not be seen")


PYTEST_FLAGS = ("-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly")


class _Run:
    """One pytest run on a copy of the repository, in a forked child or (``fork=False``) a new
    interpreter; its output goes to ``log``."""

    def __init__(self, tree: Path, args: list[str], fork: bool):
        self.log = tree.parent / "pytest.log"
        args = [f"--basetemp={tree.parent / 'basetemp'}", *args]  # never pytest's shared numbered folders
        self.start = time.monotonic()
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
        if not fork:
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", *PYTEST_FLAGS, *args], cwd=tree, env=env, stdout=out, stderr=out
                )
            self.pid = self.proc.pid
            return
        self.proc = None
        sys.stdout.flush()  # or the child would write the parent's buffered output again
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            code = 3
            try:
                fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.clear()
                os.environ.update(env)
                os.chdir(tree)
                sys.path.insert(0, str(tree))
                import pytest

                code = int(pytest.main([*PYTEST_FLAGS, *args]))
            except BaseException:  # noqa: BLE001 -- report anything, then leave without cleanup
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        else:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _first_failure(output: str) -> str:
    # pytest's summary lines (a captured log line may start with "ERROR    " too)
    lines = [ln for ln in output.splitlines() if ln.startswith(("FAILED tests/", "ERROR tests/"))]
    return lines[0].split(" - ")[0] if lines else output.strip().splitlines()[-1] if output.strip() else ""


@dataclasses.dataclass
class _Task:
    mutant: Mutant | None  # None: a baseline
    name: str
    args: list[str]


def _outcome(task: _Task, rc: int | None, output: str, seconds: float, timeout: float) -> Outcome:
    if rc is None:
        return Outcome(task.name, "timeout", seconds, f"pytest ran over {timeout:.0f} s")
    if task.mutant is None:
        return Outcome(task.name, "passed" if rc == 0 else "failed", seconds, "" if rc == 0 else output[-3000:])
    status = {0: "survived", 1: "killed"}.get(rc, "error")
    detail = _first_failure(output) if status == "killed" else output[-3000:] if status == "error" else ""
    return Outcome(task.name, status, seconds, detail)


def _start(task: _Task, files: list[str], fork: bool) -> tuple[_Run | None, Path, Outcome | None]:
    """Copy the repository to a fresh folder, apply the mutant there and start its tests."""
    tmp = Path(tempfile.mkdtemp(prefix="anogen-mutant-"))
    tree = tmp / "repo"
    copy_repo(tree, files)
    if task.mutant is not None:
        try:
            apply(task.mutant, tree)
        except StaleMutant as err:
            return None, tmp, Outcome(task.name, "stale", 0.0, str(err))
    return _Run(tree, task.args, fork), tmp, None


def run_tasks(tasks: list[_Task], jobs: int, budget_end: float, timeout: float, fork: bool) -> list[Outcome]:
    """Run the tasks, ``jobs`` at a time, each on its own copy; none starts after ``budget_end``."""
    files = repo_files()
    results: dict[int, Outcome] = {}
    running: dict[int, tuple[_Run, Path]] = {}
    queue = list(enumerate(tasks))
    try:
        while queue or running:
            while queue and len(running) < jobs:
                i, task = queue.pop(0)
                if time.monotonic() > budget_end:
                    results[i] = Outcome(task.name, "not run", 0.0, "over the time budget")
                    continue
                run, tmp, done = _start(task, files, fork)
                if done is not None:
                    results[i] = done
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    running[i] = (run, tmp)
            for i, (run, tmp) in list(running.items()):
                rc, seconds = run.poll(), time.monotonic() - run.start
                if rc is None and seconds <= timeout:
                    continue
                if rc is None:
                    run.kill()
                results[i] = _outcome(tasks[i], rc, run.output(), seconds, timeout)
                shutil.rmtree(tmp, ignore_errors=True)
                del running[i]
            time.sleep(0.05)
    finally:
        for run, tmp in running.values():
            run.kill()
            shutil.rmtree(tmp, ignore_errors=True)
    return [results[i] for i in range(len(tasks))]


def run_check(
    mutants: list[Mutant], jobs: int, budget: float, timeout: float, full: bool = False, fork: bool = True
) -> tuple[list[Outcome], bool]:
    """Baselines of the suites used, then every mutant; returns the outcomes and whether the check passed.

    Each mutant runs the tests of its ``focus`` (``full``: its whole suite); each baseline runs
    the union of its suite's focused tests (``full``: the whole suite) on an unmodified copy."""
    start = time.monotonic()
    fork = fork and hasattr(os, "fork")
    if fork:
        preload()
    suites = sorted({m.suite for m in mutants})
    baselines = [
        _Task(
            None, f"baseline:{s}", pytest_args(s, None if full else sorted({m.focus for m in mutants if m.suite == s}))
        )
        for s in suites
    ]
    outcomes = run_tasks(baselines, jobs, start + budget, timeout, fork)
    if any(b.status != "passed" for b in outcomes):
        return outcomes, False
    tasks = [_Task(m, m.name, pytest_args(m.suite, None if full else [m.focus])) for m in mutants]
    outcomes += run_tasks(tasks, jobs, start + budget, timeout, fork)
    core = {m.name for m in mutants if m.core}
    ok = all(o.status == "killed" for o in outcomes if o.name in core)
    return outcomes, ok


def select(module: str | None, names: list[str] | None, include_all: bool) -> list[Mutant]:
    chosen = [m for m in MUTANTS if include_all or m.core]
    if module:
        chosen = [m for m in chosen if module in (m.suite, Path(m.file).stem, m.file)]
    if names:
        unknown = set(names) - {m.name for m in MUTANTS}
        if unknown:
            raise SystemExit(f"unknown mutant(s): {sorted(unknown)}")
        chosen = [m for m in MUTANTS if m.name in names]
    if not chosen:
        raise SystemExit(f"no mutant selected (module {module!r}); suites: {sorted(SUITES)}")
    return chosen


def report(outcomes: list[Outcome], seconds: float, ok: bool) -> str:
    lines = [
        f"{o.status:>9}  {o.name:<28} {o.seconds:6.1f} s  {o.detail.splitlines()[0] if o.detail else ''}"
        for o in outcomes
    ]
    bad = [o for o in outcomes if o.status not in ("killed", "passed")]
    for o in bad:
        if o.detail and o.status in ("error", "failed", "stale"):
            lines += [f"--- {o.name} ({o.status}):", o.detail]
    killed = sum(o.status == "killed" for o in outcomes)
    mutants = sum(not o.name.startswith("baseline:") for o in outcomes)
    lines.append(f"{killed}/{mutants} mutants killed in {seconds:.0f} s")
    if bad:
        lines.append("NOT KILLED: " + ", ".join(f"{o.name} ({o.status})" for o in bad))
    lines.append("mutation check " + ("passed" if ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module", help="only this module's mutants: a suite name or a file stem, e.g. metrics, inpaint"
    )
    parser.add_argument("--mutant", action="append", help="only this mutant (repeatable)")
    parser.add_argument("--all", action="store_true", help="non-core mutants too")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--full", action="store_true", help="run each mutant against its whole suite, not its focus")
    parser.add_argument("--no-fork", action="store_true", help="a new interpreter per run instead of a forked one")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="mutants run at once")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the whole check")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for one pytest run")
    args = parser.parse_args(argv)
    mutants = select(args.module, args.mutant, args.all)
    if args.list:
        for m in mutants:
            print(
                f"{m.name:<28} {'core' if m.core else 'extra':<5} {m.file:<31} {' '.join(pytest_args(m.suite, [m.focus]))}"
            )
        return 0
    start = time.monotonic()
    outcomes, ok = run_check(mutants, max(1, args.jobs), args.budget, args.timeout, args.full, not args.no_fork)
    print(report(outcomes, time.monotonic() - start, ok), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
