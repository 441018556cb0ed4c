"""VisA and anomalib-Folder layouts, the listing of badly named folders, resize geometry and
``anogen check-data``; end to end: the whole DAG on a VisA and on a Folder tree."""

from __future__ import annotations

import inspect
import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anogen.cli import main as cli_main
from anogen.commands.check_data import check_data, planned_job_counts
from anogen.config import validate_config
from anogen.data.geometry import square_window, to_square
from anogen.data.images import load_image, load_mask
from anogen.data.index import GOOD, CategoryFiles, CategoryIndex, TestItem
from anogen.data.layouts import (
    LAYOUTS,
    Layout,
    category_files,
    discover,
    layout_spec,
    list_categories,
    list_defects,
    scan_category,
)
from anogen.data.layouts.folder import folder_split_seed
from anogen.errors import ConfigError, DataError
from anogen.generation.check import texture_threshold
from anogen.plan import Plan
from tests import e2e
from tests.layout_trees import VISA_CATEGORIES, folder_config, make_folder_tree, make_visa_tree
from tests.test_data_mvtec import _truncate, make_category


def _visa(root: Path, **extra) -> dict:
    return validate_config({"data_root": str(root), "data_layout": "visa", **extra})


def _folder(root: Path, name: str = "widget", **extra) -> dict:
    return validate_config({"data_root": str(root), **folder_config(name, **extra)})


# ----------------------------------------------------------------------------- VisA


def test_visa_listing_reads_only_the_split_file(tmp_path):
    root = make_visa_tree(tmp_path / "visa", ("pcb1", "candle"))
    options = layout_spec(_visa(root))
    for image in root.rglob("*.JPG"):  # listing must not open any image
        image.write_bytes(b"")
    assert list_categories(root, options) == ["candle", "pcb1"]
    assert list_defects(root, "candle", options) == ["anomaly"]
    custom = layout_spec(_visa(root, default_defect="defect"))
    assert list_defects(root, "pcb1", custom) == ["defect"]


def test_visa_scan(tmp_path):
    root = make_visa_tree(tmp_path / "visa", ("candle",), n_train=6, n_test_normal=3, n_anomaly=4)
    index = scan_category(root, "candle", layout_spec(_visa(root)))
    assert [p.name for p in index.train_good] == [f"{i:04d}.JPG" for i in range(6)]
    good = [item.path.name for item in index.test if item.defect == GOOD]
    assert good == ["0006.JPG", "0007.JPG", "0008.JPG"]
    bad = [(item.path.name, item.mask.name) for item in index.anomalous_test]
    assert bad == [(f"{i:03d}.JPG", f"{i:03d}.png") for i in range(4)]
    assert index.defects == ["anomaly"] and not index.grayscale
    # VisA masks hold small values (here 3): every pixel > 0 is anomalous
    raw = np.asarray(Image.open(index.anomalous_test[0].mask))
    assert raw.max() == 3
    mask = load_mask(index.anomalous_test[0].mask)
    assert mask.shape == (32, 48) and mask.sum() == (raw > 0).sum() > 0
    # defects=() scans only what training reads
    assert scan_category(root, "candle", layout_spec(_visa(root)), defects=()).anomalous_test == []


