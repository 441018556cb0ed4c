"""Stage 3 as the authors trained it: the generated branch and its normal half, rotation of
generated triplets, per-detector tau, the precision switch and the official numeric details
(focal smoothing, SSIM range, timm's zero_init_last)."""

import copy
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anogen.config import deep_update, validate_config
from anogen.data.index import relative_to_root
from anogen.detectors.data import (
    KIND_GENERATED,
    KIND_GENERATED_NORMAL,
    KIND_NORMAL,
    KIND_SYNTHETIC,
    TrainStream,
    load_generated_items,
    sample_rng,
)
from anogen.detectors.losses import focal_map, infer_value_range, ssim, ssim_loss, weak_focal_loss
from anogen.detectors.perlin import rotate_array
from anogen.detectors.textures import TextureSource
from anogen.detectors.train import build_trainer, train_detector
from anogen.devices import autocast, effective_precision, grad_scaler
from anogen.io import write_manifest
from anogen.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"cat_a": {"defects": ["hole"], "texture": False}}
SIZE = 32


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 noisy normal images and 6 generated items whose box is a flat green patch."""
    root = tmp_path_factory.mktemp("recipe")
    rng = np.random.default_rng(3)
    train = []
    for i in range(12):
        p = root / "train" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(p)
        train.append(p)
    gen = root / "generated"
    (gen / "images").mkdir(parents=True)
    (gen / "masks").mkdir(parents=True)
    items, files = [], []
    for i in range(6):
        src = train[i]
        img = np.asarray(Image.open(src)).copy()
        box = np.zeros((SIZE, SIZE), np.uint8)
        box[6 + i : 16 + i, 4 + 2 * i : 14 + 2 * i] = 255
        img[box > 0] = (30, 200, 60)
        name = f"{i:04d}.png"
        Image.fromarray(img).save(gen / "images" / name)
        Image.fromarray(box).save(gen / "masks" / name)
        files += [f"images/{name}", f"masks/{name}"]
        items.append({"image": f"images/{name}", "mask": f"masks/{name}", "source_image": relative_to_root(root, src)})
    manifest = write_manifest(gen, stage="generation", key="g" * 12, spec={}, files=files, extra={"items": items})
    return {"train": train, "manifest": manifest, "items": load_generated_items([manifest], train, root)}


@pytest.fixture(scope="module")
def textures():
    return TextureSource.from_config(None)


# The values TrainStream's callers pass unless a test says otherwise.
STREAM = dict(
    mix_prob=0.5,
    weak_on_synthetic=True,
    generated_normal_prob=0.0,
    augment_generated=False,
    synthetic_source="draem",
    resize="squash",
    interpolation="pil_bicubic",
)


def _schema(detector):
    """The schema's section ``detectors.<detector>`` (every default filled)."""
    return validate_config({"data_root": "x"})["detectors"][detector]


def _stream(data, textures, detector="draem", variant="anogen", **kw):
    kw = {**STREAM, **kw}
    return TrainStream(
        detector=detector,
        variant=variant,
        image_size=SIZE,
        seed=11,
        batch_size=8,
        train_images=data["train"],
        generated=data["items"],
        textures=textures,
        **kw,
    )


# ----------------------------------------------------------------------------- mixing


def _kinds(stream, steps):
    kinds = torch.cat([stream.batch(s)["kind"] for s in range(steps)]).numpy()
    return {k: float(np.mean(kinds == k)) for k in (KIND_NORMAL, KIND_SYNTHETIC, KIND_GENERATED, KIND_GENERATED_NORMAL)}


