"""Blended latent diffusion (Eq. 7): timestep alignment, paste-back, per-image determinism,
classifier-free guidance and the latent box mask."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.tiny import build_tiny_model
from anogen.generation.boxes import Box
from anogen.generation.inpaint import from_uint8, inpaint, latent_mask, to_uint8

RES = 64
STEPS = 3
PLAIN = {"eta": 0.0, "paste_back": False, "mixed_precision": "no"}  # the schema's eta, paste_back


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models are overhead-bound: one intra-op thread is as fast on an idle machine and
    # several times faster on a busy one than two.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module", params=["ldm", "sd"])
def setup(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.getbasetemp() / f"gen-tiny-{family}-{RES}"
    if not folder.exists():
        build_tiny_model(family, folder, seed=0, resolution=RES)
    backbone = load_backbone(str(folder))
    torch.manual_seed(0)
    backbone.set_token_embedding("<anomaly>", torch.randn(backbone.embedding_dim))
    with torch.no_grad():
        prompt = backbone.encode_text(backbone.tokenize(["<anomaly>"]))
        uncond = backbone.encode_text(backbone.tokenize([""]))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, RES, RES, 3), dtype=np.uint8)
    boxes = [Box(32, 30, 24, 18, 0.0), Box(20, 40, 20, 30, 35.0), Box(44, 24, 16, 16, 120.0)]
    masks = torch.from_numpy(np.stack([b.to_mask(RES, RES) for b in boxes]))[:, None].float()
    return backbone, prompt, uncond, images, masks


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_eq7_latent_identity_and_timestep_alignment(setup):
    backbone, prompt, uncond, images, masks = setup
    pixels = from_uint8(images)
    out, trace = inpaint(
        backbone, pixels, masks, prompt, uncond, _gens([1, 2, 3]), STEPS, 5.0, **PLAIN, return_trace=True
    )
    assert out.shape == (3, 3, RES, RES) and 0 <= out.min() and out.max() <= 1
    z0, m, abar, ts = trace["z0"], trace["mask"], trace["alphas_cumprod"], trace["timesteps"]
    keep = 1 - m
    assert m.shape == (3, 1, RES // 8, RES // 8) and m.sum() > 0 and set(m.unique().tolist()) <= {0.0, 1.0}

    def q(t, eps):
        return float(abar[t].sqrt()) * z0 + float((1 - abar[t]).sqrt()) * eps

    # Replay the documented draw order from fresh generators (eta = 0: no variance noise).
    replay = _gens([1, 2, 3])

    def draw():
        return torch.stack([torch.randn(z0.shape[1:], generator=g) for g in replay])

    noise0 = draw()
    assert torch.allclose(trace["initial"], q(ts[0], noise0) * keep + noise0 * m, atol=1e-6)
    for i, step in enumerate(trace["steps"]):
        last = i == len(ts) - 1
        assert step["t"] == ts[i]
        if last:
            assert step["target_t"] is None  # noise level 0
            assert torch.equal(step["reference"], z0)
        else:
            assert step["target_t"] == ts[i + 1]  # the level DDIM's output z' is at
            eps = draw()
            assert torch.equal(step["noise"], eps)
            assert torch.allclose(step["reference"], q(ts[i + 1], eps), atol=1e-6)
        # Eq. 7: outside the box the (noised) reference, inside the denoised latent, exactly.
        assert torch.equal(step["latent"] * keep, step["reference"] * keep)
        assert torch.equal(step["latent"] * m, step["denoised"] * m)
    # Without paste-back the last latent equals z_n (the normal image's latent) outside the box.
    final = trace["steps"][-1]["latent"]
    assert torch.equal(final * keep, z0 * keep)
    assert not torch.allclose(final * m, z0 * m)
    # ... and the output is the decoding of that latent.
    with torch.no_grad():
        assert torch.allclose(backbone.decode_latents(final), out, atol=1e-6)


def test_paste_back_keeps_original_pixels_exactly(setup):
    backbone, prompt, uncond, images, masks = setup
    out = inpaint(
        backbone,
        from_uint8(images),
        masks,
        prompt,
        uncond,
        _gens([4, 5, 6]),
        STEPS,
        5.0,
        **dict(PLAIN, paste_back=True),
    )
    result = to_uint8(out)
    outside = masks[:, 0].numpy() == 0
    assert np.array_equal(result[outside], images[outside])
    assert not np.array_equal(result[~outside], images[~outside])


def test_same_seed_identical_and_alone_equals_batched(setup):
    backbone, prompt, uncond, images, masks = setup
    pixels = from_uint8(images)
    # eta > 0 also exercises the per-image variance noise
    batched = inpaint(backbone, pixels, masks, prompt, uncond, _gens([7, 8, 9]), STEPS, 5.0, **dict(PLAIN, eta=0.5))
    again = inpaint(backbone, pixels, masks, prompt, uncond, _gens([7, 8, 9]), STEPS, 5.0, **dict(PLAIN, eta=0.5))
    assert torch.equal(batched, again)
    alone = inpaint(backbone, pixels[1:2], masks[1:2], prompt, uncond, _gens([8]), STEPS, 5.0, **dict(PLAIN, eta=0.5))
    assert (alone - batched[1:2]).abs().max() < 1e-4
    assert np.abs(to_uint8(alone).astype(int) - to_uint8(batched[1:2]).astype(int)).max() <= 1
    other = inpaint(backbone, pixels[1:2], masks[1:2], prompt, uncond, _gens([99]), STEPS, 5.0, **dict(PLAIN, eta=0.5))
    assert not torch.allclose(other, alone)


def test_guidance_at_or_below_one_is_off(setup):
    """diffusers' convention: classifier-free guidance only for guidance_scale > 1. Below 1 there
    is no unconditional pass, so 0.5 samples exactly what 1.0 does; above 1 guidance changes it."""
    backbone, prompt, uncond, images, masks = setup
    pixels = from_uint8(images)
    calls = []
    hook = backbone.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        one = inpaint(backbone, pixels, masks, prompt, uncond, _gens([11, 12, 13]), STEPS, 1.0, **PLAIN)
        half = inpaint(backbone, pixels, masks, prompt, uncond, _gens([11, 12, 13]), STEPS, 0.5, **PLAIN)
        assert calls == [3] * (2 * STEPS)  # one conditional pass per step, no unconditional half
        two = inpaint(backbone, pixels, masks, prompt, uncond, _gens([11, 12, 13]), STEPS, 2.0, **PLAIN)
        assert calls[2 * STEPS :] == [6] * STEPS  # unconditional and conditional together
    finally:
        hook.remove()
    assert torch.equal(half, one)
    assert not torch.allclose(two, one, atol=1e-4)


# ----------------------------------------------------------------------------- guidance, latent mask

E_U = (0.5, 0.2)  # the stand-in UNet's unconditional prediction: 0.5 z + 0.2
E_C = (-0.3, -0.4)  # and its conditional one: -0.3 z - 0.4
UNCOND, PROMPT = torch.zeros(1, 4, 8), torch.ones(1, 4, 8)  # stand-in text encodings


class _KnownHalves:
    """UNet stand-in: a row's noise prediction depends only on its input and on which text
    (the empty prompt or the anomaly prompt) it is conditioned on, with known coefficients."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, z, t, encoder_hidden_states):
        self.batch_sizes.append(z.shape[0])
        rows = []
        for zi, text in zip(z, encoder_hidden_states, strict=True):
            if torch.equal(text, UNCOND[0]):
                rows.append(E_U[0] * zi + E_U[1])
            elif torch.equal(text, PROMPT[0]):
                rows.append(E_C[0] * zi + E_C[1])
            else:
                raise AssertionError("a row conditioned on neither the empty nor the anomaly prompt")
        return SimpleNamespace(sample=torch.stack(rows))


