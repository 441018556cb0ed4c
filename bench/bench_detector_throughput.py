"""Training throughput of the stage-3 detectors and the projected time of the paper budgets.

Measures, at full published width (DRAEM 128/64, DeSTSeg ResNet18) and --size px:
  - training steps/s and images/s of DRAEM (batch 8 and 16) and of both DeSTSeg phases
    (batch 32), on random batches already on the device (model cost only), with bf16
    autocast on GPUs (anogen.devices.autocast) and optionally fp32 for comparison;
  - the CPU data pipeline (synthetic anomalies incl. Perlin + texture augmentation) in
    samples/s of one process, to size DataLoader workers;
and prints the projected training time for all 15 MVTec categories:
  DRAEM 700 epochs x ceil(n_train / batch) steps (n_train per category from MVTec),
  DeSTSeg 1000 student steps + 4000 segmentation steps at batch 32,
per variant (baseline, anogen: the same budget each).

  - CPU sample synthesis (``TrainStream.batch`` per batch 8/16/32, baseline and anogen)
    and the loader workers needed for 250 / 500 / 880 img/s;
  - with --channels-last, the networks in channels_last (what train_detector uses on CUDA).

Usage: python bench/bench_detector_throughput.py [--device auto|cpu|cuda] [--size 256]
       [--steps 20] [--warmup 5] [--fp32] [--channels-last] [--synthesis-only]
On a CPU the defaults shrink (size 64, 3 timed steps) unless given.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anogen.devices import is_cuda  # noqa: E402

MVTEC_TRAIN = {
    "bottle": 209,
    "cable": 224,
    "capsule": 219,
    "carpet": 280,
    "grid": 264,
    "hazelnut": 391,
    "leather": 245,
    "metal_nut": 220,
    "pill": 267,
    "screw": 320,
    "tile": 230,
    "toothbrush": 60,
    "transistor": 213,
    "wood": 247,
    "zipper": 240,
}


def _sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def _batch(n: int, size: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.9).float()
    return {
        "image": torch.rand(n, 3, size, size, generator=g).to(device),
        "clean": torch.rand(n, 3, size, size, generator=g).to(device),
        "mask": mask.to(device),
        "weak": torch.ones(n, dtype=torch.bool, device=device),
    }


def _time_steps(trainer, batch, first_step: int, warmup: int, steps: int, device: str) -> float:
    for i in range(warmup):
        trainer.train_step(batch, first_step + i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        trainer.train_step(batch, first_step + i)
    _sync(device)
    return steps / (time.perf_counter() - t0)


@contextlib.contextmanager
def _precision(fp32: bool):
    """fp32 = disable the trainers' autocast (they call anogen.devices.autocast)."""
    if not fp32:
        yield
        return
    import anogen.detectors.destseg.trainer as dm
    import anogen.detectors.draem.trainer as rm

    saved = rm.autocast, dm.autocast
    rm.autocast = dm.autocast = lambda *a, **k: contextlib.nullcontext()
    try:
        yield
    finally:
        rm.autocast, dm.autocast = saved


def _schema_section(detector: str) -> dict:
    """The schema's ``detectors.<detector>`` section, every default filled."""
    from anogen.config import validate_config

    return validate_config({"data_root": "."})["detectors"][detector]


def _pipeline_spec(root: Path, size: int, detector: str, variant: str, section: dict) -> dict:
    """The spec ``Plan.spec("detector", ...)`` makes for these settings (schema defaults elsewhere)."""
    from anogen.config import validate_config
    from anogen.plan import Plan

    config = validate_config({"data_root": str(root), "detectors": {"image_size": size, detector: section}})
    plan = Plan(config, layout={"bench": {"defects": ["box"], "texture": False}})
    return plan.spec("detector", "bench", detector, variant)