def test_visa_errors_name_the_file(tmp_path):
    root = make_visa_tree(tmp_path / "visa", ("candle",))
    options = layout_spec(_visa(root))
    csv_path = root / "split_csv" / "1cls.csv"
    text = csv_path.read_text()

    with pytest.raises(DataError, match="VisA split file does not exist") as exc:
        list_categories(root, layout_spec(_visa(root, visa={"split_csv": "nope.csv"})))
    assert str(root / "nope.csv") in str(exc.value)

    csv_path.write_text(text.replace("candle,test,anomaly", "candle,test,broken", 1))
    with pytest.raises(DataError, match="label 'broken'") as exc:
        list_categories(root, options)
    first_anomaly_line = text.splitlines().index(next(r for r in text.splitlines() if ",anomaly," in r)) + 1
    assert f"{csv_path}:{first_anomaly_line}" in str(exc.value)

    csv_path.write_text(text.replace(",candle/Data/Masks/Anomaly/000.png", ",", 1))
    with pytest.raises(DataError, match="has no mask path"):
        list_categories(root, options)

    csv_path.write_text(text.replace("object,split", "obj,split", 1))
    with pytest.raises(DataError, match="lacks column"):
        list_categories(root, options)

    csv_path.write_text(text)
    (root / "candle/Data/Images/Normal/0002.JPG").unlink()
    with pytest.raises(DataError, match="does not exist") as exc:
        scan_category(root, "candle", options)
    assert "0002.JPG" in str(exc.value)

    make_visa_tree(root, ("candle",))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "candle/Data/Masks/Anomaly/001.png")
    with pytest.raises(DataError, match="mask size 10x10 differs") as exc:
        scan_category(root, "candle", options)
    assert "Masks/Anomaly/001.png" in str(exc.value)
    make_visa_tree(root, ("candle",))
    with pytest.raises(DataError, match="support.shots = 5"):
        scan_category(root, "candle", options, defects=["anomaly"], min_shots=5)


# ----------------------------------------------------------------------------- Folder


def test_folder_split_and_masks(tmp_path):
    make_folder_tree(tmp_path / "widget", n_normal=8, n_abnormal=4)
    config = _folder(tmp_path)
    options = layout_spec(config)
    assert list_categories(tmp_path, options) == ["widget"] and list_defects(tmp_path, "widget", options) == ["anomaly"]
    index = scan_category(tmp_path, "widget", options)
    normals = sorted(p.name for p in (tmp_path / "widget" / "good").glob("*.png"))
    good = [item.path.name for item in index.test if item.defect == GOOD]
    train = [p.name for p in index.train_good]
    # 0.25 of 8 normal images -> 2 test images, drawn as anomalib does (and reproducibly)
    rng = np.random.default_rng(folder_split_seed("widget", 0))
    expected = sorted(normals[i] for i in rng.choice(8, size=2, replace=False))
    assert good == expected and sorted(train + good) == normals and not set(train) & set(good)
    assert [(i.path.name, i.mask.name) for i in index.anomalous_test] == [
        (f"a{k:02d}.png", f"a{k:02d}_mask.png") for k in range(4)
    ]
    assert scan_category(tmp_path, "widget", options).test == index.test  # same split every time
    other = scan_category(tmp_path, "widget", layout_spec(_folder(tmp_path, seed=5)))
    rng = np.random.default_rng(folder_split_seed("widget", 5))
    assert [i.path.name for i in other.good_test] == sorted(normals[i] for i in rng.choice(8, size=2, replace=False))


def test_folder_options(tmp_path):
    make_folder_tree(tmp_path / "widget", mask_suffix="")  # masks named exactly like the images
    (tmp_path / "widget" / "test_good").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 30, np.uint8)).save(tmp_path / "widget" / "test_good" / f"t{i}.png")
    options = layout_spec(_folder(tmp_path, normal_test_dir="widget/test_good"))
    index = scan_category(tmp_path, "widget", options)
    assert len(index.train_good) == 8 and [i.path.name for i in index.good_test] == ["t0.png", "t1.png", "t2.png"]
    assert index.anomalous_test[0].mask.name == "a00.png"
    # without extensions, notes.txt in normal_dir is an error that names it
    with pytest.raises(DataError, match="is not an image") as exc:
        scan_category(tmp_path, "widget", layout_spec(_folder(tmp_path, extensions=None)))
    assert "notes.txt" in str(exc.value)
    # several defect types from a mapping; missing mask names the image
    (tmp_path / "widget" / "masks" / "a02.png").unlink()
    two = layout_spec(
        _folder(
            tmp_path,
            abnormal_dir={"crack": "widget/defect", "dent": "widget/defect"},
            mask_dir={"crack": "widget/masks", "dent": "widget/masks"},
        )
    )
    assert list_defects(tmp_path, "widget", two) == ["crack", "dent"]
    with pytest.raises(DataError, match="has no mask") as exc:
        scan_category(tmp_path, "widget", two, defects=["dent"])
    assert "a02.png" in str(exc.value)
    with pytest.raises(ConfigError, match="folder.categories.widget.mask_dir"):
        _folder(tmp_path, abnormal_dir={"crack": "widget/defect"}, mask_dir={"dent": "widget/masks"})
    with pytest.raises(ConfigError, match="folder.categories"):
        validate_config({"data_root": str(tmp_path), "data_layout": "folder"})
    with pytest.raises(ConfigError, match="data_layout.*demo data set"):
        validate_config({"data_root": "resources/demo_mvtec", "data_layout": "visa"})  # the (MVTec-layout) demo
    make_folder_tree(tmp_path / "tiny", n_normal=1)
    with pytest.raises(DataError, match="too few to keep"):
        scan_category(tmp_path, "tiny", layout_spec(_folder(tmp_path, name="tiny")))


