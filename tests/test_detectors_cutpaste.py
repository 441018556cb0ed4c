"""CutPaste as the synthetic anomaly source (Table 4: CutPaste, CutPaste + ours)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from anogen.config import deep_update, validate_config
from anogen.detectors.data import KIND_SYNTHETIC, TrainStream
from anogen.detectors.synthetic import CutPasteSynthesizer, DestsegSynthesizer, DraemSynthesizer
from anogen.errors import ConfigError
from anogen.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


def _noise(size=48, seed=0):
    # every pixel different from its neighbours: any moved patch changes every pixel it covers
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# The schema's CutPaste patch shape (detectors.cutpaste) and a baseline's absent generated branch.
CUTPASTE = {"area_ratio": (0.02, 0.15), "aspect_ratio": 0.3}
BASELINE = dict(mix_prob=None, weak_on_synthetic=None, generated_normal_prob=None, augment_generated=None)


def _rect(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_mask_is_exactly_where_the_image_changed(jitter):
    recipe = DestsegSynthesizer(None, rotate_90=False, random_rotate=0.0)
    synth = CutPasteSynthesizer(recipe, **CUTPASTE, color_jitter=jitter)
    normal = _noise()
    n_anom = 0
    for seed in range(60):
        s = synth(normal, np.random.default_rng(seed))
        changed = np.any(s.image != s.clean, axis=2)
        assert s.mask.dtype == np.uint8 and s.image.dtype == np.float32
        assert np.array_equal(s.clean, normal.astype(np.float32) / 255.0)  # no rotation here
        if not s.is_anomalous:
            assert not s.mask.any() and not changed.any()
            continue
        n_anom += 1
        # outside the mask: bit for bit the clean image; inside: (almost) every pixel moved
        assert not changed[s.mask == 0].any()
        assert changed[s.mask == 1].mean() > 0.97
        # the mask is one rectangle whose area lies in the configured range
        y0, y1, x0, x1 = _rect(s.mask)
        assert s.mask[y0:y1, x0:x1].all()
        area = (y1 - y0) * (x1 - x0) / 48**2
        assert 0.01 <= area <= 0.17
        ratio = (y1 - y0) / (x1 - x0)
        assert 0.25 <= ratio <= 4.0
        if jitter == 0.0:
            # the pasted pixels are a patch of the same image
            patch = s.image[y0:y1, x0:x1]
            h, w = y1 - y0, x1 - x0
            found = any(
                np.array_equal(patch, s.clean[yy : yy + h, xx : xx + w])
                for yy in range(48 - h + 1)
                for xx in range(48 - w + 1)
            )
            assert found
    assert n_anom >= 58  # DeSTSeg's recipe: always anomalous (unless pasted back in place)


def test_draem_recipe_keeps_half_normal_and_its_rotation():
    synth = CutPasteSynthesizer(DraemSynthesizer(None), **CUTPASTE, color_jitter=0.1)
    normal = _noise(32)
    anom = rotated = 0
    for seed in range(200):
        s = synth(normal, np.random.default_rng(seed))
        anom += s.is_anomalous
        rotated += not np.array_equal(s.clean, normal.astype(np.float32) / 255.0)
        assert not np.any(s.image != s.clean, axis=2)[s.mask == 0].any()
    assert 75 <= anom <= 125 and 40 <= rotated <= 80  # 50% normal, 30% rotated


def test_stream_uses_cutpaste_and_needs_no_textures(tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(_noise(32, i)).save(p)
        paths.append(p)
    stream = TrainStream(
        detector="destseg",
        variant="baseline",
        image_size=32,
        seed=0,
        batch_size=8,
        train_images=paths,
        generated=[],
        textures=None,
        **BASELINE,
        synthetic_source="cutpaste",
        resize="squash",
        interpolation="pil_bicubic",
        cutpaste={"area_ratio": (0.05, 0.1), "aspect_ratio": 0.3, "color_jitter": 0.0},
    )
    b = stream.batch(0)
    assert (b["kind"] == KIND_SYNTHETIC).all()
    changed = (b["image"] != b["clean"]).any(dim=1)
    assert ((b["mask"][:, 0] > 0) == changed).float().mean() > 0.99
    with pytest.raises(ValueError, match="TextureSource"):
        TrainStream(
            detector="draem",
            variant="baseline",
            image_size=32,
            seed=0,
            batch_size=2,
            train_images=paths,
            generated=[],
            textures=None,
            **BASELINE,
            synthetic_source="draem",
            resize="squash",
            interpolation="pil_bicubic",
        )


def _plan(over):
    raw = deep_update(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), over)
    return Plan(validate_config(raw), layout={"cat_a": {"defects": ["hole"], "texture": False}})


def test_table4_variants_are_expressible_and_keyed():
    draem = _plan({})
    cut = _plan({"detectors": {"synthetic_source": "cutpaste"}})
    spec = cut.spec("detector", "cat_a", "draem", "anogen")
    assert spec["synthetic_source"] == "cutpaste" and spec["cutpaste"]["area_ratio"] == [0.02, 0.15]
    assert "texture_source" not in spec  # CutPaste reads no textures
    assert "cutpaste" not in draem.spec("detector", "cat_a", "draem", "anogen")
    # baseline = CutPaste alone / DRAEM alone; anogen = CutPaste+ours / DRAEM+ours;
    # generated_only = ours: the synthetic source does not touch it
    for v in ("baseline", "anogen"):
        assert draem.key("detector", "cat_a", "destseg", v) != cut.key("detector", "cat_a", "destseg", v)
    assert draem.key("detector", "cat_a", "destseg", "generated_only") == cut.key(
        "detector", "cat_a", "destseg", "generated_only"
    )
    other = _plan({"detectors": {"synthetic_source": "cutpaste", "cutpaste": {"color_jitter": 0.0}}})
    assert other.key("detector", "cat_a", "draem", "baseline") != cut.key("detector", "cat_a", "draem", "baseline")
    # changing CutPaste settings leaves DRAEM-synthetic runs alone
    assert _plan({"detectors": {"cutpaste": {"color_jitter": 0.0}}}).key(
        "detector", "cat_a", "draem", "anogen"
    ) == draem.key("detector", "cat_a", "draem", "anogen")
    with pytest.raises(ConfigError, match="detectors.synthetic_source"):
        validate_config({"detectors": {"synthetic_source": "perlin"}})
    with pytest.raises(ConfigError, match="detectors.cutpaste"):
        validate_config({"detectors": {"cutpaste": {"aspect_ratio": 2.0}}})


def test_bad_area_ratio_names_the_key():
    from anogen.detectors.train import _cutpaste_args

    with pytest.raises(ConfigError, match="detectors.cutpaste.area_ratio"):
        _cutpaste_args({"area_ratio": [0.3, 0.1], "aspect_ratio": 0.3, "color_jitter": 0.1})