def bench_draem(size, batch_size, device, warmup, steps, fp32, channels_last=False, widths=None):
    from anogen.detectors.draem.trainer import DraemTrainer
    from anogen.detectors.speed import to_channels_last

    cfg = {**_schema_section("draem"), "batch_size": batch_size}
    if widths:  # (recon, disc); default: the published 128 / 64
        cfg.update(recon_base_width=widths[0], disc_base_width=widths[1])
    tr = DraemTrainer(cfg, seed=0, tau=0.9, device=device, n_train=240, mixed_precision="auto")
    if channels_last:
        to_channels_last(tr)
    with _precision(fp32):
        rate = _time_steps(tr, _batch(batch_size, size, device), 0, warmup, steps, device)
    mem = torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else float("nan")
    del tr
    if is_cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rate, mem


def bench_destseg(size, batch_size, device, warmup, steps, fp32, channels_last=False):
    from anogen.detectors.destseg.trainer import DestsegTrainer
    from anogen.detectors.speed import to_channels_last

    tr = DestsegTrainer(
        {**_schema_section("destseg"), "batch_size": batch_size, "steps": 10**6, "student_steps": 10**5},
        seed=0,
        tau=0.9,
        device=device,
        n_train=240,
        mixed_precision="auto",  # bf16 autocast where supported; --fp32 turns autocast off
    )
    if channels_last:
        to_channels_last(tr)
    b = _batch(batch_size, size, device)
    with _precision(fp32):
        r1 = _time_steps(tr, b, 0, warmup, steps, device)
        r2 = _time_steps(tr, b, 10**5, warmup, steps, device)
    mem = torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else float("nan")
    del tr
    if is_cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return r1, r2, mem


def bench_data(size: int, n: int) -> dict[str, float]:
    from anogen.detectors.synthetic import DestsegSynthesizer, DraemSynthesizer
    from anogen.detectors.textures import TextureSource

    textures = TextureSource.from_config(None)
    rng = np.random.default_rng(0)
    normal = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    out = {}
    for name, synth in (("draem", DraemSynthesizer(textures)), ("destseg", DestsegSynthesizer(textures))):
        synth(normal, rng)
        t0 = time.perf_counter()
        for _ in range(n):
            synth(normal, rng)
        out[name] = n / (time.perf_counter() - t0)
    return out


