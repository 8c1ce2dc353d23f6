"""Concurrent spatial and channel squeeze & excitation (Roy, Navab, Wachinger, arXiv 1803.02579), after
the official code (ai-med/squeeze_and_excitation, squeeze_and_excitation/squeeze_and_excitation.py:
ChannelSELayer, SpatialSELayer, ChannelSpatialSELayer).

cSE: the spatial mean per channel -> Linear C -> C // r -> ReLU -> Linear C // r -> C (both with
bias) -> sigmoid, scaling the channels. sSE: a 1x1 conv C -> 1 (with bias) -> sigmoid, scaling the
positions. scSE runs both on the same input and combines the two recalibrated maps.

Paper vs code: the paper (section 2.3) adds the two maps, X_cSE + X_sSE; the official
ChannelSpatialSELayer takes their element-wise maximum (torch.max). The code wins: `combine="max"`
by default, `"add"` is the paper's equation (both pinned in the tests). The paper's cSE has C/2
hidden units, the code's reduction_ratio defaults to 2: they agree. The paper writes the sSE conv
without a bias; the code's nn.Conv2d has one, kept. The official sSE's optional few-shot `weights`
argument is left out.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Choice, Int
from attnbench.modules.registry import register_module

MODES = ("scse", "cse", "sse")
COMBINES = ("max", "add")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    if hp["mode"] != "sse" and hp["reduction"] > channels:
        raise ConfigError("reduction", hp["reduction"], f"at most the channel count {channels} (C // reduction must be >= 1)")


class ChannelSE(nn.Module):
    """cSE: x * sigmoid(W2 relu(W1 mean_hw(x)))."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))).sigmoid()
        return x * weights[:, :, None, None]


class SpatialSE(nn.Module):
    """sSE: x * sigmoid(conv1x1(x)), one weight per position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv(x).sigmoid()


@register_module(
    "scse",
    kind="gate",
    paper="Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional Networks, arXiv 1803.02579",
    code="ai-med/squeeze_and_excitation",
    params={
        "mode": Choice("scse", choices=MODES, help="scse: both branches; cse: channel SE only; sse: spatial SE only"),
        "reduction": Int(2, low=1, high=1024, log=True, help="r of the cSE: hidden width C // r (official default 2)"),
        "combine": Choice("max", choices=COMBINES,
                          help="scse: element-wise max of the two maps (official code) or their sum (the paper's equation)"),
    },
    check_channels=_check_channels,
)
class ConcurrentSE(nn.Module):
    """scSE: max (or sum) of the channel- and the spatially-recalibrated maps; or one of them alone."""

    def __init__(self, channels: int, mode: str = "scse", reduction: int = 2, combine: str = "max") -> None:
        super().__init__()
        self.combine = combine
        self.cse = ChannelSE(channels, reduction) if mode != "sse" else None
        self.sse = SpatialSE(channels) if mode != "cse" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.sse is None:
            assert self.cse is not None  # mode sse is the only one without the cSE
            return self.cse(x)
        if self.cse is None:
            return self.sse(x)
        if self.combine == "add":
            return self.cse(x) + self.sse(x)
        return torch.maximum(self.cse(x), self.sse(x))
