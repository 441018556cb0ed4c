"""Benchmark stage 1 (embedding learning) and project the cost of a full MVTec run.

Builds randomly initialised backbones with the published architectures
(``anogen.diffusion.tiny.build_components(family, "full")``: LDM text2im 256 and SD 1.x 512;
no download), runs ``EmbeddingTrainer.step`` (the same code ``learn_embedding`` runs:
bf16 autocast on GPU when supported) at batch 4 after a warm-up, and prints steps/s and
the projected time for 73 embeddings x 6000 steps on 1 and on 4 GPUs (one job per GPU).

    python bench/bench_embedding.py                       # full size on the GPU
    python bench/bench_embedding.py --size tiny --steps 3 # CPU smoke test, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_EMBEDDINGS = 73  # MVTec AD defect types
STEPS_PER_EMBEDDING = 6000


def default_spec(batch_size: int, resolution: int | None) -> dict:
    """The plan's embedding spec from the schema's defaults (the paper's values), at the given
    batch and resolution (``mixed_precision``: the schema's ``diffusion.mixed_precision``)."""
    from anogen.config import validate_config
    from anogen.plan import Plan

    spec = Plan(validate_config({"data_root": "unused"})).spec("embedding", "bench", "defect")
    spec.update(steps=STEPS_PER_EMBEDDING, batch_size=batch_size, resolution=resolution)
    return spec


def random_backbone(family: str, size: str, device: str, resolution: int | None):
    """A frozen Backbone of ``family`` at ``size`` with random weights and the tiny tokenizer."""
    from transformers import AutoTokenizer

    from anogen.diffusion.backbone import Backbone
    from anogen.diffusion.tiny import _write_bert_tokenizer, _write_clip_tokenizer, build_components

    with tempfile.TemporaryDirectory() as tmp:
        writer = _write_bert_tokenizer if family == "ldm" else _write_clip_tokenizer
        n_vocab = writer(Path(tmp) / "tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "tokenizer")
    # Initialise the weights directly on the device: random init of ~1.5B parameters on
    # the CPU takes longer than a GPU benchmark itself.
    with torch.device(device) if device != "cpu" else contextlib.nullcontext():
        # full size keeps the real vocabulary (30522 / 49408 rows); the tokenizer uses a prefix
        parts = build_components(family, size, resolution, vocab_size=None if size == "full" else n_vocab, seed=0)
    backbone = Backbone(
        family=family,
        model=f"random-{size}-{family}",
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=tokenizer,
        unet=parts["unet"],
        scheduler_config=dict(parts["scheduler"].config),
    )
    return backbone.freeze().to(device)


def support_items(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4 : size // 2, size // 3 : size // 2] = 1
        items.append((image, mask))
    return items


def bench_family(family: str, args) -> dict:
    from anogen.embedding import EmbeddingTrainer

    device = args.device
    t0 = time.perf_counter()
    backbone = random_backbone(family, args.size, device, args.model_resolution)
    build_s = time.perf_counter() - t0
    spec = dict(default_spec(args.batch, args.resolution), mixed_precision=args.mixed_precision)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = EmbeddingTrainer(
        backbone,
        support_items(3, args.image_size),
        spec,
        device=device,
        cuda_graph=False,  # the plain eager step (gpu_check.py measures the graph)
        n_devices=1,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    setup_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        trainer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()  # returns float(loss): synchronises every step, as the real loop does
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    sps = args.steps / elapsed
    total_steps = N_EMBEDDINGS * STEPS_PER_EMBEDDING
    per_gpu_jobs_4 = math.ceil(N_EMBEDDINGS / 4)
    result = {
        "family": family,
        "size": args.size,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "autocast": str(trainer.autocast_dtype) if trainer.autocast_enabled else None,
        "resolution": trainer.resolution,
        "latent": list(trainer.latent_shape),
        "batch": args.batch,
        "gradient_checkpointing": args.gradient_checkpointing,
        "params_unet_M": sum(p.numel() for p in backbone.unet.parameters()) / 1e6,
        "params_text_M": sum(p.numel() for p in backbone.text_encoder.parameters()) / 1e6,
        "params_vae_M": sum(p.numel() for p in backbone.vae.parameters()) / 1e6,
        "build_s": round(build_s, 2),
        "setup_s": round(setup_s, 2),
        "timed_steps": args.steps,
        "steps_per_s": sps,
        "s_per_step": 1 / sps,
        "final_loss": trainer.losses[-1],
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "one_embedding_h": STEPS_PER_EMBEDDING / sps / 3600,
        "projected_1gpu_h": total_steps / sps / 3600,
        "projected_4gpu_h": per_gpu_jobs_4 * STEPS_PER_EMBEDDING / sps / 3600,
    }
    del trainer, backbone
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", default=["ldm", "sd"], choices=["ldm", "sd"])
    p.add_argument(
        "--size", choices=["full", "tiny"], default=None, help="model size (default: full on a GPU, tiny on CPU)"
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 GPU, 1 CPU)")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no"])
    p.add_argument("--resolution", type=int, default=None, help="training resolution (default native)")
    p.add_argument("--image-size", type=int, default=None, help="support image side (default 2x native)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="the UNet's gradient checkpointing (less memory)"
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.size = args.size or ("full" if args.device == "cuda" else "tiny")
    if args.warmup is None:
        args.warmup = 3 if args.device == "cuda" else 1
    # tiny models are built at 64 px on CPU (seconds); full size at the native resolution
    args.model_resolution = None if args.size == "full" else 64
    if args.image_size is None:
        args.image_size = 2 * (args.resolution or args.model_resolution or 512)
    if args.size == "full" and args.device == "cpu":
        print("warning: full-size models on CPU take minutes per step", file=sys.stderr)

    results = []
    for family in args.family:
        r = bench_family(family, args)
        results.append(r)
        unit = "GPU" if args.device == "cuda" else "CPU device"
        print(
            f"{family:>3} {r['size']} on {r['gpu'] or r['device']} ({r['autocast'] or 'fp32'}), "
            f"{r['resolution']} px, latent {r['latent']}, batch {r['batch']}: "
            f"{r['steps_per_s']:.2f} steps/s ({1000 * r['s_per_step']:.0f} ms/step), "
            f"one embedding {r['one_embedding_h'] * 60:.1f} min; "
            f"{N_EMBEDDINGS} x {STEPS_PER_EMBEDDING} steps: {r['projected_1gpu_h']:.1f} h on 1 {unit}, "
            f"{r['projected_4gpu_h']:.1f} h on 4 (one job per {unit})"
            + (f"; peak {r['peak_mem_GiB']:.1f} GiB" if r["peak_mem_GiB"] is not None else "")
        )
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
