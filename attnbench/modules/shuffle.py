"""Shuffle Attention of SA-Net (Zhang & Yang, arXiv 2102.00240), after the official wofmanaf/SA-Net
models/sa_resnet.py (sa_layer).

The channels are split into G groups and each group into two halves. The first half gets a
channel gate, sigmoid(cweight * GAP(x) + cbias); the second a spatial gate,
sigmoid(sweight * GN(x) + sbias), with a GroupNorm whose groups are single channels (affine,
eps 1e-5). The halves are concatenated back in place and the C channels are shuffled with 2
groups, so the two kinds of output interleave. Each of the six per-channel vectors has C / (2G)
entries: 3C/G parameters in all. Initialisation as the official code: cweight = sweight = 0,
cbias = sbias = 1 (gates start at sigmoid(1)), GroupNorm weight 1 and bias 0.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Int
from attnbench.modules.registry import register_module


def _check(channels: int, hp: dict[str, Any]) -> None:
    if channels % (2 * hp["groups"]):
        raise ConfigError("groups", hp["groups"], f"G with 2 * G dividing the {channels} channels")


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: (N, g * k, H, W) read as (g, k) and written as (k, g)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


@register_module(
    "shuffle",
    kind="gate",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks, arXiv 2102.00240",
    code="wofmanaf/SA-Net",
    params={"groups": Int(64, low=1, high=1024, log=True,
                          help="G: channel groups, each split into a channel and a spatial half")},
    check_channels=_check,
)
class ShuffleAttention(nn.Module):
    """Per group: channel gate on one half, GroupNorm spatial gate on the other; then a 2-group channel shuffle."""

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        _check(channels, {"groups": groups})
        half = channels // (2 * groups)
        self.groups = groups
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        x_channel, x_spatial = x.reshape(n * self.groups, c // self.groups, h, w).chunk(2, dim=1)
        x_channel = x_channel * (self.cweight * F.adaptive_avg_pool2d(x_channel, 1) + self.cbias).sigmoid()
        x_spatial = x_spatial * (self.sweight * self.gn(x_spatial) + self.sbias).sigmoid()
        out = torch.cat([x_channel, x_spatial], dim=1).reshape(n, c, h, w)
        return channel_shuffle(out, 2)
