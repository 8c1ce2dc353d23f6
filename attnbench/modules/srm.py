"""Style-based Recalibration Module (Lee et al., arXiv 1903.10829), after the official SRMLayer of
hyunjaelee410/style-based-recalibration-module (models/recalibration_modules.py).

Style pooling: per channel, the spatial mean and the standard deviation sqrt(var + 1e-5), stacked as
(N, C, d) in that order. Style integration: a channel-wise fully connected layer (one weight per
channel and style, no bias: sum_d w[c, d] * t[n, c, d]), BatchNorm over the channels, sigmoid; x * g.

Where the paper and the official code disagree (the code is followed; a test pins it): the paper's
standard deviation is the population one (1/HW); the code's torch.var is the unbiased one
(1/(HW - 1)), so a 1 x 1 map gives NaN there, as it does in the official layer.
The CFC weights start at zero, as in the official code, so z = 0 and every gate starts at
sigmoid(BN(0)); BN keeps PyTorch's defaults (momentum 0.1, eps 1e-5, weight 1, bias 0).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.modules.hparams import Subset
from attnbench.modules.registry import register_module

STYLES = ("mean", "std")
STD_EPS = 1e-5  # the official _style_pooling's eps, added to the variance


@register_module(
    "srm",
    kind="gate",
    paper="SRM: A Style-based Recalibration Module for CNNs, arXiv 1903.10829",
    code="hyunjaelee410/style-based-recalibration-module",
    params={"styles": Subset(STYLES, choices=STYLES, help="style pooling statistics (the paper's mean / std ablation)")},
)
class StyleRecalibration(nn.Module):
    """SRM block: x * sigmoid(BN(CFC(mean, std)))."""

    def __init__(self, channels: int, styles: tuple[str, ...] = STYLES) -> None:
        super().__init__()
        self.styles = tuple(styles)
        self.cfc = nn.Parameter(torch.zeros(channels, len(self.styles)))
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)
        stats = []
        if "mean" in self.styles:
            stats.append(flat.mean(dim=2))
        if "std" in self.styles:
            stats.append((flat.var(dim=2, correction=1) + STD_EPS).sqrt())
        z = (torch.stack(stats, dim=2) * self.cfc).sum(dim=2)
        return x * self.bn(z[:, :, None, None]).sigmoid()
