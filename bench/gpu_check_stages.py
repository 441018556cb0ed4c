"""The device check's phase 2: throughput and peak memory of each stage, the plain path
("before") against the fast paths (functions of bench_embedding.py / bench_generation.py /
bench_detector_throughput.py). Each ``bench_*`` runs in a process of its own
(``gpu_check.py --phase gpu_check_stages:<function>``), so a sticky CUDA error fails one phase.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def bench_stage1(args) -> list[dict]:
    """Steps/s of one concept: today's loop (float(loss) every step), no host sync, CUDA graph,
    K concepts grouped on one backbone (concept-steps/s), and the peak memory of each, with the
    UNet's gradient checkpointing last (the memory switch for cards below 24 GB)."""
    from bench_generation import build_backbone

    device, size = args.device, ("tiny" if args.tiny else "full")
    backbone, _ = build_backbone("ldm", size, 64 if args.tiny else None, device)
    variants = [
        ("before: plain, sync every step", {}, "sync", 1),
        ("no per-step sync", {}, "async", 1),
        (
            "static buffers" if args.cpu else "CUDA graph",
            {"static_inputs": True, "cuda_graph": not args.cpu},
            "async",
            1,
        ),
        (f"{args.group} concepts grouped", {}, "group", args.group),
        ("gradient checkpointing (memory)", {"gradient_checkpointing": True}, "async", 1),
    ]
    rows = []
    for i, (name, kw, mode, k) in enumerate(variants):
        try:
            rows.append(_stage1_variant(args, backbone, i, name, kw, mode, k))
        except Exception:  # a later variant's failure keeps the rows measured before it
            if i == 0:
                raise
            traceback.print_exc()
            rows.append({"stage": "embedding", "variant": f"{name}: failed", "value": None, "unit": "concept-steps/s"})
    del backbone
    return rows


def _stage1_variant(args, backbone, i: int, name: str, kw: dict, mode: str, k: int) -> dict:
    from bench_embedding import default_spec, support_items

    from anogen.embedding import EmbeddingTrainer, GroupedEmbeddingTrainer

    device = args.device
    steps, warmup = (3, 1) if args.cpu else (30, 6)
    spec = default_spec(4, None)
    spec["placeholder_token"] = f"<anomaly{i}>"  # a fresh token per variant on the shared backbone
    _peak_reset(device)
    side = 128 if args.tiny else 512
    if mode == "group":
        tr = GroupedEmbeddingTrainer(
            backbone,
            [support_items(3, side, seed=j) for j in range(k)],
            spec,
            device=device,
            gradient_checkpointing=False,
        )
        run = tr.step_async
    else:
        tr = EmbeddingTrainer(
            backbone,
            support_items(3, side),
            spec,
            device=device,
            **{"cuda_graph": False, "gradient_checkpointing": False, **kw},
        )
        run = tr.step if mode == "sync" else tr.step_async
    for _ in range(warmup):
        run()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    sps = steps / (time.perf_counter() - t0)
    tr.close()  # every trainer sets the shared backbone's checkpointing switch itself
    graph = {}
    if kw.get("cuda_graph"):
        # the trainer falls back to eager when a capture fails: say which of the two was timed
        captured = tr.graph_captured
        name = name if captured else f"{name} NOT captured: eager static buffers"
        graph = {"cuda_graph_requested": True, "cuda_graph": captured}
    return {
        "stage": "embedding",
        "variant": name,
        **graph,
        "value": sps * k,
        "unit": "concept-steps/s",
        "batch_size": 4,
        "peak_gib": _peak(device),
    }


