"""Squeeze-and-Excitation (Hu et al., arXiv 1709.01507).

Global average pool -> FC reduce (C/r) -> ReLU -> FC expand -> sigmoid -> channel-wise scale.
The FCs are 1x1 convolutions on the pooled 1x1 map, with bias, as in the official Caffe models.
"""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.hparams import Bool, Choice, Int
from attnbench.modules.gates import GATES, apply_gate, reduced_channels_check
from attnbench.modules.registry import register_module


@register_module(
    "se",
    kind="gate",
    paper="Squeeze-and-Excitation Networks, arXiv 1709.01507",
    params={
        "reduction": Int(16, low=1, high=1024, log=True, help="r: hidden width is C // r"),
        "gate": Choice("sigmoid", choices=GATES, help="excitation non-linearity"),
        "bias": Bool(True, help="biases in the two FC layers"),
    },
    check_channels=reduced_channels_check(),
)
class SqueezeExcitation(nn.Module):
    """SE block: x * gate(W2 relu(W1 avgpool(x)))."""

    def __init__(self, channels: int, reduction: int = 16, gate: str = "sigmoid", bias: bool = True) -> None:
        super().__init__()
        hidden = channels // reduction
        self.gate = gate
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.expand(self.act(self.reduce(self.pool(x))))
        return x * apply_gate(self.gate, weights)
