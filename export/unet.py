"""Spleeter's U-Net in PyTorch, laid out so Deezer's converted weights load by name, and the
2-stems wrapper that puts both U-Nets and the ratio-mask normalisation in one graph.

Imported only by the exporter (needs torch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Spleeter's TensorFlow "same" padding for a 5x5 stride-2 conv: one before, two after,
# on both the time and frequency axes; the transposed convs crop the same amounts.
_PAD_BEFORE, _PAD_AFTER = 1, 2
_EPS = 1e-10  # Spleeter's ratio-mask epsilon


class _Pad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (_PAD_BEFORE, _PAD_AFTER, _PAD_BEFORE, _PAD_AFTER))


class _Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, _PAD_BEFORE:-_PAD_AFTER, _PAD_BEFORE:-_PAD_AFTER]


def _encoder(cin: int, cout: int) -> tuple[nn.Sequential, nn.Sequential]:
    conv = nn.Sequential(_Pad(), nn.Conv2d(cin, cout, kernel_size=5, stride=2))
    act = nn.Sequential(nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01), nn.LeakyReLU(0.2))
    return conv, act


def _decoder(cin: int, cout: int) -> nn.Sequential:
    # index layout [0 deconv, 1 crop, 2 relu, 3 bn] matches the checkpoint's key names
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel_size=5, stride=2), _Crop(),
                         nn.ReLU(), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))


class SpleeterUNet(nn.Module):
    """[B, 2, T, F] magnitude -> [B, 2, T, F] sigmoid mask (T multiple of 64, F = 1024)."""

    WIDTHS = (16, 32, 64, 128, 256, 512)

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        w = self.WIDTHS
        cins = (channels,) + w[:-1]
        for i, (a, b) in enumerate(zip(cins, w, strict=True), start=1):
            conv, act = _encoder(a, b)
            setattr(self, f"down{i}_conv", conv)
            setattr(self, f"down{i}_act", act)
        # decoder inputs: the deepest conv output, then [skip, previous] concatenations
        ups = [(512, 256), (512, 128), (256, 64), (128, 32), (64, 16), (32, 1)]
        for i, (a, b) in enumerate(ups, start=1):
            setattr(self, f"up{i}", _decoder(a, b))
        self.up7 = nn.Sequential(nn.Conv2d(1, channels, kernel_size=4, dilation=2, padding=3),
                                 nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i in range(1, 7):
            c = getattr(self, f"down{i}_conv")(h)
            skips.append(c)  # skips carry the pre-activation conv output, as in Spleeter
            h = getattr(self, f"down{i}_act")(c)
        u = self.up1(skips[-1])
        for i, skip in zip(range(2, 7), reversed(skips[:-1]), strict=True):
            u = getattr(self, f"up{i}")(torch.cat([skip, u], dim=1))
        return self.up7(u)


class RatioMasks(nn.Module):
    """All stems' U-Nets and Spleeter's normalisation: m_i = (y_i^2 + eps/S) / (sum y^2 + eps)
    with y_i = mask_i * magnitude. Output [B, S, C, T, F]; the masks sum to 1."""

    def __init__(self, nets: list[SpleeterUNet]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        ys = [net(magnitude) * magnitude for net in self.nets]
        power = torch.stack([y * y for y in ys], dim=1)
        total = power.sum(dim=1, keepdim=True) + _EPS
        return (power + _EPS / len(self.nets)) / total


def load_unet(state: dict[str, np.ndarray]) -> SpleeterUNet:
    net = SpleeterUNet()
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
    for k, v in own.items():
        if k in state:
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"{k}: checkpoint shape {state[k].shape} != {tuple(v.shape)}")
            own[k] = torch.from_numpy(np.ascontiguousarray(state[k]))
    net.load_state_dict(own)
    return net.eval()
