"""Box sampling: ranges, rotation, overlap with the foreground, distinctness, clear failures."""

import math

import numpy as np
import pytest

from anogen.errors import DataError
from anogen.generation.boxes import Box, sample_boxes


def _disc(h, w, r):
    yy, xx = np.mgrid[:h, :w]
    return (((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2) <= r * r).astype(np.uint8)


def test_box_mask_area_and_dict_roundtrip():
    box = Box(40.0, 30.0, 20.0, 10.0, 0.0)
    m = box.to_mask(64, 80)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert m.sum() == 200  # axis-aligned box on pixel edges: exactly w*h pixels
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (30, 49, 25, 34)
    rot = Box(40.0, 32.0, 30.0, 12.0, 37.0)
    assert abs(int(rot.to_mask(64, 80).sum()) - 360) < 30  # centre sampling: unbiased area
    assert Box.from_dict(rot.as_dict()) == rot


@pytest.mark.parametrize("rotate", [False, True])
def test_boxes_respect_ranges_rotation_overlap_and_are_distinct(rotate):
    size = (96, 128)  # H, W (non-square on purpose)
    fg = _disc(*size, 40)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        wr = sorted(rng.uniform(0.05, 0.35, 2))
        hr = sorted(rng.uniform(0.05, 0.35, 2))
        min_overlap = float(rng.uniform(0.0, 0.9))
        boxes = sample_boxes(
            np.random.default_rng(1000 + seed),
            fg,
            3,
            wr,
            hr,
            rotate,
            min_overlap,
            2000,
            image_name="img.png",
            defect="crack",
        )
        assert len(boxes) == 3
        rasters = []
        for b in boxes:
            assert wr[0] * size[1] - 1e-9 <= b.w <= wr[1] * size[1] + 1e-9
            assert hr[0] * size[0] - 1e-9 <= b.h <= hr[1] * size[0] + 1e-9
            if rotate:
                assert 0.0 <= b.angle < 180.0
            else:
                assert b.angle == 0.0
            hx, hy = b.extent()
            assert b.cx - hx >= -1e-6 and b.cx + hx <= size[1] + 1e-6
            assert b.cy - hy >= -1e-6 and b.cy + hy <= size[0] + 1e-6
            corners = b.corners()
            assert corners[:, 0].min() >= -1e-6 and corners[:, 0].max() <= size[1] + 1e-6
            m = b.to_mask(*size)
            assert m.sum() > 0
            assert (m & fg).sum() >= min_overlap * m.sum()
            rasters.append(m.tobytes())
        assert len(set(rasters)) == 3


def test_corners_match_opencv_rotated_rect():
    import cv2

    for angle in (0.0, 17.0, 90.0, 133.0):
        box = Box(30.0, 20.0, 16.0, 6.0, angle)
        ours = sorted(map(tuple, np.round(box.corners(), 4)))
        theirs = sorted(map(tuple, np.round(cv2.boxPoints(((30.0, 20.0), (16.0, 6.0), angle)).astype(float), 4)))
        assert np.allclose(ours, theirs, atol=1e-3)
        m = box.to_mask(40, 60)
        ys, xs = np.nonzero(m)
        # every filled pixel centre lies inside the polygon
        poly = box.corners().astype(np.float32).reshape(-1, 1, 2)
        assert all(cv2.pointPolygonTest(poly, (float(x) + 0.5, float(y) + 0.5), False) >= 0 for x, y in zip(xs, ys))


def test_rotation_angles_cover_the_range():
    fg = np.ones((64, 64), np.uint8)
    boxes = sample_boxes(np.random.default_rng(0), fg, 200, [0.1, 0.2], [0.1, 0.2], True, 0.0, 100, "x.png", "cut")
    angles = np.array([b.angle for b in boxes])
    assert angles.min() < 20 and angles.max() > 160


def test_same_seed_same_boxes():
    fg = _disc(64, 64, 25)
    a = sample_boxes(np.random.default_rng(7), fg, 2, [0.1, 0.3], [0.1, 0.3], True, 0.5, 1000, "a.png", "hole")
    b = sample_boxes(np.random.default_rng(7), fg, 2, [0.1, 0.3], [0.1, 0.3], True, 0.5, 1000, "a.png", "hole")
    assert a == b


def test_impossible_overlap_fails_with_clear_message():
    fg = np.zeros((64, 64), np.uint8)
    fg[:3, :3] = 1  # a tiny foreground in a corner
    with pytest.raises(DataError) as info:
        sample_boxes(
            np.random.default_rng(0),
            fg,
            2,
            [0.4, 0.5],
            [0.4, 0.5],
            False,
            0.9,
            50,
            image_name="bottle/train/good/007.png",
            defect="broken_large",
        )
    msg = str(info.value)
    assert "bottle/train/good/007.png" in msg and "broken_large" in msg
    assert "min_overlap=0.9" in msg and "50 tries" in msg and "foreground fraction=0.002" in msg


def test_box_larger_than_image_when_rotated_fails():
    fg = np.ones((32, 32), np.uint8)
    # 0.9 x 0.9 fits only at angles near 0/90/180: with few tries it cannot be placed rotated ...
    with pytest.raises(DataError, match="too_large"):
        sample_boxes(np.random.default_rng(3), fg, 1, [0.95, 0.95], [0.95, 0.95], True, 0.0, 5, "t.png", "flip")
    # ... and always when not rotated.
    (box,) = sample_boxes(np.random.default_rng(3), fg, 1, [0.9, 0.9], [0.9, 0.9], False, 0.0, 5, "t.png", "flip")
    assert math.isclose(box.w, 28.8)


def test_distinctness_is_enforced_and_bounded():
    fg = np.ones((10, 10), np.uint8)
    # A full-image box has exactly one raster: a second distinct one cannot exist.
    with pytest.raises(DataError, match="duplicate"):
        sample_boxes(np.random.default_rng(0), fg, 2, [1.0, 1.0], [1.0, 1.0], False, 0.5, 20, "f.png", "d")
