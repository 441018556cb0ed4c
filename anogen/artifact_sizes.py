"""How much disk a run's artifacts take: the preflight's free-space check and the disk-full message.

Detector checkpoints dominate. A detector job keeps ``model.safetensors`` (float32 weights) and,
while it trains, ``checkpoints/state.pt`` (weights plus optimiser state: Adam's two moments for
DRAEM, SGD momentum for DeSTSeg's trained parts), written beside the old one before it replaces it.
Generated images are bounded by their raw size (PNG of noisy content barely compresses). The
sizes are upper bounds in bytes; ``bench``-style measurement of the demo is in the preflight test.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anogen.detectors.destseg.network import DestsegNet
from anogen.detectors.draem.network import DraemNet

# optimiser moments saved per trained weight
_OPTIMISER_STATES = {"draem": 2, "destseg": 1}
# an evaluation writes a few example panels and its metrics: bounded per test image
_EVALUATION_BYTES_PER_IMAGE = 64 * 1024


def detector_parameters(spec: dict) -> int:
    """Parameters (and persistent buffers) of the detector network a ``train_detector`` spec builds."""
    detector = spec["detector"]
    with torch.device("meta"):
        if detector == "draem":
            section = spec["draem"]
            net = DraemNet(int(section["recon_base_width"]), int(section["disc_base_width"]))
        else:
            net = DestsegNet(zero_init_last=bool(spec["destseg"]["zero_init_last"]))
    return sum(t.numel() for t in net.state_dict().values())


def detector_bytes(spec: dict) -> tuple[int, int]:
    """(bytes kept, bytes at the peak while training) of one detector job."""
    weights = 4 * detector_parameters(spec)
    state = weights * (1 + _OPTIMISER_STATES[spec["detector"]])
    return weights, weights + 2 * state  # the new state.pt is written before the old one goes


def generation_bytes(n_images: int, resolution: int) -> int:
    """Generated images and their box masks at the model resolution, plus the montage."""
    per_image = resolution * resolution * 3 + resolution * resolution
    return n_images * per_image + 4 * per_image


def evaluation_bytes(n_test: int) -> int:
    return n_test * _EVALUATION_BYTES_PER_IMAGE


def human(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"  # pragma: no cover


def run_bytes(plan, estimate, resolution: int, concurrent_jobs: int) -> dict[str, int]:
    """Bytes a whole run writes: per stage what it keeps, and the peak of ``concurrent_jobs``
    detector jobs training at once (``estimate``: ``anogen.estimate.build_jobs``'s jobs and counts)."""
    kept = {"generation": 0, "detector": 0, "evaluation": 0}
    peaks = []
    for job in estimate.jobs:
        if job.stage == "generation":
            kept["generation"] += generation_bytes(int(job.work), resolution)
        elif job.stage == "detector":
            category, detector, variant = job.name.split("/")[1:4]  # a study's jobs end in /<key>
            final, peak = detector_bytes((job.plan or plan).spec("detector", category, detector, variant))
            kept["detector"] += final
            peaks.append(peak - final)
        elif job.stage == "evaluation":
            kept["evaluation"] += evaluation_bytes(int(job.work))
    transient = sum(sorted(peaks, reverse=True)[: max(1, concurrent_jobs)])
    return {**kept, "training checkpoints (peak)": transient, "total": sum(kept.values()) + transient}


def nearest_existing(path) -> str:
    """``path`` or its closest existing ancestor (where ``shutil.disk_usage`` can look)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)
