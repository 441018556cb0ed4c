"""A study's outputs (anogen.studies.table) and the paper's numbers (anogen.evaluation.paper_numbers)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from anogen import provenance
from anogen.errors import AnogenError, DataError
from anogen.evaluation import paper_numbers as paper
from anogen.evaluation.summary import METRICS
from anogen.io import write_manifest
from anogen.studies.table import write_study
from anogen.studies.table_rows import DIFFERENT_TEST_SETS, STUDY_COLUMNS

CATEGORIES = ("bottle", "cable")
TEST_SETS = {"bottle": "aaaaaaaaaaaa", "cable": "bbbbbbbbbbbb"}
# arm -> pixel_aupr per category (fractions); the other metrics follow from it
PIXEL_AUPR = {"tau_0.90": {"bottle": 0.70, "cable": 0.74}, "tau_1.0": {"bottle": 0.60, "cable": 0.65}}


def _values(arm: str, category: str) -> dict[str, float | None]:
    aupr = PIXEL_AUPR[arm][category]
    return {
        "image_auroc": 0.95,
        "image_aupr": 0.97,
        "pixel_auroc": 0.96,
        "pixel_aupr": aupr,
        "pixel_aupro": None if (arm, category) == ("tau_1.0", "cable") else 0.9,
    }


def _evaluation(
    root: Path, arm: str, category: str, *, notes=(), test_set=None, images=(10, 6), values=None
) -> dict[str, str]:
    folder = root / arm / category
    folder.mkdir(parents=True)
    metrics = {
        "category": category,
        "detector": "draem",
        "variant": "anogen",
        "n_test_images": images[0],
        "n_anomalous": images[1],
        "n_excluded": 3,
        "test_set": test_set or TEST_SETS[category],
        **(values or _values(arm, category)),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    with provenance.collecting(notes):
        manifest = write_manifest(folder, stage="evaluation", key="0" * 12, spec={}, files=["metrics.json"])
    return {
        "category": category,
        "detector": "draem",
        "variant": "anogen",
        "metrics": str(folder / "metrics.json"),
        "manifest": str(manifest),
    }


def _study(root: Path, *, notes=(), test_sets=None, plot=True) -> dict:
    arms = []
    for name, column, x in (("tau_0.90", "0.90", 0.9), ("tau_1.0", "1.0", 1.0)):
        evaluations = [
            _evaluation(root, name, c, notes=notes, test_set=(test_sets or {}).get((name, c))) for c in CATEGORIES
        ]
        arms.append(
            {"name": name, "label": f"tau = {column}", "paper_column": column, "x": x, "evaluations": evaluations}
        )
    return {
        "name": "table3",
        "title": "Table 3: the weak loss's confidence threshold tau",
        "paper": "table3",
        "plot": {"metric": "pixel_aupr", "x": "tau"} if plot else None,
        "arms": arms,
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _mean(rows, arm: str) -> dict[str, str]:
    (row,) = [r for r in rows if r["arm"] == arm and r["category"] == "mean"]
    return row


# ----------------------------------------------------------------------------- paper numbers


def test_paper_numbers_as_printed():
    assert paper.paper_value("table3", "0.90", "draem", "pixel_aupr") == 73.2
    assert paper.paper_value("table3", "1.0", "draem", "pixel_aupr") == 68.9
    assert paper.paper_value("table3", "0.80", "draem", "pixel_auroc") == 97.1
    assert paper.paper_value("table4", "CutPaste", "draem", "pixel_aupr") == 59.8
    assert paper.paper_value("table4", "DRAEM+Ours", "draem", "pixel_aupr") == 73.2
    assert paper.paper_value("table1", "baseline", "destseg", "pixel_aupr") == 76.6
    assert paper.paper_value("table1", "anogen", "draem", "image_auroc") == 98.7
    assert paper.paper_value("table2a", "2nd set", "draem", "pixel_aupr") == 71.4
    assert paper.paper_value("table2b", "1", "draem", "pixel_aupr") == 70.5
    assert paper.paper_value("table2c", "non-mask", "draem", "image_aupr") == 98.7
    assert paper.paper_value("fig5", "4", "draem", "pixel_aupr") == 73.2
    # what the paper does not print
    assert paper.paper_value("table1", "baseline", "draem", "pixel_aupro") is None
    assert paper.paper_value("table4", "CutPaste", "draem", "image_auroc") is None
    assert paper.paper_value("table3", "0.90", "destseg", "pixel_aupr") is None
    assert paper.paper_tables() == ["table1", "table2a", "table2b", "table2c", "table3", "table4", "fig5"]
    assert "N = 4" in paper.paper_table("fig5")["note"]
    # the default setting of every ablation is Table 1's DRAEM AnoGen column
    default = paper.paper_table("table1")["columns"]["anogen"]["draem"]
    for table, column in (("table2a", "1st set"), ("table2b", "3"), ("table2c", "mask"), ("table3", "0.90")):
        assert paper.paper_table(table)["columns"][column]["draem"] == default, table


def test_paper_lookups_reject_unknown_names():
    with pytest.raises(AnogenError, match="no table 'table9'"):
        paper.paper_table("table9")
    with pytest.raises(AnogenError, match="no column '0.9'"):
        paper.paper_value("table3", "0.9", "draem", "pixel_aupr")
    with pytest.raises(AnogenError, match="not a metric"):
        paper.paper_value("table3", "0.90", "draem", "pixel_ap")
    table = paper.paper_table("table3")
    table["columns"].clear()  # a copy: the loaded numbers stay as they are
    assert paper.paper_value("table3", "0.90", "draem", "pixel_aupr") == 73.2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t["table3"]["columns"]["0.90"]["draem"].update(pixel_ap=1.0),
            r"table3\.columns\.0\.90\.draem\.pixel_ap",
        ),
        (
            lambda t: t["table3"]["columns"]["1.0"]["draem"].update(pixel_aupr="68.9%"),
            r"table3\.columns\.1\.0\.draem\.pixel_aupr",
        ),
        (
            lambda t: t["table4"]["columns"]["Ours"]["draem"].update(image_auroc=98.0),
            r"table4\.columns\.Ours\.draem\.image_auroc",
        ),
        (lambda t: t["table1"].update(metrics=["image_auroc", "aupr"]), r"table1\.metrics"),
        (lambda t: t["fig5"]["columns"].update({4: {"draem": {"pixel_aupr": 73.2}}}), r"fig5\.columns\.4.*quoted"),
        (lambda t: t["table3"].pop("source"), r"'table3' lacks 'source'"),
    ],
    ids=["unknown-metric", "not-a-number", "metric-not-in-table", "bad-metrics-list", "unquoted-column", "no-source"],
)
def test_a_malformed_paper_file_names_the_entry(tmp_path, change, message):
    tables = yaml.safe_load(paper.PAPER_NUMBERS.read_text(encoding="utf-8"))
    change(tables)
    path = tmp_path / "paper_numbers.yaml"
    path.write_text(yaml.safe_dump(tables), encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        paper.load_paper_numbers(path)
    assert str(path) in str(info.value)


def test_the_packaged_paper_file_is_valid_and_cites_the_paper():
    text = paper.PAPER_NUMBERS.read_text(encoding="utf-8")
    assert "2505.09263" in text and "no per-category values" in text
    assert paper.load_paper_numbers() == yaml.safe_load(text)
    for table_id in paper.paper_tables():
        assert "2505.09263" in paper.paper_table(table_id)["source"], table_id


# ----------------------------------------------------------------------------- study table


def test_study_table_means_paper_values_and_diffs(tmp_path):
    study = _study(tmp_path / "res")
    paths = write_study(study, tmp_path / "out")
    out = tmp_path / "out"
    assert paths == {"table": out / "table.csv", "plot": out / "plot.png", "section": out / "section.html"}
    text = paths["table"].read_text(encoding="utf-8")
    header = text.splitlines()[0].split(",")
    assert header[:6] == ["arm", "label", "detector", "variant", "category", "n_categories"]
    assert header[6:10] == ["n_test", "n_anomalous", "base_n_test", "base_n_anomalous"]
    assert header[10:14] == ["image_auroc", "base_image_auroc", "paper_image_auroc", "diff_image_auroc"]
    assert header[-3:] == ["test_set", "base_test_set", "note"] and tuple(header) == STUDY_COLUMNS
    rows = _rows(paths["table"])
    # the mean rows first (in arm order), then the per-category rows
    assert [(r["arm"], r["category"]) for r in rows] == [
        ("tau_0.90", "mean"),
        ("tau_1.0", "mean"),
        ("tau_0.90", "bottle"),
        ("tau_0.90", "cable"),
        ("tau_1.0", "bottle"),
        ("tau_1.0", "cable"),
    ]
    best = _mean(rows, "tau_0.90")
    assert best["label"] == "tau = 0.90" and best["n_categories"] == "2"
    assert (best["n_test"], best["n_anomalous"]) == ("20", "12")  # summed over the 2 categories
    assert best["base_n_test"] == best["base_pixel_aupr"] == best["base_test_set"] == ""  # no base evaluation
    assert best["pixel_aupr"] == "72.00" and best["paper_pixel_aupr"] == "73.20" and best["diff_pixel_aupr"] == "-1.20"
    assert (
        best["image_auroc"] == "95.00" and best["paper_image_auroc"] == "98.70" and best["diff_image_auroc"] == "-3.70"
    )
    assert best["pixel_aupro"] == "90.00" and best["paper_pixel_aupro"] == "" and best["diff_pixel_aupro"] == ""
    worst = _mean(rows, "tau_1.0")
    assert (
        worst["pixel_aupr"] == "62.50" and worst["paper_pixel_aupr"] == "68.90" and worst["diff_pixel_aupr"] == "-6.40"
    )
    # pixel AUPRO undefined for cable: the mean is bottle's, and the note says so
    assert worst["pixel_aupro"] == "90.00" and "pixel_aupro mean over 1/2 categories" in worst["note"]
    cable = [r for r in rows if (r["arm"], r["category"]) == ("tau_1.0", "cable")][0]
    assert cable["pixel_aupro"] == "" and "undefined: pixel_aupro" in cable["note"]
    for row in rows:
        if row["category"] != "mean":  # the paper prints no per-category values
            assert all(row[f"paper_{m}"] == "" and row[f"diff_{m}"] == "" for m in METRICS), row
            assert row["test_set"] == TEST_SETS[row["category"]]
        assert DIFFERENT_TEST_SETS not in row["note"]
    # the mean row's test set: sha256 of the sorted "category:test_set" lines, 12 hex digits
    lines = "\n".join(f"{c}:{TEST_SETS[c]}" for c in sorted(CATEGORIES))
    assert best["test_set"] == worst["test_set"] == hashlib.sha256(lines.encode()).hexdigest()[:12]


def test_study_outputs_are_byte_identical_on_a_rerun(tmp_path):
    study = _study(tmp_path / "res")
    first = write_study(study, tmp_path / "a")
    second = write_study(json.loads(json.dumps(study)), tmp_path / "b")
    for name in ("table", "section"):
        assert first[name].read_bytes() == second[name].read_bytes(), name
    assert first["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert second["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_notes_and_random_model_title(tmp_path):
    notes = (provenance.RANDOM_MODEL, provenance.FALLBACK_TEXTURES, provenance.RANDOM_MODEL)
    paths = write_study(_study(tmp_path / "res", notes=notes, plot=False), tmp_path / "out")
    for row in _rows(paths["table"]):
        parts = row["note"].split("; ")
        assert parts.count(provenance.RANDOM_MODEL) == 1 and provenance.FALLBACK_TEXTURES in parts, row
    page = paths["section"].read_text(encoding="utf-8")
    assert "random model" in page and "Table 3" in page and "73.20" in page and "2505.09263" in page
    assert "same test images" in page
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the grouped bars


def test_study_warns_when_arms_saw_different_test_sets(tmp_path):
    study = _study(tmp_path / "res", test_sets={("tau_1.0", "cable"): "cccccccccccc"})
    paths = write_study(study, tmp_path / "out")
    rows = _rows(paths["table"])
    for row in rows:
        affected = row["category"] in ("cable", "mean")
        assert (DIFFERENT_TEST_SETS in row["note"]) == affected, row
    assert _mean(rows, "tau_0.90")["test_set"] != _mean(rows, "tau_1.0")["test_set"]
    assert f"{DIFFERENT_TEST_SETS} (cable)" in _mean(rows, "tau_1.0")["note"]
    assert "Warning" in paths["section"].read_text(encoding="utf-8")


def test_study_errors_name_the_file(tmp_path):
    study = _study(tmp_path / "res")
    broken = Path(study["arms"][1]["evaluations"][0]["metrics"])
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as info:
        write_study(study, tmp_path / "out")
    assert str(broken) in str(info.value)
    broken.unlink()
    with pytest.raises(DataError, match="does not exist"):
        write_study(study, tmp_path / "out")
    assert not (tmp_path / "out" / "table.csv").exists()
    with pytest.raises(AnogenError, match="malformed"):
        write_study({"name": "x", "arms": []}, tmp_path / "out")


def test_a_study_without_paper_numbers_leaves_the_paper_columns_empty(tmp_path):
    study = _study(tmp_path / "res")
    study["paper"] = None
    rows = _rows(write_study(study, tmp_path / "out")["table"])
    assert all(r[f"paper_{m}"] == "" and r[f"diff_{m}"] == "" for r in rows for m in METRICS)


# ----------------------------------------------------------------------------- the config's own test set


def _k_study(root: Path) -> dict:
    """Table 2b in small: k = 3 (the config's support sets, also scored on the config's own test set,
    which keeps 2 more anomalies per category) and k = 5 (scored only on the study's)."""
    study_sets = {"bottle": "s" * 12, "cable": "t" * 12}
    arms = []
    for name, column, x in (("k3", "3", 3), ("k5", "5", 5)):
        evaluations = []
        for c in CATEGORIES:
            aupr = {"k3": 0.70, "k5": 0.74}[name] + (0.02 if c == "cable" else 0.0)
            values = {**_values("tau_0.90", c), "pixel_aupr": aupr}
            entry = _evaluation(root / "study", name, c, test_set=study_sets[c], images=(30, 20), values=values)
            if name == "k3":  # the same detector on the config's own test set: 2 more anomalous images
                base_values = {**values, "pixel_aupr": aupr + 0.01}
                base = _evaluation(root / "base", name, c, images=(32, 22), values=base_values)
                entry.update(base_metrics=base["metrics"], base_manifest=base["manifest"])
            evaluations.append(entry)
        arms.append({"name": name, "label": f"k = {x}", "paper_column": column, "x": x, "evaluations": evaluations})
    plot = {"metric": "pixel_aupr", "x": "k"}
    return {"name": "table2b", "title": "Table 2b", "paper": "table2b", "plot": plot, "arms": arms}


def test_the_default_arm_is_shown_on_the_configs_own_test_set_too(tmp_path):
    paths = write_study(_k_study(tmp_path / "res"), tmp_path / "out")
    rows = _rows(paths["table"])
    k3, k5 = _mean(rows, "k3"), _mean(rows, "k5")
    # the study's test set: 30 images (20 anomalous) per category, summed; the config's: 32 (22)
    assert (k3["n_test"], k3["n_anomalous"], k3["base_n_test"], k3["base_n_anomalous"]) == ("60", "40", "64", "44")
    assert k3["pixel_aupr"] == "71.00" and k3["base_pixel_aupr"] == "72.00"  # means of 70/72 and 71/73
    assert k3["paper_pixel_aupr"] == "73.20" and k3["diff_pixel_aupr"] == "-2.20"  # ours - paper stays the study's
    assert k3["base_image_auroc"] == "95.00" and k3["base_pixel_aupro"] == "90.00"
    lines = "\n".join(f"{c}:{TEST_SETS[c]}" for c in sorted(CATEGORIES))
    assert k3["base_test_set"] == hashlib.sha256(lines.encode()).hexdigest()[:12] != k3["test_set"]
    assert "4 fewer test images, 4 of them anomalous" in k3["note"]
    assert (k5["n_test"], k5["base_n_test"], k5["base_pixel_aupr"], k5["base_test_set"]) == ("60", "", "", "")
    assert "fewer test images" not in k5["note"] and k5["test_set"] == k3["test_set"]
    bottle = [r for r in rows if (r["arm"], r["category"]) == ("k3", "bottle")][0]
    assert (bottle["n_test"], bottle["base_n_test"], bottle["base_pixel_aupr"]) == ("30", "32", "71.00")
    assert bottle["base_test_set"] == TEST_SETS["bottle"] and "2 fewer test images" in bottle["note"]
    page = paths["section"].read_text(encoding="utf-8")
    assert "on the config&#x27;s test set" in page and "60 (40)" in page and "64 (44)" in page
    assert "72.00" in page and "one test set" in page


def test_a_base_evaluation_of_another_run_is_refused(tmp_path):
    study = _k_study(tmp_path / "res")
    entry = study["arms"][0]["evaluations"][0]
    entry["base_metrics"] = study["arms"][0]["evaluations"][1]["base_metrics"]  # cable's, for bottle
    with pytest.raises(DataError, match="holds results for cable/draem/anogen") as info:
        write_study(study, tmp_path / "out")
    assert entry["base_metrics"] in str(info.value)


def test_without_a_differing_base_the_page_has_no_base_columns(tmp_path):
    study = _study(tmp_path / "res")
    for arm in study["arms"]:  # the base evaluation is the study's own (its test set is the config's)
        for entry in arm["evaluations"]:
            entry.update(base_metrics=entry["metrics"], base_manifest=entry["manifest"])
    paths = write_study(study, tmp_path / "out")
    best = _mean(_rows(paths["table"]), "tau_0.90")
    assert best["base_pixel_aupr"] == best["pixel_aupr"] == "72.00" and best["base_test_set"] == best["test_set"]
    assert "fewer test images" not in best["note"]
    assert "config&#x27;s test set" not in paths["section"].read_text(encoding="utf-8")
