"""Squeeze-and-Excitation (Hu et al., arXiv 1709.01507).

Global average pool -> FC reduce (C/r) -> ReLU -> FC expand -> sigmoid -> channel-wise scale.
The FCs are 1x1 convolutions on the pooled 1x1 map, with bias, as in the official Caffe models.
The hidden width is the paper's C // r; with `divisor` it is rounded to a multiple of it as timm's
SEModule does (divisor 8, round_limit 0: timm's seresnet* models) or as MobileNetV3 does
(divisor 8, round_limit 0.9), see `reduced_width`.
"""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.modules.gates import GATES, apply_gate, reduced_channels_check, reduced_width
from attnbench.modules.hparams import Bool, Choice, Float, Int
from attnbench.modules.registry import register_module


@register_module(
    "se",
    kind="gate",
    paper="Squeeze-and-Excitation Networks, arXiv 1709.01507",
    code="hujie-frank/SENet",
    params={
        "reduction": Int(16, low=1, high=1024, log=True, help="r: hidden width is C // r (or C / r rounded, see divisor)"),
        "gate": Choice("sigmoid", choices=GATES, help="excitation non-linearity"),
        "bias": Bool(True, help="biases in the two FC layers"),
        "divisor": Int(None, low=1, high=1024, none_means="no rounding, the paper's C // r",
                       help="round the hidden width C / r to a multiple of this (timm, MobileNetV3: 8)"),
        "round_limit": Float(0.0, low=0.0, high=1.0,
                             help="with divisor: one divisor more if rounding fell below this times C / r"
                                  " (timm SE: 0; MobileNetV3: 0.9)"),
    },
    check_channels=reduced_channels_check(),
)
class SqueezeExcitation(nn.Module):
    """SE block: x * gate(W2 relu(W1 avgpool(x)))."""

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        gate: str = "sigmoid",
        bias: bool = True,
        divisor: int | None = None,
        round_limit: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = reduced_width(channels, reduction, divisor, round_limit)
        self.gate = gate
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.expand(self.act(self.reduce(self.pool(x))))
        return x * apply_gate(self.gate, weights)