def test_draem_fork_mix_is_25_generated_25_synthetic_50_normal(data, textures):
    stream = _stream(data, textures, "draem", generated_normal_prob=0.5)
    share = _kinds(stream, 100)  # 800 samples; sd of a 25% share is 1.5 points
    assert abs(share[KIND_GENERATED] - 0.25) < 0.05
    assert abs(share[KIND_GENERATED_NORMAL] - 0.25) < 0.05
    assert abs(share[KIND_SYNTHETIC] - 0.25) < 0.05
    assert abs(share[KIND_NORMAL] + share[KIND_GENERATED_NORMAL] - 0.5) < 0.05
    # the normal half of the generated branch: the source image, unchanged, empty mask
    for step in range(4):
        b = stream.batch(step)
        sel = b["kind"] == KIND_GENERATED_NORMAL
        if sel.any():
            assert torch.equal(b["image"][sel], b["clean"][sel])
            assert b["mask"][sel].sum() == 0 and not b["anomalous"][sel].any()
            break
    else:
        pytest.fail("no generated-normal sample in 4 batches")


def test_destseg_fork_mix_is_half_generated_half_synthetic(data, textures):
    stream = _stream(data, textures, "destseg")
    share = _kinds(stream, 100)
    assert share[KIND_GENERATED_NORMAL] == 0.0
    assert abs(share[KIND_GENERATED] - 0.5) < 0.06
    # DeSTSeg's synthetic branch is always anomalous; only an empty Perlin mask (not rare
    # at 32 px) leaves a sample normal
    assert abs(share[KIND_SYNTHETIC] + share[KIND_NORMAL] - 0.5) < 0.06
    assert share[KIND_NORMAL] < 0.1


def test_generated_normal_prob_reaches_the_stream_from_the_spec(data, textures, tmp_path):
    """The trainer passes the spec's generated_normal_prob on (and records the resolved tau)."""
    spec = _draem_spec(variant="anogen", generated_normal_prob=1.0, mix_prob=1.0)
    seen = []
    import anogen.detectors.train as T

    orig = T.TrainStream

    def spy(**kw):
        s = orig(**kw)
        seen.append(s)
        return s

    T.TrainStream = spy
    try:
        manifest = train_detector(
            spec=spec,
            train_images=data["train"],
            generated_manifests=[data["manifest"]],
            out_dir=tmp_path / "d",
            key="k" * 12,
            inputs={},
            device="cpu",
            checkpoint_every=500,
        )
    finally:
        T.TrainStream = orig
    assert seen[0].generated_normal_prob == 1.0 and seen[0].augment_generated
    kinds = seen[0].batch(0)["kind"]
    assert (kinds == KIND_GENERATED_NORMAL).all()
    extra = json.loads(manifest.read_text())["extra"]
    assert extra["tau"] == 0.5
    assert extra["precision"] == {"mixed_precision": "no", "effective": "fp32"}
    assert extra["synthetic_source"] == "draem"


# ----------------------------------------------------------------------------- augmentation


def _replay_draem(stream, step, i):
    """The draws of a generated_only DRAEM sample, in the documented order."""
    rng = sample_rng(stream.seed, step, i)
    item = stream.generated[int(rng.integers(0, len(stream.generated)))]
    plain = rng.random() < stream.generated_normal_prob
    do_rotate = rng.random() < 0.3
    angle = float(rng.integers(-90, 91))
    return item, plain, do_rotate, angle


def test_draem_rotates_30_percent_of_generated_triplets_alike(data, textures):
    plain = _stream(data, textures, "draem", "generated_only")
    aug = _stream(data, textures, "draem", "generated_only", augment_generated=True)
    rotated = 0
    total = 0
    for step in range(40):
        a, b = plain.batch(step), aug.batch(step)
        for i in range(8):
            item, _, do_rotate, angle = _replay_draem(aug, step, i)
            total += 1
            if not do_rotate or angle == 0:
                assert torch.equal(a["image"][i], b["image"][i]) and torch.equal(a["mask"][i], b["mask"][i])
                continue
            rotated += 1
            assert -90 <= angle <= 90 and angle == int(angle)
            img = a["image"][i].permute(1, 2, 0).numpy()
            clean = a["clean"][i].permute(1, 2, 0).numpy()
            mask = a["mask"][i, 0].numpy().astype(np.uint8)
            exp_mask = rotate_array(mask, angle, fill=0, interpolation=cv2.INTER_NEAREST)
            assert np.array_equal(b["mask"][i, 0].numpy(), exp_mask.astype(np.float32))
            assert set(np.unique(exp_mask)) <= {0, 1}  # nearest neighbour keeps the mask binary
            assert np.allclose(b["image"][i].permute(1, 2, 0).numpy(), rotate_array(img, angle, fill=0.0))
            assert np.allclose(b["clean"][i].permute(1, 2, 0).numpy(), rotate_array(clean, angle, fill=0.0))
            if 20 <= abs(angle) <= 70:  # the corner pixel leaves the frame: black fill
                assert b["image"][i][:, 0, 0].abs().sum() == 0
    assert abs(rotated / total - 0.3) < 0.06


