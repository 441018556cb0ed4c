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


_FORKING_HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from anogen.devices import lease_device
    with lease_device(slots=1, lock_dir=sys.argv[1]):
        child = os.fork()  # as a DataLoader worker is forked inside the lease
        if child == 0:
            time.sleep(30)
            os._exit(0)
        print(json.dumps({"child": child}), flush=True)
        time.sleep(60)
    """
)


def test_killed_job_frees_its_slot_at_once_while_its_forked_child_lives(tmp_path):
    """With flock the lock belonged to the open file, which the forked child shares: the slot
    stayed taken until the child died (26.7 s with a child living 30 s)."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    p = subprocess.Popen(
        [sys.executable, "-c", _FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    child = json.loads(p.stdout.readline())["child"]
    try:
        p.send_signal(signal.SIGKILL)
        p.wait()
        start = time.monotonic()
        with lease_device(slots=1, lock_dir=tmp_path, wait_seconds=1.0, poll_seconds=0.02) as lease:
            took = time.monotonic() - start
            assert lease.slot == 0
        os.kill(child, 0)  # the child is still alive (raises if it is gone)
        assert took < 1.0
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_lease_in_one_process_takes_another_slot_and_keeps_the_first(tmp_path):
    """POSIX locks never conflict within a process and closing any descriptor of a locked file
    drops its lock: the lease must skip the slots this process holds, and not open them."""
    with lease_device(slots=2, lock_dir=tmp_path) as first, lease_device(slots=2, lock_dir=tmp_path) as second:
        assert {first.slot, second.slot} == {0, 1}
        probe = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True)
        assert "TimeoutError" in probe.stderr  # another process finds both slots taken


_PROBE = textwrap.dedent(
    """
    import sys
    from anogen.devices import lease_device
    with lease_device(slots=2, lock_dir=sys.argv[1], wait_seconds=0.2, poll_seconds=0.05):
        pass
    """
)


def test_gpu_count_never_initialises_cuda(monkeypatch, tmp_path):
    """NVML's count; every call that would initialise CUDA here is a spy that fails."""
    import anogen.devices as devices
    from tests.cuda_standins import simulate_gpu_count

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    spy = simulate_gpu_count(monkeypatch, 4)
    assert devices._gpu_count_without_init() == 4
    with lease_device(lock_dir=tmp_path) as lease:
        assert lease.device == "cuda" and lease.slot == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert spy.calls == []


def test_gpu_count_without_nvml_asks_a_child_process(monkeypatch):
    """NVML unavailable (or MIG ids): torch would fall back to a driver call that initialises
    CUDA in this process; the count is taken in a child process instead."""
    import anogen.devices as devices
    from tests.cuda_standins import simulate_gpu_count

    spy = simulate_gpu_count(monkeypatch, -1)
    monkeypatch.setattr(devices, "NVIDIA_CONTROL_DEVICE", str(__file__))  # "a driver is loaded"
    children = []
    monkeypatch.setattr(devices, "_gpu_count_in_child", lambda: children.append(1) or 2)
    assert devices._gpu_count_without_init() == 2 and children == [1]
    monkeypatch.setattr(devices, "NVIDIA_CONTROL_DEVICE", "/nonexistent/nvidiactl")  # no driver: no GPU
    assert devices._gpu_count_without_init() == 0 and children == [1]
    assert spy.calls == []


def test_gpu_count_in_a_child_process_leaves_cuda_alone_here():
    import anogen.devices as devices

    assert devices._gpu_count_in_child() >= 0
    assert not torch.cuda.is_initialized()


def test_lease_refuses_a_process_whose_cuda_is_initialised(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA was initialised in this process before its device lease"):
        with lease_device(slots=1, lock_dir=tmp_path):
            pass
