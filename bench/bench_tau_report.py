"""bench_tau.py's report: mean +- std over seeds per tau, the paired differences to tau = 1 and
the markdown page (also re-rendered from a result JSON alone)."""

from __future__ import annotations

from typing import Any

import numpy as np

COLUMNS = [
    ("dropped_box_fraction_tail", "dropped box px"),
    ("pixel_aupr", "pixel AU-PR"),
    ("pixel_auroc", "pixel AU-ROC"),
    ("image_auroc", "image AU-ROC"),
    ("p_anomaly_box_normal", "p_anom box-normal (train)"),
    ("p_anomaly_defect", "p_anom defect (train)"),
]


def summarise(runs: list[dict[str, Any]], taus: list[float]) -> list[dict[str, Any]]:
    table = []
    for tau in taus:
        rs = [r for r in runs if r["tau"] == tau]
        if not rs:
            continue
        row: dict[str, Any] = {"tau": tau, "n_seeds": len(rs)}
        for key, _ in COLUMNS:
            vals = np.array([r[key] for r in rs], dtype=float)
            row[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    head = "| tau | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in table:
        cells = [f"{row['tau']:g}"]
        for key, _ in COLUMNS:
            m, s = row[key]["mean"], row[key]["std"]
            cells.append(f"{m:.4f} ± {s:.4f}" if row["n_seeds"] > 1 else f"{m:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_differences(runs: list[dict[str, Any]], key: str = "pixel_aupr") -> dict[float, dict[str, Any]]:
    """Per tau: ``key`` minus the tau = 1 run of the same seed (same data, same init)."""
    base = {r["seed"]: r[key] for r in runs if r["tau"] == 1.0}
    out: dict[float, dict[str, Any]] = {}
    for tau in sorted({r["tau"] for r in runs if r["tau"] != 1.0}, reverse=True):
        d = np.array([r[key] - base[r["seed"]] for r in runs if r["tau"] == tau and r["seed"] in base])
        if d.size:
            out[tau] = {
                "mean": float(d.mean()),
                "std": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                "per_seed": [float(x) for x in d],
            }
    return out


def markdown_report(result: dict[str, Any]) -> str:
    """The table plus what produced it: settings, wall time, load, paired differences."""
    cfg, data = result["config"], result["data"]
    lines = [
        "# Weak box loss (tau), paper Table 3, measured on CPU (`bench/bench_tau.py`)",
        "",
        f"DRAEM (variant `{cfg['variant']}`, recon/disc widths {cfg['recon_width']}/{cfg['disc_width']}, "
        f"{cfg['image_size']} px, batch {cfg['batch_size']}, Adam {cfg['learning_rate']:g}, "
        f"{cfg['epochs']} epochs = {result['runs'][0]['steps'] if result['runs'] else '?'} steps) trained on "
        f"{data['n_train_items']} demo `{data['category']}` defect images labelled only by loose boxes "
        f"(box area = {data['box_to_defect_area']['mean']:.2f} x defect area on average, "
        f"range {data['box_to_defect_area']['min']:.2f}-{data['box_to_defect_area']['max']:.2f}); "
        f"tau in {cfg['taus']}, seeds {cfg['seeds']}; test: {cfg['n_test_good']} normal + "
        f"{cfg['n_test_per_defect']} per defect type, exact masks. Mean ± std over seeds.",
        "",
        "`dropped box px`: fraction of box pixels with predicted normal probability >= tau "
        f"(weight 0 in Eq. 9), pooled over the last {cfg['tail']:.0%} of training. "
        "`p_anom box-normal` / `p_anom defect`: mean anomaly probability of the final model on the "
        "training images, on the normal pixels inside the boxes and on the defect pixels.",
        "",
        markdown(result["table"]).rstrip(),
        "",
        "Pixel AU-PR minus the tau = 1 run of the same seed (paired):",
        "",
        "| tau | Δ pixel AU-PR (mean ± std) | per seed |",
        "|---|---|---|",
    ]
    for tau, d in paired_differences(result["runs"]).items():
        per = ", ".join(f"{x:+.4f}" for x in d["per_seed"])
        lines.append(f"| {tau:g} | {d['mean']:+.4f} ± {d['std']:.4f} | {per} |")
    load0, load1 = result["load_average_start"], result["load_average_end"]
    lines += [
        "",
        f"Wall time {result['wall_seconds']:.0f} s with {cfg['jobs']} runs in parallel (one torch "
        f"thread each) on {result['host']['cpus']} cores; 1-minute load average {load0[0]:.1f} at the "
        f"start, {load1[0]:.1f} at the end.",
        "",
    ]
    return "\n".join(lines)