def test_destseg_rotates_generated_triplets_by_the_category_rule(data, textures):
    # (rotate_90, random_rotate) = (True, 5): every triplet is rotated by 90k + U(-5, 5)
    aug = _stream(data, textures, "destseg", "generated_only", augment_generated=True, destseg_rotation=(True, 5.0))
    plain = _stream(data, textures, "destseg", "generated_only")
    soft = 0
    for step in range(6):
        a, b = plain.batch(step), aug.batch(step)
        for i in range(8):
            rng = sample_rng(aug.seed, step, i)
            rng.integers(0, len(aug.generated))
            rng.random()
            quarter = int(rng.integers(0, 4))
            angle = 90.0 * quarter + float(rng.uniform(-5, 5))
            img = a["image"][i].permute(1, 2, 0).numpy()
            mask = a["mask"][i, 0].numpy()
            exp_img = rotate_array(img, angle, fill=114 / 255.0)
            exp_mask = rotate_array(mask.astype(np.float32), angle, fill=0.0)
            assert np.allclose(b["image"][i].permute(1, 2, 0).numpy(), exp_img)
            assert np.allclose(b["mask"][i, 0].numpy(), exp_mask)
            assert np.allclose(
                b["clean"][i].permute(1, 2, 0).numpy(),
                rotate_array(a["clean"][i].permute(1, 2, 0).numpy(), angle, fill=114 / 255.0),
            )
            m = b["mask"][i, 0]
            soft += int(((m > 0) & (m < 1)).any())
    assert soft > 0  # bilinear: the mask is soft until the trainer thresholds it at 0.5
    # capsule's rule (no rotation at all) leaves every triplet alone
    none = _stream(data, textures, "destseg", "generated_only", augment_generated=True, destseg_rotation=(False, 0.0))
    assert torch.equal(none.batch(0)["image"], plain.batch(0)["image"])


def test_augmented_stream_is_still_a_pure_function_of_seed_and_step(data, textures):
    a = _stream(data, textures, "draem", generated_normal_prob=0.5, augment_generated=True)
    b = _stream(data, textures, "draem", generated_normal_prob=0.5, augment_generated=True)
    b.batch(9)
    for step in (0, 4, 13):
        x, y = a.batch(step), b.batch(step)
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_destseg_trainer_thresholds_a_soft_mask_at_one_half():
    from anogen.detectors.destseg.trainer import DestsegTrainer

    captured = {}
    import anogen.detectors.destseg.loss as M

    orig = M.weak_focal_loss

    def spy(logit, target, *a, **kw):
        captured["target"] = target
        return orig(logit, target, *a, **kw)

    M.weak_focal_loss = spy
    try:
        tr = DestsegTrainer(
            {**_schema("destseg"), "steps": 2, "student_steps": 0, "batch_size": 2, "zero_init_last": False},
            seed=0,
            tau=1.0,
            device="cpu",
            n_train=1,
            mixed_precision="no",
        )
        mask = torch.zeros(2, 1, 64, 64)
        mask[..., :, :32] = 0.6  # soft after a bilinear rotation: counts (>= 0.5)
        mask[..., :, 32:] = 0.4  # does not
        tr.train_step({"image": torch.rand(2, 3, 64, 64), "mask": mask, "weak": torch.ones(2, dtype=torch.bool)}, 0)
    finally:
        M.weak_focal_loss = orig
    t = captured["target"][0, 0]
    assert t.shape == (16, 16) and t[:, :8].eq(1).all() and t[:, 8:].eq(0).all()


