"""The device check's phase 1: the real ``snakemake`` DAG on the device (``run_dag``).

A small MVTec-layout tree (``anogen.data.demo`` images written as a plain data set, so the
MVTec scanning path runs), full-size random models (or the tiny ones with ``--tiny``) and
budgets of a few steps per job; one embedding job is killed after its first checkpoint and the
rerun must resume it. Imported by ``bench/gpu_check.py``, which puts the repository and
``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from gpu_check_report import record_check

REPO = Path(__file__).resolve().parents[1]

KILL_AT = 6  # embedding steps 8, checkpoint every 4: the rerun resumes from step 4
CATEGORY, DEFECTS = "nut_object", ["chip", "scratch"]
DEFECTS_TINY = ["chip"]  # the CPU check: one (category, defect) pair keeps it within minutes
JOBS_PER_GPU = 3  # the DAG's jobs at once on one card (each well under a third of an H200's memory)


def build_random_full_model(out_dir: Path, family: str = "ldm") -> Path:
    """Full-size random pipeline of ``family`` in the published layout (initialised on the GPU)."""
    from anogen.diffusion import tiny

    ctx = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="tok_") as tok_dir:
        # full size keeps the real vocabulary size; the tokenizer uses a prefix of it
        tiny.write_tokenizer_files(family, Path(tok_dir))
        with ctx:
            parts = tiny.build_components(family, "full", seed=0)
        parts = {k: (v.to("cpu") if hasattr(v, "parameters") else v) for k, v in parts.items()}
        # the same marker the tiny models carry: these weights are random, nothing here is a result
        return tiny.save_random_model(
            family, parts, Path(tok_dir), out_dir, {"family": family, "size": "full", "random": True}
        )


def check_config(work: Path, data_root: Path, model: Path, tiny: bool, cpu: bool) -> dict:
    """Every key the check needs, written out (the Snakefile's default config is not read)."""
    px = 64 if tiny else 256
    if tiny:
        # the tiny random LDM, built by the workflow's own tiny_model rule
        diffusion = {
            "model": "tiny:ldm",
            "revision": None,
            "mixed_precision": "auto",
            "tiny": {"seed": 0, "resolution": 64},
        }
    else:
        diffusion = {"model": str(model), "revision": None, "mixed_precision": "auto"}
    return {
        "data_root": str(data_root),
        "results_dir": str(work / "results"),
        "categories": [CATEGORY],
        "defects": {CATEGORY: list(DEFECTS_TINY if tiny else DEFECTS)},
        "category_options": {},
        "demo": {"root": str(work / "no-demo")},  # != data_root: the MVTec scanning path runs
        "support": {"shots": 2, "seed": 0, "exclude_from_test": True},
        # on the GPU, JOBS_PER_GPU slots per card: the DAG's short jobs share it, as jobs on
        # several cards would run side by side, and the check fits its lease
        "resources": {
            "gpu_slots": None if cpu else JOBS_PER_GPU * max(1, torch.cuda.device_count()),
            "lock_dir": str(work / "gpu-slots"),
            "threads": 1 if cpu else 4,
        },
        "diffusion": diffusion,
        "embedding": {"steps": 8, "batch_size": 4, "checkpoint_every": 4, "resolution": None, "cuda_graph": not cpu},
        "generation": {
            "steps": 4,
            "guidance_scale": 10.0,
            "boxes_per_image": 1,
            "images_per_box": 1,
            "max_normal_images": 4,
            "batch_size": 4,
            "paste_back": False,
            "channels_last": not cpu,
            "compile": False,
        },
        "detectors": {
            "models": ["draem", "destseg"],
            "variants": ["baseline", "anogen"],
            "image_size": px,
            "checkpoint_every": 2,
            "draem": {"epochs": 2, "batch_size": 4, **({"recon_base_width": 16, "disc_base_width": 8} if tiny else {})},
            "destseg": {"steps": 6, "student_steps": 2, "batch_size": 4},
        },
        "evaluation": {"resolution": px, "n_visualizations": 2},
    }


def _snakemake(
    work: Path, cfg: Path, cores: int, gpus: int, *targets: str, env_extra=None, timeout: float = 1200
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--configfile",
        str(cfg),
        "--cores",
        str(cores),
        "--resources",
        f"gpu={gpus}",
        "--rerun-incomplete",
        *targets,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    env.pop("SLURM_JOB_ID", None)
    # its own process group: on timeout the jobs it started die with it and free the GPU
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(f"snakemake {' '.join(targets)} ran past {timeout:.0f} s: {err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _until(deadline: float | None, floor: float = 30.0) -> float:
    """Seconds left before ``deadline`` (at least ``floor``); no deadline: 20 minutes."""
    return 1200.0 if deadline is None else max(floor, deadline - time.perf_counter())


def run_dag(work: Path, args, checks: list[dict], deadline: float | None = None) -> dict:
    """The DAG on the device; its snakemake calls stop at ``deadline`` (a perf_counter time)."""
    from anogen.commands.keys import referenced_dirs
    from anogen.config import load_config_file
    from anogen.data.demo import generate_demo_dataset
    from anogen.plan import Plan
    from anogen.resumable import KILL_ENV

    t0 = time.perf_counter()
    data_root = work / "mvtec"
    generate_demo_dataset(
        {
            "root": str(data_root),
            "seed": 0,
            "image_size": 64 if args.tiny else 256,
            "n_train_good": 8,
            "n_test_good": 4,
            "n_test_per_defect": 3,
        }
    )
    (data_root / "demo_spec.json").unlink(missing_ok=True)  # a plain MVTec-layout tree now
    if args.tiny:
        model = work / "models" / "tiny-ldm"
    else:
        model = build_random_full_model(work / "models" / "random-ldm-full")
    prep_s = time.perf_counter() - t0
    cfg = check_config(work, data_root, model, args.tiny, args.cpu)
    cfg_path = work / "check_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    plan = Plan(load_config_file(cfg_path))
    cores, gpus = (2, 2) if args.cpu else (max(2, os.cpu_count() or 2), cfg["resources"]["gpu_slots"])

    def check(name: str, ok: bool, detail: str = "") -> None:
        record_check(checks, name, ok, detail)

    # a) one embedding job killed after its first checkpoint
    emb_dir = (
        Path(cfg["results_dir"]) / "embeddings" / CATEGORY / DEFECTS[0] / plan.key("embedding", CATEGORY, DEFECTS[0])
    )
    t1 = time.perf_counter()
    killed = _snakemake(
        work,
        cfg_path,
        cores,
        gpus,
        str(emb_dir / "manifest.json"),
        env_extra={KILL_ENV: str(KILL_AT)},
        timeout=_until(deadline),
    )
    check(
        "embedding job killed mid-run",
        killed.returncode != 0
        and (emb_dir / "checkpoints" / "state.pt").is_file()
        and not (emb_dir / "manifest.json").exists(),
        f"snakemake rc {killed.returncode}",
    )
    # b) the whole DAG, resuming the killed job, and the export of the generated set
    export = Path(cfg["results_dir"]) / "export" / f"generated-{plan.export_key}" / "dataset.json"
    full = _snakemake(work, cfg_path, cores, gpus, "all", str(export), timeout=_until(deadline))
    dag_s = time.perf_counter() - t1
    check("whole DAG completed", full.returncode == 0, f"rc {full.returncode}")
    if full.returncode != 0:
        print(full.stdout[-4000:], full.stderr[-6000:], sep="\n", file=sys.stderr)
    want = "cpu" if args.cpu else "cuda"
    manifests = sorted(d / "manifest.json" for d in referenced_dirs(plan))
    missing = [str(m) for m in manifests if not m.is_file()]
    check("every planned artifact has a manifest", not missing, f"{len(manifests) - len(missing)}/{len(manifests)}")
    results = Path(cfg["results_dir"])
    check("summary and Table 1 written", (results / "summary.csv").is_file() and (results / "table1.csv").is_file())
    check("generated set exported", export.is_file())
    by_stage: dict[str, list[dict]] = {}
    for m in manifests:
        if m.is_file():
            man = json.loads(m.read_text())
            by_stage.setdefault(man["stage"], []).append(man)
    for stage in ("embedding", "generation", "detector"):
        devices = sorted({str(man["extra"].get("device")) for man in by_stage.get(stage, [])})
        check(f"{stage} jobs ran on {want}", devices == [want], f"devices {devices}")
    resumed = [
        man["extra"].get("resumed_from_step")
        for man in by_stage.get("embedding", [])
        if man["key"] == plan.key("embedding", CATEGORY, DEFECTS[0])
    ]
    check("killed embedding resumed from its checkpoint", resumed == [4], f"resumed_from_step {resumed}")
    if not args.cpu:
        autocast = sorted({str(man["extra"].get("autocast")) for man in by_stage.get("embedding", [])})
        check("embedding autocast on the GPU", all(a.startswith("torch.") for a in autocast), str(autocast))
        graphs = [man["extra"].get("cuda_graph") for man in by_stage.get("embedding", [])]
        check("embedding steps ran as a CUDA graph", all(graphs) and graphs, str(graphs))
    finished = list(results.glob("detectors/*/*/*/*/checkpoints/finished.json"))
    check("detectors checkpointed and finished", len(finished) == len(plan.detector_runs()), f"{len(finished)}")
    return {
        "prepare_s": prep_s,
        "dag_s": dag_s,
        "artifacts": len(manifests),
        "results": str(results),
        "detector_dirs": {
            f"{c}/{m}/{v}": str(results / "detectors" / c / m / v / plan.key("detector", c, m, v))
            for c, m, v in plan.detector_runs()
        },
    }
