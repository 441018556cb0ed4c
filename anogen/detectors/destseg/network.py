"""DeSTSeg (Zhang et al., CVPR 2023): teacher, denoising student and segmentation network.

Published layer plan (ResNet18 parts: ``resnet``, torchvision's ``resnet18`` re-implemented exactly):

Teacher: an ImageNet ResNet18 cut after ``layer3`` (features of layer1/2/3: 64, 128 and
    256 channels at 1/4, 1/8 and 1/16 of the input side); frozen, always in eval mode.
Student: a randomly initialised full ResNet18 encoder (through ``layer4``, no pooling/fc;
    with ``zero_init_last`` (the schema's default) the last BatchNorm gamma of every residual block starts
    at 0, as timm's ``resnet18(pretrained=False)`` used by the official code initialises it;
    torchvision's default leaves it at 1) followed by a decoder of ResNet ``BasicBlock`` pairs: 512->512 at 1/32, then bilinear
    resizing to the teacher's layer3/2/1 sizes and 512->256, 256->128, 128->64 (the first
    block of each pair has a 1x1 conv + BN shortcut when the width changes). Outputs the
    three decoder levels matching the teacher's.
Segmentation network: input = for each level ``-(t_hat * s_hat)`` (the element-wise product
    of the L2-normalised teacher and student features, computed on the *augmented* image),
    resized to 1/4 of the input side and concatenated (64+128+256 = 448 channels);
    ``res``: two BasicBlocks 448->256; ``head``: ASPP (global pooling branch + dilations
    6, 12, 18, each 1x1/3x3 conv + BN + ReLU, fused by a 3x3 conv + BN + ReLU), a 3x3 conv +
    BN + ReLU and a 1x1 conv to one anomaly logit. The anomaly probability is its sigmoid.

Input images are [0, 1] RGB; ImageNet normalisation happens inside ``DestsegNet``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anogen.detectors.destseg.resnet import ResNet18Trunk, kaiming_init, make_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class ResNet18Features(nn.Module):
    """torchvision's ResNet18 without avgpool/fc, cut after ``last_layer``."""

    def __init__(self, last_layer: int = 4):
        super().__init__()
        net = ResNet18Trunk()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layers = nn.ModuleList([getattr(net, f"layer{i}") for i in range(1, last_layer + 1)])
        self.last_layer = last_layer

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats

    def load_torchvision_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load ResNet18 weights named as torchvision's ``resnet18`` names them (timm's
        ``resnet18`` uses the very same names; see ``teacher_state_layout`` for the other
        layouts). Extra keys such as ``fc.*`` or ``layer4.*`` are ignored; BatchNorm
        ``num_batches_tracked`` counters may be absent (they never affect a frozen net)."""
        mapped = {}
        for key, value in state.items():
            head = key.split(".", 1)[0]
            if head.startswith("layer"):
                idx = int(head[5:])
                if idx > self.last_layer:
                    continue
                mapped[f"layers.{idx - 1}.{key.split('.', 1)[1]}"] = value
            elif head in ("conv1", "bn1"):
                mapped[key] = value
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise KeyError(f"ResNet18 weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def zero_init_last(self) -> None:
        """timm's ``zero_init_last``: the second BatchNorm gamma of each BasicBlock = 0."""
        for layer in self.layers:
            for block in layer:
                nn.init.zeros_(block.bn2.weight)


# DeSTSeg checkpoints (official and the AnoGen fork) hold the teacher as
# ``teacher_net.encoder.*`` (timm ``features_only`` model: same names as resnet18).
DESTSEG_TEACHER_PREFIX = "teacher_net.encoder."


def teacher_state_layout(state: dict) -> tuple[str, dict[str, torch.Tensor]]:
    """Recognise a ResNet18 checkpoint layout; return ``(layout, state with plain names)``.

    - ``"torchvision"``: plain names (``conv1.weight``, ``layer1.0.bn2.running_var``,
      ``fc.bias``), as saved by torchvision's ``resnet18`` and equally by timm's ``resnet18``
      (timm 0.6.12 names every tensor alike and its default ``resnet18`` weights are
      torchvision's ``resnet18-5c106cde.pth``), with or without ``num_batches_tracked``;
    - ``"timm-checkpoint"``: a timm training checkpoint, ``{"state_dict_ema" | "state_dict":
      {...}}`` and/or ``module.``-prefixed names (the EMA weights are preferred, as timm's
      ``load_checkpoint`` does);
    - ``"destseg-checkpoint"``: a whole DeSTSeg model (``teacher_net.encoder.*``).
    """
    layout = "torchvision"
    if isinstance(state, dict):
        for wrapper in ("state_dict_ema", "state_dict", "model"):
            inner = state.get(wrapper)
            if isinstance(inner, dict) and inner:
                state, layout = inner, ("timm-checkpoint" if wrapper != "model" else layout)
                break
    if not isinstance(state, dict) or not state:
        raise KeyError("the file does not hold a ResNet18 state dict")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state, layout = {k[len("module.") :]: v for k, v in state.items()}, "timm-checkpoint"
    if any(k.startswith(DESTSEG_TEACHER_PREFIX) for k in state):
        n = len(DESTSEG_TEACHER_PREFIX)
        state = {k[n:]: v for k, v in state.items() if k.startswith(DESTSEG_TEACHER_PREFIX)}
        layout = "destseg-checkpoint"
    return layout, state


