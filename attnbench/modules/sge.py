"""Spatial Group-wise Enhance (Li et al., arXiv 1905.09646), after the official implus/PytorchInsight
classification/models/imagenet/resnet_sge.py (SpatialGroupEnhance).

The channels are split into G groups. In each group, every position's similarity to the group's
global average is c_i = g . x_i; c is normalised over the H*W positions (minus the mean, over
the standard deviation plus 1e-5), scaled and shifted by a per-group gamma, beta, and its
sigmoid scales the group's features at that position.

Paper vs code: the code's standard deviation is torch's unbiased one (over H*W - 1), and the
1e-5 is added to the standard deviation, not to the variance (a test pins both). So a 1x1 map
has no standard deviation; the official code returns NaN there, this module refuses it.
Initialisation as the official code: gamma = 0, beta = 1, so every gate starts at sigmoid(1).
The parameters are not named `weight`/`bias` as in the official code: the ResNets here
re-initialise a slot module's own 4-D `weight`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Int
from attnbench.modules.registry import register_module

EPS = 1e-5  # official: added to the standard deviation


def _check(channels: int, hp: dict[str, Any]) -> None:
    if channels % hp["groups"]:
        raise ConfigError("groups", hp["groups"], f"a divisor of the {channels} channels")


@register_module(
    "sge",
    kind="gate",
    paper="Spatial Group-wise Enhance, arXiv 1905.09646",
    code="implus/PytorchInsight",
    params={"groups": Int(64, low=1, high=1024, log=True, help="G: channel groups, each with its own spatial gate")},
    check_channels=_check,
)
class SpatialGroupEnhance(nn.Module):
    """Per group: x * sigmoid(gamma * norm(g . x_i) + beta), g the group's global average."""

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        _check(channels, {"groups": groups})
        self.groups = groups
        self.gamma = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.beta = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if h * w < 2:
            raise ConfigError("input_size", f"{h}x{w}",
                              "a map of at least 2 positions (SGE divides by the unbiased std over H*W)")
        grouped = x.reshape(n * self.groups, c // self.groups, h, w)
        similarity = (grouped * F.adaptive_avg_pool2d(grouped, 1)).sum(dim=1)  # (N*G, H, W)
        t = similarity.reshape(n * self.groups, h * w)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True) + EPS)
        t = t.reshape(n, self.groups, h, w) * self.gamma + self.beta
        gated = grouped * t.reshape(n * self.groups, 1, h, w).sigmoid()
        return gated.reshape(n, c, h, w)
