"""CPU costs of the demo's jobs, each against the path it replaced, measured in one run.

Measures, and prints as ratios old / new:
  1. ``import``: the modules an evaluation job imports (``anogen.detectors``, the DeSTSeg
     network, ``anogen.evaluation.evaluate``) in a fresh interpreter, against the same plus
     ``torchvision`` (which the DeSTSeg network imported before it had its own ResNet18
     parts; torchvision imports ``torch._dynamo``);
  2. ``panel``: one evaluation's example panels drawn by a reused ``PanelRenderer`` against a
     new figure per panel (``render_panel``, what each panel cost before);
  3. ``ssim filter``: the five Gaussian filters of one DRAEM SSIM, forward and backward, as
     banded matrix products (``losses.gaussian_filter``) against the official grouped 11x11
     convolution, at the demo's 64 px and the paper's 256 px, batch 8;
  4. ``DeSTSeg segmentation step``: forward and backward of the segmentation network
     (batch 4, 448 channels at a quarter of the image side) with ASPP's dilated branches as
     ``SameDilatedConv2d`` against plain ``nn.Conv2d``; at 64 px (16x16 maps: the rate-18
     branch reads only padding off its centre tap) and, on a GPU, 256 px (nothing to skip).

Usage: python bench/bench_job_overheads.py [--device cpu|cuda] [--repeats 3] [--panels 16] [--json PATH]
       [--quick]   (1 repeat, 2 panels, 64 px only: the test suite's run)
Single-threaded on a CPU (as the demo's jobs run: resources.threads = 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

EVALUATION_IMPORTS = "import anogen.detectors, anogen.detectors.destseg, anogen.evaluation.evaluate"


def _import_seconds(code: str, repeats: int) -> float:
    """The fastest of ``repeats`` fresh interpreters running ``code`` (its own clock, so the
    interpreter's start is not counted)."""
    timed = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", timed], capture_output=True, text=True, check=True, cwd=REPO)
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return min(runs)


def bench_imports(repeats: int) -> dict:
    new = _import_seconds(EVALUATION_IMPORTS, repeats)
    old = _import_seconds(EVALUATION_IMPORTS + ", torchvision.models", repeats)
    return {"old_s": old, "new_s": new, "ratio": old / new}


def bench_panels(n: int, size: int = 128) -> dict:
    from anogen.evaluation.visualize import PanelRenderer, render_panel

    rng = np.random.default_rng(0)
    panels = [
        (
            rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            rng.random((size, size)) > 0.8,
            rng.random((size, size)),
        )
        for _ in range(n)
    ]
    render_panel(*panels[0], vmin=0.0, vmax=1.0, title="warm-up")  # matplotlib's import and fonts
    t0 = time.perf_counter()
    for i, (image, mask, amap) in enumerate(panels):
        render_panel(image, mask, amap, vmin=0.0, vmax=1.0, title=f"panel {i}")
    old = (time.perf_counter() - t0) / n
    renderer = PanelRenderer()
    t0 = time.perf_counter()
    for i, (image, mask, amap) in enumerate(panels):
        renderer.render(image, mask, amap, vmin=0.0, vmax=1.0, title=f"panel {i}")
    new = (time.perf_counter() - t0) / n
    renderer.close()
    return {"panels": n, "old_s_per_panel": old, "new_s_per_panel": new, "ratio": old / new}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_filters(filt, size: int, device: str, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, size, size, generator=g).to(device).requires_grad_(True)
    y = torch.rand(8, 3, size, size, generator=g).to(device)

    def step():
        total = filt(x) + filt(y) + filt(x * x) + filt(y * y) + filt(x * y)
        total.sum().backward()

    for _ in range(3):
        step()
    _sync(device)
    n = max(5, repeats * 5)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n


def bench_ssim_filter(device: str, repeats: int, sizes=(64, 256)) -> dict:
    from anogen.detectors.losses import gaussian_filter, gaussian_window

    window = gaussian_window(11, 1.5, 3).to(device)

    def grouped(x):
        return F.conv2d(x, window, padding=5, groups=3)

    out = {}
    for size in sizes:
        old = _time_filters(grouped, size, device, repeats)
        new = _time_filters(gaussian_filter, size, device, repeats)
        out[f"{size}px"] = {"old_s": old, "new_s": new, "ratio": old / new}
    return out


def _segmentation_step(net, side: int, device: str):
    x = torch.randn(4, 448, side, side, generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()
        _sync(device)

    return step


def bench_destseg_segmentation(device: str, repeats: int, sizes=(64, 256)) -> dict:
    """Clipped and full convolutions alternate step by step, and each keeps its fastest
    step: on a shared machine, noise then slows both alike instead of whichever ran second."""
    import types

    from anogen.detectors.destseg.network import SameDilatedConv2d, SegmentationNet

    torch.manual_seed(0)
    net = SegmentationNet(448).to(device)
    clipped = [m for m in net.modules() if isinstance(m, SameDilatedConv2d)]

    def use_full(full: bool) -> None:
        for conv in clipped:  # the reference: every tap, as nn.Conv2d computes it
            if full:
                conv.forward = types.MethodType(torch.nn.Conv2d.forward, conv)
            elif "forward" in vars(conv):
                del conv.forward

    out = {}
    for size in sizes:
        step = _segmentation_step(net, size // 4, device)
        best = {True: float("inf"), False: float("inf")}
        for i in range(2 + max(3, repeats * 2) * 2):
            full = bool(i % 2)
            use_full(full)
            t0 = time.perf_counter()
            step()
            if i >= 2:  # the first two are warm-up
                best[full] = min(best[full], time.perf_counter() - t0)
        use_full(False)
        out[f"{size}px"] = {"old_s": best[True], "new_s": best[False], "ratio": best[True] / best[False]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--panels", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2 panels, 64 px only")
    args = ap.parse_args(argv)
    sizes = (64, 256)
    if args.quick:
        args.repeats, args.panels, sizes = 1, 2, (64,)
    if args.device == "cpu":
        torch.set_num_threads(1)
    results = {
        "device": args.device,
        "torch": torch.__version__,
        "import": bench_imports(args.repeats),
        "panel": bench_panels(args.panels),
        "ssim_filter": bench_ssim_filter(args.device, args.repeats, sizes),
        # 256 px only on a GPU: a CPU core needs ~10 s per step there
        "destseg_segmentation": bench_destseg_segmentation(
            args.device, args.repeats, sizes if args.device != "cpu" else (64,)
        ),
    }
    imp, panel = results["import"], results["panel"]
    print(f"{'what':34s} {'before':>10s} {'after':>10s} {'ratio':>7s}")
    print(f"{'import (evaluation job)':34s} {imp['old_s']:9.2f}s {imp['new_s']:9.2f}s {imp['ratio']:6.2f}x")
    print(
        f"{'example panel (each of ' + str(panel['panels']) + ')':34s} {panel['old_s_per_panel']:9.3f}s "
        f"{panel['new_s_per_panel']:9.3f}s {panel['ratio']:6.2f}x"
    )
    for size, row in results["ssim_filter"].items():
        label = f"SSIM filters fwd+bwd, batch 8, {size}"
        print(f"{label:34s} {row['old_s'] * 1e3:8.1f}ms {row['new_s'] * 1e3:8.1f}ms {row['ratio']:6.2f}x")
    for size, row in results["destseg_segmentation"].items():
        label = f"DeSTSeg segmentation step, {size}"
        print(f"{label:34s} {row['old_s'] * 1e3:8.1f}ms {row['new_s'] * 1e3:8.1f}ms {row['ratio']:6.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
