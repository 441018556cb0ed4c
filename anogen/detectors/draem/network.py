"""DRAEM's two sub-networks (Zavrtanik et al., ICCV 2021), with configurable widths.

Layer plan of the published model (base width ``w``; every "conv" is 3x3, padding 1,
followed by BatchNorm and ReLU; downsampling by 2x2 max-pooling, upsampling by bilinear
x2 with ``align_corners=True`` followed by a conv):

Reconstructive sub-network (an autoencoder without skip connections), ``w = 128``:
    encoder: 5 stages of two convs with widths w, 2w, 4w, 8w, 8w (pool between stages);
    decoder: 4 times [upsample + conv(c, c); conv(c, c); conv(c, c')] with
    (c, c') = (8w, 4w), (4w, 2w), (2w, w), (w, w); then a 3x3 conv to 3 channels.

Discriminative sub-network (a U-Net), ``w = 64``, input = reconstruction ++ image (6 ch):
    encoder: 6 stages of two convs with widths w, 2w, 4w, 8w, 8w, 8w;
    decoder: 5 times [upsample + conv(c, c_out); concat skip; conv(c_out + skip, c_out);
    conv(c_out, c_out)] with c_out = 8w, 4w, 2w, w, w; then a 3x3 conv to 2 logits
    (normal, anomalous).

Weights are initialised as in the published training script: conv weights N(0, 0.02),
BatchNorm weights N(1, 0.02) and biases 0. The image side must be a multiple of 32.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _stage(cin: int, cmid: int, cout: int) -> nn.Sequential:
    """Two conv-BN-ReLU layers: cin -> cmid -> cout."""
    return nn.Sequential(*_conv_bn_relu(cin, cmid), *_conv_bn_relu(cmid, cout))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv_bn_relu(cin, cout))


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        stages = []
        cin = in_channels
        for c in widths:
            stages.append(_stage(cin, c, c))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            feats.append(x)
        return feats


class ReconstructiveSubNetwork(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_width: int = 128):
        super().__init__()
        w = base_width
        self.encoder = _Encoder(in_channels, [w, 2 * w, 4 * w, 8 * w, 8 * w])
        plan = [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w), (w, w)]
        self.ups = nn.ModuleList([_up(c, c) for c, _ in plan])
        self.decs = nn.ModuleList([_stage(c, c, c2) for c, c2 in plan])
        self.out = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encoder(x)[-1]
        for up, dec in zip(self.ups, self.decs):
            y = dec(up(y))
        return self.out(y)


class DiscriminativeSubNetwork(nn.Module):
    def __init__(self, in_channels: int = 6, out_channels: int = 2, base_width: int = 64):
        super().__init__()
        w = base_width
        enc = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = _Encoder(in_channels, enc)
        skips = enc[-2::-1]  # 8w, 8w, 4w, 2w, w
        outs = [8 * w, 4 * w, 2 * w, w, w]
        ups, decs = [], []
        cin = enc[-1]
        for skip, cout in zip(skips, outs):
            ups.append(_up(cin, cout))
            decs.append(_stage(cout + skip, cout, cout))
            cin = cout
        self.ups = nn.ModuleList(ups)
        self.decs = nn.ModuleList(decs)
        self.out = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        for up, dec, skip in zip(self.ups, self.decs, feats[-2::-1]):
            y = dec(torch.cat([up(y), skip], dim=1))
        return self.out(y)


def init_weights(module: nn.Module) -> None:
    """The published initialisation (conv N(0, .02); BN weight N(1, .02), bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DraemNet(nn.Module):
    """Both sub-networks. ``forward(x) -> (reconstruction, anomaly_logit N,1,H,W)``."""

    def __init__(self, recon_base_width: int, disc_base_width: int):
        super().__init__()
        self.recon = ReconstructiveSubNetwork(3, 3, recon_base_width)
        self.disc = DiscriminativeSubNetwork(6, 2, disc_base_width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.recon(x)
        logits = self.disc(torch.cat([rec, x], dim=1))
        return rec, anomaly_logit(logits)


def anomaly_logit(two_class_logits: torch.Tensor) -> torch.Tensor:
    """``softmax(l)[:, 1] == sigmoid(l1 - l0)``: one anomaly logit per pixel (N,1,H,W)."""
    return two_class_logits[:, 1:2] - two_class_logits[:, 0:1]
