"""Paper Table 3 on CPU: does the weak box loss (tau < 1) beat plain box labels?

The experiment (everything but the data comes from the package, unchanged):

- **Data** (``anogen.data.demo_images.render_demo_image``): defect images of one demo category
  (default ``grass_texture``: colour contamination blobs and holes pasted onto crops of a
  scikit-image photograph), rendered at the training size, each with its *exact* defect
  mask and its clean (pre-defect) image. Training items and the held-out test set are
  disjoint image indices of the same generator.
- **Weak labels**: each training defect gets a loose axis-aligned box that contains the
  defect, with box area = r x defect area, r ~ U(box_ratio) (default 2-4), at a random
  offset; so 50-75 % of every box is normal texture. The defect images + box masks are
  written as a stage-2 generation manifest (``anogen.io.write_manifest``, the
  ``extra.items`` contract of ``anogen.generation.run``), with the clean images as the
  source images (the detector's ``train/good`` folder), and read back by
  ``anogen.detectors.data.load_generated_items`` like real generated anomalies.
- **Detector**: DRAEM through ``anogen.detectors.train_detector`` (the workflow's training
  loop, ``TrainStream``, ``DraemTrainer``, the weak focal loss of Eq. 8-9 in
  ``anogen.detectors.losses``), by default variant ``anogen`` as in the paper: each sample
  is a box-labelled defect image with probability ``mix_prob`` (0.5), else DRAEM's
  synthetic branch on the clean images (Perlin anomaly with an exact mask, half of them
  left normal; textures from scikit-image's photographs). The weak loss is applied to the
  box-labelled samples only (``weak_on_synthetic`` false), so tau changes nothing but the
  box supervision. ``--variant generated_only`` trains on the box-labelled images alone.
  One run per (tau, seed); small widths, 32 px and a raised learning rate so that the
  predictions grow confident within a CPU budget.
- **Dropped fraction**: the trainer logs ``weak_dropped`` per step (dropped pixels / all
  pixels of the batch); the bench divides by the batch's box pixels (the batches are a pure
  function of (seed, step), so they are rebuilt here) = the fraction of box pixels whose
  predicted normal probability was >= tau, averaged over the last ``--tail`` of training.
- **Evaluation**: ``anogen.evaluation.evaluate.evaluate_detector`` (the workflow's metrics:
  exact pixel AU-PR / AU-ROC / AUPRO and image AU-ROC / AU-PR) on the held-out test set
  (normal + defect images, exact ground-truth masks), written in the MVTec layout.
  Also recorded, on the training items with the final model: the mean anomaly probability
  on the defect pixels, on the normal pixels inside the boxes, and outside the boxes.

Results: mean +- std over seeds per tau, printed as a markdown table and written with the
raw per-run values as JSON (``--out-json``) and markdown (``--out-md``).

Default (the table in bench/results/tau_cpu.md):
  nice -n 10 python bench/bench_tau.py --out-json bench/results/tau_cpu.json \\
      --out-md bench/results/tau_cpu.md
Smoke run (4 runs of 40 steps, about 25 s of CPU): python bench/bench_tau.py --quick

This file is the driver (options, the runs in parallel, the result JSON); the experiment lives
beside it: ``bench_tau_data.py`` (the box-labelled data), ``bench_tau_run.py`` (one run per
(tau, seed)) and ``bench_tau_report.py`` (the table and the markdown page).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_tau_report import markdown_report, summarise  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "category": "grass_texture",
    "taus": [1.0, 0.95, 0.9, 0.8],
    "seeds": [0, 1, 2],
    "image_size": 32,
    "n_train_items": 64,
    "n_test_good": 16,
    "n_test_per_defect": 16,
    "box_ratio": [2.0, 4.0],
    "data_seed": 0,
    "epochs": 50,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "recon_width": 8,
    "disc_width": 8,
    "tail": 0.25,
    "variant": "anogen",
    "mix_prob": 0.5,
    "jobs": 2,
}
QUICK: dict[str, Any] = {
    "seeds": [0],
    "n_train_items": 16,
    "n_test_good": 4,
    "n_test_per_defect": 4,
    "epochs": 20,
    "recon_width": 4,
    "disc_width": 4,
}


def parse_args(argv=None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny widths and data, 10 epochs")
    ap.add_argument("--category", help=f"demo category (default {DEFAULTS['category']})")
    ap.add_argument("--taus", type=float, nargs="+", help=f"default {DEFAULTS['taus']}")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"detector seeds (default {DEFAULTS['seeds']})")
    ap.add_argument("--image-size", type=int, help=f"default {DEFAULTS['image_size']}")
    ap.add_argument(
        "--n-train-items", type=int, help=f"box-labelled defect images (default {DEFAULTS['n_train_items']})"
    )
    ap.add_argument("--n-test-good", type=int, help=f"default {DEFAULTS['n_test_good']}")
    ap.add_argument("--n-test-per-defect", type=int, help=f"default {DEFAULTS['n_test_per_defect']}")
    ap.add_argument(
        "--box-ratio", type=float, nargs=2, help=f"box area / defect area range (default {DEFAULTS['box_ratio']})"
    )
    ap.add_argument("--data-seed", type=int, help=f"default {DEFAULTS['data_seed']}")
    ap.add_argument("--epochs", type=int, help=f"passes over the training items (default {DEFAULTS['epochs']})")
    ap.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    ap.add_argument(
        "--learning-rate", type=float, help=f"Adam, DRAEM's 'original' schedule (default {DEFAULTS['learning_rate']})"
    )
    ap.add_argument("--recon-width", type=int, help=f"DRAEM recon_base_width (default {DEFAULTS['recon_width']})")
    ap.add_argument("--disc-width", type=int, help=f"DRAEM disc_base_width (default {DEFAULTS['disc_width']})")
    ap.add_argument(
        "--tail",
        type=float,
        help=f"fraction of training the dropped fraction is averaged over (default {DEFAULTS['tail']})",
    )
    ap.add_argument(
        "--variant",
        choices=["generated_only", "anogen"],
        help="generated_only: box-labelled defects only; anogen: mixed with DRAEM's "
        f"synthetic branch (exact masks, half normal) (default {DEFAULTS['variant']})",
    )
    ap.add_argument(
        "--mix-prob", type=float, help=f"anogen variant: share of box-labelled samples (default {DEFAULTS['mix_prob']})"
    )
    ap.add_argument("--jobs", type=int, help=f"runs in parallel, one torch thread each (default {DEFAULTS['jobs']})")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp dir)")
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--out-md", type=Path, default=None)
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="only re-render --out-md (or print) from a JSON written by an earlier run",
    )
    args = ap.parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.quick:
        cfg.update(QUICK)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
    cfg["threads"] = 1
    cfg["quick"] = bool(args.quick)
    cfg["work"], cfg["out_json"], cfg["out_md"] = args.work, args.out_json, args.out_md
    cfg["from_json"] = args.from_json
    return cfg


def main(argv=None) -> dict[str, Any]:
    cfg = parse_args(argv)
    from_json = cfg.pop("from_json")
    if from_json is not None:
        result = json.loads(from_json.read_text())
        md = markdown_report(result)
        if cfg["out_md"]:
            cfg["out_md"].write_text(md)
        print(md)
        return result
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(cfg.pop("work") or tempfile.mkdtemp(prefix="bench_tau_"))
    out_json, out_md = cfg.pop("out_json"), cfg.pop("out_md")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    # not at the head: they load torch and cv2, which --from-json (a re-render) needs not
    from bench_tau_data import build_data  # loads cv2
    from bench_tau_run import run_job  # loads torch

    data = build_data(work, cfg)
    jobs = [(cfg, data, float(tau), int(seed), work / "runs") for seed in cfg["seeds"] for tau in cfg["taus"]]
    runs: list[dict[str, Any]] = []

    def report(done: bool) -> dict[str, Any]:
        """The result so far (written after every finished run, so a cut-short run leaves
        the completed seeds behind)."""
        ordered = sorted(runs, key=lambda r: (r["seed"], -r["tau"]))
        return {
            "config": cfg,
            "complete": done,
            "data": {k: data[k] for k in ("box_to_defect_area", "box_fraction_of_image")}
            | {"n_train_items": cfg["n_train_items"], "category": cfg["category"]},
            "table": summarise(ordered, [float(t) for t in cfg["taus"]]),
            "runs": ordered,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "load_average_start": [round(x, 2) for x in load0],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "work": str(work),
        }

    def save(result: dict[str, Any]) -> None:
        if out_json:
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")

    if int(cfg["jobs"]) > 1:
        with ProcessPoolExecutor(int(cfg["jobs"]), mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run_job, j) for j in jobs]):
                runs.append(future.result())
                save(report(False))
    else:
        for j in jobs:
            runs.append(run_job(j))
            save(report(False))
    result = report(True)
    save(result)
    wall = result["wall_seconds"]
    md = markdown_report(result)
    print(md)
    print(
        f"wall {wall:.0f} s, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}, "
        f"box/defect area {data['box_to_defect_area']['mean']:.2f}, work dir {work}"
    )
    if out_md:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(md)
    return result


if __name__ == "__main__":
    main()
