"""Stage 2 speed switches (channels_last, compiled UNet) compute what the plain path computes."""

import numpy as np
import pytest
import torch

from anogen.diffusion.backbone import load_backbone
from anogen.diffusion.tiny import build_tiny_model
from anogen.generation.boxes import Box
from anogen.generation.inpaint import from_uint8, inpaint, prepare_for_inference, to_uint8

RES = 64
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / f"speed-tiny-ldm-{RES}"
    if not folder.exists():
        build_tiny_model("ldm", folder, seed=0, resolution=RES)
    return folder


def _run(folder, wrap_unet=None, **switches):
    backbone = load_backbone(str(folder))
    prepare_for_inference(backbone, "auto", **{"channels_last": False, "compile": False, **switches})
    if wrap_unet is not None:
        backbone.unet = wrap_unet(backbone.unet)
    torch.manual_seed(0)
    backbone.set_token_embedding("<anomaly>", torch.randn(backbone.embedding_dim))
    with torch.no_grad():
        prompt = backbone.encode_text(backbone.tokenize(["<anomaly>"]))
        uncond = backbone.encode_text(backbone.tokenize([""]))
    rng = np.random.default_rng(0)
    images = from_uint8(rng.integers(0, 256, (2, RES, RES, 3), dtype=np.uint8))
    boxes = [Box(32, 30, 24, 18, 0.0), Box(20, 40, 20, 30, 35.0)]
    masks = torch.from_numpy(np.stack([b.to_mask(RES, RES) for b in boxes]))[:, None].float()
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    return backbone, inpaint(
        backbone, images, masks, prompt, uncond, gens, STEPS, 5.0, eta=0.5, paste_back=False, mixed_precision="auto"
    )


def test_channels_last_equals_plain_within_round_off(model):
    _, plain = _run(model)
    backbone, fast = _run(model, channels_last=True)
    assert backbone.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert (fast - plain).abs().max() < 1e-4
    assert np.abs(to_uint8(fast).astype(int) - to_uint8(plain).astype(int)).max() <= 1


def test_compiled_unet_equals_plain(model):
    """The compile wiring (0-d tensor timesteps, one graph) with the eager backend on CPU;
    inductor itself is exercised by bench/gpu_check.py on a GPU."""
    _, plain = _run(model)
    backbone, fast = _run(model, compile=True, compile_backend="eager")
    assert getattr(backbone, "unet_compiled", False)
    assert (fast - plain).abs().max() < 1e-5


def test_compiled_unet_gets_device_timesteps_built_once(model):
    """One int64 tensor of every timestep, made on the device once per call: each UNet call
    gets a 0-d view of it (no host-to-device copy per step) and one graph serves them all."""
    import torch._dynamo

    seen = []
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    class Spy:
        def __init__(self, unet):
            self.unet = unet

        def __getattr__(self, name):
            return getattr(self.unet, name)

        def __call__(self, sample, t, **kwargs):
            seen.append(t)
            return self.unet(sample, t, **kwargs)

    _run(model, wrap_unet=Spy, compile=True, compile_backend="eager")
    assert len(seen) == STEPS and all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in seen)
    assert len({t.untyped_storage().data_ptr() for t in seen}) == 1  # views of one tensor
    assert [t.storage_offset() for t in seen] == list(range(STEPS))
    assert [int(t) for t in seen] == sorted((int(t) for t in seen), reverse=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
