#!/usr/bin/env python
"""One device check: the whole workflow on CUDA, then throughput, peak memory and projection.

1. The real ``snakemake`` DAG over a small MVTec-layout tree (``anogen.data.demo`` images
   written as a plain data set, so the MVTec scanning path runs) with full-size random models
   (LDM text2im-large architecture saved with ``save_pretrained``; DRAEM 128/64 and DeSTSeg at
   published width, 256 px) and budgets of a few steps per job: every job of every stage runs
   on the device (lease, autocast, checkpoints, export, evaluation, summary). One embedding job
   is killed mid-run (SIGKILL after its first checkpoint) and the rerun must resume it.
2. Throughput and peak memory of each stage at full size, the plain path ("before") against
   the fast paths, measured in this run (functions of bench_embedding.py / bench_generation.py /
   bench_detector_throughput.py).
3. The projected full reproduction (config/mvtec.yaml, ``anogen.estimate``) on 1 and 4 GPUs.

Prints one table, writes ``bench/results/throughput_<gpu>.json`` (the format ``anogen
estimate`` reads; it replaces the seeded table of that GPU) and exits 1 if any job or check failed.

    python bench/gpu_check.py                      # on a GPU: full size (< 8 min on one H200)
    python bench/gpu_check.py --cpu --tiny         # CPU logic check: tiny models, 64 px

This file is the driver (preflight, phases in child processes, the budget); the phases live
beside it: ``gpu_check_dag.py`` (1), ``gpu_check_stages.py`` (2) and ``gpu_check_report.py``
(the checks, the table and the projection).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from gpu_check_dag import run_dag  # noqa: E402
from gpu_check_report import (  # noqa: E402
    gpu_slug,
    print_table,
    projection,
    record_check,
    record_graph_checks,
    throughput_table,
)

# ----------------------------------------------------------------------------- 0. preflight

# every third-party module the workflow's jobs import: a missing one on the device machine is
# named before any minute of the lease goes into a DAG that cannot start
RUNTIME_MODULES = (
    "diffusers",
    "transformers",
    "accelerate",
    "safetensors",
    "snakemake",
    "cv2",
    "skimage",
    "sklearn",
    "scipy",
    "pandas",
    "PIL",
    "yaml",
    "jsonschema",
    "matplotlib",
    "tqdm",
)


def preflight(args) -> dict:
    """Versions of torch, CUDA and every runtime module; raises naming each one that is missing."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    missing = []
    for name in ("anogen", *RUNTIME_MODULES):
        try:
            with warnings.catch_warnings():  # jsonschema deprecates its __version__
                warnings.simplefilter("ignore", DeprecationWarning)
                versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:  # an ImportError, or a broken install that fails while importing
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    if missing:
        raise RuntimeError(
            "cannot import " + "; ".join(missing) + ". On the lent GPU machine carry them as wheels: "
            "bash bench/device/fetch_wheels.sh here, then bench/device/run_check.sh there with carry ['.whl']"
        )
    sm = subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True)
    if sm.returncode != 0:
        raise RuntimeError(f"snakemake does not start: {sm.stderr[-1500:]}")
    versions["snakemake_cli"] = sm.stdout.strip()
    if args.device == "cuda":
        prop = torch.cuda.get_device_properties(0)
        versions["gpu_memory_gib"] = round(prop.total_memory / 2**30, 1)
        versions["gpu_capability"] = f"{prop.major}.{prop.minor}"
    return versions


# ----------------------------------------------------------------------------- 4. driver

# about how long each phase takes at full size on one H200 (seconds); with --budget-s a phase
# that no longer fits is skipped (and reported), so the check ends inside the device lease
PHASE_SECONDS = {"stage 1": 70, "stage 2": 120, "stage 3": 60, "evaluation": 20}


class CheckRun:
    """The check's state, written to JSON after every phase: a lease that ends mid-run still
    leaves every finished measurement behind."""

    def __init__(self, args, gpu: str, out: Path):
        self.args, self.gpu, self.out = args, gpu, out
        self.t0 = time.perf_counter()
        self.deadline = None if args.budget_s is None else self.t0 + args.budget_s
        self.checks: list[dict] = []
        self.rows: list[dict] = []
        self.dag: dict = {}
        self.synth: list[dict] = []
        self.versions: dict = {}
        self.phase_s: dict[str, float] = {}

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    def phase(self, name: str, fn, need_s: float = 0.0):
        """Run one phase; an exception or a budget skip becomes a failed check, never an abort."""
        left = self.left()
        if left is not None and left < need_s:
            record_check(
                self.checks,
                f"{name} phase",
                False,
                f"skipped: {left:.0f} s of --budget-s left, it needs about {need_s:.0f}",
            )
            self.write()
            return None
        t0 = time.perf_counter()
        print(f"--- {name} ({'no budget' if left is None else f'{left:.0f} s left'})", flush=True)
        try:
            return fn()
        except Exception as exc:
            traceback.print_exc()
            record_check(self.checks, f"{name} phase", False, f"{type(exc).__name__}: {exc}"[:1500])
            return None
        finally:
            self.phase_s[name] = round(time.perf_counter() - t0, 1)
            self.write()

    def in_child(self, target: str, *payload):
        """A phase function that runs ``target`` ("module:function") in a process of its own: a
        sticky CUDA error (an illegal access poisons the context for good) or a crash then
        fails that phase alone, and every following phase starts on a fresh context."""
        return lambda: run_phase_in_child(target, self.args, payload, timeout=self.left())

    def table(self) -> dict:
        table = throughput_table(self.rows, self.gpu, self.args)
        table["versions"].update(self.versions)
        table.update(
            rows=self.rows,
            synthesis=self.synth,
            checks=self.checks,
            dag={k: v for k, v in self.dag.items() if k != "detector_dirs"},
            phase_s=self.phase_s,
            total_s=round(time.perf_counter() - self.t0, 1),
        )
        return table

    def write(self, proj: dict | None = None) -> dict:
        table = self.table()
        if proj is not None:
            table["projection"] = proj
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".partial")
        tmp.write_text(json.dumps(table, indent=1, default=str) + "\n")
        tmp.replace(self.out)
        return table