# ----------------------------------------------------------------------------- tau per detector


def _plan(over):
    raw = deep_update(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), over)
    return Plan(validate_config(raw), layout=copy.deepcopy(LAYOUT))


def test_per_detector_tau_overrides_the_shared_one_and_keys_follow_the_effective_value():
    p = _plan({"detectors": {"tau": 0.8, "draem": {"tau": 0.9}, "destseg": {"tau": 1.0}}})
    assert p.spec("detector", "cat_a", "draem", "anogen")["tau"] == 0.9
    assert p.spec("detector", "cat_a", "destseg", "anogen")["tau"] == 1.0
    assert "tau" not in p.spec("detector", "cat_a", "draem", "baseline")
    assert "tau" not in p.spec("detector", "cat_a", "draem", "anogen")["draem"]  # only the resolved one
    # same effective tau, written two ways: same key
    a = _plan({"detectors": {"tau": 0.9}})
    b = _plan({"detectors": {"tau": 0.5, "draem": {"tau": 0.9}}})
    assert a.key("detector", "cat_a", "draem", "anogen") == b.key("detector", "cat_a", "draem", "anogen")
    assert a.key("detector", "cat_a", "destseg", "anogen") != b.key("detector", "cat_a", "destseg", "anogen")
    # baselines do not read tau at all
    assert a.key("detector", "cat_a", "destseg", "baseline") == b.key("detector", "cat_a", "destseg", "baseline")
    # the resolved tau is what the loss uses
    spec = p.spec("detector", "cat_a", "draem", "anogen")
    assert build_trainer(spec, "cpu", 4).tau == 0.9


def test_generated_branch_values_reach_only_the_generated_variants():
    p = _plan({})
    spec = p.spec("detector", "cat_a", "draem", "anogen")
    assert spec["generated_normal_prob"] == 0.5 and spec["augment_generated"] is True
    assert p.spec("detector", "cat_a", "destseg", "anogen")["generated_normal_prob"] == 0.0
    base = p.spec("detector", "cat_a", "draem", "baseline")
    assert "generated_normal_prob" not in base and "augment_generated" not in base
    q = _plan({"detectors": {"draem": {"generated_normal_prob": 0.0}}})
    assert p.key("detector", "cat_a", "draem", "baseline") == q.key("detector", "cat_a", "draem", "baseline")
    assert p.key("detector", "cat_a", "draem", "anogen") != q.key("detector", "cat_a", "draem", "anogen")
    assert p.key("detector", "cat_a", "destseg", "anogen") == q.key("detector", "cat_a", "destseg", "anogen")


# ----------------------------------------------------------------------------- precision


def test_precision_switch_defaults_to_fp32_and_reaches_the_key():
    p = _plan({})
    assert validate_config({"data_root": "/data"})["detectors"]["mixed_precision"] == "no"
    assert (
        p.spec("detector", "cat_a", "draem", "baseline")["mixed_precision"] == p.config["detectors"]["mixed_precision"]
    )
    q = _plan({"detectors": {"mixed_precision": "bf16"}})
    for m in ("draem", "destseg"):
        for v in ("baseline", "anogen"):
            assert p.key("detector", "cat_a", m, v) != q.key("detector", "cat_a", m, v)
    assert effective_precision("no", "cuda") == "fp32"
    assert effective_precision("bf16", "cpu") == "fp32" and effective_precision("auto", "cpu") == "fp32"
    assert effective_precision("fp16", "cuda") == "fp16"
    assert grad_scaler("bf16", "cpu") is None and grad_scaler("no", "cuda") is None
    with pytest.raises(ValueError):
        effective_precision("fp8", "cuda")
    with autocast("auto", "cpu"):
        assert not torch.is_autocast_enabled()


