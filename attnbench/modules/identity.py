"""The `none` module: identity, the baseline every delta is measured against."""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.modules.registry import register_module


@register_module("none", kind="gate", paper="baseline (identity)")
class NoAttention(nn.Identity):
    """Identity on a feature map; accepts `channels` like every module."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x
