"""evaluation.mask_resize: the three rules for ground-truth masks, checked on hand-computed
4x4 -> 2x2 cases, and their effect on evaluate_detector."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from anogen.config import validate_config
from anogen.errors import ConfigError
from anogen.evaluation.masks import MASK_RESIZE_METHODS, load_gt_mask, resize_gt_mask, resolve_mask_resize
from tests.test_evaluate_summary import _make_category, _run


def _mask(*pixels):
    m = np.zeros((4, 4), np.uint8)
    for y, x in pixels:
        m[y, x] = 255
    return m


# Hand computation for 4 -> 2 (scale 2):
# - nearest (PIL): output pixel j samples source pixel 2j + 1 (centres at 1.0 and 3.0 -> 1, 3);
# - OpenCV INTER_LINEAR: source position (j + 0.5) * 2 - 0.5 = 0.5 or 2.5, i.e. the mean of
#   source pixels {0, 1} or {2, 3} per axis: a 2x2 block average;
# - antialiased bilinear: a triangle filter twice as wide; output 0 takes source pixels 0, 1,
#   2 with weights 0.75, 0.75, 0.25 renormalised to 3/7, 3/7, 1/7 (pixel -1 lies outside).


def test_single_pixel_counts_only_for_nearest():
    m = _mask((1, 1))
    assert resize_gt_mask(m, 2, "nearest").tolist() == [[1, 0], [0, 0]]
    # block mean 255/4 = 63.75 -> not exactly 255
    assert resize_gt_mask(m, 2, "bilinear_uint8").tolist() == [[0, 0], [0, 0]]
    # (3/7)^2 = 0.18 < 0.5
    assert resize_gt_mask(m, 2, "bilinear_antialias").tolist() == [[0, 0], [0, 0]]


def test_full_block_counts_for_all_and_partial_blocks_differ():
    full = _mask((0, 0), (0, 1), (1, 0), (1, 1))
    for method in MASK_RESIZE_METHODS:
        assert resize_gt_mask(full, 2, method).tolist() == [[1, 0], [0, 0]], method
    # three of four pixels of the block: mean 191.25 -> uint8 rule drops it
    three = _mask((0, 0), (0, 1), (1, 0))
    assert resize_gt_mask(three, 2, "bilinear_uint8").tolist() == [[0, 0], [0, 0]]
    # antialiased: (3/7)(3/7) * 3 = 27/49 = 0.55 >= 0.5 -> kept
    assert resize_gt_mask(three, 2, "bilinear_antialias").tolist() == [[1, 0], [0, 0]]
    # nearest samples (1, 1), which is 0 here
    assert resize_gt_mask(three, 2, "nearest").tolist() == [[0, 0], [0, 0]]
    # two pixels of a row pair: (3/7 + 3/7) * 3/7 = 18/49 = 0.37 -> dropped by antialias
    two = _mask((0, 0), (0, 1))
    assert resize_gt_mask(two, 2, "bilinear_antialias").tolist() == [[0, 0], [0, 0]]
    # a 3x3 block: output (0, 0) = (3/7+3/7+1/7)^2 = 1; (0, 1) and (1, 0): 1 * (1/7+3/7) = 0.57
    # (kept); (1, 1): (4/7)^2 = 0.33 (dropped). Nearest samples (1,1), (1,3), (3,1), (3,3).
    big = np.zeros((4, 4), np.uint8)
    big[:3, :3] = 255
    assert resize_gt_mask(big, 2, "bilinear_antialias").tolist() == [[1, 1], [1, 0]]
    np.testing.assert_allclose(_antialias_value(big, 0, 1), 4 / 7, atol=1e-6)
    np.testing.assert_allclose(_antialias_value(big, 1, 1), 16 / 49, atol=1e-6)
    assert resize_gt_mask(big, 2, "nearest").tolist() == [[1, 0], [0, 0]]
    # uint8: block means 255, 127.5, 127.5, 63.75 -> only (0, 0)
    assert resize_gt_mask(big, 2, "bilinear_uint8").tolist() == [[1, 0], [0, 0]]


def _antialias_value(mask, y, x):
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(mask.astype(np.float32) / 255.0)[None, None]
    return float(F.interpolate(t, size=(2, 2), mode="bilinear", align_corners=False, antialias=True)[0, 0, y, x])


def test_uint8_rule_is_opencv_bilinear_then_truncation():
    rng = np.random.default_rng(0)
    m = (rng.random((37, 53)) > 0.6).astype(np.uint8) * 255
    m = cv2.resize(m, (64, 64), interpolation=cv2.INTER_NEAREST)
    expected = (cv2.resize(m, (16, 16)).astype(np.float64) / 255.0).astype(np.uint8)
    assert np.array_equal(resize_gt_mask(m, 16, "bilinear_uint8"), expected)
    # same size: unchanged for every rule
    for method in MASK_RESIZE_METHODS:
        assert np.array_equal(resize_gt_mask(m, 64, method), (m > 0).astype(np.uint8)), method


def test_zero_one_masks_are_read_like_zero_255(tmp_path):
    m = _mask((0, 0), (0, 1), (1, 0), (1, 1))
    Image.fromarray(m).save(tmp_path / "a.png")
    Image.fromarray((m > 0).astype(np.uint8)).save(tmp_path / "b.png")
    for method in MASK_RESIZE_METHODS:
        assert np.array_equal(load_gt_mask(tmp_path / "a.png", 2, method), load_gt_mask(tmp_path / "b.png", 2, method))
    with pytest.raises(ValueError):
        resize_gt_mask(m, 2, "bicubic")


def test_official_setting_resolves_per_detector():
    assert resolve_mask_resize("official", "draem") == "bilinear_uint8"
    assert resolve_mask_resize("official", "destseg") == "bilinear_antialias"
    assert resolve_mask_resize("nearest", "draem") == "nearest"
    with pytest.raises(ValueError):
        resolve_mask_resize("official", None)
    assert (
        validate_config({"data_root": "/data", "evaluation": {"mask_resize": "official"}})["evaluation"]["mask_resize"]
        == "official"
    )


def test_schema_default_and_values():
    assert validate_config({"data_root": "/data"})["evaluation"]["mask_resize"] == "nearest"
    with pytest.raises(ConfigError, match="evaluation.mask_resize"):
        validate_config({"data_root": "/data", "evaluation": {"mask_resize": "area"}})


def test_evaluate_detector_applies_and_records_the_rule(tmp_path):
    items = _make_category(tmp_path / "data")
    near = _run(tmp_path, items, out="near")  # the schema default
    lin = _run(tmp_path, items, out="lin", mask_resize="bilinear_uint8")
    aa = _run(tmp_path, items, out="aa", mask_resize="bilinear_antialias")
    assert near["mask_resize"] == "nearest" and lin["mask_resize"] == "bilinear_uint8"
    assert json.loads((tmp_path / "aa" / "metrics.json").read_text())["mask_resize"] == "bilinear_antialias"
    extra = {k: json.loads((tmp_path / k / "manifest.json").read_text())["extra"] for k in ("near", "lin", "aa")}
    assert extra["lin"]["mask_resize"] == "bilinear_uint8"
    # 12x10 boxes at 48 px evaluated at 24 px: the uint8 rule loses the boundary pixels
    assert extra["lin"]["n_anomalous_pixels"] < extra["near"]["n_anomalous_pixels"]
    # independent count for the uint8 rule
    kept = [it for it in items if it.mask is not None and "000" not in it.path.name]
    n = sum(int(resize_gt_mask(np.asarray(Image.open(it.mask)), 24, "bilinear_uint8").sum()) for it in kept)
    assert extra["lin"]["n_anomalous_pixels"] == n
    with pytest.raises(ConfigError, match="mask_resize"):
        _run(tmp_path, items, out="bad", mask_resize="area")
    # 'official': each detector's own test-script rule, recorded resolved
    off = _run(tmp_path, items, out="off", mask_resize="official")
    assert off["mask_resize"] == "bilinear_uint8" and off["pixel_aupr"] == lin["pixel_aupr"]
    off2 = _run(tmp_path, items, out="off2", detector="destseg", mask_resize="official")
    assert off2["mask_resize"] == "bilinear_antialias" and off2["pixel_aupr"] == aa["pixel_aupr"]
