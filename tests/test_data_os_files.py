"""Operating-system files in data folders (Windows' Thumbs.db, desktop.ini) are skipped wherever data
is listed, change no content key, and ``anogen check-data`` says where they are in one warning; any
other file that is not an image still stops it, named."""

from __future__ import annotations

from pathlib import Path

import yaml

from anogen.cli import main as cli_main
from anogen.commands.check_data import check_data
from anogen.commands.keys import referenced_dirs
from anogen.config import validate_config
from anogen.data.index import OS_JUNK_FILES, list_images
from anogen.data.layouts import layout_spec, scan_category
from anogen.plan import Plan
from tests.layout_trees import folder_config, make_folder_tree, make_visa_tree
from tests.test_data_mvtec import make_category

JUNK = b"\x00not an image, what Windows writes\x00"


def _drop(folder: Path, name: str) -> Path:
    (folder / name).write_bytes(JUNK)
    return folder / name


def _mvtec(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    cat = make_category(root, "widget", defects={"crack": 4})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_root": str(root)}))
    return cat, config


def _warnings(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("warning")]


def test_the_junk_names_are_windows_files_in_any_case():
    assert {"thumbs.db", "desktop.ini"} <= OS_JUNK_FILES
    folder_names = ["Thumbs.db", "THUMBS.DB", "desktop.ini", "Desktop.ini", ".DS_Store", "001.png", "notes.txt"]
    from anogen.data.index import is_skipped

    assert [n for n in folder_names if not is_skipped(n)] == ["001.png", "notes.txt"]


def test_check_data_passes_with_one_warning_naming_where(tmp_path, capsys):
    cat, config = _mvtec(tmp_path)
    _drop(cat / "train" / "good", "Thumbs.db")
    _drop(cat / "test" / "crack", "desktop.ini")
    _drop(cat / "ground_truth" / "crack", "Thumbs.db")
    assert cli_main(["check-data", "--configfile", str(config), "--foreground-images", "1"]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM" not in out and "no problem found" in out
    junk = [w for w in _warnings(out) if "operating-system files" in w]
    assert len(junk) == 1, _warnings(out)
    for where in (
        "Thumbs.db in " + str(cat / "ground_truth" / "crack"),
        "desktop.ini in " + str(cat / "test" / "crack"),
    ):
        assert where in junk[0]
    assert f"Thumbs.db in {cat / 'train' / 'good'}" in junk[0]
    # the listing the jobs use leaves them out
    assert [p.name for p in list_images(cat / "train" / "good")] == ["000.png", "001.png", "002.png"]


def test_a_stray_file_still_stops_check_data_naming_it(tmp_path, capsys):
    cat, config = _mvtec(tmp_path)
    _drop(cat / "train" / "good", "Thumbs.db")
    notes = cat / "train" / "good" / "notes.txt"
    notes.write_text("not an image\n")
    assert cli_main(["check-data", "--configfile", str(config), "--foreground-images", "1"]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert problems == [f"PROBLEM  {notes}: is not an image (accepted extensions: png, jpg, jpeg, bmp, tif, tiff); "
                        "move it out of the data folder"]  # fmt: skip


def test_the_warning_is_one_short_line_for_many_folders(tmp_path):
    root = tmp_path / "data"
    for name in ("alpha", "beta", "gamma"):
        cat = make_category(root, name, defects={"crack": 4})
        _drop(cat / "train" / "good", "Thumbs.db")
        _drop(cat / "test" / "good", "Thumbs.db")
    report = check_data(validate_config({"data_root": str(root)}), foreground_images=1)
    assert report.ok, report.problems
    junk = [w for w in report.warnings if "operating-system files" in w]
    assert len(junk) == 1 and junk[0].endswith("; and in 3 more folder(s)"), junk
    assert junk[0].count("Thumbs.db in ") == 3


def test_no_content_key_changes_when_windows_writes_its_files(tmp_path):
    cat, _ = _mvtec(tmp_path)
    config = validate_config({"data_root": str(cat.parent)})
    before = referenced_dirs(Plan(config))
    for folder in [p for p in cat.rglob("*") if p.is_dir()]:
        _drop(folder, "Thumbs.db")
        _drop(folder, "desktop.ini")
    assert referenced_dirs(Plan(config)) == before
    # a new image does change the keys of what reads it (so the comparison above can fail)
    (cat / "test" / "crack" / "004.png").write_bytes((cat / "test" / "crack" / "000.png").read_bytes())
    assert referenced_dirs(Plan(config)) != before


def test_folder_layout_skips_them_in_every_folder(tmp_path):
    root = tmp_path / "data"
    tree = make_folder_tree(root / "widget")
    (tree / "good" / "notes.txt").unlink()
    config = validate_config({"data_root": str(root), **folder_config("widget", extensions=None)})
    clean = scan_category(root, "widget", layout_spec(config))
    for sub in ("good", "defect", "masks"):
        _drop(tree / sub, "Thumbs.db")
        _drop(tree / sub, "desktop.ini")
    errors: list = []
    junked = scan_category(root, "widget", layout_spec(config), errors=errors)
    assert errors == []
    assert junked.train_good == clean.train_good and junked.test == clean.test
    report = check_data(config, foreground_images=1)
    assert report.ok, report.problems
    (junk,) = [w for w in report.warnings if "operating-system files" in w]
    assert all(f"desktop.ini, Thumbs.db in {tree / sub}" in junk for sub in ("defect", "masks"))


def test_visa_names_its_files_and_check_data_still_says_where_junk_is(tmp_path):
    root = make_visa_tree(tmp_path / "visa", ("candle",), n_train=6, n_test_normal=3, n_anomaly=4)
    images = next(p.parent for p in root.rglob("*.JPG"))
    _drop(images, "Thumbs.db")
    report = check_data(validate_config({"data_root": str(root), "data_layout": "visa"}), foreground_images=1)
    assert report.ok, report.problems
    assert any(f"Thumbs.db in {images}" in w for w in report.warnings), report.warnings
