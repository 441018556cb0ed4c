"""Stage 3 speed settings: channels_last computes the same training step; worker counts."""

import pytest
import torch

from anogen.config import validate_config
from anogen.detectors import speed
from anogen.detectors.draem.trainer import DraemTrainer


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(n, 3, size, size, generator=g),
        "clean": torch.rand(n, 3, size, size, generator=g),
        "mask": (torch.rand(n, 1, size, size, generator=g) > 0.8).float(),
        "weak": torch.tensor([True, False] * (n // 2)),
        "anomalous": torch.ones(n, dtype=torch.bool),
        "kind": torch.ones(n, dtype=torch.int64),
        "step": torch.tensor(0),
    }


@pytest.fixture
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_channels_last_draem_step_is_the_same_function(_float64):
    """In float64 a DRAEM step in channels_last gives the plain step's loss and gradients to
    ~1e-10. (In float32 the gradients of this randomly initialised network differ by up to
    ~20% in norm from round-off alone -- BatchNorm and SSIM at init are ill-conditioned --
    so float32 agreement is not a meaningful test of the layout change.)"""
    cfg = validate_config({"data_root": "x"})["detectors"]["draem"]
    cfg.update(epochs=2, batch_size=4, recon_base_width=8, disc_base_width=8)
    plain = DraemTrainer(dict(cfg), seed=0, tau=0.9, device="cpu", n_train=8, mixed_precision="no")
    fast = DraemTrainer(dict(cfg), seed=0, tau=0.9, device="cpu", n_train=8, mixed_precision="no")
    fast.model.load_state_dict(plain.model.state_dict())
    speed.to_channels_last(fast)
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dtype == torch.float64
    b = {k: v.double() if v.is_floating_point() else v for k, v in _batch().items()}
    lp = float(plain.train_step(b, 0)["loss"])
    lf = float(fast.train_step(b, 0)["loss"])
    assert lf == pytest.approx(lp, rel=1e-10)
    n = 0
    for (name, p), q in zip(plain.model.named_parameters(), fast.model.parameters()):
        if p.grad is None or name.endswith("bias"):  # biases before BatchNorm: gradient ~0
            continue
        n += 1
        assert float((q.grad - p.grad).norm()) <= 1e-8 * float(p.grad.norm()), name
    assert n > 10


def test_channels_last_only_on_cuda_and_switchable(monkeypatch):
    assert not speed.use_channels_last("cpu")
    assert speed.use_channels_last("cuda")
    monkeypatch.setenv(speed.CHANNELS_LAST_ENV, "0")
    assert not speed.use_channels_last("cuda")


def test_default_workers(monkeypatch):
    monkeypatch.delenv(speed.WORKERS_ENV, raising=False)
    assert speed._default_workers("cpu") == 0
    monkeypatch.setattr(speed, "_usable_cpus", lambda: 64)
    monkeypatch.setenv("ANOGEN_GPU_SLOTS", "4")
    assert speed._default_workers("cuda") == 15  # 64 CPUs / 4 slots - 1 for the trainer
    monkeypatch.setenv("ANOGEN_GPU_SLOTS", "1")
    assert speed._default_workers("cuda") == speed.MAX_WORKERS
    monkeypatch.setenv(speed.WORKERS_ENV, "3")
    assert speed._default_workers("cuda") == 3 and speed._default_workers("cpu") == 3
