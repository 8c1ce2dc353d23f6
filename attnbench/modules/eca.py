"""Efficient Channel Attention (Wang et al., arXiv 1910.03151), after the official eca_layer.

GAP -> 1-D conv (no bias) across the channel axis -> sigmoid -> channel-wise scale.
Kernel size adaptive to C by eq. (12) with gamma=2, b=1, or fixed.
"""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.hparams import Int, adaptive_eca_kernel
from attnbench.modules.registry import register_module


@register_module(
    "eca",
    kind="gate",
    paper="ECA-Net, arXiv 1910.03151",
    params={"kernel_size": Int(None, low=1, high=31, odd=True, none_means="the adaptive k(C) of eq. (12)", help="1-D conv kernel")},
)
class ECA(nn.Module):
    """ECA block: x * sigmoid(conv1d(avgpool(x)))."""

    def __init__(self, channels: int, kernel_size: int | None = None) -> None:
        super().__init__()
        self.kernel_size = adaptive_eca_kernel(channels) if kernel_size is None else kernel_size
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=(self.kernel_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).flatten(1)[:, None, :]  # (N, 1, C): channels become the sequence
        weights = self.conv(pooled).sigmoid()
        return x * weights.transpose(1, 2)[..., None]
