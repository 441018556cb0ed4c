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
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
import yaml  # noqa: E402

KILL_AT = 6  # embedding steps 8, checkpoint every 4: the rerun resumes from step 4
CATEGORY, DEFECTS = "nut_object", ["chip", "scratch"]
DEFECTS_TINY = ["chip"]  # the CPU check: one (category, defect) pair keeps it within minutes
GIB24 = 24.0
JOBS_PER_GPU = 3  # the DAG's jobs at once on one card (each well under a third of an H200's memory)


# ----------------------------------------------------------------------------- 1. the DAG


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


def record_check(checks: list[dict], name: str, ok: bool, detail: str = "") -> None:
    """Append one check to the run's list and print it (the DAG's checks and failed phases alike)."""
    checks.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"[{'ok' if ok else 'FAILED'}] {name}{': ' + detail if detail else ''}", flush=True)


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


# ----------------------------------------------------------------------------- 2. throughput


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


# ----------------------------------------------------------------------------- 3. table + projection


def _best(rows: list[dict], stage: str, dag_only: bool = True) -> dict | None:
    cands = [r for r in rows if r["stage"] == stage and r.get("value") and not (dag_only and "grouped" in r["variant"])]
    return max(cands, key=lambda r: r["value"]) if cands else None


def _before(rows: list[dict], stage: str) -> dict | None:
    cands = [r for r in rows if r["stage"] == stage and r["variant"].startswith("before") and r.get("value")]
    return max(cands, key=lambda r: r["value"]) if cands else None


def throughput_table(rows: list[dict], gpu: str, args) -> dict:
    # written even when the preflight found diffusers missing
    diffusers = importlib.import_module("diffusers") if importlib.util.find_spec("diffusers") else None
    stages = {}
    for stage in ("embedding", "generation", "detector_draem", "detector_destseg"):
        best = _best(rows, stage)
        if best is None:
            continue
        entry = {k: v for k, v in best.items() if k not in ("stage",)}
        entry["unit"] = "steps/s" if stage == "embedding" else "images/s"
        before = _before(rows, stage)
        entry["before"] = before["value"] if before else None
        stages[stage] = entry
    evals = [r for r in rows if r["stage"] == "evaluation" and r.get("value")]
    stages["evaluation"] = {
        "value": min(r["value"] for r in evals) if evals else None,
        "unit": "images/s",
        "variant": "slowest trained detector",
    }
    grouped = [r for r in rows if r["stage"] == "embedding" and "grouped" in r["variant"]]
    if grouped:
        stages["embedding"]["grouped_concept_steps_per_s"] = grouped[0]["value"]
    return {
        "format": "anogen-throughput/1",
        "gpu_model": gpu,
        "device": args.device,
        "size": "tiny" if args.tiny else "full",
        "source": "bench/gpu_check.py",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "torch": torch.__version__,
            "diffusers": getattr(diffusers, "__version__", None),
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "stages": stages,
    }


def projection(table: dict) -> dict:
    from anogen import estimate as est
    from anogen.config import load_config_file

    config = load_config_file(REPO / "config" / "mvtec.yaml")
    out = {}
    for label, tab in (("this run", table), ("seeded H200 figures", (est.find_table("H200") or (None, None))[1])):
        if tab is None:
            continue
        e = est.build_jobs(config, tab, Path("."))
        out[label] = {
            "gpu_hours": e.stage_hours(),
            "total_gpu_hours": sum(e.stage_hours().values()),
            "wall_h_1gpu": est.list_schedule(e.jobs, 1) / 3600,
            "wall_h_4gpu": est.list_schedule(e.jobs, 4) / 3600,
            "notes": e.notes,
        }
    return out


def _fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def print_table(rows: list[dict], checks: list[dict], proj: dict, dag: dict, gpu: str) -> None:
    print(f"\n=== anogen GPU check on {gpu} ===")
    print(
        f"DAG: {sum(c['ok'] for c in checks)}/{len(checks)} checks passed; data + model prepared in "
        f"{dag.get('prepare_s', 0):.0f} s, DAG (kill + resume + rest) {dag.get('dag_s', 0):.0f} s"
    )
    print(f"\n{'stage':<17} {'variant':<38} {'rate':>12} {'unit':<16} {'x before':>8} {'peak GiB':>9} {'24 GB':>6}")
    for r in rows:
        before = _before(rows, r["stage"])
        ratio = r["value"] / before["value"] if before and r.get("value") else None
        fits = None if r.get("peak_gib") is None else ("yes" if r["peak_gib"] < GIB24 else "no")
        print(
            f"{r['stage']:<17} {r['variant']:<38} {_fmt(r.get('value')):>12} {r['unit']:<16} "
            f"{_fmt(ratio):>8} {_fmt(r.get('peak_gib'), 1):>9} {fits or '-':>6}"
        )
    for label, p in proj.items():
        hours = ", ".join(f"{k} {v:.2f}" for k, v in p["gpu_hours"].items())
        print(
            f"\nprojected full reproduction ({label}): {p['total_gpu_hours']:.2f} GPU-h ({hours}); "
            f"wall {p['wall_h_1gpu']:.2f} h on 1 GPU, {p['wall_h_4gpu']:.2f} h on 4"
        )
        for n in p["notes"]:
            print(f"  note: {n}")


def gpu_slug(name: str) -> str:
    s = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_") or "gpu"


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


def record_graph_checks(checks: list[dict], rows: list[dict]) -> None:
    """A stage-1 row that asked for a CUDA graph says whether one was captured; so does a check."""
    for r in rows:
        if r.get("cuda_graph_requested"):
            detail = "captured and replayed" if r["cuda_graph"] else "capture failed: the eager path was timed"
            record_check(checks, "stage-1 benchmark ran as a CUDA graph", bool(r["cuda_graph"]), detail)


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
    stage1 = run.phase("stage 1", run.in_child("gpu_check:bench_stage1"), PHASE_SECONDS["stage 1"]) or []
    record_graph_checks(run.checks, stage1)
    run.rows += stage1
    run.rows += run.phase("stage 2", run.in_child("gpu_check:bench_stage2"), PHASE_SECONDS["stage 2"]) or []
    stage3 = run.phase("stage 3", run.in_child("gpu_check:bench_stage3"), PHASE_SECONDS["stage 3"])
    det_rows, run.synth = stage3 or ([], [])
    run.rows += det_rows
    if run.dag.get("detector_dirs"):
        ev = run.in_child("gpu_check:bench_evaluation", run.dag["detector_dirs"])
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
