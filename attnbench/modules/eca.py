"""Efficient Channel Attention (Wang et al., arXiv 1910.03151), after the official eca_layer (BangguWu/ECANet).

GAP -> 1-D conv (no bias) across the channel axis -> sigmoid -> channel-wise scale.

The kernel: the paper's eq. (12), k = |log2(C)/gamma + b/gamma|_odd with gamma=2, b=1, which the
official code does not have: its eca_layer takes k_size as given, and its models take one k per
stage from the command line (`--ksize 3557`). The released ImageNet models are ECA-ResNet-50 with
k = 3, 5, 5, 7 and ECA-ResNet-101/152 with 3, 3, 5, 7 (README: eca_resnet50_k3557, ...k3357);
the adaptive formula gives 5, 5, 5, 7 for ResNet-50's 256...2048 channels instead. So
`kernel_size` is the adaptive k (null), one fixed k, one k per chosen stage, or a released preset.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from attnbench.modules.hparams import Int
from attnbench.modules.registry import register_module

# the official releases' per-stage kernels (README model zoo: eca_resnet50_k3557, eca_resnet101_k3357, ...)
RELEASED = (("k3557", (3, 5, 5, 7)), ("k3357", (3, 3, 5, 7)))


def adaptive_eca_kernel(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA-Net eq. (12): |log2(C)/gamma + b/gamma| to an odd integer (truncated, then the next odd where even)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register_module(
    "eca",
    kind="gate",
    paper="ECA-Net, arXiv 1910.03151",
    code="BangguWu/ECANet",
    params={"kernel_size": Int(
        None, low=1, high=31, odd=True, none_means="the adaptive k(C) of eq. (12)", help="1-D conv kernel",
        per_stage=True, presets=RELEASED,
    )},
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
