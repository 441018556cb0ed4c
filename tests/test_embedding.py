"""Stage 1 (anogen.embedding): mask-weighted textual inversion on tiny random backbones."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anogen.checkpoint import load_checkpoint
from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.textual_inversion import load_learned_embedding, read_embedding_metadata
from anogen.diffusion.tiny import build_tiny_model
from anogen.embedding import EmbeddingTrainer, learn_embedding, masked_noise_loss
from anogen.embedding.trainer import latent_mask as support_latent_mask
from anogen.embedding.trainer import support_indices
from anogen.errors import ConfigError
from anogen.io import verify_manifest
from anogen.resumable import KILL_ENV

REPO = Path(__file__).resolve().parents[1]
TOKEN = "<anomaly>"


def make_spec(**overrides) -> dict:
    """The plan's embedding spec (``Plan.spec("embedding", ...)``, schema defaults filled) with tiny-run values."""
    from anogen.config import validate_config
    from anogen.plan import Plan

    spec = Plan(validate_config({"data_root": "/data"})).spec("embedding", "cat", "defect")
    spec.update(
        placeholder_token=TOKEN,
        steps=3,
        batch_size=2,
        resolution=64,
        templates=["a photo of a {}", "a close-up photo of the {}", "a photo of a small {}"],
    )
    spec.update(overrides)
    return spec


