"""Multi-Scale Convolutional Attention from SegNeXt (Guo et al., arXiv 2209.08575), after the official code.

5x5 depthwise conv; for each strip scale k a branch of depthwise 1 x k then k x 1 convs
on that output; the 5x5 output plus all branches summed; 1x1 conv; output = input * attention.
"""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.modules.hparams import Int, OddKernels
from attnbench.modules.registry import register_module


def strip_branch(channels: int, k: int) -> nn.Sequential:
    """Depthwise 1 x k then k x 1 convolution (a k x k receptive field at 2k weights per channel)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, (1, k), padding=(0, k // 2), groups=channels),
        nn.Conv2d(channels, channels, (k, 1), padding=(k // 2, 0), groups=channels),
    )


@register_module(
    "msca",
    kind="gate",
    paper="SegNeXt, arXiv 2209.08575",
    code="Visual-Attention-Network/SegNeXt",
    params={
        "scales": OddKernels((7, 11, 21), low=3, high=31, help="strip-conv kernel of each branch"),
        "base_kernel": Int(5, low=1, high=31, odd=True, help="the local depthwise conv before the branches"),
    },
)
class MSCA(nn.Module):
    """u * conv1x1(dw(u) + sum_k strip_k(dw(u)))."""

    def __init__(self, channels: int, scales: tuple[int, ...] = (7, 11, 21), base_kernel: int = 5) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, base_kernel, padding=base_kernel // 2, groups=channels)
        self.branches = nn.ModuleList(strip_branch(channels, k) for k in scales)
        self.conv3 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        base = self.conv0(x)
        attn = base
        for branch in self.branches:
            attn = attn + branch(base)
        return x * self.conv3(attn)