def test_layout_options_are_in_the_dataset_key(tmp_path):
    root = make_visa_tree(tmp_path / "visa")
    base = Plan(_visa(root))
    assert base.dataset_spec()["visa"] == {"split_csv": "split_csv/1cls.csv"}
    moved = Plan(_visa(root, visa={"split_csv": str(root / "split_csv" / "1cls.csv")}))
    assert moved.dataset_key != base.dataset_key
    assert moved.key("support", "candle", "anomaly") != base.key("support", "candle", "anomaly")
    # the MVTec layout carries no VisA/Folder options, so they cannot change its keys
    mvtec = validate_config({"data_root": str(tmp_path), "visa": {"split_csv": "x.csv"}})
    assert layout_spec(mvtec) == {"data_layout": "mvtec"}


# ----------------------------------------------------------------------------- the registry

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = ("list_categories", "list_defects", "scan_category", "category_files")


def test_every_layout_module_implements_the_interface_and_the_schema_offers_each():
    schema = yaml.safe_load((REPO / "anogen" / "config.schema.yaml").read_text())["properties"]
    assert list(LAYOUTS) == schema["data_layout"]["enum"]
    for name, module in LAYOUTS.items():
        for op in OPERATIONS:
            want = list(inspect.signature(getattr(Layout, op)).parameters)[1:]  # less self
            assert list(inspect.signature(getattr(module, op)).parameters) == want, f"{name}.{op}"
        assert all(key in schema for key in module.CONFIG_KEYS), name
        assert module.sample_of is None or callable(module.sample_of)
    assert LAYOUTS["realiad"].sample_of("toy/NG/BX/S0101/toy_C2.jpg") == "toy/NG/BX/S0101"


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_a_new_layout_is_a_module_and_one_registry_line(tmp_path, monkeypatch):
    """The registry only dispatches: a module registered under a new name is listed, scanned and
    keyed with no other change (a layout of two images, one category, one defect)."""
    good = _png(tmp_path / "toy" / "good.png", np.zeros((8, 8, 3), np.uint8))
    bad = _png(tmp_path / "toy" / "bad.png", np.ones((8, 8, 3), np.uint8))
    mask = _png(tmp_path / "toy" / "bad_mask.png", np.full((8, 8), 255, np.uint8))
    toy = types.SimpleNamespace(
        CONFIG_KEYS=("toy",),
        sample_of=None,
        list_categories=lambda root, options, rejected: ["toy"],
        list_defects=lambda root, category, options, rejected: [options["toy"]["defect"]],
        scan_category=lambda root, category, options, defects, min_shots, errors: CategoryIndex(
            root, category, [good], [TestItem(bad, options["toy"]["defect"], mask)], False, ["dent"]
        ),
        category_files=lambda root, category, options: CategoryFiles.from_index(
            toy.scan_category(root, category, options, None, None, [])
        ),
    )
    monkeypatch.setitem(LAYOUTS, "toy", toy)
    options = layout_spec({"data_layout": "toy", "toy": {"defect": "dent"}, "visa": {"split_csv": "x.csv"}})
    assert options == {"data_layout": "toy", "toy": {"defect": "dent"}}
    assert discover(tmp_path, options) == ({"toy": {"defects": ["dent"], "texture": False, "rejected": []}}, [])
    assert scan_category(tmp_path, "toy", options).anomalous_test == [TestItem(bad, "dent", mask)]
    assert category_files(tmp_path, "toy", options).relpath("dent", "bad.png") == "toy/bad.png"
    with pytest.raises(ValueError, match="unknown data layout 'nope'"):
        list_categories(tmp_path, {"data_layout": "nope"})