def make_items(n: int = 3, size: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[size // 3 : size // 3 + 16, size // 2 - 8 * i : size // 2 - 8 * i + 20] = 1
        items.append((image, mask))
    return items


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny models are overhead-bound, and two spinning OpenMP
    threads on a shared 2-core machine only slow every test down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {fam: build_tiny_model(fam, root / f"tiny-{fam}", seed=0, resolution=128) for fam in ("ldm", "sd")}


def _snapshot(backbone) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("vae", "unet", "text_encoder"):
        for k, v in getattr(backbone, name).state_dict().items():
            out[f"{name}.{k}"] = v.detach().clone()
    return out


# ----------------------------------------------------------------------------- loss


def test_masked_noise_loss_ignores_outside_and_matches_mse():
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    pred = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    loss = masked_noise_loss(eps, pred, mask)
    (grad,) = torch.autograd.grad(loss, pred)
    # mean over ALL elements, not over the masked ones
    expected = ((eps - pred) ** 2 * mask).sum() / eps.numel()
    torch.testing.assert_close(loss, expected)
    outside = (1 - mask).expand_as(eps).bool()
    eps2, pred2 = eps.clone(), pred.detach().clone()
    eps2[outside] += 100.0
    pred2[outside] -= 50.0
    pred2.requires_grad_(True)
    loss2 = masked_noise_loss(eps2, pred2, mask)
    (grad2,) = torch.autograd.grad(loss2, pred2)
    assert torch.equal(loss, loss2)
    assert torch.equal(grad, grad2)
    assert float(grad[outside].abs().max()) == 0.0
    torch.testing.assert_close(masked_noise_loss(eps, pred, None), torch.nn.functional.mse_loss(eps, pred))


def test_support_latent_mask_is_the_bilinear_resize_above_zero():
    """Stage 1's latent mask: the pixel mask bilinearly resized (align_corners=False) with every
    value > 0 kept. Shrinking 32 px to 4 cells of 8 px, cell (i, j) samples the pixel position
    8i + 3.5, 8j + 3.5, i.e. the mean of the 2 x 2 pixels at rows/cols 8i + 3, 8i + 4 (by hand):
    one defect pixel there gives 1/4, a one-pixel line through it 1/2 -- both inside."""
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 3, 3] = 1  # 1/4 of cell (0, 0)'s sample
    mask[0, 0, 12, 20] = 1  # row 12 = 8 + 4, col 20 = 16 + 4: 1/4 of cell (1, 2)
    mask[0, 0, :, 11] = 1  # a vertical line at col 11 = 8 + 3: 1/2 of every cell of column 1
    mask[0, 0, 18:30, 26:32] = 1  # a block over rows 19, 20, 27, 28 and cols 27, 28: (2, 3), (3, 3)
    want = torch.zeros(1, 1, 4, 4)
    want[0, 0, 0, 0] = want[0, 0, 1, 2] = 1
    want[0, 0, :, 1] = 1
    want[0, 0, 2:4, 3] = 1
    assert torch.equal(support_latent_mask(mask, (4, 4)), want)
    assert torch.equal(support_latent_mask(torch.zeros(1, 1, 32, 32), (4, 4)), torch.zeros(1, 1, 4, 4))


def test_support_indices_cycle_through_shuffled_epochs():
    idx = support_indices(seed=3, start=0, count=12, n=3)
    for e in range(4):
        assert sorted(idx[3 * e : 3 * e + 3]) == [0, 1, 2]
    assert support_indices(3, 5, 4, 3) == idx[5:9]  # stateless: any window is reproducible


# ----------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_only_placeholder_row_changes(tiny_models, family):
    backbone = load_backbone(str(tiny_models[family]))
    before = _snapshot(backbone)
    weight_name = None
    emb_weight = backbone.input_embeddings().weight
    for k, v in backbone.text_encoder.state_dict().items():
        if v.data_ptr() == emb_weight.data_ptr():
            weight_name = f"text_encoder.{k}"
    assert weight_name is not None

    trainer = EmbeddingTrainer(
        backbone, make_items(), make_spec(learning_rate=0.05), cuda_graph=False, gradient_checkpointing=False
    )
    init = trainer.vector.detach().clone()
    for _ in range(3):
        trainer.step()
    trainer.close()
    after = _snapshot(backbone)

    assert not torch.equal(trainer.vector.detach(), init), "the vector did not move"
    tid = trainer.token_id
    n_old = before[weight_name].shape[0]  # rows before the placeholder was added
    for k, v in before.items():
        if k == weight_name:
            new = after[k]
            assert new.shape[0] >= tid + 1
            keep = [i for i in range(new.shape[0]) if i != tid]
            old_rows = [i for i in keep if i < n_old]
            assert torch.equal(new[old_rows], v[old_rows]), "another embedding row changed"
            assert torch.equal(new[tid], trainer.vector.detach()), "placeholder row != learned vector"
        else:
            assert torch.equal(after[k], v), f"{k} changed"
    # the token is used exactly as learned: the hook is gone and the row carries the vector
    ids = backbone.tokenize([f"a photo of a {TOKEN}"])
    assert (ids == tid).any()


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_mask_loss_ignores_prediction_outside_mask(tiny_models, family):
    """The model's prediction outside the (latent) mask has no effect on loss or gradient.

    Perturbing *pixels* outside the mask is not a valid probe: the VAE encoder (mid-block
    attention) and the UNet have a global receptive field, so every latent depends on every
    pixel. The loss is blind to the error outside the mask, which is what this checks.
    """
    backbone = load_backbone(str(tiny_models[family]))
    trainer = EmbeddingTrainer(backbone, make_items(), make_spec(), cuda_graph=False, gradient_checkpointing=False)
    batch = trainer.sample_batch()
    mask = batch["mask"]
    assert mask is not None and 0 < float(mask.mean()) < 1

    def loss_and_grad(b):
        trainer.vector.grad = None
        loss = trainer.loss_on(b)
        loss.backward()
        return loss.detach().clone(), trainer.vector.grad.detach().clone()

    loss0, grad0 = loss_and_grad(batch)
    assert float(grad0.abs().max()) > 0

    def perturb_outside(module, args, output):
        # multiply the prediction outside the mask by a vector-dependent factor
        factor = 1 + (1 - mask) * (3.0 + trainer.vector.sum())
        output.sample = output.sample * factor
        return output

    handle = backbone.unet.register_forward_hook(perturb_outside)
    try:
        loss1, grad1 = loss_and_grad(batch)
        unmasked = dict(batch, mask=None)
        loss2, grad2 = loss_and_grad(unmasked)
    finally:
        handle.remove()
    assert torch.equal(loss0, loss1)
    assert torch.equal(grad0, grad1)
    loss3, _ = loss_and_grad(unmasked)  # mask_loss: false, no perturbation
    assert float(loss3) > float(loss0)  # the plain MSE also counts the error outside the mask
    assert not torch.equal(loss2, loss3)  # ...so it does see the perturbation there

    # mask_loss: false draws the same batch (same seed) and only drops the weighting
    plain = EmbeddingTrainer(
        load_backbone(str(tiny_models[family])),
        make_items(),
        make_spec(mask_loss=False),
        cuda_graph=False,
        gradient_checkpointing=False,
    )
    b_plain = plain.sample_batch()
    assert b_plain["mask"] is None
    assert torch.equal(b_plain["latents"], batch["latents"]) and torch.equal(b_plain["noise"], batch["noise"])


def test_v_prediction_target_and_unsupported_prediction(tiny_models):
    backbone = load_backbone(str(tiny_models["sd"]))
    backbone.scheduler_config = dict(backbone.scheduler_config, prediction_type="v_prediction")
    trainer = EmbeddingTrainer(
        backbone, make_items(), make_spec(mask_loss=False), cuda_graph=False, gradient_checkpointing=False
    )
    batch = trainer.sample_batch()
    seen = {}

    def keep(module, args, output):
        seen["pred"] = output.sample.detach()

    handle = backbone.unet.register_forward_hook(keep)
    with torch.no_grad():
        loss = trainer.loss_on(batch)
    handle.remove()
    velocity = trainer.scheduler.get_velocity(batch["latents"], batch["noise"], batch["timesteps"])
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(seen["pred"], velocity))

    backbone = load_backbone(str(tiny_models["sd"]))
    backbone.scheduler_config = dict(backbone.scheduler_config, prediction_type="sample")
    with pytest.raises(ConfigError, match="diffusion.model"):
        EmbeddingTrainer(backbone, make_items(), make_spec(), cuda_graph=False, gradient_checkpointing=False)


