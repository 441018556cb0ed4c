"""Stage-3 building blocks: Perlin masks, textures, synthetic anomalies, losses, networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anogen.data.texture_files import texture_fingerprint
from anogen.detectors import synthetic
from anogen.detectors.losses import (
    focal_loss,
    focal_map,
    ssim,
    ssim_loss,
    weak_focal_loss,
    weak_mask,
)
from anogen.detectors.perlin import perlin_mask, perlin_noise
from anogen.detectors.synthetic import (
    DestsegSynthesizer,
    DraemSynthesizer,
    augment_texture,
    destseg_rotation_for,
)
from anogen.detectors.textures import TextureSource
from anogen.errors import DataError


@pytest.fixture(autouse=True)
def _one_thread():
    # On a shared 2-core machine, 2 OpenMP threads can be 10-40x slower than one.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def textures():
    return TextureSource.from_config(None)


# ----------------------------------------------------------------------------- Perlin


def test_perlin_deterministic_and_any_size():
    a = perlin_mask((48, 40), np.random.default_rng(3))
    b = perlin_mask((48, 40), np.random.default_rng(3))
    assert a.shape == (48, 40) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1}
    # non-dividing lattice works and noise is smooth-ish and bounded
    n = perlin_noise((37, 53), (4, 8), np.random.default_rng(0))
    assert n.shape == (37, 53) and np.abs(n).max() <= 1.5
    # over many draws masks cover a sensible fraction of the image
    cover = [perlin_mask((64, 64), np.random.default_rng(s)).mean() for s in range(40)]
    assert 0.02 < float(np.mean(cover)) < 0.5


# ----------------------------------------------------------------------------- textures


def test_texture_source_photographs(textures):
    info = textures.describe()
    assert info["kind"] == "photographs" and info["n_skimage"] >= 8
    t = textures.sample(np.random.default_rng(0), 32)
    assert t.shape == (32, 32, 3) and t.dtype == np.uint8
    assert t.std() > 1.0  # real texture, not a flat colour


def test_texture_source_folder_and_errors(tmp_path):
    with pytest.raises(DataError, match="missing_dtd"):
        TextureSource.from_config(tmp_path / "missing_dtd")
    empty = tmp_path / "empty_dtd"
    (empty / "banded").mkdir(parents=True)
    with pytest.raises(DataError, match="empty_dtd"):
        TextureSource.from_config(empty)
    img = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(empty / "banded" / "banded_0001.jpg")
    Image.fromarray(img).save(empty / "banded" / "banded_0002.png")
    src = TextureSource.from_config(empty, fallback_images=["ignored.png"])
    fingerprint = texture_fingerprint(empty)  # the plan's inputs["textures"] (tests/test_external_keys.py)
    assert src.describe() == {"kind": "folder", "folder": str(empty), "n_images": 2, "fingerprint": fingerprint}
    assert src.sample(np.random.default_rng(1), 32).shape == (32, 32, 3)


def test_texture_source_fallback_images(tmp_path):
    img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    files = []
    for i in range(3):
        files.append(tmp_path / f"other_{i}.png")
        Image.fromarray(img).save(files[-1])
    src = TextureSource.from_config(None, fallback_images=files)
    assert src.describe()["n_fallback_images"] == 3
    assert len(src) == src.describe()["n_skimage"] + 3


# ----------------------------------------------------------------------------- synthetic anomalies


def _normal(size=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 120 + 60 * np.sin(xx * 0.5) + rng.normal(0, 5, (size, size))
    return np.clip(np.stack([img, img * 0.8, img * 0.6], -1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["draem", "destseg"])
def test_synthetic_mask_is_exactly_the_change(textures, kind):
    synth = DraemSynthesizer(textures) if kind == "draem" else DestsegSynthesizer(textures)
    normal = _normal()
    n_anom = 0
    for seed in range(40):
        s = synth(normal, np.random.default_rng(seed))
        image, mask, is_anom = s  # unpacks like a (image, mask, is_anomalous) tuple
        assert image.dtype == np.float32 and image.shape == (48, 48, 3)
        assert mask.dtype == np.uint8 and mask.shape == (48, 48)
        changed = np.any(image != s.clean, axis=2)
        # mask == 0 => pixel unchanged, bit for bit
        assert not changed[mask == 0].any()
        assert is_anom == bool(mask.any())
        if is_anom:
            n_anom += 1
            # where mask == 1 and beta > 0 the pixel differs in general
            assert changed[mask == 1].mean() > 0.9
        else:
            assert np.array_equal(image, s.clean)
        # same generator state, same sample
        again = synth(normal, np.random.default_rng(seed))
        assert np.array_equal(again.image, s.image) and np.array_equal(again.mask, s.mask)
    if kind == "draem":
        assert 8 <= n_anom <= 32  # about half stay normal
    else:
        assert n_anom >= 34  # always anomalous unless the Perlin mask is empty


def test_draem_rotates_some_inputs_and_destseg_policy(textures):
    normal = _normal(32)
    synth = DraemSynthesizer(textures)
    rotated = sum(
        not np.array_equal(synth(normal, np.random.default_rng(s)).clean, normal.astype(np.float32) / 255.0)
        for s in range(60)
    )
    assert 8 <= rotated <= 32  # ~30 %
    assert destseg_rotation_for("transistor") == (False, 0.0)
    assert destseg_rotation_for("bottle") == (True, 5.0)
    assert destseg_rotation_for("unknown_category") == (True, 5.0)


def test_texture_augmentations_run():
    tex = _normal(32)
    for seed in range(20):
        out = augment_texture(tex, np.random.default_rng(seed))
        assert out.shape == tex.shape and out.dtype == np.uint8


def test_texture_augmentations_change_a_texture():
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    before = tex.copy()
    for seed in range(20):
        out = augment_texture(tex, np.random.default_rng(seed))
        assert not np.array_equal(out, tex), seed
    assert np.array_equal(tex, before)  # the input is never written


def test_augment_texture_composes_n_distinct_augmentations_in_drawn_order(monkeypatch):
    """``n`` distinct entries of the table, in the order of one ``choice`` without replacement
    from the sample's generator, each applied to the previous output with that same generator."""
    calls = []

    def make(k):
        def fake(img, rng):
            calls.append((k, rng))
            return img + np.uint8(k + 1)

        return fake

    monkeypatch.setattr(synthetic, "TEXTURE_AUGMENTATIONS", tuple((f"a{k}", make(k)) for k in range(10)))
    tex = np.full((4, 4, 3), 100, dtype=np.uint8)
    for seed in range(10):
        calls.clear()
        rng = np.random.default_rng(seed)
        out = augment_texture(tex, rng)
        order = [int(k) for k in np.random.default_rng(seed).choice(10, size=3, replace=False)]
        assert [k for k, _ in calls] == order and len(set(order)) == 3
        assert all(r is rng for _, r in calls)
        assert np.array_equal(out, np.full((4, 4, 3), 100 + sum(k + 1 for k in order), dtype=np.uint8))


