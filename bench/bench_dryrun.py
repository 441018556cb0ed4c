"""How long does planning the full MVTec AD reproduction take, relative to the demo?

Builds an MVTec-AD-layout tree with the real 15 categories, 73 defect types and real file
counts (tiny valid PNGs: planning only lists folders), then times ``snakemake -n`` for
``config/mvtec.yaml`` against the demo's dry run, both in this run, in paired repeats (each
repeat runs every configuration once, in alternating order) and reports medians. Target: at
most 2x. Further configurations (``EXTRA_CONFIGS``: the paper study, ``paper`` target, at most
4x) are timed the same way when their config file exists, else reported as skipped.

    python bench/bench_dryrun.py [--repeats 5] [--warmup 1] [--check]
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
from typing import NamedTuple

import numpy as np
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


class Timed(NamedTuple):  # not a dataclass: tests load this file without registering it as a module
    """One configuration whose dry run is timed against the demo's."""

    label: str
    config: Path  # the --configfile
    max_ratio: float | None  # the target: its median seconds / the demo's (None: the reference)
    target: str | None = None  # the Snakemake target to plan (None: the default, ``all``)
    on_tree: bool = True  # run on the MVTec-layout tree (--config data_root=<tree>)


DEMO = Timed("demo", REPO / "config" / "config.yaml", None, on_tree=False)
MVTEC_FULL = Timed("mvtec", REPO / "config" / "mvtec.yaml", 2.0)

# ---------------------------------------------------------------------------- hook: more configurations
# Each entry is timed like MVTEC_FULL, in the same paired repeats, and its ratio to the demo
# printed against its own target; an entry whose config file does not exist is reported as
# skipped. Adding a configuration is one line here.
EXTRA_CONFIGS: list[Timed] = [
    Timed("paper study", REPO / "config" / "mvtec-paper-study.yaml", 4.0, target="paper"),
]


def dry_run(workdir: Path, extra: list[str], targets: tuple[str, ...] = ()) -> tuple[float, int]:
    """Seconds of one ``snakemake -n`` (``extra``: its options) and the number of jobs it plans."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,  # before the options: --quiet and --config take any number of values
        "-n",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        *extra,
        "--quiet",
        "rules",
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"dry run failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    jobs = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    return elapsed, jobs


def time_config(
    config: Path,
    workdir: Path,
    data_root: Path | None = None,
    target: str | None = None,
    jobs: dict[Path, int] | None = None,
) -> float:
    """The hook's clock: seconds of ``snakemake -n [target] --configfile config [--config
    data_root=...]`` in ``workdir`` (``jobs``, when given, gets the number of jobs it planned)."""
    extra = ["--configfile", str(config)]
    if data_root is not None:
        extra += ["--config", f"data_root={data_root}"]
    seconds, planned = dry_run(workdir, extra, (target,) if target else ())
    if jobs is not None:
        jobs[config] = planned
    return seconds


def _time(entry: Timed, tmp: Path, tree: Path, jobs: dict[Path, int]) -> float:
    workdir = tmp / f"run-{entry.label.replace(' ', '-')}"
    workdir.mkdir(exist_ok=True)
    return time_config(entry.config, workdir, tree if entry.on_tree else None, entry.target, jobs)


def _report(entries: list[Timed], seconds: dict[str, list[float]], jobs: dict[Path, int], repeats: int) -> bool:
    """Print each configuration's median and its ratio to the demo; True when every target is met."""
    demo = seconds[DEMO.label]
    ok = True
    width = max(len(e.label) for e in entries)
    for entry in entries:
        median = statistics.median(seconds[entry.label])
        print(f"{entry.label:<{width}} dry run: {median:6.2f} s median of {repeats} ({jobs[entry.config]} jobs)")
    for entry in entries[1:]:
        # paired: the ratio within each repeat (same load on the machine), then its median
        paired = statistics.median(t / d for t, d in zip(seconds[entry.label], demo, strict=True))
        of_medians = statistics.median(seconds[entry.label]) / statistics.median(demo)
        met = paired <= entry.max_ratio
        ok = ok and met
        print(
            f"ratio {entry.label}/demo: {paired:.2f}x paired median, {of_medians:.2f}x of the medians "
            f"(target <= {entry.max_ratio:g}x: {'met' if met else 'NOT MET'})"
        )
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="paired repeats (each runs every configuration once)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each configuration first")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio is above its target")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="anogen-dryrun-"))
    try:
        tree = tmp / "mvtec"
        counts = build_tree(tree)
        print(
            f"MVTec-layout tree: 15 categories, {counts['defects']} defect types, "
            f"{counts['train']} train, {counts['test']} test images, {counts['masks']} masks"
        )
        entries = [DEMO, MVTEC_FULL]
        for entry in EXTRA_CONFIGS:
            if entry.config.is_file():
                entries.append(entry)
            else:
                print(f"{entry.label}: skipped ({entry.config.relative_to(REPO)} does not exist)")
        jobs: dict[Path, int] = {}
        for _ in range(args.warmup):
            for entry in entries:
                _time(entry, tmp, tree, jobs)
        seconds: dict[str, list[float]] = {e.label: [] for e in entries}
        for repeat in range(args.repeats):
            for entry in entries if repeat % 2 == 0 else entries[::-1]:  # alternate who goes first
                seconds[entry.label].append(_time(entry, tmp, tree, jobs))
        ok = _report(entries, seconds, jobs, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.check and not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