def test_precision_is_exported_for_prediction(data, textures, tmp_path):
    from anogen.detectors import load_trained_detector

    spec = _draem_spec(variant="baseline", mixed_precision="bf16")
    train_detector(
        spec=spec,
        train_images=data["train"],
        generated_manifests=[],
        out_dir=tmp_path / "d",
        key="p" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
    )
    det = load_trained_detector(tmp_path / "d")
    assert det.mixed_precision == "bf16"
    extra = json.loads((tmp_path / "d" / "manifest.json").read_text())["extra"]
    assert extra["precision"] == {"mixed_precision": "bf16", "effective": "fp32"}  # on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_precision_switch_on_cuda():
    from anogen.detectors.draem.network import DraemNet

    net = DraemNet(8, 8).cuda().eval()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        with autocast("no", "cuda"):
            rec32, _ = net(x)
        with autocast("bf16", "cuda"):
            rec16, _ = net(x)
    assert rec32.dtype == torch.float32 and rec16.dtype == torch.bfloat16


def _draem_spec(variant, **over):
    spec = {
        "category": "cat_a",
        "detector": "draem",
        "variant": variant,
        "image_size": SIZE,
        "resize": "squash",
        "seed": 0,
        "tau": 0.5,
        "mix_prob": 0.5,
        "weak_on_synthetic": True,
        "texture_source": None,
        "generated_normal_prob": 0.5,
        "augment_generated": True,
        "synthetic_source": "draem",
        "mixed_precision": "no",
        "draem": {
            "epochs": 1,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "schedule": "original",
            "recon_base_width": 4,
            "disc_base_width": 4,
            "ssim_weight": 1.0,
            "focal_gamma": 2.0,
            "focal_smooth": 1e-5,
            "ssim_value_range": None,
            "score_pool": 21,
            "image_interpolation": "pil_bicubic",
        },
    }
    spec.update(over)
    return spec


# ----------------------------------------------------------------------------- numeric details


def test_focal_smooth_matches_the_official_clamped_form_by_hand():
    s = 1e-5
    p = torch.tensor([0.3, 0.3, 1e-12, 1.0 - 1e-7])
    z = torch.logit(p.double()).float().view(1, 1, 1, 4)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 4)
    got = focal_map(z, t, 2.0, smooth=s)[0, 0]
    # hand: p_t' = (1 - 2s) p_t + 2s, loss = -(1 - p_t')^2 log p_t'
    for j, (pj, tj) in enumerate([(0.3, 1), (0.3, 0), (1e-12, 1), (1 - 1e-7, 0)]):
        q = pj if tj == 1 else 1 - pj
        pt = (1 - 2 * s) * q + 2 * s
        assert math.isclose(float(got[j]), -((1 - pt) ** 2) * math.log(pt), rel_tol=2e-4), j
    # a hopeless pixel costs at most -log(2s) (about 10.8), where the exact loss is ~27.6
    assert float(got[2]) < -math.log(2 * s) + 1e-3
    assert float(focal_map(z, t, 2.0)[0, 0, 2]) > 27
    # independently: the official recipe on a two-class softmax (one-hot clamped to
    # [s, 1 - s], plus s), computed here from its definition
    logits2 = torch.randn(2, 2, 5, 5) * 4
    target = (torch.rand(2, 1, 5, 5) > 0.5).float()
    prob = torch.softmax(logits2, 1)
    one_hot = torch.cat([1 - target, target], 1).clamp(s, 1 - s)
    pt = (one_hot * prob).sum(1) + s
    official = -((1 - pt) ** 2) * torch.log(pt)
    ours = focal_map(logits2[:, 1:2] - logits2[:, 0:1], target, 2.0, smooth=s)
    assert torch.allclose(ours, official, rtol=1e-3, atol=1e-5)  # float32 softmax vs sigmoid
    # and the weak loss passes the smoothing on
    loss, _ = weak_focal_loss(z, t, 1.0, 2.0, smooth=s)
    assert torch.isclose(loss, got.mean())


