"""Effective Squeeze-Excitation, eSE (Lee and Park, CenterMask / VoVNetV2, arXiv 1911.06667), after the
official eSEModule of youngwanLEE/vovnet-detectron2 (vovnet/vovnet.py; the same class is in
youngwanLEE/CenterMask, maskrcnn_benchmark/modeling/backbone/vovnet.py).

Global average pool -> one 1x1 conv C -> C with bias (no channel reduction) -> hard sigmoid ->
channel-wise scale. The official Hsigmoid is relu6(x + 3) / 6, which is exactly PyTorch's
F.hardsigmoid (bit for bit, forward and backward; a test pins it). Its `reduction=4` argument is
never used. The official VoVNet initialises every conv Kaiming-normal (fan in), the eSE conv's
weight included, and leaves the conv bias at PyTorch's default; this module does the same.
"""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.modules.gates import GATES, apply_gate
from attnbench.modules.hparams import Choice
from attnbench.modules.registry import register_module


@register_module(
    "ese",
    kind="gate",
    paper="CenterMask: Real-Time Anchor-Free Instance Segmentation (VoVNetV2, eSE), arXiv 1911.06667",
    code="youngwanLEE/vovnet-detectron2",
    params={"gate": Choice("hard_sigmoid", choices=GATES, help="excitation non-linearity (official: hard sigmoid)")},
)
class EffectiveSE(nn.Module):
    """eSE block: x * hsigmoid(W avgpool(x) + b), W a full C x C matrix."""

    def __init__(self, channels: int, gate: str = "hard_sigmoid") -> None:
        super().__init__()
        self.gate = gate
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1)
        nn.init.kaiming_normal_(self.fc.weight)  # VoVNet._initialize_weights

    def forward(self, x: Tensor) -> Tensor:
        return x * apply_gate(self.gate, self.fc(self.pool(x)))