def test_texture_augmentations_follow_their_formulas():
    """DRAEM's ten augmentations exist; four of them against their formula, replaying the draws."""
    table = dict(synthetic.TEXTURE_AUGMENTATIONS)
    assert list(table) == [
        "gamma_contrast",
        "brightness",
        "sharpness",
        "hue_saturation",
        "solarize",
        "posterize",
        "invert",
        "autocontrast",
        "equalize",
        "rotate",
    ]
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = img.astype(np.int64)
    assert np.array_equal(table["invert"](img, np.random.default_rng(0)), 255 - x)
    applied = set()
    for seed in range(12):
        r = np.random.default_rng(seed)
        shift = 8 - int(r.integers(1, 9))  # keep the top ``bits`` bits
        assert np.array_equal(table["posterize"](img, np.random.default_rng(seed)), x - x % 2**shift)
        r = np.random.default_rng(seed)
        apply, threshold = r.random() < 0.5, int(r.integers(32, 129))
        applied.add(apply)
        want = np.where(x >= threshold, 255 - x, x) if apply else x
        assert np.array_equal(table["solarize"](img, np.random.default_rng(seed)), want)
        gamma = np.random.default_rng(seed).uniform(0.5, 2.0, size=3)  # one per channel
        want = np.round((x / 255.0) ** gamma * 255.0)
        got = table["gamma_contrast"](img, np.random.default_rng(seed)).astype(np.int64)
        assert np.abs(got - want).max() <= 1
    assert applied == {True, False}  # solarize is applied to about half the textures