def run_phase_in_child(target: str, args, payload=(), timeout: float | None = None):
    """``target(args, *payload)`` in a child ``gpu_check.py --phase``; its JSON result. The
    child's output goes to this log; a non-zero exit or a timeout raises (a failed phase)."""
    with tempfile.TemporaryDirectory(prefix="anogen_phase_") as tmp:
        io = Path(tmp) / "phase.json"
        io.write_text(json.dumps({"payload": list(payload)}, default=str))
        cmd = [sys.executable, str(Path(__file__).resolve()), *getattr(args, "argv", [])]
        cmd += ["--phase", target, "--phase-io", str(io)]
        try:
            proc = subprocess.run(cmd, timeout=None if timeout is None else max(timeout, 1.0))
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{target} ran past the budget ({timeout:.0f} s left) and was stopped") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"{target} exited {proc.returncode} in its own process (its output is above)")
        return json.loads(io.read_text())["result"]


def run_phase_here(args) -> int:
    """The child's side of ``run_phase_in_child``: run the phase, write its result."""
    module, _, function = args.phase.partition(":")
    payload = json.loads(args.phase_io.read_text())["payload"]
    result = getattr(importlib.import_module(module), function)(args, *payload)
    args.phase_io.write_text(json.dumps({"result": result}, default=str))
    return 0


def _out_path(out: Path | None, args, gpu: str) -> Path:
    name = f"throughput_{'cpu' if args.cpu else gpu_slug(gpu)}.json"
    if out is None:
        return REPO / "bench" / "results" / name
    return out / name if out.is_dir() else out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (logic check; not committed)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and 64 px instead of full size")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the DAG run here (default: a temp folder)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path, or a folder for throughput_<gpu>.json (default bench/results/)",
    )
    ap.add_argument("--group", type=int, default=4, help="concepts in the grouped stage-1 benchmark")
    ap.add_argument("--compile", action="store_true", help="also time generation with torch.compile (minutes)")
    ap.add_argument("--skip-dag", action="store_true", help="throughput only")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="end within this many seconds: the DAG is stopped and later phases are skipped (and reported) past it",
    )
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # module:function, in a child
    ap.add_argument("--phase-io", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a phase child is started with
    args.device = "cpu" if args.cpu else "cuda"
    if args.cpu:
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.phase:
        return run_phase_here(args)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu --tiny for the CPU logic check", file=sys.stderr)
        return 2
    gpu = "cpu" if args.cpu else torch.cuda.get_device_name()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anogen_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    run = CheckRun(args, gpu, _out_path(args.out, args, gpu))
    print(f"anogen GPU check: {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}, workdir {work}", flush=True)

    # 0. nothing else can run without the workflow's packages
    run.versions = run.phase("preflight", lambda: preflight(args)) or {}
    if not run.versions:
        print(f"wrote {run.out}", file=sys.stderr)
        return 3
    # 1. the DAG, stopped early enough to leave the benchmarks their time
    if not args.skip_dag:
        reserve = sum(PHASE_SECONDS.values())
        dag_deadline = None if run.deadline is None else run.deadline - reserve
        run.dag = run.phase("DAG", lambda: run_dag(work, args, run.checks, dag_deadline)) or {}
    # 2. throughput and peak memory, most needed first
    #    (each in a process of its own: a sticky CUDA error fails one phase, not the rest)
    stage1 = run.phase("stage 1", run.in_child("gpu_check_stages:bench_stage1"), PHASE_SECONDS["stage 1"]) or []
    record_graph_checks(run.checks, stage1)
    run.rows += stage1
    run.rows += run.phase("stage 2", run.in_child("gpu_check_stages:bench_stage2"), PHASE_SECONDS["stage 2"]) or []
    stage3 = run.phase("stage 3", run.in_child("gpu_check_stages:bench_stage3"), PHASE_SECONDS["stage 3"])
    det_rows, run.synth = stage3 or ([], [])
    run.rows += det_rows
    if run.dag.get("detector_dirs"):
        ev = run.in_child("gpu_check_stages:bench_evaluation", run.dag["detector_dirs"])
        run.rows += run.phase("evaluation", ev, PHASE_SECONDS["evaluation"]) or []
    # 3. the projection from what was measured
    proj = run.phase("projection", lambda: projection(run.table())) or {}
    print_table(run.rows, run.checks, proj, run.dag, gpu)
    final = run.write(proj)
    print(f"\nwrote {run.out} ({final['total_s']:.0f} s in all; phases {run.phase_s})")
    failed = [c for c in run.checks if not c["ok"]]
    if failed:
        print(f"{len(failed)} check(s) FAILED: {[c['check'] for c in failed]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
