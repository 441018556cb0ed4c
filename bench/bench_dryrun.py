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
sys.path.insert(0, str(REPO))

from anogen.data.mvtec_counts import MVTEC_AD_COUNTS as MVTEC  # noqa: E402


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
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--quiet",
        "rules",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        *extra,
    ]
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
        print(
            f"MVTec-layout tree: 15 categories, {counts['defects']} defect types, "
            f"{counts['train']} train, {counts['test']} test images, {counts['masks']} masks"
        )
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