class StudentNet(nn.Module):
    def __init__(self, zero_init_last: bool):
        super().__init__()
        self.decoder4 = make_layer(512, 512)
        self.decoder3 = make_layer(512, 256)
        self.decoder2 = make_layer(256, 128)
        self.decoder1 = make_layer(128, 64)
        kaiming_init(self)
        self.encoder = ResNet18Features(4)  # torchvision's own (kaiming) initialisation
        if zero_init_last:
            self.encoder.zero_init_last()

    def forward(self, x: torch.Tensor, sizes: list[torch.Size]) -> list[torch.Tensor]:
        """``sizes``: spatial sizes of the teacher's level 1, 2, 3 features."""
        x4 = self.encoder(x)[-1]
        b4 = self.decoder4(x4)
        b3 = self.decoder3(F.interpolate(b4, size=sizes[2], mode="bilinear", align_corners=False))
        b2 = self.decoder2(F.interpolate(b3, size=sizes[1], mode="bilinear", align_corners=False))
        b1 = self.decoder1(F.interpolate(b2, size=sizes[0], mode="bilinear", align_corners=False))
        return [b1, b2, b3]


class SameDilatedConv2d(nn.Conv2d):
    """A stride-1 dilated convolution with "same" zero padding (``dilation * (k // 2)``) that
    skips the kernel taps which, on the input at hand, only ever read the padding.

    With dilation ``d`` a tap ``i`` rows off the centre reads ``i * d`` rows away: on a map of
    ``h`` rows it never reaches a pixel once ``i * d >= h``. ASPP's rate-18 branch on DeSTSeg's
    16x16 maps (64 px images, the demo's) is such a case: only its centre tap ever sees a
    pixel; skipping the other eight makes a segmentation step 1.05x faster on a CPU core
    (bench/bench_job_overheads.py). Dropping taps that multiply zeros leaves the sums unchanged
    (up to float round-off: terms are added in another order) and their gradients are zero
    either way; the parameter is the whole kernel, so checkpoints and weight decay see it as
    before. On maps large enough for every tap (256 px images) this is ``nn.Conv2d``."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int, bias: bool = False):
        if k % 2 != 1:
            raise ValueError(f"SameDilatedConv2d needs an odd kernel, got {k}")
        super().__init__(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        rh, rw = min(kh // 2, (x.shape[-2] - 1) // dh), min(kw // 2, (x.shape[-1] - 1) // dw)
        if (rh, rw) == (kh // 2, kw // 2):
            return super().forward(x)
        weight = self.weight[:, :, kh // 2 - rh : kh // 2 + rh + 1, kw // 2 - rw : kw // 2 + rw + 1]
        return F.conv2d(x, weight, self.bias, padding=(rh * dh, rw * dw), dilation=self.dilation)


def _cbr(cin: int, cout: int, k: int, padding: int = 0, dilation: int = 1) -> nn.Sequential:
    if dilation > 1:
        if padding != dilation * (k // 2):
            raise ValueError(f"a dilated conv here pads by dilation * (k // 2), got padding {padding}")
        conv = SameDilatedConv2d(cin, cout, k, dilation)
    else:
        conv = nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.pool_branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), _cbr(cin, cout, 1))
        self.branches = nn.ModuleList([_cbr(cin, cout, 1) if r == 1 else _cbr(cin, cout, 3, r, r) for r in rates])
        self.fuse = _cbr((1 + len(rates)) * cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool_branch(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([pooled] + [b(x) for b in self.branches], dim=1))


class SegmentationNet(nn.Module):
    def __init__(self, inplanes: int = 448):
        super().__init__()
        self.res = make_layer(inplanes, 256)
        kaiming_init(self.res)
        self.head = nn.Sequential(
            ASPP(256, 256),
            _cbr(256, 256, 3, 1),
            nn.Conv2d(256, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly logit at the input's resolution (1/4 of the image)."""
        return self.head(self.res(x))


class DestsegNet(nn.Module):
    def __init__(self, zero_init_last: bool):
        super().__init__()
        self.teacher = ResNet18Features(3)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.student = StudentNet(zero_init_last)
        self.segmentation = SegmentationNet(448)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DestsegNet:
        super().train(mode)
        self.teacher.eval()  # frozen BatchNorm statistics, always
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The trainers switch student and segmentation net between train and eval one by
        # one, never the whole model, so the teacher is put in eval mode here (as the
        # official TeacherNet.forward does): its BatchNorm uses and keeps the ImageNet stats.
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            return [l2_normalize(f.detach()) for f in self.teacher(self.normalize(x))]

    def student_features(self, x: torch.Tensor, sizes: list[torch.Size]) -> list[torch.Tensor]:
        return [l2_normalize(f) for f in self.student(self.normalize(x), sizes)]

    @staticmethod
    def distance_maps(t: list[torch.Tensor], s: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level ``1 - cos(t, s)`` (N,1,h,w)."""
        return [1.0 - torch.sum(a * b, dim=1, keepdim=True) for a, b in zip(t, s)]

    def segment(self, t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
        size = s[0].shape[2:]
        x = torch.cat(
            [F.interpolate(-a * b, size=size, mode="bilinear", align_corners=False) for a, b in zip(t, s)],
            dim=1,
        )
        return self.segmentation(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: the anomaly logit at 1/4 of the input side (N,1,H/4,W/4)."""
        t = self.teacher_features(x)
        s = self.student_features(x, [f.shape[2:] for f in t])
        return self.segment(t, s)
