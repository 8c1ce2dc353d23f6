"""Coordinate Attention (Hou et al., arXiv 2103.02907), after the official Andrew-Qibin/CoordAttention
coordatt.py (CoordAtt).

Average-pool along W (one value per row) and along H (one per column); concatenate the two
strips along the spatial axis; a shared 1x1 conv (with bias) to mip = max(8, C // r) channels,
BatchNorm, h_swish; split back; a 1x1 conv (with bias) per direction back to C channels and a
sigmoid; output = x * a_w * a_h. h_swish is the official x * (relu6(x + 3) / 6), written in that
order (PyTorch's hardswish computes the same function with another rounding order).

`directions` reproduces the paper's ablation keeping only the horizontal or the vertical
attention (the official code has both; with one, only that strip is embedded and applied).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.modules.hparams import Int, Subset
from attnbench.modules.registry import register_module

DIRECTIONS = ("h", "w")


def h_swish(x: Tensor) -> Tensor:
    """The official h_swish: x * h_sigmoid(x), h_sigmoid(x) = relu6(x + 3) / 6."""
    return x * (F.relu6(x + 3) / 6)


@register_module(
    "coord",
    kind="gate",
    paper="Coordinate Attention for Efficient Mobile Network Design, arXiv 2103.02907",
    code="Andrew-Qibin/CoordAttention",
    params={
        "reduction": Int(32, low=1, high=1024, log=True, help="r: hidden width mip = max(8, C // r)"),
        "directions": Subset(DIRECTIONS, choices=DIRECTIONS, help="attention along H (a_h), W (a_w) or both (ablation)"),
    },
)
class CoordinateAttention(nn.Module):
    """x * a_w * a_h from direction-wise pooled strips through a shared 1x1 embedding."""

    def __init__(self, channels: int, reduction: int = 32, directions: tuple[str, ...] = DIRECTIONS) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.directions = tuple(directions)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv_h = nn.Conv2d(hidden, channels, 1) if "h" in self.directions else None
        self.conv_w = nn.Conv2d(hidden, channels, 1) if "w" in self.directions else None

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        strips = []
        if self.conv_h is not None:
            strips.append(F.adaptive_avg_pool2d(x, (None, 1)))  # (N, C, H, 1)
        if self.conv_w is not None:
            strips.append(F.adaptive_avg_pool2d(x, (1, None)).transpose(2, 3))  # (N, C, W, 1)
        y = h_swish(self.bn1(self.conv1(torch.cat(strips, dim=2))))
        if self.conv_h is None:
            assert self.conv_w is not None  # directions is a non-empty subset of h, w
            return x * self.conv_w(y.transpose(2, 3)).sigmoid()
        if self.conv_w is None:
            return x * self.conv_h(y).sigmoid()
        y_h, y_w = y.split([h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()
        a_w = self.conv_w(y_w.transpose(2, 3)).sigmoid()
        return x * a_w * a_h
