"""Efficient Multi-Scale Attention (Ouyang et al., arXiv 2305.13563, ICASSP 2023), after the official EMA
class (YOLOonMe/EMA-attention-module, file EMA_attention_module).

The C channels are split into G groups (the official `factor`) folded into the batch, so every group
of C/G channels goes through the same weights. In each group:
- 1x1 branch: average pools along W and along H, concatenated along the spatial axis, one shared
  1x1 conv, split back; the two sigmoids re-weight the group, then GroupNorm;
- 3x3 branch: a 3x3 conv of the group;
- cross-spatial learning: each branch's global average, softmaxed over the C/G channels, is
  matrix-multiplied with the other branch's (C/G, H*W) map; the two products are summed into one
  H x W map whose sigmoid scales the group.
Every conv has a bias, as in the official code. The GroupNorm is the code's nn.GroupNorm(C/G, C/G):
one channel per norm group, so each channel is normalised on its own over H x W, with a learnt
scale and shift per channel (a test pins it against a one-group norm). G must divide C (the
official code asserts only C // G > 0; its reshape fails otherwise). No special initialisation.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Int
from attnbench.modules.registry import register_module


def _check(channels: int, hp: dict[str, Any]) -> None:
    groups = hp["groups"]
    if channels % groups:  # also refuses G > C, where C // G would be 0
        raise ConfigError("groups", groups, f"a divisor of the {channels} channels (C // groups must be > 0)")


@register_module(
    "ema",
    kind="gate",
    paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning, arXiv 2305.13563",
    code="YOLOonMe/EMA-attention-module",
    params={"groups": Int(32, low=1, high=1024, log=True,
                          help="G (official `factor`): channel groups sharing one set of weights")},
    check_channels=_check,
)
class EMA(nn.Module):
    """Per group: x * sigmoid(softmax(GAP(x1)) @ x2 + softmax(GAP(x2)) @ x1), x1 the 1x1, x2 the 3x3 branch."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        _check(channels, {"groups": groups})
        width = channels // groups
        self.groups = groups
        self.conv1x1 = nn.Conv2d(width, width, 1)
        self.conv3x3 = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.GroupNorm(width, width)  # official: C/G groups of C/G channels, one channel each

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n * self.groups, c // self.groups, h, w)
        along_h = grouped.mean(dim=3, keepdim=True)  # (N*G, C/G, H, 1)
        along_w = grouped.mean(dim=2, keepdim=True).transpose(2, 3)  # (N*G, C/G, W, 1)
        gate_h, gate_w = self.conv1x1(torch.cat([along_h, along_w], dim=2)).split([h, w], dim=2)
        x1 = self.norm(grouped * gate_h.sigmoid() * gate_w.transpose(2, 3).sigmoid())
        x2 = self.conv3x3(grouped)
        # (N*G, 1, C/G) channel descriptors, each weighting the other branch's (C/G, H*W) positions
        a1 = torch.softmax(x1.mean(dim=(2, 3)), dim=1)[:, None, :]
        a2 = torch.softmax(x2.mean(dim=(2, 3)), dim=1)[:, None, :]
        weights = torch.matmul(a1, x2.flatten(2)) + torch.matmul(a2, x1.flatten(2))
        return (grouped * weights.reshape(n * self.groups, 1, h, w).sigmoid()).reshape(n, c, h, w)