def test_bad_resolution_and_missing_model(tiny_models, tmp_path):
    backbone = load_backbone(str(tiny_models["sd"]))
    with pytest.raises(ConfigError, match="embedding.resolution"):
        EmbeddingTrainer(
            backbone, make_items(), make_spec(resolution=60), cuda_graph=False, gradient_checkpointing=False
        )
    with pytest.raises(ConfigError, match="diffusion.model"):
        learn_embedding(
            support_items=make_items(),
            model=str(tmp_path / "nope"),
            revision=None,
            spec=make_spec(),
            out_dir=tmp_path / "out",
            key="k",
            inputs={},
            device="cpu",
            checkpoint_every=2,
            cuda_graph=False,
            gradient_checkpointing=False,
        )


# ----------------------------------------------------------------------------- the job


_CHILD = """
import sys, json, numpy as np, torch
torch.set_num_threads({threads})
sys.path.insert(0, {repo!r})
from anogen.embedding import learn_embedding
a = np.load({items!r})
items = [(a[f"i{{k}}"], a[f"m{{k}}"]) for k in range(len(a.files) // 2)]
learn_embedding(support_items=items, model={model!r}, revision=None, spec=json.loads({spec!r}),
                out_dir={out!r}, key="k1", inputs={{"support": "s1"}}, device="cpu", checkpoint_every={every},
                cuda_graph=False, gradient_checkpointing=False)
"""


def _run_job(model, spec, out, items, checkpoint_every=2, cuda_graph=False):
    return learn_embedding(
        support_items=items,
        model=str(model),
        revision=None,
        spec=spec,
        out_dir=out,
        key="k1",
        inputs={"support": "s1"},
        device="cpu",
        checkpoint_every=checkpoint_every,
        cuda_graph=cuda_graph,
        gradient_checkpointing=False,
    )