def test_ssim_infers_the_value_range_from_the_reconstruction():
    a = torch.rand(1, 3, 16, 16)
    assert infer_value_range(a) == 1.0
    neg = a.clone()
    neg[0, 0, 0, 0] = -0.6
    assert infer_value_range(neg) == 2.0
    big = a * 200
    assert infer_value_range(big) == 255.0
    both = big.clone()
    both[0, 0, 0, 0] = -0.7
    assert infer_value_range(both) == 256.0
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    # the range is taken from the first argument (the reconstruction) only
    assert torch.equal(ssim_loss(neg, b), 1 - ssim(neg, b, value_range=2.0))
    assert torch.equal(ssim_loss(b, neg), 1 - ssim(b, neg, value_range=1.0))
    assert not torch.equal(ssim_loss(neg, b), 1 - ssim(neg, b, value_range=1.0))
    # a fixed range still works
    assert torch.equal(ssim_loss(neg, b, value_range=1.0), 1 - ssim(neg, b, value_range=1.0))


def test_draem_trainer_uses_smoothing_and_ssim_range_from_config():
    from anogen.detectors.draem.trainer import DraemTrainer

    cfg = {**_schema("draem"), "recon_base_width": 4, "disc_base_width": 4}
    tr = DraemTrainer(cfg, seed=0, tau=0.9, device="cpu", n_train=4, mixed_precision="no")
    assert tr.cfg["focal_smooth"] == 1e-5 and tr.cfg["ssim_value_range"] is None
    schema = validate_config({"data_root": "/data"})["detectors"]["draem"]
    assert schema["focal_smooth"] == 1e-5 and schema["ssim_value_range"] is None


def test_zero_init_last_zeroes_the_last_bn_of_every_student_encoder_block():
    from anogen.detectors.destseg.network import DestsegNet

    torch.manual_seed(0)
    net = DestsegNet(zero_init_last=_schema("destseg")["zero_init_last"])  # default: as timm's resnet18
    blocks = [b for layer in net.student.encoder.layers for b in layer]
    assert len(blocks) == 8
    for b in blocks:
        assert torch.equal(b.bn2.weight, torch.zeros_like(b.bn2.weight))
        assert torch.equal(b.bn1.weight, torch.ones_like(b.bn1.weight))
        if b.downsample is not None:
            assert torch.equal(b.downsample[1].weight, torch.ones_like(b.downsample[1].weight))
    # decoder and teacher keep the ordinary init
    for layer in (net.student.decoder1, net.teacher.layers[0]):
        assert torch.equal(layer[0].bn2.weight, torch.ones_like(layer[0].bn2.weight))
    # so each encoder block starts as (ReLU of) its shortcut
    x = torch.relu(torch.randn(1, 64, 8, 8))
    blocks[0].eval()
    assert torch.allclose(blocks[0](x), torch.relu(x))
    off = DestsegNet(zero_init_last=False)
    assert torch.equal(off.student.encoder.layers[0][0].bn2.weight, torch.ones(64))
    assert validate_config({"data_root": "/data"})["detectors"]["destseg"]["zero_init_last"] is True


def test_destseg_teacher_statistics_stay_frozen_during_training():
    from anogen.detectors.destseg.trainer import DestsegTrainer

    tr = DestsegTrainer(
        {**_schema("destseg"), "steps": 4, "student_steps": 2, "batch_size": 2, "zero_init_last": False},
        seed=0,
        tau=1.0,
        device="cpu",
        n_train=2,
        mixed_precision="no",
    )
    before = {k: v.clone() for k, v in tr.model.teacher.state_dict().items()}
    batch = {
        "image": torch.rand(2, 3, 64, 64),
        "clean": torch.rand(2, 3, 64, 64),
        "mask": torch.zeros(2, 1, 64, 64),
        "weak": torch.zeros(2, dtype=torch.bool),
    }
    tr.train_step(batch, 0)  # student phase
    tr.train_step(batch, 2)  # segmentation phase
    after = tr.model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not tr.model.teacher.training
