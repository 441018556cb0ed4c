"""Give each concurrently running GPU job its own device on a workstation.

Snakemake's ``resources: gpu=1`` is only a counter: it limits how many GPU jobs run at
once but says nothing about *which* GPU each one gets. Each job therefore leases a slot
by taking a non-blocking ``fcntl.lockf`` on one of N node-local lock files and exports
``CUDA_VISIBLE_DEVICES`` for that slot before CUDA is initialised. The kernel drops the
lock when the process exits, even on SIGKILL, so a crashed job never leaks its slot. The
lock is a POSIX record lock, owned by the process and not inherited by ``fork``: a
detector job forks its DataLoader workers inside the lease, and with ``flock`` (owned by
the open file, shared with every forked child) a killed job's slot stayed taken until
its last worker died.

The GPUs are counted without initialising CUDA (NVML, else a child process): once CUDA
is initialised a later ``CUDA_VISIBLE_DEVICES`` is ignored and every job would land on
GPU 0, so a lease in a process whose CUDA is already initialised is an error.

Under Slurm (``SLURM_JOB_ID`` set) nothing is done: Slurm has already restricted the job
to the GPUs it allocated. Without any GPU the job still leases a slot (so concurrency can
be tested and recorded on CPU) when a slot count is configured, and runs on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/anogen-gpu-slots"


@dataclasses.dataclass
class Lease:
    slot: int | None
    device: str  # "cuda" or "cpu"
    cuda_visible_devices: str | None
    reason: str
    host: str = dataclasses.field(default_factory=socket.gethostname)
    pid: int = dataclasses.field(default_factory=os.getpid)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _inherited_devices() -> list[str] | None:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [d.strip() for d in value.split(",") if d.strip()]


def _gpu_count_without_init() -> int:
    """GPUs this process may use (honours an inherited CUDA_VISIBLE_DEVICES), CUDA left uninitialised.

    ``torch.cuda.device_count()`` asks NVML, but where NVML is missing or the visible devices
    are MIG ids it falls back to a driver call that initialises CUDA in this process; after
    that the lease's ``CUDA_VISIBLE_DEVICES`` would be ignored. So: NVML's count, else none
    when the node has no NVIDIA driver at all, else a child process counts.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    if not torch.cuda._is_compiled():
        return 0
    count = torch.cuda._device_count_nvml()  # negative: NVML unavailable or MIG ids
    if count >= 0:
        return count
    if not os.path.exists(NVIDIA_CONTROL_DEVICE):
        return 0  # no NVIDIA driver on this node: nothing to count, nothing to initialise
    return _gpu_count_in_child()


NVIDIA_CONTROL_DEVICE = "/dev/nvidiactl"  # present wherever the NVIDIA driver is loaded
_COUNT_SCRIPT = "import torch; print(torch.cuda.device_count())"


def _gpu_count_in_child() -> int:
    """``torch.cuda.device_count()`` in a child process, so that any CUDA it initialises is not ours."""
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_SCRIPT], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    if done.returncode != 0:
        raise RuntimeError(f"counting GPUs in a child process failed: {done.stderr.strip()[-500:]}")
    return int(done.stdout.strip().splitlines()[-1])


def physical_device(slot: int, gpus: int, inherited: list[str] | None) -> str:
    """The CUDA_VISIBLE_DEVICES entry for ``slot``: mapped through the inherited list if any."""
    if inherited:
        return inherited[slot % len(inherited)]
    return str(slot % gpus)


def _cuda_initialised() -> bool:
    try:
        import torch

        return torch.cuda.is_initialized()
    except Exception:  # pragma: no cover
        return False


def _refuse_initialised_cuda() -> None:
    """Fail loudly: CUDA initialised before the lease would ignore the slot's CUDA_VISIBLE_DEVICES."""
    if _cuda_initialised():
        raise RuntimeError(
            "CUDA was initialised in this process before its device lease: the lease's "
            "CUDA_VISIBLE_DEVICES would be ignored and the job would run on GPU 0 whatever its slot; "
            "call anogen.devices.lease_device() before anything touches torch.cuda"
        )


