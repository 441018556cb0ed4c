"""Runtime-only speed settings of a detector job: cudnn autotuning, memory layout, loader workers.

Neither setting changes what is trained (batches are a pure function of (seed, step) whatever
the worker count; channels_last is the same function in another memory layout), so both stay
out of the content key and come from the environment, not the config.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from anogen.devices import is_cuda

CHANNELS_LAST_ENV = "ANOGEN_DETECTOR_CHANNELS_LAST"  # "0" turns channels_last off on CUDA
WORKERS_ENV = "ANOGEN_DETECTOR_WORKERS"  # loader worker count override
MAX_WORKERS = 16


def use_channels_last(device: str) -> bool:
    """channels_last on CUDA (tensor-core convolutions without layout transposes) unless disabled.
    Off on CPU: there it slows DeSTSeg's student phase down (measured) and changes round-off."""
    return is_cuda(device) and os.environ.get(CHANNELS_LAST_ENV, "1") != "0"


def to_channels_last(trainer) -> None:
    """Weights in channels_last; NCHW batches need no conversion (a convolution with
    channels_last weights returns channels_last, so the layout propagates from the first layer)."""
    trainer.model.to(memory_format=torch.channels_last)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _default_workers(device: str) -> int:
    """Loader workers: none on CPU (the jobs already fill the cores); on CUDA the CPUs of this
    node shared among its device slots, one left for the training process, at most 16.
    Synthesis costs ~5-20 ms per 256 px sample on one core (bench_detector_throughput.py), so
    DRAEM's ~250+ img/s need about 4-8 workers and DeSTSeg more."""
    override = os.environ.get(WORKERS_ENV)
    if override is not None and override.strip():
        return max(0, int(override))
    if not is_cuda(device):
        return 0
    slots = int(os.environ.get("ANOGEN_GPU_SLOTS") or 0) or max(1, torch.cuda.device_count())
    return max(0, min(MAX_WORKERS, _usable_cpus() // slots - 1))


def speed_setup(trainer, device: str, num_workers: int | None) -> dict[str, Any]:
    """Runtime-only speed settings (cudnn autotuning, memory layout, loader workers)."""
    if is_cuda(device):
        torch.backends.cudnn.benchmark = True
    channels_last = use_channels_last(device)
    if channels_last:
        to_channels_last(trainer)
    workers = _default_workers(device) if num_workers is None else int(num_workers)
    return {"channels_last": channels_last, "loader_workers": workers}
