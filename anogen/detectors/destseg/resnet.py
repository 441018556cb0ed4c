"""ResNet18 building blocks for DeSTSeg, in plain torch (no torchvision import at run time).

Why not ``torchvision.models``: importing torchvision imports ``torchvision.ops``, which
imports ``torch._dynamo`` (about 2 s on a CPU core). Every evaluation job paid that for a
network of four kinds of layer. These modules reproduce torchvision's ``resnet18`` and
``BasicBlock`` exactly:
- the same attribute names, so torchvision / timm ResNet18 weights and anogen's own
  checkpoints load unchanged (``conv1``, ``bn1``, ``layer3.1.conv2``, ``downsample.0``, ...);
- the same forward arithmetic, op for op;
- the same random initialisation, *draw for draw*: modules are created in torchvision's
  order (a block's shortcut before the block), the classifier ``fc`` is created and then
  dropped, and the convolutions are re-initialised (kaiming normal, fan out) in torchvision's
  module order. After ``torch.manual_seed(s)`` the weights equal torchvision's
  ``resnet18(weights=None)`` bit for bit, and so does everything initialised after them
  (tests/test_destseg_resnet.py compares both).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet18Trunk", "kaiming_init", "make_layer"]

# torchvision's resnet18: (planes, stride) of layer1..layer4, two BasicBlocks each
RESNET18_LAYERS = ((64, 1), (128, 2), (256, 2), (512, 2))
IMAGENET_CLASSES = 1000


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN (+ ReLU) with an identity or ``downsample`` shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def make_layer(inplanes: int, planes: int, blocks: int = 2, stride: int = 1) -> nn.Sequential:
    """``blocks`` BasicBlocks; the first gets a 1x1 conv + BN shortcut when the shape changes.
    The shortcut is created before the block, as torchvision does (it draws its random
    weights first)."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def kaiming_init(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: convolutions kaiming normal (fan out, ReLU),
    normalisation layers weight 1 and bias 0, in ``module.modules()`` order."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet18Trunk(nn.Module):
    """torchvision's ``resnet18(weights=None)`` without avgpool and fc: stem + layer1..4."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for index, (planes, stride) in enumerate(RESNET18_LAYERS, start=1):
            setattr(self, f"layer{index}", make_layer(inplanes, planes, 2, stride))
            inplanes = planes
        # torchvision creates its classifier here; creating (and dropping) one keeps the
        # random stream of everything initialised after this trunk the same as with torchvision
        nn.Linear(inplanes, IMAGENET_CLASSES)
        kaiming_init(self)