@contextlib.contextmanager
def lease_device(
    slots: int | None = None,
    lock_dir: str | Path | None = None,
    wait_seconds: float = 24 * 3600,
    poll_seconds: float = 0.5,
    prefer_cpu: bool = False,
) -> Iterator[Lease]:
    """Lease one device slot for the lifetime of the ``with`` block.

    ``slots``: number of lock files (default: ``ANOGEN_GPU_SLOTS``, else the visible GPUs;
    with neither, no lock is taken and the job runs on the CPU).
    ``lock_dir``: node-local directory for the lock files (default ``ANOGEN_LOCK_DIR`` or
    /tmp/anogen-gpu-slots); node-local, as a lock on a shared file system may be slow or unreliable.
    """
    if os.environ.get("SLURM_JOB_ID"):
        gpus = _gpu_count_without_init()
        device = "cuda" if gpus > 0 and not prefer_cpu else "cpu"
        lease = Lease(None, device, os.environ.get("CUDA_VISIBLE_DEVICES"), "slurm assigns devices")
        log.info("device lease: %s", lease)
        yield lease
        return

    _refuse_initialised_cuda()
    gpus = 0 if prefer_cpu else _gpu_count_without_init()
    if slots is None and os.environ.get("ANOGEN_GPU_SLOTS"):
        slots = int(os.environ["ANOGEN_GPU_SLOTS"])
    if slots is None:
        if gpus == 0:
            # Nothing to share out: CPU jobs run side by side, as many as Snakemake allows.
            lease = Lease(None, "cpu", None, "no GPU visible and no slot count configured: CPU")
            log.info("device lease: %s", lease)
            yield lease
            return
        slots = gpus
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    lock_dir = Path(lock_dir or os.environ.get("ANOGEN_LOCK_DIR") or DEFAULT_LOCK_DIR)
    lock_dir.mkdir(parents=True, exist_ok=True)

    handle, slot = _acquire_slot(lock_dir, slots, wait_seconds, poll_seconds)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        handle.flush()
        if gpus > 0:
            physical = physical_device(slot, gpus, _inherited_devices())
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            os.environ["CUDA_VISIBLE_DEVICES"] = physical
            lease = Lease(slot, "cuda", physical, f"slot {slot} of {slots} in {lock_dir}")
        else:
            lease = Lease(slot, "cpu", None, f"slot {slot} of {slots} in {lock_dir}; no GPU, using CPU")
        log.info("device lease: %s", lease)
        yield lease
    finally:
        _release_slot(handle)


# Lock files this process holds. POSIX locks never conflict within one process, and closing
# ANY descriptor of a locked file drops the process's lock on it, so a second lease in the
# same process must neither test nor open a slot this process already holds.
_HELD: dict[str, object] = {}


def _acquire_slot(lock_dir: Path, slots: int, wait_seconds: float, poll_seconds: float):
    """The open, ``lockf``-locked file of the first free slot and its number; waits while all are busy."""
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        for candidate in range(slots):
            path = str((lock_dir / f"slot-{candidate}.lock").resolve())
            if path in _HELD:
                continue
            fh = open(path, "a+")
            try:
                fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EAGAIN / EACCES: another process holds it
                fh.close()
                continue
            _HELD[path] = fh
            return fh, candidate
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free device slot in {lock_dir} after {wait_seconds}s")
        if not announced:
            log.warning("all %d device slots in %s are busy; waiting", slots, lock_dir)
            announced = True
        time.sleep(poll_seconds)


def _release_slot(handle) -> None:
    _HELD.pop(handle.name, None)
    fcntl.lockf(handle.fileno(), fcntl.LOCK_UN)
    handle.close()


# ----------------------------------------------------------------------------- numeric precision
# The one place a mixed-precision mode is turned into a dtype: the embedding trainer, the
# inpainting sampler and both detectors ask here, with the device string of their lease.
PRECISION_MODES = ("no", "auto", "bf16", "fp16")


def is_cuda(device) -> bool:
    """``"cuda"``, ``"cuda:1"`` or a ``torch.device`` of type cuda."""
    return str(device).split(":", 1)[0] == "cuda"


def effective_precision(mode: str, device) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: what ``mode`` means on ``device``.

    ``"no"`` is float32 everywhere; ``"auto"`` is bf16 on GPUs that support it, else fp16;
    ``"bf16"``/``"fp16"`` force one. A CPU always runs float32.
    """
    if mode not in PRECISION_MODES:
        raise ValueError(f"unknown mixed_precision {mode!r} (one of {PRECISION_MODES})")
    if mode == "no" or not is_cuda(device):
        return "fp32"
    if mode == "auto":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return mode


def autocast_dtype(mode: str, device):
    """The autocast ``torch.dtype`` of ``mode`` on ``device``; None for float32."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[effective_precision(mode, device)]


def autocast(mode: str, device):
    """A context manager: autocast to the effective precision, or nothing for float32."""
    import torch

    dtype = autocast_dtype(mode, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


def grad_scaler(mode: str, device):
    """Loss scaling, needed by fp16 autocast only; None otherwise."""
    import torch

    return torch.amp.GradScaler("cuda") if effective_precision(mode, device) == "fp16" else None
