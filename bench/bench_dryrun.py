"""How long does planning the full MVTec AD reproduction take, relative to the demo?

Builds an MVTec-AD-layout tree with the real 15 categories, 73 defect types and real file
counts (tiny valid PNGs: planning only lists folders), then times ``snakemake -n`` for
``config/mvtec.yaml`` against the demo's dry run, both in this run. Target: at most 2x.

    python bench/bench_dryrun.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# category: (train/good, test/good, {defect: n_test})  -- MVTec AD's published counts
MVTEC = {
    "bottle": (209, 20, {"broken_large": 20, "broken_small": 22, "contamination": 21}),
    "cable": (224, 58, {"bent_wire": 13, "cable_swap": 12, "combined": 11, "cut_inner_insulation": 14,
                        "cut_outer_insulation": 10, "missing_cable": 12, "missing_wire": 10, "poke_insulation": 10}),
    "capsule": (219, 23, {"crack": 23, "faulty_imprint": 22, "poke": 21, "scratch": 23, "squeeze": 20}),
    "carpet": (280, 28, {"color": 19, "cut": 17, "hole": 17, "metal_contamination": 17, "thread": 19}),
    "grid": (264, 21, {"bent": 12, "broken": 12, "glue": 11, "metal_contamination": 11, "thread": 11}),
    "hazelnut": (391, 40, {"crack": 18, "cut": 17, "hole": 18, "print": 17}),
    "leather": (245, 32, {"color": 19, "cut": 19, "fold": 17, "glue": 19, "poke": 18}),
    "metal_nut": (220, 22, {"bent": 25, "color": 22, "flip": 23, "scratch": 23}),
    "pill": (267, 26, {"color": 25, "combined": 17, "contamination": 21, "crack": 26, "faulty_imprint": 19,
                       "pill_type": 9, "scratch": 24}),
    "screw": (320, 41, {"manipulated_front": 24, "scratch_head": 24, "scratch_neck": 25, "thread_side": 23,
                        "thread_top": 23}),
    "tile": (230, 33, {"crack": 17, "glue_strip": 18, "gray_stroke": 16, "oil": 18, "rough": 15}),
    "toothbrush": (60, 12, {"defective": 30}),
    "transistor": (213, 60, {"bent_lead": 10, "cut_lead": 10, "damaged_case": 10, "misplaced": 10}),
    "wood": (247, 19, {"color": 8, "combined": 11, "hole": 10, "liquid": 10, "scratch": 21}),
    "zipper": (240, 32, {"broken_teeth": 19, "combined": 16, "fabric_border": 17, "fabric_interior": 16,
                         "rough": 17, "split_teeth": 18, "squeezed_teeth": 16}),
}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def build_tree(root: Path) -> dict[str, int]:
    png = _png()
    counts = {"train": 0, "test": 0, "masks": 0, "defects": 0}
    for cat, (n_train, n_good, defects) in MVTEC.items():
        for sub, n in [("train/good", n_train), ("test/good", n_good)]:
            d = root / cat / sub
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:03d}.png").write_bytes(png)
            counts["train" if sub.startswith("train") else "test"] += n
        for defect, n in defects.items():
            d, g = root / cat / "test" / defect, root / cat / "ground_truth" / defect
            d.mkdir(parents=True)
            g.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:03d}.png").write_bytes(png)
                (g / f"{i:03d}_mask.png").write_bytes(png)
            counts["test"] += n
            counts["masks"] += n
            counts["defects"] += 1
    return counts


def dry_run(workdir: Path, extra: list[str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"),
           "-d", str(workdir), *extra]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"dry run failed:\n{out.stdout}\n{out.stderr}")
    jobs = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    return elapsed, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="anogen-dryrun-"))
    try:
        counts = build_tree(tmp / "mvtec")
        print(f"MVTec-layout tree: 15 categories, {counts['defects']} defect types, "
              f"{counts['train']} train, {counts['test']} test images, {counts['masks']} masks")
        demo_cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        mvtec_cfg = yaml.safe_load((REPO / "config" / "mvtec.yaml").read_text())
        mvtec_cfg["data_root"] = str(tmp / "mvtec")
        (tmp / "demo.yaml").write_text(yaml.safe_dump(demo_cfg))
        (tmp / "mvtec.yaml").write_text(yaml.safe_dump(mvtec_cfg))
        demo_dir, mvtec_dir = tmp / "run-demo", tmp / "run-mvtec"
        demo_dir.mkdir()
        mvtec_dir.mkdir()
        demo_t, mvtec_t = [], []
        for _ in range(args.repeats):
            t, demo_jobs = dry_run(demo_dir, ["--configfile", str(tmp / "demo.yaml")])
            demo_t.append(t)
            t, mvtec_jobs = dry_run(mvtec_dir, ["--configfile", str(tmp / "mvtec.yaml")])
            mvtec_t.append(t)
        d, m = statistics.median(demo_t), statistics.median(mvtec_t)
        print(f"demo  dry run: {d:6.2f} s median of {args.repeats} ({demo_jobs} jobs)")
        print(f"mvtec dry run: {m:6.2f} s median of {args.repeats} ({mvtec_jobs} jobs)")
        print(f"ratio mvtec/demo: {m / d:.2f}x (target <= 2x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
