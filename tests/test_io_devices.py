"""Atomic writes, manifests, checkpoints and the device lease."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from anogen.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from anogen.devices import lease_device, physical_device
from anogen.errors import DataError, IntegrityError
from anogen.io import atomic_path, atomic_save_image, read_image, verify_file, verify_manifest, write_manifest


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_manifest_detects_edits_and_truncation(tmp_path):
    atomic_save_image(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "emb.bin").write_bytes(b"x" * 100)
    m = write_manifest(
        tmp_path, stage="t", key="k" * 12, spec={"a": 1}, inputs={"up": "u"}, files=["images/a.png", "emb.bin"]
    )
    manifest = verify_manifest(m)
    assert set(manifest["files"]) == {"images/a.png", "emb.bin"}
    (tmp_path / "emb.bin").write_bytes(b"x" * 99)
    with pytest.raises(IntegrityError, match="emb.bin.*truncated or edited") as err:
        verify_file(m, "emb.bin", rebuild_hint="snakemake --forcerun x")
    assert "snakemake --forcerun x" in str(err.value)


def test_read_image_names_truncated_file(tmp_path):
    path = tmp_path / "img.png"
    atomic_save_image(path, (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"img.png: unreadable or truncated"):
        read_image(path)
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_checkpoint_roundtrip_restores_every_rng(tmp_path):
    import random

    gen = torch.Generator().manual_seed(5)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng({"data": gen})
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    save_checkpoint(tmp_path / "state.pt", {"rng": state, "step": 7, "w": torch.arange(3.0)})
    loaded = load_checkpoint(tmp_path / "state.pt")  # weights_only=True inside
    gen2 = torch.Generator()
    restore_rng(loaded["rng"], {"data": gen2})
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen2).item())
    assert again == expected
    assert loaded["step"] == 7


def test_damaged_checkpoint_is_an_error(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IntegrityError, match="state.pt"):
        load_checkpoint(tmp_path / "state.pt")
    assert load_checkpoint(tmp_path / "absent.pt") is None


_HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from anogen.devices import lease_device, physical_device
    with lease_device(slots=int(sys.argv[1]), lock_dir=sys.argv[2]) as lease:
        print(json.dumps(lease.as_dict()), flush=True)
        start = time.time()
        time.sleep(float(sys.argv[3]))
        print(json.dumps({"start": start, "end": time.time()}), flush=True)
    """
)


def _spawn(tmp_path, slots, hold, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(slots), str(tmp_path / "locks"), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_concurrent_leases_get_distinct_slots(tmp_path):
    procs = [_spawn(tmp_path, 2, 1.5) for _ in range(4)]
    records = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines()]
        records.append({**lines[0], **lines[1]})
    assert all(r["device"] == "cpu" for r in records)
    assert {r["slot"] for r in records} == {0, 1}
    # at any moment, at most one holder per slot and at most two in all
    events = sorted([(r["start"], 1, r["slot"]) for r in records] + [(r["end"], -1, r["slot"]) for r in records])
    running: dict[int, int] = {}
    for _, delta, slot in events:
        running[slot] = running.get(slot, 0) + delta
        assert running[slot] <= 1
        assert sum(running.values()) <= 2


def test_lease_is_released_on_sigkill(tmp_path):
    p = _spawn(tmp_path, 1, 60)
    json.loads(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait()
    start = time.time()
    with lease_device(slots=1, lock_dir=tmp_path / "locks", wait_seconds=5) as lease:
        assert lease.slot == 0
    assert time.time() - start < 5


def test_slots_map_through_inherited_cuda_visible_devices():
    assert [physical_device(s, 2, ["5", "7"]) for s in range(3)] == ["5", "7", "5"]
    assert [physical_device(s, 4, None) for s in range(4)] == ["0", "1", "2", "3"]


def test_lease_with_gpus_sets_cuda_visible_devices(tmp_path, monkeypatch):
    import anogen.devices as devices

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setattr(devices, "_gpu_count_without_init", lambda: 2)
    with lease_device(slots=2, lock_dir=tmp_path) as first:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # a second job inherits the same list
        with lease_device(slots=2, lock_dir=tmp_path) as second:
            assert (first.device, second.device) == ("cuda", "cuda")
            assert (first.cuda_visible_devices, second.cuda_visible_devices) == ("5", "7")
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
            assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_lease_does_nothing_under_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with lease_device(lock_dir=tmp_path) as lease:
        assert lease.slot is None and "slurm" in lease.reason
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert not list(tmp_path.iterdir())
