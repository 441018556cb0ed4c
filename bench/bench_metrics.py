#!/usr/bin/env python
"""Benchmark the streaming pixel metrics against scikit-learn on an MVTec-AD-sized test set.

The synthetic test set has the size of MVTec AD's: 1,725 maps of 256 x 256 (113 M pixels),
1,258 of them with 1-3 blob-shaped anomalous regions (about 2.5 % anomalous pixels overall).
Maps are smooth noise plus a bump on the regions; every third map is quantised to 1/255
(as a uint8 map would be) so that there are many ties.

Each contender runs in its own subprocess, so the peak resident memory it reports is its
own: scikit-learn gets the concatenated pixels (float32 scores, bool labels: the least any
sklearn-based evaluation must hold) and computes roc_auc_score + average_precision_score;
ours streams the maps through PixelMetricAccumulator (AUPRO included, which sklearn does
not compute). Generation time is excluded from both timings.

    python bench/bench_metrics.py               # full size (needs ~6 GB RAM for sklearn)
    python bench/bench_metrics.py --n-maps 200  # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANOMALOUS_FRACTION = 1258 / 1725


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def rss_now_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_pair(i: int, n_maps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (float32 map, uint8 mask) number ``i``."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng([seed, i])
    mask = np.zeros((size, size), dtype=np.uint8)
    if i < round(n_maps * ANOMALOUS_FRACTION):
        yy, xx = np.ogrid[:size, :size]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(size // 8, size - size // 8, 2)
            ry, rx = rng.uniform(0.03, 0.12, 2) * size
            mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = 1
    low = torch.from_numpy(rng.random((1, 1, 16, 16), dtype=np.float32))
    noise = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    amap = 0.6 * noise + 0.15 * rng.random((size, size), dtype=np.float32)
    amap += mask * rng.uniform(0.2, 0.6) * rng.random((size, size), dtype=np.float32)
    if i % 3 == 0:
        amap = np.round(amap * 255.0) / 255.0
    return amap.astype(np.float32), mask


def worker(kind: str, n_maps: int, size: int, seed: int) -> dict:
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401  (imported before the baseline so both workers pay it)

    from anogen.evaluation.metrics import PixelMetricAccumulator

    torch.set_num_threads(1)
    base = rss_now_mib()
    out: dict = {"kind": kind, "rss_baseline_mib": round(base, 1)}
    if kind == "sklearn":
        from sklearn.metrics import average_precision_score, roc_auc_score

        n_pix = n_maps * size * size
        scores = np.empty(n_pix, dtype=np.float32)
        labels = np.empty(n_pix, dtype=bool)
        for i in range(n_maps):
            amap, mask = make_pair(i, n_maps, size, seed)
            scores[i * size * size : (i + 1) * size * size] = amap.reshape(-1)
            labels[i * size * size : (i + 1) * size * size] = mask.reshape(-1) > 0
        out["data_mib"] = round((scores.nbytes + labels.nbytes) / 2**20, 1)
        c0, t0 = time.process_time(), time.perf_counter()
        out["pixel_auroc"] = float(roc_auc_score(labels, scores))
        t1 = time.perf_counter()
        out["pixel_aupr"] = float(average_precision_score(labels, scores))
        c2, t2 = time.process_time(), time.perf_counter()
        out["seconds"] = t2 - t0
        out["cpu_seconds"] = c2 - c0
        out["seconds_auroc"] = t1 - t0
        out["seconds_aupr"] = t2 - t1
        out["anomalous_fraction"] = float(labels.mean())
    else:
        acc = PixelMetricAccumulator(size, fpr_limit=0.3, expected_images=n_maps)
        t_update = c_update = 0.0
        for i in range(n_maps):
            amap, mask = make_pair(i, n_maps, size, seed)
            c0, t0 = time.process_time(), time.perf_counter()
            acc.update(amap, mask)
            t_update += time.perf_counter() - t0
            c_update += time.process_time() - c0
        out["buffer_mib"] = round(acc.nbytes / 2**20, 1)
        c0, t0 = time.process_time(), time.perf_counter()
        res = acc.compute()
        t_compute = time.perf_counter() - t0
        out["cpu_seconds"] = c_update + time.process_time() - c0
        out.update(res)
        out["seconds"] = t_update + t_compute
        out["seconds_update"] = t_update
        out["seconds_compute"] = t_compute
        out["n_regions"] = acc.n_regions
    out["rss_peak_mib"] = round(rss_peak_mib(), 1)
    out["rss_peak_above_baseline_mib"] = round(rss_peak_mib() - base, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-maps", type=int, default=1725)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["sklearn", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n_maps, args.size, args.seed)))
        return

    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results = {}
    for kind in ("ours", "sklearn"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--n-maps",
            str(args.n_maps),
            "--size",
            str(args.size),
            "--seed",
            str(args.seed),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            sys.exit(f"{kind} worker failed (rc {proc.returncode}):\n{proc.stderr}")
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])

    ours, skl = results["ours"], results["sklearn"]
    n_pix = args.n_maps * args.size * args.size
    print(
        f"test set: {args.n_maps} maps of {args.size}x{args.size} = {n_pix / 1e6:.1f} M pixels, "
        f"{100 * skl['anomalous_fraction']:.2f} % anomalous, {ours['n_regions']} regions"
    )
    print(
        f"sklearn  roc_auc_score + average_precision_score: {skl['seconds']:.2f} s "
        f"(auroc {skl['seconds_auroc']:.2f} s, ap {skl['seconds_aupr']:.2f} s); "
        f"peak RSS {skl['rss_peak_mib']:.0f} MiB, {skl['rss_peak_above_baseline_mib']:.0f} MiB above "
        f"baseline (of which input arrays {skl['data_mib']:.0f} MiB)"
    )
    print(
        f"ours     update x{args.n_maps} + compute (AUROC, AP, AUPRO): {ours['seconds']:.2f} s "
        f"(update {ours['seconds_update']:.2f} s, compute {ours['seconds_compute']:.2f} s); "
        f"peak RSS {ours['rss_peak_mib']:.0f} MiB, {ours['rss_peak_above_baseline_mib']:.0f} MiB above "
        f"baseline (buffers {ours['buffer_mib']:.0f} MiB)"
    )
    print(f"cpu time: sklearn {skl['cpu_seconds']:.2f} s, ours {ours['cpu_seconds']:.2f} s")
    print(
        f"speed-up: {skl['seconds'] / ours['seconds']:.1f}x wall, "
        f"{skl['cpu_seconds'] / ours['cpu_seconds']:.1f}x cpu   "
        f"memory above baseline: {skl['rss_peak_above_baseline_mib'] / max(ours['rss_peak_above_baseline_mib'], 1):.1f}x less"
    )
    d_roc = abs(ours["pixel_auroc"] - skl["pixel_auroc"])
    d_ap = abs(ours["pixel_aupr"] - skl["pixel_aupr"])
    print(f"pixel_auroc ours {ours['pixel_auroc']:.12f} sklearn {skl['pixel_auroc']:.12f}")
    print(f"pixel_aupr  ours {ours['pixel_aupr']:.12f} sklearn {skl['pixel_aupr']:.12f}")
    print(f"pixel_aupro ours {ours['pixel_aupro']:.12f}")
    print(f"largest absolute difference: {max(d_roc, d_ap):.3e}")


if __name__ == "__main__":
    main()