class _StandInBackbone:
    """No model: 8 x 8 average pooling as the encoder, the stand-in UNet, diffusers' DDIM
    scheduler whose ``step`` records the noise prediction and latent it is given."""

    device, resolution, scaling_factor = "cpu", 32, 1.0

    def __init__(self):
        self.unet = _KnownHalves()
        self.vae = SimpleNamespace(
            encode=lambda x: SimpleNamespace(latent_dist=SimpleNamespace(mean=F.avg_pool2d(x, 8)))
        )
        self.steps = []

    def ddim_scheduler(self):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(num_train_timesteps=1000)
        step = scheduler.step

        def record(model_output, t, sample, **kw):
            self.steps.append((model_output.clone(), sample.clone()))
            return step(model_output, t, sample, **kw)

        scheduler.step = record
        return scheduler

    def decode_latents(self, z):
        return F.interpolate(z, scale_factor=8).clamp(0, 1)


def _recorded_noise(scale: float, n: int = 2):
    backbone = _StandInBackbone()
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(n, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    inpaint(backbone, images, masks, PROMPT, UNCOND, _gens(range(n)), STEPS, scale, **PLAIN)
    assert len(backbone.steps) == STEPS
    return backbone.steps, backbone.unet.batch_sizes


def test_guided_noise_is_unconditional_plus_scale_times_difference():
    """Classifier-free guidance: e_u + s (e_c - e_u). With s = 3 and the stand-in's
    e_u = 0.5 z + 0.2, e_c = -0.3 z - 0.4 that is -2 e_u + 3 e_c = -1.9 z - 1.6 (by hand):
    swapping the halves would give 2.1 z + 1.4, building on e_c -2.7 z - 2.2."""
    steps, batch_sizes = _recorded_noise(3.0)
    assert batch_sizes == [4] * STEPS  # one pass over both halves per step
    for eps, z in steps:
        torch.testing.assert_close(eps, -1.9 * z - 1.6, rtol=1e-5, atol=1e-5)
    # at or below 1 there is no guidance: the conditional prediction alone, in one pass of n rows
    for scale in (1.0, 0.5):
        steps, batch_sizes = _recorded_noise(scale)
        assert batch_sizes == [2] * STEPS
        for eps, z in steps:
            torch.testing.assert_close(eps, -0.3 * z - 0.4, rtol=1e-5, atol=1e-5)


def _pixel_masks(*boxes_per_image, size=32):
    """N,1,size,size masks, each the union of (row0, row1, col0, col1) boxes (ends exclusive)."""
    masks = torch.zeros(len(boxes_per_image), 1, size, size)
    for i, boxes in enumerate(boxes_per_image):
        for r0, r1, c0, c1 in boxes:
            masks[i, 0, r0:r1, c0:c1] = 1
    return masks


def test_latent_box_mask_half_cell_rule_with_any_overlap_fallback():
    """Stage 2's latent box mask, 32 px -> 4 x 4 cells of 8 x 8 px: a cell is inside when at least
    half of it is; an image left without any cell by that rule takes every cell it overlaps."""
    masks = _pixel_masks(
        [(0, 8, 0, 12)],  # cell (0,0) full, cell (0,1) half (32 of 64 px): both inside
        [(8, 16, 0, 11)],  # cell (1,0) full, cell (1,1) 3/8: only (1,0)
        [(4, 12, 4, 12)],  # a quarter of each of 4 cells: none reaches half -> all 4 by overlap
        [(0, 16, 5, 6)],  # a thin box, 1 px wide (1/8 of a cell): the 2 cells it overlaps
        [(16, 32, 16, 20), (30, 32, 0, 2)],  # (2,2),(3,2) half each; the 1/16 corner is dropped
    )
    want = torch.zeros(5, 1, 4, 4)
    want[0, 0, 0, 0:2] = 1
    want[1, 0, 1, 0] = 1
    want[2, 0, 0:2, 0:2] = 1
    want[3, 0, 0:2, 0] = 1
    want[4, 0, 2:4, 2] = 1
    assert torch.equal(latent_mask(masks, (4, 4)), want)
    # each image on its own gives the same cells: the fallback is decided per image
    for i in range(5):
        assert torch.equal(latent_mask(masks[i : i + 1], (4, 4)), want[i : i + 1])