class _FlatTextures:
    """Texture source stand-in: one flat colour, no draws."""

    def sample(self, rng, size):
        return np.full((size, size, 3), (200, 40, 90), dtype=np.uint8)


def test_draem_augments_its_texture_and_blends_it_in(monkeypatch):
    """DRAEM passes the texture through ``augment_texture``, DeSTSeg uses it as is; inside the
    mask both blend ``(1 - beta) * texture + beta * image``."""
    seen = []

    def recording(texture, rng, n=3):
        seen.append(n)
        return texture

    monkeypatch.setattr(synthetic, "augment_texture", recording)
    normal = _normal(32)
    tex = np.array([200, 40, 90], dtype=np.float32) / 255.0
    for synth, augments in ((DraemSynthesizer(_FlatTextures()), True), (DestsegSynthesizer(_FlatTextures()), False)):
        blended = 0
        for seed in range(12):
            seen.clear()
            s = synth(normal, np.random.default_rng(seed))
            assert seen == ([3] if augments else [])
            inside = s.mask == 1
            want = (1.0 - s.beta) * tex + s.beta * s.clean[inside]
            np.testing.assert_allclose(s.image[inside], want, atol=1e-6)
            blended += int(inside.any())
        assert blended > 0


# ----------------------------------------------------------------------------- losses


def test_focal_map_matches_formula():
    torch.manual_seed(0)
    z = torch.randn(2, 1, 5, 6) * 3
    t = (torch.rand(2, 1, 5, 6) > 0.5).float()
    p = torch.sigmoid(z)
    pt = torch.where(t > 0, p, 1 - p)
    for gamma in (0.0, 2.0, 4.0):
        expected = -((1 - pt) ** gamma) * torch.log(pt)
        assert torch.allclose(focal_map(z, t, gamma), expected[:, 0], atol=1e-6)
    # DRAEM's two-class softmax equals the sigmoid of the logit difference
    logits2 = torch.randn(2, 2, 4, 4)
    assert torch.allclose(torch.softmax(logits2, 1)[:, 1], torch.sigmoid(logits2[:, 1] - logits2[:, 0]), atol=1e-6)


