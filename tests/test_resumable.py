"""anogen.resumable: the key check, checkpoint, kill hook, completion record and manifest every stage uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from anogen import resumable
from anogen.errors import IntegrityError
from anogen.io import load_manifest
from anogen.keys import content_key
from anogen.resumable import KILL_ENV, ResumableJob

SPEC, INPUTS = {"steps": 3}, {"data": "abc"}
KEY = content_key(SPEC, INPUTS)


def job(tmp_path, key=KEY):
    return ResumableJob(tmp_path / key, stage="test", key=key, spec=SPEC, inputs=INPUTS)


def test_state_round_trip_and_key_check(tmp_path):
    j = job(tmp_path)
    assert j.load_state() is None
    j.save_state({"step": 2})
    assert j.load_state() == {"step": 2, "key": KEY}
    other = ResumableJob(j.out_dir, stage="test", key="0" * 12, spec=SPEC, inputs=INPUTS)
    with pytest.raises(IntegrityError, match="written for key"):
        other.load_state()
    with pytest.raises(IntegrityError, match="does not fit this job"):
        j.restore({"step": 2}, lambda state: state["missing"])


def test_finished_record_needs_intact_files(tmp_path):
    j = job(tmp_path)
    (j.out_dir / "a.txt").write_text("a")
    j.save_state({"step": 3})
    j.mark_finished(["a.txt"], {"final": 1})
    assert not j.checkpoint_path.exists()
    assert j.finished_record()["extra"] == {"final": 1}
    (j.out_dir / "a.txt").write_text("edited")
    assert j.finished_record() is None


def test_manifest_records_the_hashed_spec(tmp_path):
    j = job(tmp_path)
    (j.out_dir / "a.txt").write_text("a")
    manifest = load_manifest(j.write_manifest(["a.txt"], {"n": 1}))
    assert content_key(manifest["spec"], manifest["inputs"]) == KEY
    j.start_afresh()
    assert not (j.out_dir / "manifest.json").exists()


def test_progress_hook_and_kill(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(resumable, "after_progress", lambda job, done: seen.append(done))
    j = job(tmp_path)
    for step in range(1, 4):
        j.progressed(step)
    assert seen == [1, 2, 3]
    code = (
        "import sys; from anogen.resumable import ResumableJob\n"
        "j = ResumableJob(sys.argv[1], stage='t', key='k', spec={}, inputs={})\n"
        "for step in range(1, 10):\n"
        "    print(step, j.kill_pending, flush=True); j.progressed(step)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "k")],
        env=dict(os.environ, **{KILL_ENV: "2"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["1", "False", "2", "True"]
