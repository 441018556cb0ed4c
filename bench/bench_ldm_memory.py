"""Memory of the two LDM stages at the paper's batch sizes, measured on the CPU: what a GPU must hold.

A GPU's peak cannot be measured without one, but the tensors a stage allocates are the same
on any device. Each measurement runs in a fresh subprocess, which builds the full-size random
backbone (the published LDM text2im-large architecture, as ``bench_embedding`` and
``bench_generation`` build it), runs one warm-up, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``) and runs the measured work with the real code:

- stage 1, one ``EmbeddingTrainer.step`` at batch 4 (text encoder + UNet forward, backward to
  the one learned vector, AdamW), with the UNet's gradient checkpointing off, then on;
- stage 2, one ``inpaint`` call on a batch of 16 (``config/mvtec.yaml``'s
  ``generation.batch_size``): VAE encode, one DDIM step with classifier-free guidance (the
  UNet at batch 32; every step of a 50-step run allocates alike), Eq. 7 blending, VAE decode.

The work's memory is its peak RSS above the RSS before it (activations, gradients,
temporaries), in fp32. glibc's malloc maps every block of 64 KiB or more on its own
(``MALLOC_MMAP_THRESHOLD_``), so a freed tensor leaves the RSS at once and the peak is the
peak of live tensors.

From these it prints a bound for the GPU under bf16 autocast (``diffusion.mixed_precision``'s
default): stage 1, the fp32 parameters + their bf16 copies (autocast casts each frozen weight
where it is used and autograd keeps the copy for the backward pass: at most half the parameter
bytes) + the fp32 step bytes (bf16 activations are at most as large); stage 2,
the fp32 parameters (the UNet's are kept in bf16 there, half of that) + the fp32 batch bytes.
The CUDA context and cuBLAS workspaces (about 1 GiB) come on top. ``bench/gpu_check.py``
measures the real peak on a GPU.

    python bench/bench_ldm_memory.py                 # full size (about 8 minutes on 2 cores)
    python bench/bench_ldm_memory.py --size tiny     # seconds (the test runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

GIB = 2**30
STAGE1_BATCH = 4  # the paper's embedding batch
STAGE2_BATCH = 16  # config/mvtec.yaml's generation.batch_size


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _measured(work) -> tuple[float, float, object]:
    """(extra GiB above the RSS before, seconds, result) of ``work()``."""
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - t0
    return (_status_kib("VmHWM") - before) * 1024 / GIB, seconds, result


def _param_bytes(backbone) -> dict[str, int]:
    return {
        name: sum(p.numel() * p.element_size() for p in getattr(backbone, name).parameters())
        for name in ("unet", "text_encoder", "vae")
    }


def measure_stage1(args) -> dict:
    """In the child: one warm-up step, then the memory of one more."""
    from bench_embedding import default_spec, random_backbone, support_items

    from anogen.embedding import EmbeddingTrainer

    backbone = random_backbone("ldm", args.size, "cpu", None if args.size == "full" else 64)
    spec = dict(default_spec(STAGE1_BATCH, None), mixed_precision="no")
    trainer = EmbeddingTrainer(
        backbone,
        support_items(3, 2 * backbone.resolution),
        spec,
        device="cpu",
        cuda_graph=False,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer.step()  # warm-up: AdamW's state and every lazily built buffer exist before the measured step
    extra, seconds, loss = _measured(trainer.step)
    return {
        "stage": "embedding",
        "batch": STAGE1_BATCH,
        "resolution": trainer.resolution,
        "gradient_checkpointing": bool(backbone.unet.is_gradient_checkpointing),
        "param_bytes": _param_bytes(backbone),
        "extra_GiB": extra,
        "seconds": round(seconds, 3),
        "loss": loss,
    }


def measure_stage2(args) -> dict:
    """In the child: a one-image warm-up, then the memory of one batch of ``STAGE2_BATCH``."""
    import numpy as np
    import torch
    from bench_generation import build_backbone

    from anogen.generation.inpaint import inpaint

    backbone, _ = build_backbone("ldm", args.size, None if args.size == "full" else 64, "cpu")
    res = backbone.resolution
    with torch.no_grad():
        prompt = backbone.encode_text(backbone.tokenize(["<anomaly>"])).float()
        uncond = backbone.encode_text(backbone.tokenize([""])).float()
    rng = np.random.default_rng(0)

    def batch(n: int):
        images = torch.from_numpy(rng.random((n, 3, res, res), dtype=np.float32))
        masks = torch.zeros(n, 1, res, res)
        masks[:, :, res // 4 : res // 2, res // 3 : res // 2] = 1.0
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        return lambda: inpaint(
            backbone, images, masks, prompt, uncond, gens, 1, 10.0, eta=0.0, paste_back=False, mixed_precision="no"
        )

    batch(1)()  # warm-up
    extra, seconds, out = _measured(batch(STAGE2_BATCH))
    assert out.shape == (STAGE2_BATCH, 3, res, res) and bool(torch.isfinite(out).all())
    return {
        "stage": "generation",
        "batch": STAGE2_BATCH,
        "resolution": res,
        "ddim_steps_measured": 1,
        "param_bytes": _param_bytes(backbone),
        "extra_GiB": extra,
        "seconds": round(seconds, 3),
    }


def run_child(args, stage: int, checkpointing: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(stage), "--size", args.size, "--threads", str(args.threads)]
    cmd += ["--gradient-checkpointing"] if checkpointing else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gpu_bound_gib(r: dict) -> float:
    """The bf16 GPU bound of the module notes (without the CUDA context)."""
    param_gib = sum(r["param_bytes"].values()) / GIB
    return param_gib * (1.5 if r["stage"] == "embedding" else 1.0) + r["extra_GiB"]


def _size(gib: float) -> str:
    return f"{gib:.2f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"


def print_table(rows: list[dict], size: str) -> None:
    model = "LDM text2im-large architecture" if size == "full" else "tiny LDM"
    print(f"{model}, random weights, fp32 on CPU; bound = the bf16 GPU bound without the CUDA context")
    print("| stage | batch | setting | parameters | work's extra memory | time | bf16 GPU bound |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        setting = (
            f"UNet gradient checkpointing {'on' if r['gradient_checkpointing'] else 'off'}"
            if r["stage"] == "embedding"
            else f"{r['ddim_steps_measured']} DDIM step + VAE encode/decode"
        )
        print(
            f"| {r['stage']} | {r['batch']} | {setting} | {_size(sum(r['param_bytes'].values()) / GIB)} "
            f"| {_size(r['extra_GiB'])} | {r['seconds']:.1f} s | {_size(gpu_bound_gib(r))} |"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=["full", "tiny"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--child", type=int, choices=[1, 2], default=None, help=argparse.SUPPRESS)
    p.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps((measure_stage1 if args.child == 1 else measure_stage2)(args)))
        return 0
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("needs Linux's /proc/self/clear_refs to reset the peak-RSS counter")

    plain, ckpt = run_child(args, 1, False), run_child(args, 1, True)
    rows = [plain, ckpt, run_child(args, 2)]
    print_table(rows, args.size)
    ratio = plain["extra_GiB"] / max(ckpt["extra_GiB"], 1e-9)
    print(
        f"stage 1 checkpointing: {ratio:.2f}x less step memory at {ckpt['seconds'] / max(plain['seconds'], 1e-9):.2f}x the time"
    )
    result = {
        "what": "LDM stage memory, fp32 on CPU (peak RSS above the RSS before the measured work)",
        "size": args.size,
        "cpu_threads": args.threads,
        "rows": rows,
        "bf16_gpu_bound_GiB": {
            "embedding": gpu_bound_gib(plain),
            "embedding_gradient_checkpointing": gpu_bound_gib(ckpt),
            "generation": gpu_bound_gib(rows[2]),
        },
        "stage1_checkpointing_memory_ratio": ratio,
        "stage1_losses_equal": plain["loss"] == ckpt["loss"],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
