"""The Snakemake report: its HTML tables, figure, notes and plots (unit), and the report built
from a finished demo run (e2e): both tables with their numbers, every anomaly-map example
under its own labels, every montage and every loss plot."""

from __future__ import annotations

import csv
import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.evaluation import report
from anogen.progress import Progress, format_eta

# ----------------------------------------------------------------------------- progress


def test_progress_line_rate_and_eta(caplog):
    now = [100.0]
    progress = Progress(100, logger=logging.getLogger("t.progress"), every=10, seconds=1e9, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t.progress"):
        now[0] = 104.0
        assert not progress.update(5)  # neither 10 steps nor the time limit
        now[0] = 105.0
        assert progress.update(10, "loss 0.5")
        now[0] = 150.0
        assert progress.update(100)
    lines = [r.getMessage() for r in caplog.records]
    # 10 steps in 5 s = 2 it/s, 90 left -> 45 s; at the end 100 in 50 s
    assert lines == ["step 10/100, 2 it/s, ETA 00:00:45, loss 0.5", "step 100/100, 2 it/s, ETA 00:00:00"]


def test_progress_extra_is_computed_only_when_a_line_is_due():
    now = [0.0]
    calls = []
    progress = Progress(10, logger=logging.getLogger("t.p3"), every=5, seconds=1e9, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] = float(step)
        progress.update(step, lambda: calls.append(step) or "x")  # noqa: B023 (called at once)
    assert calls == [5, 10]


def test_progress_counts_only_the_resumed_part_and_the_time_limit():
    now = [0.0]
    progress = Progress(1000, logger=logging.getLogger("t.p2"), start=600, every=1000, seconds=60, clock=lambda: now[0])
    now[0] = 61.0
    assert progress.update(661)  # 60 s passed: a line although only 61 steps
    assert progress.rate(661) == pytest.approx(1.0)
    assert progress.eta(661) == pytest.approx(339.0)
    assert format_eta(3725) == "01:02:05" and format_eta(float("nan")) == "--:--:--"
    assert format_eta(90061) == "25:01:01"


# ----------------------------------------------------------------------------- tables


def _summary_rows(categories, draem_base=90.0, draem_ours=95.0, note=""):
    rows = []
    for variant, value in (("baseline", draem_base), ("anogen", draem_ours)):
        for c in categories:
            rows.append(
                {
                    "category": c,
                    "detector": "draem",
                    "variant": variant,
                    **{m: f"{value:.2f}" for m in report.METRICS},
                    "n_categories": "1",
                    "note": note,
                }
            )
        rows.append(
            {
                "category": "mean",
                "detector": "draem",
                "variant": variant,
                **{m: f"{value:.2f}" for m in report.METRICS},
                "n_categories": str(len(categories)),
                "note": "",
            }
        )
    return rows


def _table1_rows(base=90.0, ours=95.0):
    return [
        {
            "metric": label,
            "draem baseline": f"{base:.2f}",
            "draem anogen": f"{ours:.2f}",
            "draem delta": f"{ours - base:.2f}",
        }
        for label in report.METRIC_LABELS.values()
    ]


def _cells(text):
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>.*?</td>", text)]


def test_table1_beside_the_paper_for_mvtec_categories():
    rows = _summary_rows(["bottle", "carpet"])
    text = report.table1_html(_table1_rows(), rows)
    cells = _cells(text)
    first = cells[: cells.index("Image AU-PR")]
    # ours 90 / 95 / +5, paper DRAEM 97.1 / 98.7 / +1.6, ours - paper 95 - 98.7 = -3.7
    assert first == ["Image AU-ROC", "90.00", "95.00", "+5.00", "97.10", "98.70", "+1.60", "-3.70"]
    pixel_aupr = cells[cells.index("Pixel AU-PR") :][:8]
    assert pixel_aupr == ["Pixel AU-PR", "90.00", "95.00", "+5.00", "67.40", "73.20", "+5.80", "+21.80"]
    aupro = cells[cells.index("Pixel AUPRO") :][:8]
    assert aupro[4:7] == ["-", "-", ""]  # the paper reports no AUPRO
    assert "evaluated 2 of them" in text


def test_table1_without_paper_for_other_categories():
    text = report.table1_html(_table1_rows(), _summary_rows(["nut_object"]))
    assert "paper draem" not in text and "not MVTec AD" in text
    assert _cells(text)[:4] == ["Image AU-ROC", "90.00", "95.00", "+5.00"]


def test_summary_html_has_every_row_and_escapes_notes():
    rows = _summary_rows(["nut_object", "brick_gray"], note="diffusion <random-init>; textures: fallback")
    text = report.summary_html(rows)
    assert text.count("<tr") == 1 + len(rows)
    assert text.count('<tr class="mean">') == 2
    assert "&lt;random-init&gt;" in text and "<random-init>" not in text
    found = report.notes(rows)
    assert [n for n, _ in found] == ["diffusion <random-init>", "textures: fallback"]
    assert found[0][1] == [
        "nut_object/draem/baseline",
        "brick_gray/draem/baseline",
        "nut_object/draem/anogen",
        "brick_gray/draem/anogen",
    ]
    fragment = report.notes_html(rows)
    assert "<html" not in fragment and fragment.count("<li>") == 2 and "&lt;random-init&gt;" in fragment
    assert "No notes" in report.notes_html(_summary_rows(["x"]))


def test_write_report_items(tmp_path):
    rows = _summary_rows(["bottle", "carpet"], note="teacher random-init")
    header = list(rows[0])
    with open(tmp_path / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    t1 = _table1_rows()
    with open(tmp_path / "table1.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(t1[0]))
        writer.writeheader()
        writer.writerows(t1)
    out = tmp_path / "report"
    report.write_report_items(
        tmp_path / "summary.csv",
        tmp_path / "table1.csv",
        summary_html_path=out / "s.html",
        table1_html_path=out / "t.html",
        comparison_png=out / "c.png",
        notes_html_path=out / "n.html",
    )
    assert "teacher random-init" in (out / "n.html").read_text()
    assert "97.10" in (out / "t.html").read_text()
    image = np.asarray(Image.open(out / "c.png").convert("RGB"))
    assert image.shape[0] > 600 and image.shape[1] > 400  # five metric rows
    # the bars are drawn: baseline grey and AnoGen orange both appear
    px = image.reshape(-1, 3).astype(int)
    assert (np.abs(px - (0x8C, 0x8C, 0x8C)).sum(1) < 10).sum() > 200
    assert (np.abs(px - (0xD9, 0x54, 0x1E)).sum(1) < 10).sum() > 200


# ----------------------------------------------------------------------------- loss plots


def test_detector_loss_plot_from_train_log(tmp_path):
    from anogen.io import write_manifest
    from anogen.plots import plot_detector_training, read_loss_columns

    lines = ["step,phase,loss,cosine,focal,weak_dropped,lr,seconds"]
    lines += [f"{i},1,{1 / i:.4f},{1 / i:.4f},,0,0.1,{i * 0.5}" for i in range(1, 31)]
    lines += [f"{i},2,{2 / i:.4f},,{1 / i:.4f},3,0.1,{i * 0.5}" for i in range(31, 61)]
    (tmp_path / "train_log.csv").write_text("\n".join(lines) + "\n")
    steps, curves = read_loss_columns(tmp_path / "train_log.csv")
    assert list(curves) == ["loss", "cosine", "focal"]  # phase, weak_dropped, lr, seconds left out
    assert steps.tolist() == list(range(1, 61))
    assert np.isnan(curves["focal"][:30]).all() and curves["focal"][30] == pytest.approx(1 / 31, abs=1e-4)
    write_manifest(
        tmp_path,
        stage="detector",
        key="0" * 12,
        spec={"detector": "destseg", "variant": "anogen", "category": "bottle"},
        files=["train_log.csv"],
    )
    plot_detector_training(tmp_path, tmp_path / "out" / "loss.png")
    image = Image.open(tmp_path / "out" / "loss.png")
    assert image.size[0] >= 600 and image.size[1] >= 3 * 150  # one axis per term

    (tmp_path / "train_log.csv").write_text("\n".join(lines[:-1]) + "\n")  # edited after training
    from anogen.errors import IntegrityError

    with pytest.raises(IntegrityError):
        plot_detector_training(tmp_path, tmp_path / "out" / "loss2.png")


# ----------------------------------------------------------------------------- the report of a demo run


def _result_entries(texts: str) -> dict[str, dict]:
    """Result path -> labels, from the report's ``var results = {...}``."""
    match = re.search(r'var results = (\{"results.*?\});?\s*\n', texts, re.S)
    assert match, "the report holds no results table"
    return {path: entry.get("labels") or {} for path, entry in json.loads(match.group(1)).items()}


def _report_texts(zf: zipfile.ZipFile) -> str:
    return "\n".join(zf.read(n).decode("utf-8", "replace") for n in zf.namelist() if n.endswith((".html", ".js")))


@pytest.mark.e2e
def test_report_of_the_demo_run(demo_run, tmp_path):
    from tests import e2e

    work = e2e.copy_tree(demo_run, tmp_path / "work")
    e2e.run(work, "--report", "report.zip")
    results = work / "results"
    with zipfile.ZipFile(work / "report.zip") as zf:
        names = zf.namelist()
        texts = _report_texts(zf)

        def by_suffix(suffix):
            return [n for n in names if n.endswith(suffix)]

        # both tables as HTML items, holding every number of the CSVs
        (table1_item,) = by_suffix("/table1.html")
        (summary_item,) = by_suffix("/summary.html")
        table1_text = zf.read(table1_item).decode()
        summary_text = zf.read(summary_item).decode()
        table1 = list(csv.DictReader((results / "table1.csv").open()))
        for row in table1:
            cells = _cells(table1_text)
            start = cells.index(row["metric"])
            for column, value in list(row.items())[1:]:
                expected = (
                    value
                    if not column.endswith("delta") or not value
                    else f"{float(value):+.2f}".replace("+0.00", "0.00")
                )
                assert expected in cells[start : start + len(row)], (row["metric"], column, value)
        summary = list(csv.DictReader((results / "summary.csv").open()))
        assert summary_text.count("<tr") == 1 + len(summary)
        summary_cells = _cells(summary_text)
        for row in summary:
            for metric in report.METRICS:
                assert row[metric] in summary_cells
        assert by_suffix("/comparison.png") and by_suffix("/notes.html")
        # no metric weights in the demo: no generation-quality table, and the front page says why
        assert not by_suffix("/generation_quality.html")
        assert "Generation quality (IS, IC-LPIPS, KID) not computed" in texts

        # every anomaly-map example panel (n per defect type), each under its own label set
        manifests = [json.loads(p.read_text()) for p in results.glob("evaluation/*/*/*/*/manifest.json")]
        assert len(manifests) == 3 * 2 * 2
        n_vis = e2e.e2e_config()["evaluation"]["n_visualizations"]
        expected = set()
        for m in manifests:
            spec = m["spec"]
            test_dir = work / e2e.e2e_config()["data_root"] / spec["category"] / "test"
            excluded = set(m["extra"]["excluded"])
            for defect_dir in sorted(test_dir.iterdir()):
                available = [
                    p
                    for p in defect_dir.glob("*.png")
                    if f"{spec['category']}/test/{defect_dir.name}/{p.name}" not in excluded
                ]
                shown = [e for e in m["extra"]["examples"] if e.split("/")[1] == defect_dir.name]
                assert len(shown) == min(n_vis, len(available)), (spec, defect_dir.name)
            expected |= {
                (spec["detector"], spec["variant"], *Path(e).with_suffix("").parts[1:]) for e in m["extra"]["examples"]
            }
        examples = [n for n in by_suffix(".png") if re.search(r"/[A-Za-z0-9_.-]+/[0-9]{3}\.png$", n)]
        assert len(examples) == sum(len(m["extra"]["examples"]) for m in manifests)
        entries = _result_entries(texts)
        # results/evaluation/<category>/...: the category is the subcategory the labels live in
        example_labels = [
            (path.split("/")[2], lbl["detector"], lbl["variant"], lbl["defect"], lbl["image"])
            for path, lbl in entries.items()
            if "/examples/" in path
        ]
        assert len(example_labels) == len(examples)
        assert len(set(example_labels)) == len(example_labels)  # unique: every panel reachable
        assert {lbl[1:] for lbl in example_labels} == expected

        # every montage, and the loss plots of every trained stage
        assert len(by_suffix("montage.png")) == 7
        assert len(by_suffix("/loss.png")) == 7
        assert len(by_suffix("/training_loss.png")) == 12

    # the front page carries the notes
    notes = (results / "report" / "notes.html").read_text()
    first_note = re.search(r"<li><b>(.*?)</b>", notes)
    if first_note:
        assert first_note.group(1) in texts
    else:
        assert "No notes" in texts