def test_no_code_outside_the_layouts_branches_on_the_layout_name():
    """Only the registry and the layout modules know a layout by name (the config checks its own options)."""
    branch = re.compile(r"""(data_layout["']\]|layout_name\([^)]*\))\s*[!=]=""")
    allowed = {REPO / "anogen" / "config.py"}
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "anogen").rglob("*.py"))
        if path not in allowed and "layouts" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if branch.search(line)
    ]
    assert found == []
    assert branch.search('if config["data_layout"] == "realiad":')  # the pattern finds what it looks for


def test_resize_is_in_the_keys_of_what_it_changes(tmp_path):
    make_category(tmp_path)
    plans = {m: Plan(validate_config({"data_root": str(tmp_path), "resize": m})) for m in ("squash", "pad")}
    a, b = plans["squash"], plans["pad"]
    assert a.key("support", "widget", "crack") == b.key("support", "widget", "crack")
    assert a.key("foreground", "widget") == b.key("foreground", "widget")
    assert a.key("embedding", "widget", "crack") != b.key("embedding", "widget", "crack")
    assert a.key("generation", "widget", "crack") != b.key("generation", "widget", "crack")
    for m, v in (("draem", "baseline"), ("destseg", "anogen")):
        assert a.key("detector", "widget", m, v) != b.key("detector", "widget", m, v)
        assert a.key("evaluation", "widget", m, v) != b.key("evaluation", "widget", m, v)


# ----------------------------------------------------------------------------- badly named folders


def test_unselected_badly_named_folder_does_not_stop_the_run(tmp_path):
    make_category(tmp_path, "widget")
    make_category(tmp_path, "bad name")
    layout, rejected = discover(tmp_path, None)
    assert list(layout) == ["widget"] and [Path(e.path).name for e in rejected] == ["bad name"]
    chosen = Plan(validate_config({"data_root": str(tmp_path), "categories": ["widget"]}))
    assert chosen.pairs() == [("widget", "crack"), ("widget", "scratch")]
    everything = Plan(validate_config({"data_root": str(tmp_path)}))
    with pytest.raises(DataError, match="not allowed") as exc:
        everything.pairs()
    assert str(tmp_path / "bad name") in str(exc.value) and "categories:" in str(exc.value)


def test_unselected_badly_named_defect_folder(tmp_path):
    make_category(tmp_path, "widget", defects={"crack": 3, "bad defect": 3})
    chosen = Plan(validate_config({"data_root": str(tmp_path), "defects": {"widget": ["crack"]}}))
    assert chosen.pairs() == [("widget", "crack")]
    with pytest.raises(DataError, match="not allowed") as exc:
        Plan(validate_config({"data_root": str(tmp_path)})).pairs()
    assert "bad defect" in str(exc.value)


# ----------------------------------------------------------------------------- resize geometry


def test_square_window_by_hand():
    assert square_window(2, 4, "pad") == (4, 1, 0)  # 2 rows of 4: one black row above, one below
    assert square_window(2, 4, "crop") == (2, 0, 1)  # the middle 2 columns
    assert square_window(5, 2, "pad") == (5, 0, 1)  # odd difference: the extra column goes right
    assert square_window(5, 2, "crop") == (2, 1, 0)


