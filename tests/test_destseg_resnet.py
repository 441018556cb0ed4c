"""anogen's ResNet18 parts equal torchvision's, weights, arithmetic and random stream alike;
the clipped dilated convolution of DeSTSeg's ASPP equals the full one."""

import subprocess
import sys

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock as TorchvisionBlock

from anogen.detectors.destseg.network import SameDilatedConv2d, SegmentationNet
from anogen.detectors.destseg.resnet import BasicBlock, ResNet18Trunk, make_layer


def test_trunk_draws_the_same_weights_and_random_stream_as_torchvision():
    torch.manual_seed(11)
    ref = resnet18(weights=None)
    after_ref = torch.rand(4)
    torch.manual_seed(11)
    ours = ResNet18Trunk()
    after_ours = torch.rand(4)
    expected = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    got = ours.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    # the classifier torchvision draws and anogen drops: what is drawn next is the same
    assert torch.equal(after_ours, after_ref)


def test_trunk_forward_equals_torchvision_in_train_and_eval_mode():
    torch.manual_seed(2)
    ref = resnet18(weights=None)
    ours = ResNet18Trunk()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    x = torch.rand(2, 3, 64, 64)
    for train in (True, False):
        ref.train(train)
        ours.train(train)
        y_ref = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        y = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.maxpool(ours.relu(ours.bn1(ours.conv1(x))))))))
        assert torch.equal(y, y_ref)


def test_block_with_shortcut_equals_torchvision():
    torch.manual_seed(4)
    ref_short = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, bias=False), torch.nn.BatchNorm2d(16))
    ref = TorchvisionBlock(8, 16, 1, ref_short)
    torch.manual_seed(4)
    (ours,) = make_layer(8, 16, blocks=1)
    assert isinstance(ours, BasicBlock)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.rand(2, 8, 12, 12)
    assert torch.equal(ours(x), ref(x))


def test_the_detectors_import_neither_torchvision_nor_dynamo():
    """Why this module exists: torchvision pulls in torch._dynamo, about 2 s per job."""
    code = (
        "import sys, anogen.detectors, anogen.detectors.destseg, anogen.evaluation.evaluate; "
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("size", [(16, 16), (12, 40), (18, 18), (19, 7), (64, 64)])
@pytest.mark.parametrize("dilation", [6, 18])
def test_same_dilated_conv_equals_the_full_convolution(size, dilation):
    """Taps that only read the zero padding are skipped: same output, same gradients (the
    skipped taps' are zero), on maps smaller, as large as and larger than the dilation."""
    torch.manual_seed(0)
    ours = SameDilatedConv2d(8, 6, 3, dilation)
    full = torch.nn.Conv2d(8, 6, 3, padding=dilation, dilation=dilation, bias=False)
    full.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, *size, requires_grad=True)
    y, y_full = ours(x), full(x)
    assert y.shape == y_full.shape and torch.allclose(y, y_full, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, ours.weight), g)
    gx_full, gw_full = torch.autograd.grad(y_full, (x, full.weight), g)
    assert torch.allclose(gx, gx_full, rtol=1e-5, atol=1e-5) and torch.allclose(gw, gw_full, rtol=1e-5, atol=1e-4)
    if min(size) <= dilation:  # some taps never see a pixel: their gradient is exactly zero
        assert (gw_full[:, :, 0] == 0).all() == (size[0] <= dilation)


def test_the_segmentation_net_uses_the_clipped_convolution_in_its_dilated_branches():
    net = SegmentationNet(448)
    dilated = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.dilation != (1, 1)]
    assert [m.dilation[0] for m in dilated] == [6, 12, 18]
    assert all(isinstance(m, SameDilatedConv2d) for m in dilated)
