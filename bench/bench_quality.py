#!/usr/bin/env python
"""Cost of the generation-quality metrics (anogen.quality): Inception forwards, LPIPS pairs, one job.

Random weights (anogen.quality.networks.write_random_weights: the same architectures and cost as the
published files), random images. Measures Inception-v3 images/s (torch-fidelity resizes every image
to 299 px, so the input size hardly matters), LPIPS pairs/s at ``--size``, and one whole
``quality_metrics`` call on a small set; then projects one job of the paper's scale (an MVTec AD
defect type: N = 4 generated images per normal image) with ``anogen.estimate.quality_seconds``.

    python bench/bench_quality.py                       # CPU, small sizes (bench/results/quality_cpu.json)
    python bench/bench_quality.py --device cuda --out bench/results/quality_<gpu>.json

The ``quality`` entry of the JSON has the fields ``anogen estimate`` reads from a throughput table
(``inception_images_per_s``, ``lpips_pairs_per_s``, ``overhead_s``): copy it into
``throughput_<gpu>.json``'s ``stages`` to include the metrics in a GPU estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    import torch

    from anogen.estimate import quality_seconds
    from anogen.quality import metrics as M
    from anogen.quality.networks import load_inception, load_lpips, write_random_weights

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64, help="image size of the LPIPS pairs and the small job")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--net", default="vgg", choices=("vgg", "alex", "squeeze"), help="LPIPS backbone (quality.lpips_net)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.batch * 2)]
    with tempfile.TemporaryDirectory() as tmp:
        inc_path, lpips_path = Path(tmp, "inception.pth"), Path(tmp, f"{args.net}.pth")
        write_random_weights(inc_path, lpips_path, args.net, seed=0)
        start = time.perf_counter()
        nets = {
            "inception": load_inception(inc_path, args.device),
            "lpips": load_lpips(lpips_path, args.net, args.device),
        }
        overhead = time.perf_counter() - start
    batch = M.as_uint8_tensor(images, args.size)
    t_inc = _timed(lambda: M.inception_features(nets["inception"], batch, args.batch, args.device))
    tensors = M.lpips_input(batch)
    distance = M.lpips_distance(nets["lpips"], args.batch, args.device)
    t_lp = _timed(lambda: distance(tensors, tensors[::-1]), repeats=3)
    small = {"generated": 24, "real": 8, "support": 3}
    items = {k: [(images[i % len(images)], _box(args.size)) for i in range(n)] for k, n in small.items()}
    settings = {"image_size": args.size, "crop_margin": 0.1, "is_splits": 10, "kid_subsets": 100}
    settings.update(kid_subset_size=1000, ic_lpips_cluster_cap=None, seed=2020, batch_size=args.batch)
    start = time.perf_counter()
    M.quality_metrics(items["generated"], items["real"], items["support"], settings, nets, args.device)
    t_job = time.perf_counter() - start
    entry = {
        "inception_images_per_s": round(len(images) / t_inc, 3),
        "lpips_pairs_per_s": round(len(images) / t_lp, 3),
        "lpips_size": args.size,
        "lpips_net": args.net,
        "overhead_s": round(overhead, 2),
    }
    notes: list[str] = []
    predicted_small = quality_seconds(small["generated"], small["real"], small["support"], entry, notes)
    # bottle: 209 normal images x 4 generated, 20 broken_large test images less 3 support
    paper = quality_seconds(209 * 4, 17, 3, {**entry, "overhead_s": overhead}, notes)
    result = {
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "quality": entry,
        "small_job": {**small, "image_size": args.size, "seconds": round(t_job, 2)},
        "small_job_predicted_s": round(predicted_small, 2),
        "paper_scale_job_predicted_s": round(paper, 1),
        "paper_scale_job": "bottle/broken_large: 836 generated, 17 real, 3 support",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


def _box(size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : size // 2, size // 3 : 3 * size // 4] = 1
    return mask


if __name__ == "__main__":
    sys.exit(main())