def test_pad_and_crop_by_hand():
    image = np.arange(8, dtype=np.uint8).reshape(2, 4) + 1  # [[1 2 3 4], [5 6 7 8]]
    padded = to_square(image, "pad")
    assert padded.tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 0]]
    assert to_square(image, "crop").tolist() == [[2, 3], [6, 7]]
    assert to_square(image, "squash") is image
    rgb = np.stack([image] * 3, axis=-1)
    assert to_square(rgb, "pad").shape == (4, 4, 3) and to_square(rgb, "crop")[..., 1].tolist() == [[2, 3], [6, 7]]


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_image_and_mask_get_the_same_geometry(tmp_path, mode):
    """A 60x30 image whose anomaly is exactly its mask: after loading at 16 px both still coincide."""
    height, width = 30, 60
    image = np.full((height, width, 3), 40, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[10:20, 24:36] = 255  # in the middle: kept by every mode
    image[mask > 0] = 250
    Image.fromarray(image).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    from anogen.detectors.data import load_rgb
    from anogen.evaluation.evaluate import _load_gt_mask, _load_image

    img16 = load_image(tmp_path / "i.png", 16, mode)
    m16 = load_mask(tmp_path / "m.png", 16, mode)
    assert img16.shape == (16, 16, 3) and m16.shape == (16, 16)
    bright = img16[..., 0] > 145
    assert (bright == (m16 > 0)).mean() >= 0.95
    # the expected box, computed by hand for each mode (rows, cols in the 16 px grid)
    rows, cols = np.nonzero(m16)
    # squash: rows 10..19 * 16/30, cols 24..35 * 16/60; pad: a 60x60 square, the image 15 rows
    # down (rows 25..34 * 16/60); crop: the 30x30 centre (cols 15..44), mask cols 9..20 * 16/30
    expected = {"squash": ((5, 10), (6, 9)), "pad": ((7, 9), (6, 9)), "crop": ((5, 10), (5, 11))}[mode]
    assert (rows.min(), rows.max()) == pytest.approx(expected[0], abs=1)
    assert (cols.min(), cols.max()) == pytest.approx(expected[1], abs=1)
    # every loader of the model inputs uses the same geometry
    assert np.array_equal(_load_gt_mask(tmp_path / "m.png", 16, "nearest", mode), m16)
    assert np.array_equal(_load_image(tmp_path / "i.png", 16, mode, "pil_bicubic"), img16)
    assert (load_rgb(tmp_path / "i.png", 16, mode, "pil_bicubic")[..., 0] > 145).tolist() == bright.tolist()


def test_generation_foreground_follows_the_geometry(tmp_path):
    from anogen.generation.planning import _foreground_at
    from anogen.io import write_manifest

    fg = np.zeros((30, 60), np.uint8)
    fg[:, :10] = 255  # a left strip: dropped by crop, kept (scaled) by pad
    out = tmp_path / "fg"
    (out / "masks").mkdir(parents=True)
    Image.fromarray(fg).save(out / "masks" / "a.png")
    manifest = write_manifest(out, stage="foreground", key="0" * 12, spec={}, inputs={}, files=["masks/a.png"])
    loaded = json.loads(Path(manifest).read_text())
    crop = _foreground_at(Path(manifest), loaded, "masks/a.png", 12, "crop")
    pad = _foreground_at(Path(manifest), loaded, "masks/a.png", 12, "pad")
    assert crop.sum() == 0
    assert pad[:3].sum() == 0 and pad[3:9, :2].all() and pad[:, 3:].sum() == 0


# ----------------------------------------------------------------------------- check-data


def _five_problem_tree(root: Path) -> None:
    cat = make_category(root, "widget", defects={"crack": 4, "hole": 2, "scratch": 0})
    (cat / "test" / "scratch").mkdir(parents=True, exist_ok=True)  # 1. empty defect folder
    train = cat / "train" / "good" / "001.png"
    _truncate(train, train.stat().st_size // 2)  # 2. truncated image (header intact)
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()  # 3. missing mask
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(cat / "ground_truth" / "crack" / "002_mask.png")  # 4. mis-sized
    # 5. 'hole' has 2 anomalies < support.shots = 3; 6. a badly named category folder
    make_category(root, "bad name")


def test_check_data_reports_every_problem_at_once(tmp_path, capsys):
    _five_problem_tree(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_root": str(tmp_path / "data")}))
    assert cli_main(["check-data", "--configfile", str(config), "--foreground-images", "1"]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert any("bad name" in p and "not allowed" in p for p in problems)
    assert any("test/scratch" in p and "no images" in p for p in problems)
    assert any("train/good/001.png" in p and "truncated" in p for p in problems)
    assert any("test/crack/001.png" in p and "has no mask" in p for p in problems)
    assert any("crack/002_mask.png" in p and "mask size 9x9" in p for p in problems)
    assert any("test/hole" in p and "support.shots = 3" in p for p in problems)
    # 'crack' has 4 files but only 2 usable anomalies once the broken ones are left out
    assert any("test/crack:" in p and "only 2 usable" in p for p in problems)
    assert "7 problem(s) that would stop a job" in out and "the DAG would not build" in out
    # leaving the bad folder out turns that problem into a warning
    report = check_data(
        validate_config({"data_root": str(tmp_path / "data"), "categories": ["widget"]}), foreground_images=1
    )
    assert len(report.problems) == 6 and any("bad name" in w for w in report.warnings)
    assert report.jobs["select_support"] == 3  # the DAG builds; the jobs would fail on the files


def test_check_data_on_the_demo_finds_nothing(tmp_path, capsys):
    from anogen.data.demo import generate_demo_dataset

    demo = {**e2e.E2E_OVERRIDES["demo"], "root": str(tmp_path / "demo"), "image_size": 64}
    generate_demo_dataset(demo)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_root": demo["root"], "demo": demo}))
    assert cli_main(["check-data", "--configfile", str(config), "--foreground-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM" not in out and "no problem found" in out
    assert "category nut_object: 8 normal training images" in out
    plan = Plan(validate_config({"data_root": demo["root"], "demo": demo}))
    jobs = planned_job_counts(plan)
    assert jobs["learn_embedding"] == 7 and jobs["train_detector"] == 12 and jobs["demo_data"] == 1
    assert "jobs: " + ", ".join(f"{r} {n}" for r, n in jobs.items()) in out


def test_check_data_suggests_texture(tmp_path):
    make_folder_tree(tmp_path / "widget")
    before = check_data(_folder(tmp_path), foreground_images=2)  # an ellipse on a background
    assert before.ok and before.coverage["widget"] < texture_threshold()
    assert not any("texture: true" in line for line in before.lines)
    for i, path in enumerate(sorted((tmp_path / "widget" / "good").glob("*.png"))):
        # a close-up: the surface fills the frame up to a 2 px border
        rng = np.random.default_rng(i)
        image = rng.integers(150, 230, (40, 40, 3)).astype(np.uint8)
        image[:2], image[-2:], image[:, :2], image[:, -2:] = 10, 10, 10, 10
        Image.fromarray(image).save(path)
    report = check_data(_folder(tmp_path), foreground_images=2)
    assert report.ok, report.problems
    assert report.coverage["widget"] == pytest.approx(0.81, abs=0.02)  # GrabCut's whole rectangle
    assert texture_threshold() == pytest.approx(0.729)
    assert any("category_options.widget.texture: true" in line for line in report.lines)


# ----------------------------------------------------------------------------- end to end


def _e2e_workdir(tmp_path: Path, data_root: Path, extra: dict) -> Path:
    return e2e.make_workdir(tmp_path / "work", {"data_root": str(data_root), **extra})


@pytest.mark.e2e
def test_visa_dag_plans_one_embedding_per_category(tmp_path):
    root = make_visa_tree(
        tmp_path / "visa", VISA_CATEGORIES, n_train=2, n_test_normal=1, n_anomaly=3, height=8, width=12
    )
    workdir = _e2e_workdir(tmp_path, root, {"data_layout": "visa"})
    jobs = e2e.planned_jobs(workdir)
    assert jobs["learn_embedding"] == jobs["select_support"] == jobs["generate_anomalies"] == 12
    assert jobs["estimate_foreground"] == 12 and jobs["train_detector"] == 12 * 2 * 2
    assert "demo_data" not in jobs
    # check-data's job counts are the ones snakemake plans
    counts = planned_job_counts(Plan(validate_config(yaml.safe_load((workdir / "config" / "config.yaml").read_text()))))
    for rule, n in jobs.items():
        if rule != "all":
            assert counts[rule] == n, rule


def _run_and_check(workdir: Path, category: str, resize: str) -> None:
    e2e.run(workdir, "--resources", "gpu=2")
    summary = (workdir / "results" / "summary.csv").read_text()
    assert category in summary
    metrics = sorted((workdir / "results" / "evaluation" / category).rglob("metrics.json"))
    assert len(metrics) == 4
    for path in metrics:
        m = json.loads(path.read_text())
        assert m["n_anomalous"] >= 1 and m["pixel_auroc"] is not None
        spec = json.loads((path.parent / "manifest.json").read_text())["spec"]
        assert spec["resize"] == resize


@pytest.mark.e2e
def test_visa_dag_end_to_end(tmp_path):
    root = make_visa_tree(tmp_path / "visa", ("candle",), n_train=6, n_test_normal=3, n_anomaly=4, height=32, width=48)
    workdir = _e2e_workdir(tmp_path, root, {"data_layout": "visa", "resize": "pad"})
    _run_and_check(workdir, "candle", "pad")


@pytest.mark.e2e
def test_folder_dag_end_to_end(tmp_path):
    make_folder_tree(tmp_path / "data" / "widget", n_normal=8, n_abnormal=4, size=40)
    workdir = _e2e_workdir(tmp_path, tmp_path / "data", {**folder_config("widget"), "resize": "crop"})
    _run_and_check(workdir, "widget", "crop")


def test_support_images_outside_the_data_root_are_excluded_from_the_evaluation(tmp_path):
    """Folder paths may be absolute and outside data_root: support and evaluation must still agree."""
    from anogen.data.index import relative_to_root
    from anogen.data.support import build_support_set, excluded_test_images

    elsewhere = make_folder_tree(tmp_path / "elsewhere" / "widget")
    root = tmp_path / "root"
    root.mkdir()
    options = layout_spec(
        _folder(
            root,
            normal_dir=str(elsewhere / "good"),
            abnormal_dir=str(elsewhere / "defect"),
            mask_dir=str(elsewhere / "masks"),
        )
    )
    manifest = build_support_set(
        root, "widget", "anomaly", shots=3, seed=0, out_dir=tmp_path / "support", key="0" * 12, layout=options
    )
    excluded = excluded_test_images([manifest])
    index = scan_category(root, "widget", options)
    evaluated = {relative_to_root(root, item.path) for item in index.test}
    assert len(excluded) == 3 and excluded <= evaluated
    assert all(rel.startswith("../elsewhere/widget/defect/") for rel in excluded)


def test_relative_to_root_names_a_file_one_way_however_its_path_is_spelled(tmp_path):
    """As given (strings or paths, not normalised), through a symlinked root, and outside the root."""
    from anogen.data.index import relative_to_root

    root = tmp_path / "data"
    (root / "bottle" / "test" / "crack").mkdir(parents=True)
    image = root / "bottle" / "test" / "crack" / "000.png"
    image.write_bytes(b"x")
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    want = "bottle/test/crack/000.png"
    assert relative_to_root(root, image) == relative_to_root(str(root), str(image)) == want
    assert relative_to_root(f"{root}/", f"{root}//bottle/./test/crack/000.png") == want
    assert relative_to_root(tmp_path / "link", image) == relative_to_root(root, tmp_path / "link" / want) == want
    assert relative_to_root(root / "bottle", image) == "test/crack/000.png"
    assert relative_to_root(root / "bot", image) == "../bottle/test/crack/000.png"  # a prefix of a name is no parent
    assert relative_to_root(root, root) == "."


def test_crop_that_drops_an_anomaly_is_reported(tmp_path):
    from anogen.jobs import _squared

    root = make_visa_tree(tmp_path / "visa", ("candle",), height=32, width=48)
    edge = np.zeros((32, 48), np.uint8)
    edge[10:20, 0:6] = 1  # crop keeps columns 8..39 only
    Image.fromarray(edge).save(root / "candle/Data/Masks/Anomaly/002.png")
    report = check_data(_visa(root, resize="crop"), foreground_images=1)
    assert report.ok and any("002.JPG" in w and "outside the centre square" in w for w in report.warnings)
    assert not any(
        "outside the centre" in w for w in check_data(_visa(root, resize="pad"), foreground_images=1).warnings
    )
    image = np.zeros((32, 48, 3), np.uint8)
    with pytest.raises(DataError, match="support item 1: its anomaly lies entirely outside") as exc:
        _squared([(image, (edge * 0 + 1).astype(np.uint8)), (image, edge)], "crop", "support/manifest.json")
    assert "support/manifest.json" in str(exc.value)
    assert [m.shape for _, m in _squared([(image, edge)], "pad", "x")] == [(48, 48)]
