"""MVTec layout: listing, validation errors that name the file, grayscale, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.data.images import load_image, load_mask
from anogen.data.layouts import list_categories, list_defects, scan_category
from anogen.errors import DataError

SIZE = 24


def _img(path: Path, value: int = 100, size: int = SIZE, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, size: int = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    m[5:12, 6:15] = 255
    Image.fromarray(m).save(path)
    return path


def make_category(
    root: Path,
    name: str = "widget",
    defects: dict[str, int] | None = None,
    n_train: int = 3,
    n_good: int = 2,
    mode: str = "RGB",
) -> Path:
    defects = {"crack": 3, "scratch": 4} if defects is None else defects
    cat = root / name
    for i in range(n_train):
        _img(cat / "train" / "good" / f"{i:03d}.png", i, mode=mode)
    for i in range(n_good):
        _img(cat / "test" / "good" / f"{i:03d}.png", 50 + i, mode=mode)
    for d, n in defects.items():
        for i in range(n):
            _img(cat / "test" / d / f"{i:03d}.png", 100 + i, mode=mode)
            _mask(cat / "ground_truth" / d / f"{i:03d}_mask.png")
    return cat


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


# ----------------------------------------------------------------------------- listing


def test_list_categories_and_defects(tmp_path):
    make_category(tmp_path, "zeta")
    make_category(tmp_path, "alpha", defects={"hole": 1})
    (tmp_path / "docs").mkdir()  # no train/good: not a category
    (tmp_path / ".cache" / "train" / "good").mkdir(parents=True)  # hidden: ignored
    (tmp_path / "license.txt").write_text("x")
    (tmp_path / "zeta" / "test" / ".ipynb_checkpoints").mkdir()
    assert list_categories(tmp_path) == ["alpha", "zeta"]
    assert list_defects(tmp_path, "zeta") == ["crack", "scratch"]
    assert list_defects(tmp_path, "alpha") == ["hole"]


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DataError) as exc:
        list_categories(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(exc.value) and "does not exist" in str(exc.value)
    with pytest.raises(DataError, match="no category folder"):
        list_categories(tmp_path)


def test_bad_category_name(tmp_path):
    make_category(tmp_path, "good_one")
    (tmp_path / "bad name" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        list_categories(tmp_path)
    msg = str(exc.value)
    assert "bad name" in msg and "not allowed" in msg and "rename" in msg


def test_bad_defect_name(tmp_path):
    make_category(tmp_path, "widget", defects={"a..b": 1})
    with pytest.raises(DataError) as exc:
        list_defects(tmp_path, "widget")
    assert "'a..b'" in str(exc.value) and "defect" in str(exc.value)
    with pytest.raises(DataError, match="not allowed"):
        scan_category(tmp_path, "widget")


# ----------------------------------------------------------------------------- scanning


def test_scan_category_ok(tmp_path):
    make_category(tmp_path, "widget")
    index = scan_category(tmp_path, "widget")
    assert len(index.train_good) == 3 and not index.grayscale
    assert index.defects == ["crack", "scratch"]
    assert [i.path.name for i in index.defect_items("crack")] == ["000.png", "001.png", "002.png"]
    assert len(index.good_test) == 2 and all(i.mask is None for i in index.good_test)
    assert len(index.anomalous_test) == 7
    item = index.defect_items("scratch")[1]
    assert item.mask == tmp_path / "widget" / "ground_truth" / "scratch" / "001_mask.png"
    assert index.relpath(item.path) == "widget/test/scratch/001.png"
    # restricting defects keeps the normal test images
    sub = scan_category(tmp_path, "widget", defects=["scratch"])
    assert sub.defects == ["scratch"] and len(sub.test) == 2 + 4
    with pytest.raises(DataError, match="not part of this scan"):
        sub.defect_items("crack")


def test_scan_unknown_defect(tmp_path):
    make_category(tmp_path, "widget")
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget", defects=["dent"])
    assert "dent" in str(exc.value) and "crack, scratch" in str(exc.value)


def test_other_extensions_and_mask_pairing(tmp_path):
    cat = make_category(tmp_path, "widget", defects={})
    (cat / "test" / "dent").mkdir(parents=True)
    Image.open(_img(tmp_path / "x.png", 3)).save(cat / "test" / "dent" / "000.JPG", format="JPEG")
    _mask(cat / "ground_truth" / "dent" / "000_mask.bmp")
    index = scan_category(tmp_path, "widget")
    (item,) = index.defect_items("dent")
    assert item.path.name == "000.JPG" and item.mask.name == "000_mask.bmp"


def test_empty_train_good(tmp_path):
    cat = make_category(tmp_path, "widget", n_train=0)
    (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    assert str(cat / "train" / "good") in str(exc.value)
    assert "no training images" in str(exc.value)


def test_missing_train_good(tmp_path):
    cat = make_category(tmp_path, "widget", n_train=0)
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    assert str(cat / "train" / "good") in str(exc.value) and "missing" in str(exc.value)


def test_missing_mask(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    msg = str(exc.value)
    assert str(cat / "test" / "crack" / "001.png") in msg
    assert "no mask" in msg and str(cat / "ground_truth" / "crack" / "001_mask.png") in msg


def test_mask_size_mismatch(tmp_path):
    cat = make_category(tmp_path, "widget")
    _mask(cat / "ground_truth" / "scratch" / "002_mask.png", size=SIZE + 8)
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    msg = str(exc.value)
    assert msg.startswith(str(cat / "ground_truth" / "scratch" / "002_mask.png"))
    assert f"{SIZE + 8}x{SIZE + 8}" in msg and f"{SIZE}x{SIZE}" in msg


def test_too_few_defect_images(tmp_path):
    cat = make_category(tmp_path, "widget", defects={"crack": 2, "scratch": 5})
    scan_category(tmp_path, "widget", defects=["scratch"], min_shots=5)
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget", min_shots=3)
    msg = str(exc.value)
    assert str(cat / "test" / "crack") in msg and "2 image" in msg and "support.shots = 3" in msg


def test_empty_defect_folder(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "test" / "dent").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        scan_category(tmp_path, "widget")


def test_non_image_file(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "train" / "good" / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    assert str(cat / "train" / "good" / "notes.txt") in str(exc.value)
    assert "not an image" in str(exc.value)


def test_fake_png(tmp_path):
    cat = make_category(tmp_path, "widget")
    fake = cat / "test" / "good" / "009.png"
    fake.write_text("this is not a png")
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    assert str(fake) in str(exc.value) and "unreadable" in str(exc.value)


def test_hidden_files_ignored(tmp_path):
    cat = make_category(tmp_path, "widget")
    (cat / "train" / "good" / "._000.png").write_bytes(b"\x00\x05AppleDouble")
    assert len(scan_category(tmp_path, "widget").train_good) == 3


def test_truncated_png(tmp_path):
    cat = make_category(tmp_path, "widget")
    path = cat / "train" / "good" / "001.png"
    _truncate(path, path.stat().st_size // 2)
    # the header survives, so the cheap scan passes; full decoding names the file
    index = scan_category(tmp_path, "widget")
    with pytest.raises(DataError) as exc:
        load_image(index.train_good[1])
    assert str(path) in str(exc.value) and "truncated" in str(exc.value)
    # a file cut inside its header fails the scan itself
    _truncate(path, 10)
    with pytest.raises(DataError) as exc:
        scan_category(tmp_path, "widget")
    assert str(path) in str(exc.value) and "unreadable" in str(exc.value)


def test_truncated_mask(tmp_path):
    cat = make_category(tmp_path, "widget")
    path = cat / "ground_truth" / "crack" / "000_mask.png"
    _truncate(path, path.stat().st_size // 2)
    with pytest.raises(DataError, match="truncated") as exc:
        load_mask(path)
    assert str(path) in str(exc.value)


# ----------------------------------------------------------------------------- grayscale / loading


def test_grayscale_category(tmp_path):
    make_category(tmp_path, "grid", mode="L")
    make_category(tmp_path, "bottle", mode="RGB")
    gray = scan_category(tmp_path, "grid")
    assert gray.grayscale and not scan_category(tmp_path, "bottle").grayscale
    image = load_image(gray.train_good[0])
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    raw = np.asarray(Image.open(gray.train_good[0]))
    assert (image[..., 0] == raw).all()


def test_load_image_resize(tmp_path):
    path = _img(tmp_path / "a.png", 1, size=40)
    assert load_image(path).shape == (40, 40, 3)
    out = load_image(path, size=16, resize="squash")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_load_mask_binary_and_nearest(tmp_path):
    m = np.zeros((30, 30), np.uint8)
    m[2:10, 2:10] = 1
    m[12:20, 12:28] = 128
    m[22:28, 3:9] = 255
    path = tmp_path / "m_mask.png"
    Image.fromarray(m).save(path)
    mask = load_mask(path)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert (mask == (m > 0)).all()
    small = load_mask(path, size=17, resize="squash")
    assert small.shape == (17, 17) and set(np.unique(small)) <= {0, 1}
    # an RGB mask works too
    rgb = tmp_path / "rgb_mask.png"
    Image.fromarray(np.repeat(m[..., None], 3, axis=2)).save(rgb)
    assert (load_mask(rgb) == mask).all()