def test_resume_after_sigkill_is_bit_identical(tiny_models, tmp_path):
    model = tiny_models["sd"]
    spec = make_spec(steps=4)
    items = make_items()

    # uninterrupted reference
    ref = _run_job(model, spec, tmp_path / "ref", items, checkpoint_every=2)
    ref_manifest = verify_manifest(ref)
    assert ref_manifest["extra"]["resumed_from_step"] == 0

    # killed after step 3 (last checkpoint: step 2), in a separate process
    np.savez(
        tmp_path / "items.npz",
        **{f"i{k}": im for k, (im, _) in enumerate(items)},
        **{f"m{k}": m for k, (_, m) in enumerate(items)},
    )
    out = tmp_path / "run"
    code = _CHILD.format(
        threads=torch.get_num_threads(),
        repo=str(REPO),
        items=str(tmp_path / "items.npz"),
        model=str(model),
        spec=json.dumps(spec),
        out=str(out),
        every=2,
    )
    env = dict(os.environ, **{KILL_ENV: "3"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "manifest.json").exists()
    state = load_checkpoint(out / "checkpoints" / "state.pt")
    assert state["step"] == 2

    # resume
    manifest_path = _run_job(model, spec, out, items, checkpoint_every=2)
    manifest = verify_manifest(manifest_path)
    assert manifest["extra"]["resumed_from_step"] == 2
    tok_a, vec_a = load_learned_embedding(tmp_path / "ref" / "learned_embeds.safetensors")
    tok_b, vec_b = load_learned_embedding(out / "learned_embeds.safetensors")
    assert tok_a == tok_b == TOKEN
    assert torch.equal(vec_a, vec_b)
    assert (tmp_path / "ref" / "loss.csv").read_bytes() == (out / "loss.csv").read_bytes()
    assert ref_manifest["files"]["learned_embeds.safetensors"] == manifest["files"]["learned_embeds.safetensors"]

    # outputs
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["lr"]) == pytest.approx(0.005 * 2)
    extra = manifest["extra"]
    assert extra["family"] == "sd" and extra["token"] == TOKEN
    assert extra["effective_lr"] == pytest.approx(0.01)
    assert extra["final_loss"] == pytest.approx(float(rows[-1]["loss"]))
    assert set(manifest["files"]) == {"learned_embeds.safetensors", "loss.csv", "loss.png"}
    assert read_embedding_metadata(out / "learned_embeds.safetensors")["token_id"] == extra["token_id"]
    from PIL import Image

    with Image.open(out / "loss.png") as im:
        assert im.size[0] >= 300

    # diffusers loads the file as a textual inversion
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"), token=TOKEN)
    tid = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid], vec_b[0])


def test_ldm_job_and_backbone_loading(tiny_models, tmp_path):
    model = tiny_models["ldm"]
    spec = make_spec(steps=2, flip_p=1.0, scale_lr=False)
    manifest = verify_manifest(_run_job(model, spec, tmp_path / "ldm", make_items(n=1)))
    assert manifest["extra"]["family"] == "ldm"
    # the spec as the plan hashed it, runtime values (checkpoint_every, cuda_graph) outside it
    assert manifest["spec"] == spec and {"mixed_precision", "resize"} <= set(spec)
    assert not {"checkpoint_every", "cuda_graph", "source"} & set(manifest["spec"])
    assert manifest["extra"]["effective_lr"] == pytest.approx(0.005)
    token, vector = load_learned_embedding(tmp_path / "ldm" / "learned_embeds.safetensors")
    backbone = load_backbone(str(model))
    n_before = backbone.input_embeddings().weight.shape[0]
    tid = backbone.set_token_embedding(token, vector)
    assert tid == manifest["extra"]["token_id"]
    assert torch.equal(backbone.input_embeddings().weight[tid], vector[0])
    assert backbone.input_embeddings().weight.shape[0] >= n_before
    assert (backbone.tokenize([f"a photo of a {token}"]) == tid).any()
    state = load_checkpoint(tmp_path / "ldm" / "checkpoints" / "state.pt")
    assert state["step"] == 2 and torch.equal(state["vector"].reshape(1, -1), vector)

    # a rerun of a completed job (manifest present) starts from step 0 and reproduces it
    again = verify_manifest(_run_job(model, spec, tmp_path / "ldm", make_items(n=1)))
    assert again["extra"]["resumed_from_step"] == 0
    assert again["files"] == manifest["files"]