def bench_stage2(args) -> list[dict]:
    from bench_generation import bench_family

    rows = []
    bs = [2] if args.tiny else [8, 16, 32]  # 16: config/mvtec.yaml's generation.batch_size
    variants = [("before: plain", {}), ("channels_last", {"channels_last": True})]
    if args.compile:
        variants.append(("channels_last + compile", {"channels_last": True, "compile": True}))
    for name, kw in variants:
        _peak_reset(args.device)
        ns = SimpleNamespace(
            size="tiny" if args.tiny else "full",
            steps=2 if args.cpu else 50,
            batch_sizes=bs,
            guidance=10.0,
            device=args.device,
            mixed_precision="auto",
            unet_weights="amp",
            resolution=64 if args.tiny else None,
            repeats=1,
            total=70_760,
            channels_last=kw.get("channels_last", False),
            compile=kw.get("compile", False),
        )
        res = bench_family("ldm", ns)
        for r in res["rows"]:
            if "error" in r:
                rows.append(
                    {
                        "stage": "generation",
                        "variant": f"{name}, batch {r['batch_size']}",
                        "value": None,
                        "unit": "images/s",
                        "error": r["error"],
                    }
                )
                continue
            rows.append(
                {
                    "stage": "generation",
                    "variant": f"{name}, batch {r['batch_size']}",
                    "value": r["images_per_second"],
                    "unit": "images/s",
                    "batch_size": r["batch_size"],
                    "steps": ns.steps,
                    "peak_gib": r["peak_gib"],
                }
            )
    return rows


def bench_stage3(args) -> tuple[list[dict], list[dict]]:
    from bench_detector_throughput import bench_destseg, bench_draem, bench_synthesis

    device = args.device
    size = 64 if args.tiny else 256
    steps, warmup = (2, 1) if args.cpu else (20, 5)
    # the paper's batches at full size; on the CPU check DeSTSeg at 8 (its cost is the same code)
    bs_draem, bs_destseg = 8, (8 if args.cpu else 32)
    rows = []
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    for name, cl in (("before: NCHW", False), ("channels_last", True)):
        _peak_reset(device)
        rate, mem = bench_draem(
            size, bs_draem, device, warmup, steps, False, channels_last=cl, widths=(16, 8) if args.tiny else None
        )
        rows.append(
            {
                "stage": "detector_draem",
                "variant": name,
                "value": rate * bs_draem,
                "unit": "images/s",
                "batch_size": bs_draem,
                "image_size": size,
                "peak_gib": mem if device == "cuda" else None,
            }
        )
        _peak_reset(device)
        r1, r2, mem = bench_destseg(size, bs_destseg, device, warmup, steps, False, channels_last=cl)
        # images/s over the paper budget: 1000 student + 4000 segmentation steps
        ips = bs_destseg * 5000 / (1000 / r1 + 4000 / r2)
        rows.append(
            {
                "stage": "detector_destseg",
                "variant": name,
                "value": ips,
                "unit": "images/s",
                "batch_size": bs_destseg,
                "image_size": size,
                "student_steps_per_s": r1,
                "seg_steps_per_s": r2,
                "peak_gib": mem if device == "cuda" else None,
            }
        )
    synth = bench_synthesis(size, batch_sizes=(8, 32), n_batches=1 if args.cpu else 3)
    return rows, synth


def bench_evaluation(args, detector_dirs: dict[str, str]) -> list[dict]:
    from anogen.detectors import load_trained_detector

    size = 64 if args.tiny else 256
    rows = []
    for name, d in sorted(detector_dirs.items()):
        if "/baseline" not in name or not Path(d, "manifest.json").is_file():
            continue
        det = load_trained_detector(d, device=args.device)
        x = torch.rand(16, 3, size, size)
        det.predict(x)
        _sync(args.device)
        t0 = time.perf_counter()
        reps = 1 if args.cpu else 5
        for _ in range(reps):
            det.predict(x)
        _sync(args.device)
        rows.append(
            {
                "stage": "evaluation",
                "variant": name.split("/")[1],
                "value": 16 * reps / (time.perf_counter() - t0),
                "unit": "images/s",
                "image_size": size,
            }
        )
    return rows
