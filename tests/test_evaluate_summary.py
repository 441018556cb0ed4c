"""evaluate_detector on a tiny MVTec-like folder with a fake predictor; summary/table layout."""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.config import validate_config
from anogen.errors import DataError
from anogen.evaluation.evaluate import evaluate_detector
from anogen.evaluation.metrics import MetricUndefinedWarning, image_auroc
from anogen.evaluation.summary import summarize
from anogen.evaluation.visualize import PanelRenderer, heat_colors, render_panel
from anogen.io import load_manifest, verify_manifest

SIZE = 48


@dataclass
class Item:
    path: Path
    defect: str
    mask: Path | None = None


class RedPredictor:
    """Anomaly map = red minus green channel; score = max of the map."""

    image_size = 32

    def __init__(self):
        self.batches = []

    def predict(self, images):
        assert images.dtype.is_floating_point and images.shape[1:] == (3, 32, 32)
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        self.batches.append(images.shape[0])
        maps = (images[:, 0] - images[:, 1]).numpy().astype(np.float64)
        return maps.reshape(len(maps), -1).max(axis=1), maps


def _make_category(root: Path, category: str = "widget", n_good: int = 4, n_bad: int = 5):
    rng = np.random.default_rng(0)
    items = []
    (root / category / "train" / "good").mkdir(parents=True)
    for i in range(n_good):
        path = root / category / "test" / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = np.full((SIZE, SIZE, 3), 120, np.uint8) + rng.integers(0, 10, (SIZE, SIZE, 1), dtype=np.uint8)
        Image.fromarray(img).save(path)
        items.append(Item(path, "good", None))
    for i in range(n_bad):
        path = root / category / "test" / "crack" / f"{i:03d}.png"
        mask_path = root / category / "ground_truth" / "crack" / f"{i:03d}_mask.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        y, x = rng.integers(4, SIZE - 16, 2)
        mask[y : y + 12, x : x + 10] = 255
        img = np.full((SIZE, SIZE, 3), 120, np.uint8)
        img[mask > 0] = (250, 20, 20)
        Image.fromarray(img).save(path)
        Image.fromarray(mask).save(mask_path)
        items.append(Item(path, "crack", mask_path))
    return items


def eval_spec(**values) -> dict:
    """A full evaluation spec as Plan.spec("evaluation", ...) makes it: schema defaults, then ``values``."""
    config = validate_config({"data_root": "x"})
    spec = dict(config["evaluation"])
    spec.update(
        category="widget",
        detector="draem",
        variant="anogen",
        exclude_from_test=True,
        excluded=["widget/test/crack/000.png"],
        resize=config["resize"],
        image_interpolation="pil_bicubic",
        resolution=24,
        aupro_fpr_limit=0.3,
        n_visualizations=4,
    )
    spec.update(values)
    return spec


def _run(tmp_path, items, out="eval", predictor=None, batch_size=3, **spec_values):
    """Evaluate ``items``; ``spec_values`` change the spec. Returns the content of metrics.json."""
    manifest = evaluate_detector(
        predictor=predictor or RedPredictor(),
        test_items=items,
        data_root=tmp_path / "data",
        spec=eval_spec(**spec_values),
        out_dir=tmp_path / out,
        key="abc123def456",
        inputs={"detector": "0123456789ab"},
        batch_size=batch_size,
        extra={"note": "test"},
    )
    assert manifest == tmp_path / out / "manifest.json"
    return json.loads(manifest.with_name("metrics.json").read_text())


