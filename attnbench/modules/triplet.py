"""Triplet Attention (Misra et al., arXiv 2010.03045), after the official landskape-ai/triplet-attention
MODELS/triplet_attention.py (TripletAttention, SpatialGate, BasicConv) and MODELS/resnet.py.

Three branches each rotate the map so that two of (C, H, W) form the plane, Z-pool over the
third (channel-wise max then mean, concatenated in that order), a k x k conv 2 -> 1 without
bias, BatchNorm (eps 1e-5, momentum 0.01, affine), sigmoid, scale, and rotate back:
cw pools over H (the C-W plane), hc pools over W (the H-C plane), hw pools over C (the plain
spatial gate). The output is the average of the three, or of cw and hc with no_spatial.

Initialisation: the official ResNet zeroes the BN weight of every key containing "SpatialGate",
i.e. the hw branch's (so it starts at sigmoid(0) = 0.5 everywhere), and sets the other two BN
weights to 1; the module does the same whatever backbone holds it. The paper states neither
the BN momentum nor this init (tests pin the code's).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.modules.hparams import Bool, Int
from attnbench.modules.registry import register_module


class AttentionGate(nn.Module):
    """x * sigmoid(BN(conv(Z-pool(x)))), Z-pool over dim 1."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * self.bn(self.conv(pooled)).sigmoid()


@register_module(
    "triplet",
    kind="gate",
    paper="Rotate to Attend: Convolutional Triplet Attention Module, arXiv 2010.03045",
    code="landskape-ai/triplet-attention",
    params={
        "kernel_size": Int(7, low=1, high=31, odd=True, help="k of each branch's conv"),
        "no_spatial": Bool(False, help="drop the hw (spatial) branch: average of the two cross-dimension branches"),
    },
)
class TripletAttention(nn.Module):
    """Average of three rotated Z-pool gates (C-W, H-C, H-W planes)."""

    def __init__(self, channels: int, kernel_size: int = 7, no_spatial: bool = False) -> None:
        super().__init__()
        self.cw = AttentionGate(kernel_size)
        self.hc = AttentionGate(kernel_size)
        self.hw = None if no_spatial else AttentionGate(kernel_size)
        if self.hw is not None:
            nn.init.zeros_(self.hw.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        out_cw = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        out_hc = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        if self.hw is None:
            return 1 / 2 * (out_cw + out_hc)
        return 1 / 3 * (self.hw(x) + out_cw + out_hc)
