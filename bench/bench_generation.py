#!/usr/bin/env python
"""Throughput of stage-2 generation (blended latent DDIM + CFG) with randomly initialised models.

Builds the published architectures of both backbone families at full size with random
weights (``anogen.diffusion.tiny.build_components(family, "full")``; nothing is
downloaded), runs the real ``anogen.generation.inpaint.inpaint`` code path (DDIM, CFG with
the empty prompt, Eq. 7 blending, VAE encode/decode; bf16/fp16 autocast of the UNet on
CUDA) and reports images/s per batch size and the projected time of a full MVTec run.

    python bench/bench_generation.py                                  # full size, 50 steps, 1/8/32
    python bench/bench_generation.py --size tiny --steps 2 --batch-sizes 1,2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MVTEC_FULL_RUN_IMAGES = 70_760


def build_backbone(family: str, size: str, resolution: int | None, device: str):
    """``bench_embedding.random_backbone`` with the learned token ``<anomaly>`` added (random vector)."""
    from bench_embedding import random_backbone

    backbone = random_backbone(family, size, device, resolution)
    backbone.set_token_embedding("<anomaly>", torch.randn(backbone.embedding_dim))
    n_params = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in (("unet", backbone.unet), ("vae", backbone.vae), ("text_encoder", backbone.text_encoder))
    }
    return backbone, n_params


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_family(family: str, args) -> dict:
    from anogen.generation.boxes import Box
    from anogen.generation.inpaint import inpaint, prepare_for_inference

    t0 = time.perf_counter()
    backbone, n_params = build_backbone(family, args.size, args.resolution, args.device)
    _sync(args.device)
    build_s = time.perf_counter() - t0
    if args.unet_weights == "amp":
        prepare_for_inference(
            backbone,
            args.mixed_precision,  # what generate_anomalies does
            channels_last=getattr(args, "channels_last", False),
            compile=getattr(args, "compile", False),
        )
    res = backbone.resolution
    with torch.no_grad():
        prompt = backbone.encode_text(backbone.tokenize(["<anomaly>"])).float()
        uncond = backbone.encode_text(backbone.tokenize([""])).float()
    print(f"[{family}] {args.size}: {res} px, params {n_params}, built in {build_s:.1f} s", flush=True)

    rng = np.random.default_rng(0)
    rows = []
    for bs in args.batch_sizes:
        images = torch.from_numpy(rng.random((bs, 3, res, res), dtype=np.float32))
        masks = torch.from_numpy(
            np.stack(
                [
                    Box(
                        res * rng.uniform(0.3, 0.7),
                        res * rng.uniform(0.3, 0.7),
                        res * 0.2,
                        res * 0.3,
                        float(rng.uniform(0, 180)),
                    ).to_mask(res, res)
                    for _ in range(bs)
                ]
            )
        )[:, None].float()

        def run(steps: int, bs=bs, images=images, masks=masks, backbone=backbone):  # bound per batch size
            gens = [torch.Generator().manual_seed(i) for i in range(bs)]
            return inpaint(
                backbone,
                images,
                masks,
                prompt,
                uncond,
                gens,
                steps,
                args.guidance,
                eta=0.0,
                paste_back=False,
                mixed_precision=args.mixed_precision,
            )

        try:
            run(min(2, args.steps))  # warm-up: kernels, allocator, cuDNN autotuning
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(args.device)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                out = run(args.steps)
                _sync(args.device)
                times.append(time.perf_counter() - t)
            assert out.shape == (bs, 3, res, res) and torch.isfinite(out).all()
        except torch.cuda.OutOfMemoryError as exc:  # pragma: no cover - GPU only
            print(f"[{family}] batch {bs}: out of memory ({exc})", flush=True)
            rows.append({"family": family, "batch_size": bs, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        best = min(times)
        ips = bs / best
        row = {
            "family": family,
            "size": args.size,
            "unet_weights": args.unet_weights,
            "resolution": res,
            "batch_size": bs,
            "steps": args.steps,
            "guidance_scale": args.guidance,
            "seconds_per_batch": best,
            "images_per_second": ips,
            "seconds_per_unet_step": best / args.steps,
            "projected_hours_full_mvtec": args.total / ips / 3600,
            "peak_gib": (torch.cuda.max_memory_allocated() / 2**30) if args.device.startswith("cuda") else None,
        }
        rows.append(row)
        print(
            f"[{family}] batch {bs:3d}: {best:8.3f} s/batch  {ips:8.3f} images/s  "
            f"-> {args.total} images in {row['projected_hours_full_mvtec']:.2f} h"
            + (f"  (peak {row['peak_gib']:.1f} GiB)" if row["peak_gib"] is not None else ""),
            flush=True,
        )
    del backbone
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"family": family, "params": n_params, "build_seconds": build_s, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--families", default="ldm,sd")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--guidance", type=float, default=10.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mixed-precision", choices=["auto", "no"], default="auto")
    p.add_argument(
        "--unet-weights",
        choices=["amp", "fp32"],
        default="amp",
        help="amp: UNet weights stored in the autocast dtype, as the generation job does; "
        "fp32: float32 weights cast by autocast at every op",
    )
    p.add_argument("--channels-last", action="store_true", help="generation.channels_last")
    p.add_argument("--compile", action="store_true", help="generation.compile (torch.compile of the UNet)")
    p.add_argument(
        "--resolution", type=int, default=None, help="default: native (256 ldm, 512 sd) at full size, 64 for tiny"
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--total", type=int, default=MVTEC_FULL_RUN_IMAGES, help="images of the projected run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.resolution is None and args.size == "tiny":
        args.resolution = 64
    if args.device == "cpu":
        # tiny models are overhead-bound: one thread is fastest; full size may use a few
        torch.set_num_threads(1 if args.size == "tiny" else max(1, min(torch.get_num_threads(), 8)))
    elif torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}  bf16: {torch.cuda.is_bf16_supported()}", flush=True)
    print(f"torch {torch.__version__}, python {platform.python_version()}, device {args.device}", flush=True)

    results = [bench_family(f.strip(), args) for f in args.families.split(",") if f.strip()]
    print(f"\nsummary (images/s; projected hours for {args.total} images):")
    for res in results:
        for row in res["rows"]:
            if "error" in row:
                print(f"  {row['family']:3s} bs={row['batch_size']:3d}: {row['error']}")
            else:
                print(
                    f"  {row['family']:3s} bs={row['batch_size']:3d}: {row['images_per_second']:8.3f} img/s, "
                    f"{row['projected_hours_full_mvtec']:8.2f} h"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "torch": torch.__version__,
                    "results": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
