"""Box sampling: ranges, rotation, overlap with the foreground, distinctness, clear failures."""

import math

import numpy as np
import pytest

from anogen.errors import DataError
from anogen.generation.boxes import (
    Box,
    box_shapes,
    mask_component_rects,
    mask_component_sizes,
    resolve_box_range,
    sample_boxes,
    sample_boxes_for,
)


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


# ----------------------------------------------------------------------------- learned rectangles


def _line(size, angle, length, thickness=1):
    import cv2

    mask = np.zeros((size, size), np.uint8)
    c, a = size / 2, math.radians(angle)
    dx, dy = math.cos(a) * length / 2, math.sin(a) * length / 2
    cv2.line(mask, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1, thickness)
    return mask


LEARNED = {
    "rule": "components",
    "min_size": 0.01,
    "min_component": 0.05,
    "min_fill": 0.3,
    "size_jitter": 0.25,
    "angle_jitter": 10.0,
    "elongation": 2.0,
}


@pytest.mark.parametrize("angle", [30.0, 120.0])
def test_a_thin_diagonal_line_gives_a_thin_box_at_its_angle(angle):
    mask = _line(200, angle, 100)
    ((w, h, a, pixels),) = mask_component_rects(mask, 0.05, 0.3)
    assert w == pytest.approx(100 / 200, abs=0.02) and h <= 3 / 200  # length x about one pixel
    assert a == pytest.approx(angle, abs=1.0) and pixels == pytest.approx(mask.sum() / mask.size)
    # the old rule's axis-aligned bounding box of the same line covers about 20x more
    (bw, bh) = mask_component_sizes(mask, 0.05)[0]
    assert bw * bh > 15 * w * h
    box = resolve_box_range({"learned": LEARNED, "rotate": "auto"}, [mask])
    boxes = sample_boxes_for(np.random.default_rng(0), np.ones((200, 200), np.uint8), 30, box, 0.0, 100, "i", "d")
    for b in boxes:
        assert b.w / 200 == pytest.approx(0.5, rel=0.26) and b.h <= 3 * 1.25 + 1e-6
        turn = (b.angle - a + 90.0) % 180.0 - 90.0  # signed difference from the line's own angle
        assert abs(turn) <= 10.0 + 1e-6


def test_a_branched_crack_is_cut_into_thin_pieces():
    y = _line(200, 60, 120) | _line(200, 120, 120)  # an X of two thin lines: one component
    (whole,) = mask_component_rects(y, 0.05, 0.0)  # min_fill 0: never cut
    pieces = mask_component_rects(y, 0.05, 0.3)
    assert whole[0] * whole[1] > 0.15 and len(pieces) >= 4
    assert sum(p[3] for p in pieces) == pytest.approx(whole[3])  # every pixel in exactly one piece
    assert max(p[0] * p[1] for p in pieces) < 0.1 * whole[0] * whole[1]
    assert sorted({round(p[2] / 10) * 10 % 180 for p in pieces}) == [60, 120]


def test_sampled_sides_stay_within_the_jitter_of_a_rectangle():
    blob = np.zeros((100, 100), np.uint8)
    blob[10:40, 20:70] = 1  # 50 x 30: not elongated, axis-aligned box
    tall = np.zeros((100, 100), np.uint8)
    tall[5:95, 45:55] = 1  # 10 x 90, elongated at 90 degrees
    box = resolve_box_range({"learned": LEARNED, "rotate": "auto"}, [blob, tall])
    assert box["components"] == [[0.5, 0.3, 0.0, 0.5], [0.9, 0.1, 90.0, 0.5]]
    shapes = box_shapes(box)
    rng = np.random.default_rng(1)
    drawn = [shapes.draw(rng, 100, 100) for _ in range(400)]
    seen = set()
    for w, h, angle in drawn:
        if angle == 0.0:  # the blob: its own width and height, each x [1/1.25, 1.25]
            seen.add("blob")
            assert 50 / 1.25 - 1e-9 <= w <= 50 * 1.25 + 1e-9 and 30 / 1.25 - 1e-9 <= h <= 30 * 1.25 + 1e-9
        else:  # the bar: long side along 90 +- 10 degrees
            seen.add("bar")
            assert 80 <= angle <= 100 and 90 / 1.25 - 1e-9 <= w <= 100 and 10 / 1.25 - 1e-9 <= h <= 12.5 + 1e-9
        area = w * h / (1500 if angle == 0.0 else 900)
        assert 1 / 1.25**2 - 1e-9 <= area <= 1.25**2 + 1e-9
    assert seen == {"blob", "bar"}
    assert box["width"] == [0.4, 1.0] and box["height"] == [0.08, 0.375]  # the reports' envelope
    # rotate false: every box axis-aligned, the bar standing upright
    flat = box_shapes({**box, "rotate": False})
    assert all(a == 0.0 for _, _, a in (flat.draw(rng, 100, 100) for _ in range(50)))
    assert flat.turned(0.9, 0.1, 90.0) == (0.1, 0.9, None)


def test_component_boxes_keep_the_placement_rules():
    fg = _disc(96, 96, 36)
    box = resolve_box_range({"learned": LEARNED, "rotate": "auto"}, [_line(96, 45, 40, 3), _disc(96, 96, 8)])
    a = sample_boxes_for(np.random.default_rng(5), fg, 6, box, 0.9, 2000, "img.png", "crack")
    assert a == sample_boxes_for(np.random.default_rng(5), fg, 6, box, 0.9, 2000, "img.png", "crack")
    assert a[:3] == sample_boxes_for(np.random.default_rng(5), fg, 3, box, 0.9, 2000, "img.png", "crack")
    rasters = {b.to_mask(96, 96).tobytes() for b in a}
    assert len(rasters) == 6
    for b in a:
        m = b.to_mask(96, 96)
        assert (m & fg).sum() >= 0.9 * m.sum()
    with pytest.raises(DataError, match="learned rectangles"):
        sample_boxes_for(np.random.default_rng(0), np.zeros((96, 96), np.uint8), 1, box, 0.5, 5, "img.png", "crack")


def test_a_handset_box_is_drawn_as_before():
    fg = _disc(64, 64, 25)
    hand = {"width": [0.1, 0.3], "height": [0.2, 0.4], "rotate": True}
    old = sample_boxes(np.random.default_rng(3), fg, 4, [0.1, 0.3], [0.2, 0.4], True, 0.5, 1000, "a.png", "hole")
    assert sample_boxes_for(np.random.default_rng(3), fg, 4, hand, 0.5, 1000, "a.png", "hole") == old
