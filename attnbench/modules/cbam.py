"""Convolutional Block Attention Module (Woo et al., arXiv 1807.06521), after the official code.

Channel gate: each pooled descriptor (avg and max by default) goes through one shared MLP
(Linear C->C/r, ReLU, Linear C/r->C, with biases); the outputs are summed, then sigmoid.
Spatial gate: channel-wise max and mean concatenated (in that order, as the official
ChannelPool does) -> k x k conv without bias -> BatchNorm -> sigmoid. The official code
has the BN and no conv bias; blog copies often drop the BN and add a bias (see tests).
The official ResNet+CBAM init sets that BN's weight to 0, so the spatial map starts at
sigmoid(0) = 0.5 everywhere; the module does the same whatever backbone holds it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.modules.gates import reduced_channels_check
from attnbench.modules.hparams import Choice, Int, Subset
from attnbench.modules.registry import register_module

POOL_TYPES = ("avg", "max", "lp", "lse")
ORDERS = ("channel_spatial", "spatial_channel", "parallel")


def _pool(x: Tensor, kind: str) -> Tensor:
    """Global pooling to (N, C): average, max, L2 power-average, or log-sum-exp (official pool_types)."""
    flat = x.flatten(2)
    if kind == "avg":
        return flat.mean(dim=2)
    if kind == "max":
        return flat.amax(dim=2)
    if kind == "lp":
        return F.lp_pool2d(x, 2, (x.shape[2], x.shape[3])).flatten(1)
    return torch.logsumexp(flat, dim=2)


class ChannelGate(nn.Module):
    """Channel attention map (N, C, 1, 1) from globally pooled descriptors through one shared MLP."""

    def __init__(self, channels: int, reduction: int, pool_types: tuple[str, ...]) -> None:
        super().__init__()
        self.pool_types = pool_types
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True), nn.Linear(channels // reduction, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        logits = sum(self.mlp(_pool(x, kind)) for kind in self.pool_types)
        return logits.sigmoid()[:, :, None, None]


class SpatialGate(nn.Module):
    """Spatial attention map (N, 1, H, W) from channel-wise max and mean."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        # Same values either way; oneDNN's NCHW kernel for this 2 -> 1 channel conv is ~45x
        # slower on CPU than its channels-last one, and a 2-channel map converts for free.
        pooled = pooled.contiguous(memory_format=torch.channels_last)
        return self.bn(self.conv(pooled)).sigmoid()


@register_module(
    "cbam",
    kind="gate",
    paper="CBAM: Convolutional Block Attention Module, arXiv 1807.06521",
    code="Jongchan/attention-module",
    params={
        "reduction": Int(16, low=1, high=1024, log=True, help="r of the shared channel MLP"),
        "spatial_kernel": Int(7, low=1, high=31, odd=True, help="k of the spatial gate's conv (paper: 7; 3 in its ablation)"),
        "pool_types": Subset(("avg", "max"), choices=POOL_TYPES, help="global pools feeding the channel MLP"),
        "order": Choice("channel_spatial", choices=ORDERS, help="sequential order, or both maps from the same input"),
    },
    check_channels=reduced_channels_check(),
)
class CBAM(nn.Module):
    """Channel then spatial attention (or the ablation orders)."""

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        pool_types: tuple[str, ...] = ("avg", "max"),
        order: str = "channel_spatial",
    ) -> None:
        super().__init__()
        self.order = order
        self.channel_gate = ChannelGate(channels, reduction, tuple(pool_types))
        self.spatial_gate = SpatialGate(spatial_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.order == "channel_spatial":
            refined = x * self.channel_gate(x)
            return refined * self.spatial_gate(refined)
        if self.order == "spatial_channel":
            refined = x * self.spatial_gate(x)
            return refined * self.channel_gate(refined)
        # parallel: both maps from the same input; the paper does not spell out the
        # combination, so both multiply the input (the broadcast product of the maps).
        return x * self.channel_gate(x) * self.spatial_gate(x)
