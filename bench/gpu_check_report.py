"""The device check's output: its checks, the throughput table (``throughput_<gpu>.json``, the
format ``anogen estimate`` reads), the projected full reproduction and the printed table."""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import platform
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GIB24 = 24.0


def record_check(checks: list[dict], name: str, ok: bool, detail: str = "") -> None:
    """Append one check to the run's list and print it (the DAG's checks and failed phases alike)."""
    checks.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"[{'ok' if ok else 'FAILED'}] {name}{': ' + detail if detail else ''}", flush=True)


def record_graph_checks(checks: list[dict], rows: list[dict]) -> None:
    """A stage-1 row that asked for a CUDA graph says whether one was captured; so does a check."""
    for r in rows:
        if r.get("cuda_graph_requested"):
            detail = "captured and replayed" if r["cuda_graph"] else "capture failed: the eager path was timed"
            record_check(checks, "stage-1 benchmark ran as a CUDA graph", bool(r["cuda_graph"]), detail)


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