def test_evaluate_detector_writes_metrics_examples_manifest(tmp_path):
    items = _make_category(tmp_path / "data")
    result = _run(tmp_path, items, n_visualizations=2)
    out = tmp_path / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result
    assert metrics["category"] == "widget" and metrics["detector"] == "draem" and metrics["variant"] == "anogen"
    assert metrics["n_test_images"] == 8 and metrics["n_anomalous"] == 4 and metrics["n_excluded"] == 1
    for name in ("image_auroc", "image_aupr", "pixel_auroc", "pixel_aupr", "pixel_aupro"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["image_auroc"] == pytest.approx(1.0)
    assert metrics["pixel_auroc"] > 0.95

    # 2 per defect type, evenly spaced: good 000-003 -> 000, 002; crack 001-004 (000 excluded) -> 001, 003
    examples = sorted((out / "examples").rglob("*.png"))
    names = [p.relative_to(out / "examples").as_posix() for p in examples]
    assert names == ["crack/001.png", "crack/003.png", "good/000.png", "good/002.png"]
    panel = np.asarray(Image.open(examples[0]))
    assert panel.shape[1] >= 4 * 24 and panel.shape[2] == 3

    manifest = verify_manifest(out / "manifest.json")
    assert manifest["stage"] == "evaluation" and manifest["key"] == "abc123def456"
    assert set(manifest["files"]) == {"metrics.json", *(f"examples/{n}" for n in names)}
    assert manifest["extra"]["excluded"] == ["widget/test/crack/000.png"]
    assert manifest["extra"]["note"] == "test" and manifest["extra"]["resolution"] == 24
    assert manifest["inputs"] == {"detector": "0123456789ab"}


def test_evaluate_detector_records_the_test_set_identity(tmp_path):
    """test_set: sha256 of the sorted, newline-joined relative paths of the evaluated images, 12 hex digits."""
    import hashlib

    from anogen.evaluation.evaluate import test_set_id

    items = _make_category(tmp_path / "data")
    metrics = _run(tmp_path, items, n_visualizations=0)  # widget/test/crack/000.png excluded
    evaluated = [f"widget/test/crack/{i:03d}.png" for i in (1, 2, 3, 4)] + [
        f"widget/test/good/{i:03d}.png" for i in range(4)
    ]
    by_hand = hashlib.sha256("\n".join(evaluated).encode("utf-8")).hexdigest()[:12]
    assert metrics["test_set"] == by_hand and metrics["n_test_images"] == 8
    assert test_set_id(reversed(evaluated)) == by_hand  # the order given does not matter
    manifest = verify_manifest(tmp_path / "eval" / "manifest.json")
    assert manifest["extra"]["test_set"] == by_hand and manifest["extra"]["n_test_images"] == 8

    # another excluded set is another test set
    other = _run(tmp_path, items, out="eval2", n_visualizations=0, excluded=["widget/test/crack/001.png"])
    assert other["n_test_images"] == 8 and other["test_set"] != by_hand
    everything = _run(tmp_path, items, out="eval3", n_visualizations=0, excluded=[])
    assert everything["n_test_images"] == 9
    assert everything["test_set"] == test_set_id(["widget/test/crack/000.png", *evaluated])
    assert everything["test_set"] not in (by_hand, other["test_set"])


def test_evaluate_detector_matches_direct_computation(tmp_path):
    items = _make_category(tmp_path / "data")
    pred = RedPredictor()
    result = _run(tmp_path, items, excluded=[], predictor=pred, n_visualizations=0)
    assert pred.batches == [3, 3, 3]
    import torch

    from anogen.evaluation.evaluate import _load_image

    images = np.stack([_load_image(it.path, 32, "squash", "pil_bicubic") for it in items])
    scores, _ = RedPredictor().predict(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    labels = [it.defect != "good" for it in items]
    assert result["image_auroc"] == pytest.approx(image_auroc(labels, scores), abs=1e-12)
    assert not (tmp_path / "eval" / "examples").exists() or not list((tmp_path / "eval" / "examples").iterdir())


def test_evaluate_detector_all_normal_gives_null_and_warns(tmp_path):
    items = _make_category(tmp_path / "data", n_bad=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _run(tmp_path, items)
    assert result["image_auroc"] is None and result["pixel_aupro"] is None
    assert any(issubclass(w.category, MetricUndefinedWarning) for w in caught)
    assert "null" in (tmp_path / "eval" / "metrics.json").read_text()
    assert load_manifest(tmp_path / "eval")["stage"] == "evaluation"


def test_evaluate_detector_errors(tmp_path):
    items = _make_category(tmp_path / "data", n_good=1, n_bad=1)
    with pytest.raises(DataError, match="no test images"):
        _run(tmp_path, items, excluded=["widget/test/crack/000.png", "widget/test/good/000.png"])
    broken = [Item(items[1].path, "crack", None)]
    with pytest.raises(DataError, match="no ground-truth mask"):
        _run(tmp_path, broken, excluded=[])

    class NanPredictor(RedPredictor):
        def predict(self, images):
            scores, maps = super().predict(images)
            return scores * np.nan, maps

    with pytest.raises(Exception, match="NaN or infinite"):
        _run(tmp_path, items, excluded=[], predictor=NanPredictor())
    assert not (tmp_path / "eval" / "manifest.json").exists()


def test_visualize_panel():
    heat = heat_colors(np.linspace(0, 1, 16).reshape(4, 4))
    assert heat.dtype == np.uint8 and tuple(heat[0, 0]) == (0, 0, 128) and tuple(heat[-1, -1]) == (128, 0, 0)
    assert heat_colors(np.zeros((3, 3))).shape == (3, 3, 3)  # constant map: no division by zero
    panel = render_panel(np.zeros((8, 8, 3), np.uint8), np.ones((16, 16)), np.zeros((8, 8)), title="x")
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3


def test_a_reused_panel_figure_draws_what_a_fresh_one_draws():
    """Titles with and without descenders, a second image and a new colour range: each panel
    of one PanelRenderer equals render_panel's own; a new range or size builds a new figure."""
    rng = np.random.default_rng(0)
    cases = [
        ((32, 32), 0.0, 1.0, "draem (baseline) on nut_object/test/crack/000.png: crack, image score 0.1234"),
        ((32, 32), 0.0, 1.0, "AAAA"),
        ((32, 32), 0.0, 1.0, "x"),
        ((32, 32), -2.0, 5.0, "destseg (anogen) on grass/test/good/003.png: good, image score 12.5"),
        ((48, 40), -2.0, 5.0, None),
    ]
    renderer = PanelRenderer()
    try:
        for shape, lo, hi, title in cases:
            image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            mask, amap = rng.random(shape) > 0.8, rng.random(shape) * (hi - lo) + lo
            reused = renderer.render(image, mask, amap, vmin=lo, vmax=hi, title=title)
            fresh = render_panel(image, mask, amap, vmin=lo, vmax=hi, title=title)
            assert reused.shape == fresh.shape and np.array_equal(reused, fresh), title
    finally:
        renderer.close()


def test_visualize_panel_shows_the_map_in_jet_with_a_colour_bar():
    # left half 0, right half 1 on a shared [0, 1] scale: the map tile is dark blue left, dark red right
    amap = np.zeros((32, 32))
    amap[:, 16:] = 1.0
    panel = render_panel(np.full((32, 32, 3), 128, np.uint8), amap > 0.5, amap, vmin=0.0, vmax=1.0)
    px = panel.reshape(-1, 3).astype(int)
    dark_blue = ((px[:, 0] < 30) & (px[:, 1] < 30) & (px[:, 2] > 100)).sum()
    dark_red = ((px[:, 0] > 100) & (px[:, 1] < 30) & (px[:, 2] < 30)).sum()
    assert dark_blue > 100 and dark_red > 100
    # the colour bar runs through cyan and yellow (jet), which neither image nor mask contain
    assert ((px[:, 0] < 60) & (px[:, 1] > 200) & (px[:, 2] > 200)).sum() > 20
    assert ((px[:, 0] > 200) & (px[:, 1] > 200) & (px[:, 2] < 60)).sum() > 20


# ----------------------------------------------------------------------------- summary

CATS = ("bottle", "cable")
DETS = ("draem", "destseg")
VARS = ("baseline", "anogen")


def _write_metrics(root: Path) -> list[Path]:
    paths = []
    for ci, cat in enumerate(CATS):
        for di, det in enumerate(DETS):
            for vi, var in enumerate(VARS):
                base = 0.80 + 0.01 * ci + 0.02 * di + 0.05 * vi
                data = {
                    "category": cat,
                    "detector": det,
                    "variant": var,
                    "n_test_images": 10,
                    "test_set": "0123456789ab",  # a string beside the numbers: read_metrics ignores it
                    "n_anomalous": 5,
                    "n_excluded": 1,
                    "image_auroc": base,
                    "image_aupr": base + 0.01,
                    "pixel_auroc": base + 0.02,
                    "pixel_aupr": base - 0.3,
                    "pixel_aupro": base - 0.1,
                }
                if (cat, det, var) == ("cable", "destseg", "anogen"):
                    data["pixel_aupro"] = None
                path = root / cat / det / var / "metrics.json"
                path.parent.mkdir(parents=True)
                path.write_text(json.dumps(data))
                paths.append(path)
    return paths


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_summary_and_table1_layout(tmp_path):
    paths = _write_metrics(tmp_path / "res")
    summarize(paths, tmp_path / "summary.csv", tmp_path / "table1.csv")
    rows = _read(tmp_path / "summary.csv")
    assert list(rows[0])[:8] == [
        "category",
        "detector",
        "variant",
        "image_auroc",
        "image_aupr",
        "pixel_auroc",
        "pixel_aupr",
        "pixel_aupro",
    ]
    assert len(rows) == 8 + 4
    order = [(r["category"], r["detector"], r["variant"]) for r in rows]
    assert order[:3] == [
        ("bottle", "destseg", "baseline"),
        ("cable", "destseg", "baseline"),
        ("mean", "destseg", "baseline"),
    ]
    assert order[-1] == ("mean", "draem", "anogen")
    by = {(r["category"], r["detector"], r["variant"]): r for r in rows}
    assert by[("bottle", "draem", "baseline")]["image_auroc"] == "80.00"
    assert by[("mean", "draem", "baseline")]["image_auroc"] == "80.50"
    assert by[("mean", "draem", "anogen")]["pixel_aupr"] == "55.50"
    # NaN-aware mean: only bottle defines destseg/anogen pixel_aupro
    mean_row = by[("mean", "destseg", "anogen")]
    assert by[("cable", "destseg", "anogen")]["pixel_aupro"] == ""
    assert mean_row["pixel_aupro"] == "77.00" and "pixel_aupro" in mean_row["note"]
    assert "cable" in mean_row["note"] and mean_row["n_categories"] == "2"

    table = _read(tmp_path / "table1.csv")
    assert [r["metric"] for r in table] == ["Image AU-ROC", "Image AU-PR", "Pixel AU-ROC", "Pixel AU-PR", "Pixel AUPRO"]
    assert list(table[0]) == [
        "metric",
        "destseg baseline",
        "destseg anogen",
        "destseg delta",
        "draem baseline",
        "draem anogen",
        "draem delta",
        "note",
    ]
    assert table[0]["draem baseline"] == "80.50" and table[0]["draem anogen"] == "85.50"
    assert table[0]["draem delta"] == "5.00"
    assert table[4]["destseg delta"] == "4.50"  # 77.00 - 72.50: mean over available values


def test_summary_is_byte_identical_and_handles_extra_variants(tmp_path):
    paths = _write_metrics(tmp_path / "res")
    summarize(paths, tmp_path / "a.csv", tmp_path / "a_t.csv")
    summarize(list(reversed(paths)), tmp_path / "b.csv", tmp_path / "b_t.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a_t.csv").read_bytes() == (tmp_path / "b_t.csv").read_bytes()

    extra = tmp_path / "res" / "gen.json"
    extra.write_text(
        json.dumps(
            {
                "category": "bottle",
                "detector": "draem",
                "variant": "generated_only",
                "image_auroc": 0.5,
                "image_aupr": 0.5,
                "pixel_auroc": 0.5,
                "pixel_aupr": 0.1,
                "pixel_aupro": 0.2,
            }
        )
    )
    only_anogen = [p for p in paths if "destseg" not in str(p) or "anogen" in str(p)] + [extra]
    summarize(only_anogen, tmp_path / "c.csv", tmp_path / "c_t.csv")
    table = _read(tmp_path / "c_t.csv")
    assert list(table[0])[-2:] == ["draem generated_only", "note"] and table[0]["draem generated_only"] == "50.00"
    assert table[0]["destseg baseline"] == "" and table[0]["destseg delta"] == ""
    assert table[0]["destseg anogen"] != ""


def test_summary_rejects_duplicates_and_bad_files(tmp_path):
    paths = _write_metrics(tmp_path / "res")
    dup = tmp_path / "dup.json"
    dup.write_text(paths[0].read_text())
    with pytest.raises(DataError, match="already holds"):
        summarize(paths + [dup], tmp_path / "s.csv", tmp_path / "t.csv")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        summarize([bad], tmp_path / "s.csv", tmp_path / "t.csv")
    bad.write_text(json.dumps({"category": "x", "detector": "y", "variant": "z", "image_auroc": 97.0}))
    with pytest.raises(DataError, match="fraction"):
        summarize([bad], tmp_path / "s.csv", tmp_path / "t.csv")
    assert not (tmp_path / "s.csv").exists()


def test_provenance_notes_reach_every_affected_row(tmp_path):
    """A note in an evaluation manifest (random model, teacher, textures) shows on its rows and in Table 1."""
    from anogen import provenance
    from anogen.io import write_manifest

    paths = _write_metrics(tmp_path / "res")
    for path in paths:
        notes = [provenance.FALLBACK_TEXTURES]
        if "destseg" in str(path):
            notes.append(provenance.RANDOM_TEACHER)
        if "anogen" in str(path):
            notes.append(provenance.RANDOM_MODEL)
        with provenance.collecting(notes):
            write_manifest(path.parent, stage="evaluation", key="0" * 12, spec={}, files=["metrics.json"])
    summarize(paths, tmp_path / "summary.csv", tmp_path / "table1.csv")
    rows = _read(tmp_path / "summary.csv")
    for row in rows:
        assert provenance.FALLBACK_TEXTURES in row["note"], row
        assert (provenance.RANDOM_TEACHER in row["note"]) == (row["detector"] == "destseg"), row
        assert (provenance.RANDOM_MODEL in row["note"]) == (row["variant"] == "anogen"), row
    table = _read(tmp_path / "table1.csv")
    for row in table:
        assert f"{provenance.RANDOM_TEACHER} [destseg anogen, destseg baseline]" in row["note"]
        assert f"{provenance.RANDOM_MODEL} [destseg anogen, draem anogen]" in row["note"]
