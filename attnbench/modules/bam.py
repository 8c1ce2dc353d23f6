"""Bottleneck Attention Module (Park et al., arXiv 1807.06514), after the official MODELS/bam.py
of Jongchan/attention-module.

Channel branch: global average pool -> Linear C->C/r -> BatchNorm1d -> ReLU -> Linear C/r->C.
Spatial branch: 1x1 conv C->C/r -> BN -> ReLU -> n x (3x3 conv, dilation d -> BN -> ReLU) -> 1x1 conv
C/r->1 (every conv with a bias). Output x * (1 + sigmoid(combine(Mc, Ms))), i.e. F + F * M(F).

Where the paper and the official code disagree (the code is followed; tests pin each):
- combination: the paper's eq. (2) sums the branches, sigma(Mc + Ms); the code multiplies them,
  sigmoid(Mc * Ms). `combine` defaults to the code's "product"; "sum" is eq. (2), "max" the
  paper's third ablation choice.
- BatchNorm: the paper puts a BN on each branch's output; the code has BNs only after the hidden
  layers (none on either output).
- pooling: the code pools with an H x H window, which is the global average on the square maps it
  runs on (on others its Linear gets the wrong width); this takes the global mean.
Initialisation is what the official ResidualNet leaves: convs Kaiming-normal (fan out), every bias 0,
BN weights 1 (its zero-init rule for "SpatialGate" BNs never matches a BAM key), Linear weights PyTorch's.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.modules.gates import reduced_channels_check
from attnbench.modules.hparams import Choice, Int, Subset
from attnbench.modules.registry import Placement, register_module

COMBINES = ("product", "sum", "max")
BRANCHES = ("channel", "spatial")


class ChannelGate(nn.Module):
    """Channel logits (N, C, 1, 1): GAP -> Linear -> BN -> ReLU -> Linear."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x.mean(dim=(2, 3)))[:, :, None, None]


class SpatialGate(nn.Module):
    """Spatial logits (N, 1, H, W): 1x1 reduce, dilated 3x3 convs, 1x1 to one map; BN and ReLU between."""

    def __init__(self, channels: int, reduction: int, dilation: int, dilated_convs: int) -> None:
        super().__init__()
        hidden = channels // reduction
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        for _ in range(dilated_convs):
            dilated = nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation)
            layers += [dilated, nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@register_module(
    "bam",
    kind="gate",
    paper="BAM: Bottleneck Attention Module, arXiv 1807.06514",
    code="Jongchan/attention-module",
    params={
        "reduction": Int(16, low=1, high=1024, log=True, help="r: hidden width C // r of both branches"),
        "dilation": Int(4, low=1, high=16, help="d of the spatial branch's 3x3 convs"),
        "dilated_convs": Int(2, low=0, high=8, help="number of dilated 3x3 convs in the spatial branch"),
        "combine": Choice("product", choices=COMBINES, help="how Mc and Ms meet (official: product; eq. 2: sum)"),
        "branches": Subset(BRANCHES, choices=BRANCHES, help="branches used (the paper's channel / spatial ablation)"),
    },
    check_channels=reduced_channels_check(),
    placement=Placement(position="post", stages="all_but_last", blocks=(-1,)),  # the paper: at each stage's end
)
class BAM(nn.Module):
    """BAM: x * (1 + sigmoid(combine(Mc(x), Ms(x))))."""

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        dilation: int = 4,
        dilated_convs: int = 2,
        combine: str = "product",
        branches: tuple[str, ...] = BRANCHES,
    ) -> None:
        super().__init__()
        self.combine = combine
        self.channel_gate = ChannelGate(channels, reduction) if "channel" in branches else None
        self.spatial_gate = SpatialGate(channels, reduction, dilation, dilated_convs) if "spatial" in branches else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                assert module.bias is not None  # every conv and linear of BAM has a bias
                nn.init.zeros_(module.bias)

    def attention_logits(self, x: Tensor) -> Tensor:
        """combine(Mc, Ms), or the one branch kept; it broadcasts against x."""
        if self.spatial_gate is None:
            assert self.channel_gate is not None  # branches is a non-empty subset of channel, spatial
            return self.channel_gate(x)
        if self.channel_gate is None:
            return self.spatial_gate(x)
        channel, spatial = self.channel_gate(x), self.spatial_gate(x)
        if self.combine == "product":
            return channel * spatial
        if self.combine == "sum":
            return channel + spatial
        return torch.maximum(channel, spatial)

    def forward(self, x: Tensor) -> Tensor:
        return x * (1 + self.attention_logits(x).sigmoid())