def test_weak_loss_zero_for_confident_normal_inside_box_and_focal_outside():
    # 1 x 1 x 2 x 4 map; box covers the left half (columns 0-1)
    box = torch.zeros(1, 1, 2, 4)
    box[..., :2] = 1
    p = torch.tensor([[[[0.01, 0.5, 0.01, 0.5], [0.95, 0.2, 0.99, 0.05]]]])
    logit = torch.logit(p)
    tau = 0.9
    w = weak_mask(p, box, tau)
    # inside the box: p_normal = 0.99 (>= tau) -> 0; 0.5 -> 1; 0.05 -> 1; 0.8 -> 1
    assert w.tolist() == [[[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]]
    loss, weight = weak_focal_loss(logit, box, tau, gamma=2.0)
    fmap = focal_map(logit, box, 2.0)
    assert torch.equal(weight, w)
    # confident-normal pixel in the box contributes exactly zero...
    assert (weight * fmap)[0, 0, 0] == 0
    # ...everything outside the box is the plain focal loss
    outside = box[:, 0] == 0
    assert torch.equal((weight * fmap)[outside], fmap[outside])
    # normaliser: mean over all pixels, zeroed ones included
    assert torch.allclose(loss, (w * fmap).sum() / fmap.numel())
    # the weak mask comes from the detached prediction: gradient only through the focal map
    logit_req = logit.clone().requires_grad_(True)
    l2, _ = weak_focal_loss(logit_req, box, tau, gamma=2.0)
    l2.backward()
    assert logit_req.grad[0, 0, 0, 0] == 0 and logit_req.grad[0, 0, 0, 1] != 0


def test_tau_one_equals_plain_box_supervision_exactly():
    torch.manual_seed(1)
    logit = torch.randn(3, 1, 16, 16) * 8
    logit[0, 0, :4, :4] = -40.0  # p_anomaly ~ 4e-18: 1 - p rounds to exactly 1.0 in float32
    box = torch.zeros(3, 1, 16, 16)
    box[:, :, 2:10, 3:12] = 1
    assert ((1 - torch.sigmoid(logit)) == 1.0).any()
    weak, weight = weak_focal_loss(logit, box, tau=1.0, gamma=2.0)
    plain = focal_loss(logit, box, gamma=2.0)
    assert torch.equal(weak, plain)
    assert torch.equal(weight, torch.ones_like(weight))
    # and tau < 1 does drop something here
    assert weak_focal_loss(logit, box, tau=0.9, gamma=2.0)[0] < plain
    # per-sample switch: apply=False gives plain supervision for that sample
    lw, w = weak_focal_loss(logit, box, 0.9, 2.0, apply=torch.tensor([False, False, False]))
    assert torch.equal(lw, plain)


def test_draem_loss_is_l2_plus_weighted_ssim_plus_the_weak_focal_loss():
    from anogen.detectors.draem.loss import DraemLoss

    g = torch.Generator().manual_seed(1)
    rec, clean = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    logit = 4 * torch.randn(2, 1, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    weak = torch.tensor([True, False])
    cfg = {"ssim_weight": 0.5, "focal_gamma": 2.0, "focal_smooth": 1e-5, "ssim_value_range": None}
    loss, terms = DraemLoss(cfg, tau=0.9)(rec, clean, logit, mask, weak)
    focal, weight = weak_focal_loss(logit, mask, 0.9, 2.0, apply=weak, smooth=1e-5)
    l2 = ((rec - clean) ** 2).mean()
    assert torch.allclose(terms["l2"], l2) and torch.equal(terms["focal"], focal)
    assert torch.equal(terms["ssim"], ssim_loss(rec, clean)) and torch.equal(terms["weight"], weight)
    assert torch.equal(loss, terms["l2"] + 0.5 * terms["ssim"] + focal)
    assert weight[1].eq(1).all() and not weight[0].eq(1).all()  # only the weak sample drops pixels
    # a baseline (no tau): the plain focal loss, bit for bit the weak loss without weak samples
    none = torch.zeros(2, dtype=torch.bool)
    base, bterms = DraemLoss(cfg, tau=None)(rec, clean, logit, mask, none)
    plain, _ = weak_focal_loss(logit, mask, 0.9, 2.0, apply=none, smooth=1e-5)
    assert torch.equal(bterms["focal"], plain) and bterms["weight"].eq(1).all()
    assert torch.equal(bterms["focal"], focal_loss(logit, mask, 2.0, 1e-5))


def test_destseg_loss_is_focal_plus_l1_on_the_thresholded_mask():
    from anogen.detectors.destseg.loss import DestsegLoss

    g = torch.Generator().manual_seed(2)
    logit = 3 * torch.randn(2, 1, 8, 8, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1  # bilinear 32 -> 8 of an aligned 16 px square, >= 0.5
    weak = torch.tensor([True, True])
    loss, terms = DestsegLoss({"focal_gamma": 4.0}, tau=0.5)(logit, mask, weak)
    focal, weight = weak_focal_loss(logit, target, 0.5, 4.0, apply=weak)
    l1 = (torch.sigmoid(logit) - target).abs().mean()
    assert torch.equal(terms["focal"], focal) and torch.equal(terms["weight"], weight)
    assert torch.allclose(terms["l1"], l1) and torch.equal(loss, focal + terms["l1"])
    _, bterms = DestsegLoss({"focal_gamma": 4.0}, tau=None)(logit, mask, torch.zeros(2, dtype=torch.bool))
    assert torch.equal(bterms["focal"], focal_loss(logit, target, 4.0)) and bterms["weight"].eq(1).all()


def test_ssim():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 32, 32)
    assert ssim_loss(a, a).abs() < 1e-6
    b = (a + 0.3 * torch.randn_like(a)).clamp(0, 1)
    assert 0.1 < float(ssim_loss(a, b)) < 1.5
    assert ssim(a, b, reduce=False).shape == a.shape


def _ssim_by_grouped_conv(img1, img2, value_range=1.0):
    """The official DRAEM formulation: the 2-D window as a grouped 11x11 convolution."""
    import torch.nn.functional as F

    from anogen.detectors.losses import gaussian_window

    window = gaussian_window(11, 1.5, img1.shape[1])

    def filt(x):
        return F.conv2d(x, window, padding=5, groups=img1.shape[1])

    mu1, mu2 = filt(img1), filt(img2)
    s1, s2, s12 = filt(img1 * img1) - mu1**2, filt(img2 * img2) - mu2**2, filt(img1 * img2) - mu1 * mu2
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))).mean()


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 40, 24), (2, 1, 8, 8)])
def test_separable_gaussian_filter_and_ssim_equal_the_grouped_convolution(shape):
    import torch.nn.functional as F

    from anogen.detectors.losses import gaussian_filter, gaussian_window

    torch.manual_seed(1)
    x = torch.rand(*shape)
    by_conv = F.conv2d(x, gaussian_window(11, 1.5, shape[1]), padding=5, groups=shape[1])
    assert torch.allclose(gaussian_filter(x), by_conv, rtol=0, atol=1e-6)
    # the loss and its gradient, on a reconstruction-like pair
    a = x.clone().requires_grad_(True)
    b = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    ours = ssim(a, b)
    (grad_ours,) = torch.autograd.grad(ours, a)
    a2 = x.clone().requires_grad_(True)
    ref = _ssim_by_grouped_conv(a2, b)
    (grad_ref,) = torch.autograd.grad(ref, a2)
    assert abs(ours.item() - ref.item()) < 1e-6
    assert torch.allclose(grad_ours, grad_ref, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- networks


def _conv(cin, cout, k=3, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def _bn(c):
    return 2 * c


def _draem_reference_counts():
    """Parameter counts from the layer list of the published DRAEM code
    (github.com/VitjanZ/DRAEM, model_unet.py): every conv 3x3 with bias + BatchNorm."""
    cb = lambda a, b: _conv(a, b) + _bn(b)  # noqa: E731
    w = 128
    enc = sum(cb(a, b) + cb(b, b) for a, b in [(3, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 8 * w)])
    dec = sum(2 * cb(c, c) + cb(c, c2) for c, c2 in [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)])
    recon = enc + dec + _conv(w, 3)
    w = 64
    enc = sum(
        cb(a, b) + cb(b, b)
        for a, b in [(6, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 8 * w), (8 * w, 8 * w)]
    )
    dec = sum(
        cb(cin, cout) + cb(cout + skip, cout) + cb(cout, cout)
        for cin, cout, skip in [
            (8 * w, 8 * w, 8 * w),
            (8 * w, 4 * w, 8 * w),
            (4 * w, 2 * w, 4 * w),
            (2 * w, w, 2 * w),
            (w, w, w),
        ]
    )
    disc = enc + dec + _conv(w, 2)
    return recon, disc


def test_draem_parameter_count_matches_published_architecture():
    from anogen.detectors.common import count_parameters
    from anogen.detectors.draem.network import DraemNet

    recon_ref, disc_ref = _draem_reference_counts()
    # The numbers: 69,048,579 + 28,374,146 = 97,422,725 ("~97M" in the method notes),
    # counted from VitjanZ/DRAEM model_unet.py (ReconstructiveSubNetwork(3, 3, 128),
    # DiscriminativeSubNetwork(6, 2, 64)).
    assert (recon_ref, disc_ref) == (69_048_579, 28_374_146)
    net = DraemNet(128, 64)
    assert count_parameters(net.recon) == recon_ref
    assert count_parameters(net.disc) == disc_ref
    assert count_parameters(net) == 97_422_725
    small = DraemNet(8, 8)
    rec, logit = small(torch.rand(2, 3, 64, 64))
    assert rec.shape == (2, 3, 64, 64) and logit.shape == (2, 1, 64, 64)


def _basic_block(cin, c):
    n = _conv(cin, c, bias=False) + _bn(c) + _conv(c, c, bias=False) + _bn(c)
    if cin != c:
        n += _conv(cin, c, k=1, bias=False) + _bn(c)
    return n


def test_destseg_parameter_count_matches_published_architecture():
    from torchvision.models import resnet18

    from anogen.detectors.common import count_parameters
    from anogen.detectors.destseg.network import DestsegNet

    # Reference: apple/ml-destseg model/destseg.py + model_utils.py: teacher = timm resnet18
    # features 1-3 (frozen), student = timm resnet18 features 1-4 + decoder of BasicBlock
    # pairs, segmentation net = BasicBlock pair 448->256 + ASPP(256, 256, [6, 12, 18]) +
    # conv3x3-BN-ReLU + conv1x1(256, 1).
    tv = resnet18(weights=None)
    n_tv = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    teacher_ref = n_tv(tv) - n_tv(tv.layer4) - n_tv(tv.fc)
    encoder_ref = n_tv(tv) - n_tv(tv.fc)
    decoder_ref = sum(
        _basic_block(a, b) + _basic_block(b, b) for a, b in [(512, 512), (512, 256), (256, 128), (128, 64)]
    )
    cbr = lambda a, b, k: _conv(a, b, k, bias=False) + _bn(b)  # noqa: E731
    aspp = cbr(256, 256, 1) + 3 * cbr(256, 256, 3) + cbr(4 * 256, 256, 3)
    seg_ref = _basic_block(448, 256) + _basic_block(256, 256) + aspp + cbr(256, 256, 3) + _conv(256, 1, 1)
    assert teacher_ref == 2_782_784 and encoder_ref == 11_176_512
    assert (encoder_ref + decoder_ref, seg_ref) == (24_665_024, 7_706_369)

    net = DestsegNet(zero_init_last=True)
    assert count_parameters(net.teacher) == teacher_ref
    assert count_parameters(net.student) == encoder_ref + decoder_ref
    assert count_parameters(net.segmentation) == seg_ref
    assert count_parameters(net, trainable_only=True) == 32_371_393  # student + segmentation
    assert count_parameters(net) == 35_154_177
    out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 16, 16)


def test_destseg_teacher_weights_from_file(tmp_path, caplog):
    from torchvision.models import resnet18

    from anogen.detectors.destseg.network import DestsegNet
    from anogen.detectors.destseg.trainer import load_teacher_weights
    from anogen.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher_weights"):
        load_teacher_weights(tmp_path / "nope.pth")
    torch.manual_seed(5)
    ref = resnet18(weights=None)
    path = tmp_path / "resnet18-test.pth"
    torch.save(ref.state_dict(), path)
    state, info = load_teacher_weights(path)
    assert info["teacher"] == "imagenet" and info["teacher_weights"]["path"] == str(path)
    net = DestsegNet(zero_init_last=True)
    net.teacher.load_torchvision_state(state)
    assert torch.equal(net.teacher.layers[2][1].conv2.weight, ref.layer3[1].conv2.weight)
