"""bench/bench_tau.py --quick: output structure, the loose boxes, and the dropped fraction."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str = "bench_tau"):
    """bench/<name>.py as a module (bench_tau.py puts bench/ on sys.path for its helper modules)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loose_box_contains_the_defect_at_the_asked_area():
    bench = _bench("bench_tau_data")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 40:50] = 1  # 100 px, tight box 10 x 10
    rng = np.random.default_rng(0)
    for ratio in (2.0, 3.0, 4.0):
        box, (y0, x0, y1, x1) = bench.loose_box(mask, ratio, rng)
        assert box.sum() == (y1 - y0) * (x1 - x0)
        assert (box[mask > 0] == 1).all()
        # side = round(10 * sqrt(ratio)): 14, 17, 20 px
        side = round(10 * math.sqrt(ratio))
        assert (y1 - y0, x1 - x0) == (side, side)
    edge = np.zeros((64, 64), np.uint8)
    edge[0:4, 60:64] = 1  # in a corner: the box stays inside the image
    box, (y0, x0, y1, x1) = bench.loose_box(edge, 4.0, rng)
    assert (y0, x0, y1, x1) == (0, 56, 8, 64) and (box[edge > 0] == 1).all()


def test_quick_run_structure_and_dropped_fraction(tmp_path):
    bench = _bench()
    out_json = tmp_path / "tau.json"
    out_md = tmp_path / "tau.md"
    result = bench.main(
        [
            "--quick",
            "--jobs",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--out-json",
            str(out_json),
            "--out-md",
            str(out_md),
        ]
    )
    assert json.loads(out_json.read_text())["table"] == json.loads(json.dumps(result["table"]))
    taus = result["config"]["taus"]
    assert taus == [1.0, 0.95, 0.9, 0.8]
    assert len(result["runs"]) == len(taus) * len(result["config"]["seeds"])
    assert 2.0 <= result["data"]["box_to_defect_area"]["mean"] <= 4.0

    md = out_md.read_text()
    lines = md.splitlines()
    head = lines.index(
        "| tau | dropped box px | pixel AU-PR | pixel AU-ROC | image AU-ROC "
        "| p_anom box-normal (train) | p_anom defect (train) |"
    )
    assert [row.split(" | ")[0] for row in lines[head + 2 : head + 2 + len(taus)]] == [
        "| 1",
        "| 0.95",
        "| 0.9",
        "| 0.8",
    ]
    paired = lines.index("| tau | Δ pixel AU-PR (mean ± std) | per seed |")
    assert [row.split(" | ")[0] for row in lines[paired + 2 : paired + 5]] == ["| 0.95", "| 0.9", "| 0.8"]
    # The report re-rendered from the JSON alone is the same text.
    out_md.unlink()
    bench.main(["--from-json", str(out_json), "--out-md", str(out_md)])
    assert out_md.read_text() == md

    for run in result["runs"]:
        assert run["steps"] == result["config"]["epochs"] * math.ceil(
            result["config"]["n_train_items"] / result["config"]["batch_size"]
        )
        for key in ("pixel_aupr", "pixel_auroc", "image_auroc"):
            assert 0.0 <= run[key] <= 1.0
        assert len(run["dropped_box_fraction_by_decile"]) == 10
        assert 0.0 <= run["dropped_box_fraction_tail"] <= 1.0

    dropped = {row["tau"]: row["dropped_box_fraction_tail"]["mean"] for row in result["table"]}
    # tau = 1 is plain box supervision: nothing is dropped, by construction of weak_mask.
    assert dropped[1.0] == 0.0
    assert all(r["dropped_box_fraction_by_decile"] == [0.0] * 10 for r in result["runs"] if r["tau"] == 1.0)
    # A lower tau drops at least as many box pixels.
    ordered = [dropped[t] for t in sorted(dropped, reverse=True)]
    assert all(a <= b for a, b in zip(ordered, ordered[1:])), ordered
    # The quick run is calibrated so that the lowest tau does drop pixels.
    assert dropped[0.8] > 0.0


def test_summary_and_paired_differences_by_hand():
    bench = _bench("bench_tau_report")
    keys = [k for k, _ in bench.COLUMNS]
    runs = []
    for seed, (base, weak) in enumerate([(0.5, 0.6), (0.7, 0.7), (0.9, 0.8)]):
        runs.append({"tau": 1.0, "seed": seed, **{k: base for k in keys}})
        runs.append({"tau": 0.9, "seed": seed, **{k: weak for k in keys}})
    table = bench.summarise(runs, [1.0, 0.9, 0.8])  # 0.8 has no run: left out
    assert [row["tau"] for row in table] == [1.0, 0.9]
    assert table[0]["pixel_aupr"]["mean"] == pytest.approx(0.7)
    assert table[0]["pixel_aupr"]["std"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9
    d = bench.paired_differences(runs)[0.9]
    assert d["per_seed"] == pytest.approx([0.1, 0.0, -0.1])
    assert d["mean"] == pytest.approx(0.0) and d["std"] == pytest.approx(0.1)
