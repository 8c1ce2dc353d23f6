"""Large Selective Kernel module of LSKNet (Li et al., arXiv 2303.09030), after the official LSKblock
(zcablii/LSKNet, mmrotate/models/backbones/lsknet.py).

The large kernel is decomposed into a 5x5 depthwise conv and a 7x7 depthwise conv with dilation 3
applied to its output (receptive field 5 + 3 * 6 = 23). Each of the two features goes through its
own 1x1 conv to C // 2 channels; the channel-wise mean and max of their concatenation (in that
order) go through a 7x7 conv 2 -> 2, whose sigmoid is one spatial selection map per kernel; the
maps weight the two features, the weighted sum goes through a 1x1 conv back to C, and that
multiplies the input (no sigmoid on it). Every conv has a bias, as in the official code; the
widths (C // 2 per kernel) are the code's. No special initialisation: LSKNet initialises the whole
network as VAN does, which the van_b*/mscan_* backbones here also apply to their slot.

In LSKNet it is the spatial mixer of a VAN-style block (proj_1, GELU, LSK, proj_2, plus the
shortcut): the `mixer` slot of the van_b*/mscan_* backbones, its default placement there. Anywhere
else it works as a gate (same shape in and out). The hyperparameters span the paper's ablations of
the two-kernel decomposition and of the pooling in the spatial selection.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Int, Subset
from attnbench.modules.registry import Placement, register_module

POOLS = ("avg", "max")  # the official concatenation order


def _check(channels: int, hp: dict[str, Any]) -> None:
    if channels < 2:
        raise ConfigError("channels", channels, "at least 2 (each kernel's 1x1 conv maps to C // 2 channels)")


@register_module(
    "lsk",
    kind="gate",
    paper="Large Selective Kernel Network for Remote Sensing Object Detection, arXiv 2303.09030",
    code="zcablii/LSKNet",
    params={
        "kernel_size": Int(5, low=1, high=31, odd=True, help="k1: the first depthwise conv (dilation 1)"),
        "dilated_kernel": Int(7, low=1, high=31, odd=True, help="k2: the second depthwise conv, on the first's output"),
        "dilation": Int(3, low=1, high=16, help="d2: dilation of the second conv; receptive field k1 + d2 * (k2 - 1)"),
        "pool_types": Subset(POOLS, choices=POOLS, help="channel-wise pools feeding the selection conv"),
    },
    check_channels=_check,
    placement=Placement(position="mixer"),  # LSKNet's spatial mixer; backbones without it use their default
)
class LSK(nn.Module):
    """x * conv(sum_i sigmoid(SA_i) * conv1x1_i(U_i)), U_1 = dw(x), U_2 = dw_dilated(U_1)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 5,
        dilated_kernel: int = 7,
        dilation: int = 3,
        pool_types: tuple[str, ...] = POOLS,
    ) -> None:
        super().__init__()
        _check(channels, {})
        hidden = channels // 2
        self.pool_types = tuple(pool_types)
        self.conv0 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.conv_spatial = nn.Conv2d(
            channels, channels, dilated_kernel, padding=dilation * (dilated_kernel // 2), groups=channels, dilation=dilation
        )
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.conv2 = nn.Conv2d(channels, hidden, 1)
        self.conv_squeeze = nn.Conv2d(len(self.pool_types), 2, 7, padding=3)
        self.conv = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        local = self.conv0(x)
        wide = self.conv_spatial(local)
        local, wide = self.conv1(local), self.conv2(wide)
        both = torch.cat([local, wide], dim=1)
        pooled = [both.mean(dim=1, keepdim=True) if kind == "avg" else both.amax(dim=1, keepdim=True) for kind in self.pool_types]
        selection = self.conv_squeeze(torch.cat(pooled, dim=1)).sigmoid()
        return x * self.conv(local * selection[:, 0:1] + wide * selection[:, 1:2])
