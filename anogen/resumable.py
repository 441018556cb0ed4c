"""One resumable job: what every stage's job function shares.

A keyed job writes into ``out_dir`` (named by its content key) and must survive a SIGKILL at
any point. Every stage does the same five things, and does them through this class:

1. **key check**: a checkpoint or completion record written for another key is refused, naming
   the file and how to restart (``IntegrityError``);
2. **checkpoint**: ``checkpoints/state.pt`` replaced atomically (``anogen.checkpoint``), the key
   stored inside it;
3. **kill hook for tests**: ``progressed(n)`` after each unit of work (a step, a batch) calls
   ``after_progress`` (tests replace it) and SIGKILLs the process after ``$ANOGEN_TEST_KILL_AFTER``
   units, so resume is tested on the real code path;
4. **completion record**: ``checkpoints/finished.json`` holds the sha256 of the finished files, so
   a rerun of a finished job (Snakemake reruns it when a runtime-only param changes) rewrites the
   manifest instead of redoing the work;
5. **manifest last**: ``write_manifest`` with exactly the spec and inputs the key was computed
   from (``anogen.io.write_manifest`` checks that).

Stages differ in what their state is (a vector and optimiser, per-image progress lines, a
network), never in these steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from anogen.checkpoint import load_checkpoint, save_checkpoint
from anogen.errors import IntegrityError
from anogen.io import MANIFEST_NAME, atomic_write_json, sha256_file, write_manifest

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.pt"
FINISHED_FILE = "finished.json"
# Test hook: SIGKILL the job process after this many units of work (steps or batches) of this run.
KILL_ENV = "ANOGEN_TEST_KILL_AFTER"


def after_progress(job: ResumableJob, done: int) -> None:
    """Called after every unit of work with the units done so far. Tests replace it."""


class ResumableJob:
    """Key check, checkpoint, kill hook, completion record and manifest of one keyed job."""

    def __init__(self, out_dir: str | Path, *, stage: str, key: str, spec: dict, inputs: dict):
        self.out_dir = Path(out_dir)
        self.stage, self.key, self.spec, self.inputs = stage, key, spec, inputs
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        self._units_this_run = 0

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR / STATE_FILE

    @property
    def finished_path(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR / FINISHED_FILE

    def _restart_hint(self) -> str:
        return f"delete {self.out_dir / CHECKPOINT_DIR} to restart this job from the beginning"

    # ------------------------------------------------------------------ 1 + 2: checkpoint, key checked
    def load_state(self) -> dict[str, Any] | None:
        """The saved state of an interrupted run of this job, or None."""
        state = load_checkpoint(self.checkpoint_path)
        if state is not None and state.get("key") != self.key:
            raise IntegrityError(
                self.checkpoint_path,
                f"checkpoint was written for key {state.get('key')!r}, not {self.key!r}",
                rebuild_hint=self._restart_hint(),
            )
        return state

    def restore(self, state: dict[str, Any], apply: Callable[[dict[str, Any]], Any]) -> Any:
        """``apply(state)``; a state that does not fit this job names the checkpoint."""
        try:
            return apply(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise IntegrityError(
                self.checkpoint_path, f"checkpoint does not fit this job ({exc})", rebuild_hint=self._restart_hint()
            ) from exc

    def save_state(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.checkpoint_path, {**state, "key": self.key})

    def drop_state(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)

    def start_afresh(self) -> None:
        """Forget an earlier run: its manifest first, so an interrupted rerun never looks complete."""
        (self.out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / CHECKPOINT_DIR, ignore_errors=True)

    # ------------------------------------------------------------------ 3: kill hook
    def progressed(self, done: int, units: int = 1) -> None:
        """Report ``units`` more units of work (``done`` in all); the test hooks run here."""
        self._units_this_run += units
        after_progress(self, done)
        if self._kill_after and self._units_this_run >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    @property
    def kill_pending(self) -> bool:
        """True when the next unit of work ends with the test SIGKILL (flush before it)."""
        return bool(self._kill_after) and self._units_this_run + 1 >= self._kill_after

    # ------------------------------------------------------------------ 4: completion record
    def finished_record(self) -> dict[str, Any] | None:
        """The completion record of an earlier run of this job, if its files are all intact."""
        try:
            record = json.loads(self.finished_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("key") != self.key:
            return None
        for name, digest in record.get("files", {}).items():
            path = self.out_dir / name
            if not path.is_file() or sha256_file(path) != digest:
                return None
        return record

    def mark_finished(self, files: Iterable[str], extra: dict[str, Any]) -> None:
        """Record completion, then drop the (possibly large) resumable state."""
        digests = {name: sha256_file(self.out_dir / name) for name in files}
        atomic_write_json(self.finished_path, {"key": self.key, "files": digests, "extra": extra})
        self.drop_state()

    # ------------------------------------------------------------------ 5: manifest last
    def write_manifest(self, files: list[str], extra: dict[str, Any]) -> Path:
        return write_manifest(
            self.out_dir, stage=self.stage, key=self.key, spec=self.spec, inputs=self.inputs, files=files, extra=extra
        )