def _make_pipeline_data(root: Path, size: int, n: int = 32) -> tuple[list[Path], Path]:
    """n smooth random 'normal' images and a generation manifest with 16 box anomalies."""
    import cv2
    from PIL import Image

    from anogen.data.index import relative_to_root
    from anogen.io import write_manifest

    rng = np.random.default_rng(0)
    train = []
    for i in range(n):
        noise = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), size / 32)
        img = (255 * (noise - noise.min()) / (np.ptp(noise) + 1e-6)).astype(np.uint8)
        p = root / "train" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p)
        train.append(p)
    gen = root / "generated"
    (gen / "images").mkdir(parents=True, exist_ok=True)
    (gen / "masks").mkdir(parents=True, exist_ok=True)
    items, files = [], []
    for i in range(16):
        img = np.asarray(Image.open(train[i])).copy()
        box = np.zeros((size, size), np.uint8)
        y0, x0 = rng.integers(0, size // 2, 2)
        box[y0 : y0 + size // 4, x0 : x0 + size // 4] = 255
        img[box > 0] = 255 - img[box > 0]
        Image.fromarray(img).save(gen / "images" / f"{i}.png")
        Image.fromarray(box).save(gen / "masks" / f"{i}.png")
        files += [f"images/{i}.png", f"masks/{i}.png"]
        items.append(
            {
                "image": f"images/{i}.png",
                "mask": f"masks/{i}.png",
                "source_image": relative_to_root(root, train[i]),
                "box": {},
                "seed": i,
            }
        )
    manifest = write_manifest(gen, stage="generation", key="bench", spec={}, files=files, extra={"items": items})
    return train, manifest


def bench_pipeline(size: int, steps: int, device: str, workers: int | None) -> None:
    """Real train_detector runs (data loader, synthetic + generated samples, logging,
    checkpoint, export) and a predict() on the trained model: end-to-end steps/s."""
    import csv
    import tempfile

    from anogen.detectors import load_trained_detector, train_detector

    root = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    train, manifest = _make_pipeline_data(root, size)
    runs = [
        ("draem", "anogen", {"draem": {"epochs": max(2, steps // 4), "batch_size": 8}}),
        ("destseg", "anogen", {"destseg": {"steps": steps, "student_steps": steps // 2, "batch_size": 32}}),
    ]
    for det, variant, section in runs:
        spec = _pipeline_spec(root, size, det, variant, section[det])
        out = root / f"{det}_{variant}"
        t0 = time.perf_counter()
        train_detector(
            spec=spec,
            train_images=train,
            generated_manifests=[manifest],
            out_dir=out,
            key="bench",
            inputs={},
            device=device,
            checkpoint_every=max(2, steps // 2),
            log_every=10**9,
            num_workers=workers,
        )
        wall = time.perf_counter() - t0
        with open(out / "train_log.csv") as fh:
            rows = list(csv.DictReader(fh))
        k = min(5, len(rows) - 2)
        t_a, t_b = float(rows[k]["seconds"]), float(rows[-1]["seconds"])
        rate = (len(rows) - 1 - k) / max(t_b - t_a, 1e-9)
        bs = 8 if det == "draem" else 32
        detector = load_trained_detector(out, device=device)
        x = torch.rand(4, 3, size, size)
        scores, maps = detector.predict(x)
        print(
            f"pipeline {det:7s} {variant}: {len(rows)} steps in {wall:.1f} s wall; steady "
            f"{rate:.2f} steps/s = {rate * bs:.1f} img/s (batch {bs}); predict -> scores "
            f"{scores.shape}, maps {maps.shape} {maps.dtype}"
        )


def bench_synthesis(size: int, batch_sizes=(8, 16, 32), n_batches: int = 3, targets=(250, 500, 880)) -> list[dict]:
    """Is CPU-side sample synthesis the bottleneck? ``TrainStream.batch`` (what each loader
    worker runs: Perlin + texture anomalies, DeSTSeg rotations, generated samples for
    'anogen') timed in this process (CPU seconds, robust to a busy machine), and the loader
    workers needed to feed the GPU at each target rate (images/s)."""
    import tempfile

    from anogen.detectors.data import load_generated_items
    from anogen.detectors.textures import TextureSource
    from anogen.detectors.train import build_stream

    root = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    train, manifest = _make_pipeline_data(root, size)
    generated = load_generated_items([manifest], train, root)
    textures = TextureSource.from_config(None)
    rows = []
    for det in ("draem", "destseg"):
        for variant in ("baseline", "anogen"):
            for bs in batch_sizes:
                spec = _pipeline_spec(root, size, det, variant, {})
                stream = build_stream(spec, bs, train, generated if variant != "baseline" else (), textures)
                stream.batch(0)  # warm caches (texture files, permutation)
                c0 = time.process_time()
                for step in range(1, n_batches + 1):
                    stream.batch(step)
                per_batch = (time.process_time() - c0) / n_batches
                ips = bs / per_batch
                row = {
                    "detector": det,
                    "variant": variant,
                    "batch": bs,
                    "size": size,
                    "cpu_s_per_batch": per_batch,
                    "images_per_s_per_worker": ips,
                    "workers_needed": {str(t): math.ceil(t / ips) for t in targets},
                }
                rows.append(row)
                need = ", ".join(f"{t} img/s: {math.ceil(t / ips)}" for t in targets)
                print(
                    f"synthesis {det:7s} {variant:8s} batch {bs:2d} @ {size}px: {per_batch * 1000:7.1f} ms CPU "
                    f"per batch = {ips:6.1f} img/s per worker; workers needed for {need}",
                    flush=True,
                )
    return rows


def _fmt_h(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--size", type=int, default=None, help="image side (default 256 on GPU, 64 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU / 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--fp32", action="store_true", help="also time without autocast (GPU)")
    ap.add_argument("--draem-batches", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--destseg-batch", type=int, default=32)
    ap.add_argument("--data-samples", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--pipeline-steps",
        type=int,
        default=0,
        help="also run train_detector end to end for this many steps per detector",
    )
    ap.add_argument("--workers", type=int, default=None, help="loader workers for --pipeline-steps")
    ap.add_argument(
        "--synthesis-only",
        action="store_true",
        help="only time CPU sample synthesis (TrainStream.batch) at --size and batch 8/16/32",
    )
    ap.add_argument("--channels-last", action="store_true", help="also time the networks in channels_last (GPU)")
    args = ap.parse_args()
    if args.synthesis_only:
        torch.set_num_threads(1)
        bench_synthesis(args.size or 256)
        return

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    gpu = is_cuda(device)
    size = args.size or (256 if gpu else 64)
    steps = args.steps or (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cudnn.benchmark = True
        print(
            f"device: {torch.cuda.get_device_name()} (torch {torch.__version__}), "
            f"bf16 autocast: {torch.cuda.is_bf16_supported()}"
        )
    else:
        print(f"device: CPU, {torch.get_num_threads()} threads (torch {torch.__version__})")
    print(f"image size {size}, {steps} timed steps after {warmup} warm-up steps\n")

    precisions = [False] + ([True] if (args.fp32 and gpu) else [])
    draem_rate = {}
    for fp32 in precisions:
        tag = "fp32" if fp32 or not gpu else "bf16-autocast"
        for bs in args.draem_batches:
            rate, mem = bench_draem(size, bs, device, warmup, steps, fp32)
            draem_rate[(bs, fp32)] = rate
            print(f"DRAEM   {tag:14s} batch {bs:3d}: {rate:7.2f} steps/s {rate * bs:8.1f} img/s  peak {mem:.1f} GiB")
        bs = args.destseg_batch
        r1, r2, mem = bench_destseg(size, bs, device, warmup, steps, fp32)
        print(
            f"DeSTSeg {tag:14s} batch {bs:3d}: student {r1:7.2f} steps/s ({r1 * bs:7.1f} img/s), "
            f"segmentation {r2:7.2f} steps/s ({r2 * bs:7.1f} img/s)  peak {mem:.1f} GiB"
        )
        if fp32 is False:
            destseg_rates = (r1, r2)

    if args.channels_last and gpu:
        for bs in args.draem_batches:
            rate, mem = bench_draem(size, bs, device, warmup, steps, False, channels_last=True)
            print(
                f"DRAEM   channels_last  batch {bs:3d}: {rate:7.2f} steps/s {rate * bs:8.1f} img/s  peak {mem:.1f} GiB "
                f"({rate / draem_rate[(bs, False)]:.2f}x)"
            )
        r1c, r2c, mem = bench_destseg(size, args.destseg_batch, device, warmup, steps, False, channels_last=True)
        print(
            f"DeSTSeg channels_last  batch {args.destseg_batch:3d}: student {r1c:7.2f} steps/s "
            f"({r1c / destseg_rates[0]:.2f}x), segmentation {r2c:7.2f} steps/s ({r2c / destseg_rates[1]:.2f}x)"
        )

    data = bench_data(size, args.data_samples)
    print(
        f"\ndata pipeline (one CPU process, {size} px): DRAEM {data['draem']:.1f} samples/s, "
        f"DeSTSeg {data['destseg']:.1f} samples/s"
    )

    print("\nProjected training time, 15 MVTec categories (one variant; baseline + anogen = x2):")
    for bs in args.draem_batches:
        rate = draem_rate[(bs, False)]
        total_steps = sum(700 * math.ceil(n / bs) for n in MVTEC_TRAIN.values())
        need = rate * bs
        print(
            f"  DRAEM batch {bs:2d}: {total_steps} steps -> {_fmt_h(total_steps / rate)} "
            f"(~240 images: {_fmt_h(15 * 700 * math.ceil(240 / bs) / rate)}); data needs "
            f"{need / data['draem']:.1f} CPU workers to keep up"
        )
    r1, r2 = destseg_rates
    per_cat = 1000 / r1 + 4000 / r2
    need = max(r1, r2) * args.destseg_batch
    print(
        f"  DeSTSeg batch {args.destseg_batch}: 1000 + 4000 steps per category -> {_fmt_h(per_cat)} "
        f"each, {_fmt_h(15 * per_cat)} for 15; data needs {need / data['destseg']:.1f} CPU workers"
    )
    print()
    bench_synthesis(size)
    if args.pipeline_steps:
        print()
        bench_pipeline(size, args.pipeline_steps, device, args.workers)


if __name__ == "__main__":
    main()
