"""Global Context block (Cao et al., GCNet, arXiv 1904.11492), after the official ContextBlock of
xvjiarui/GCNet (mmdet/ops/gcb/context_block.py), which mmcv keeps unchanged as
mmcv/cnn/bricks/context_block.py.

Context modelling: "att" pools x with a softmax over the H*W positions of a 1x1 conv C -> 1 (with
bias), a weighted sum done as one matmul; "avg" is global average pooling. Transform, one per fusion:
1x1 conv C -> int(C * ratio) -> LayerNorm over (planes, 1, 1) -> ReLU -> 1x1 conv back to C (all convs
with bias). Fusion: channel_mul multiplies x by the sigmoid of its transform, then channel_add adds
the other transform (the official order). Same shape in and out, so it sits in a gate slot even
though channel_add adds to x rather than scaling it.

Initialisation as reset_parameters: the mask conv Kaiming normal (fan in, bias 0); the last conv of
each transform all zeros, so a channel_add block starts as the identity and a channel_mul one as x / 2.
The other layers keep PyTorch's defaults, as the official detectors leave them (the ImageNet backbone
is loaded with strict=False, so the blocks keep their own init).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Choice, Float, Subset
from attnbench.modules.registry import register_module

POOLINGS = ("att", "avg")
FUSIONS = ("channel_add", "channel_mul")


def _check(channels: int, hp: dict[str, Any]) -> None:
    if int(channels * hp["ratio"]) < 1:
        raise ConfigError("ratio", hp["ratio"], f"at least 1/{channels} (int(C * ratio) hidden planes must be >= 1)")


def _transform(channels: int, planes: int) -> nn.Sequential:
    """1x1 conv -> LayerNorm([planes, 1, 1]) -> ReLU -> 1x1 conv, the last one zero-initialised."""
    last = nn.Conv2d(planes, channels, 1)
    nn.init.zeros_(last.weight)
    assert last.bias is not None
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(channels, planes, 1), nn.LayerNorm([planes, 1, 1]), nn.ReLU(inplace=True), last)


@register_module(
    "gc",
    kind="gate",
    paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, arXiv 1904.11492",
    code="xvjiarui/GCNet",
    params={
        "ratio": Float(1 / 16, low=1 / 1024, high=1.0, log=True,
                       help="int(C * ratio) hidden planes (the paper's r is 1 / ratio)"),
        "pooling": Choice("att", choices=POOLINGS, help="context modelling: softmax attention pooling or global average"),
        "fusions": Subset(("channel_add",), choices=FUSIONS, help="how the context meets x: add, sigmoid scale, or both"),
    },
    check_channels=_check,
)
class GlobalContext(nn.Module):
    """GC block: x * sigmoid(T_mul(context)) + T_add(context), with the chosen fusions."""

    def __init__(
        self, channels: int, ratio: float = 1 / 16, pooling: str = "att", fusions: tuple[str, ...] = ("channel_add",)
    ) -> None:
        super().__init__()
        _check(channels, {"ratio": ratio})
        planes = int(channels * ratio)
        self.pooling = pooling
        self.conv_mask = nn.Conv2d(channels, 1, 1) if pooling == "att" else None
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            assert self.conv_mask.bias is not None
            nn.init.zeros_(self.conv_mask.bias)
        self.channel_add = _transform(channels, planes) if "channel_add" in fusions else None
        self.channel_mul = _transform(channels, planes) if "channel_mul" in fusions else None

    def context(self, x: Tensor) -> Tensor:
        """(N, C, 1, 1) context: attention-weighted or plain average over the positions."""
        if self.conv_mask is None:
            return x.mean(dim=(2, 3), keepdim=True)
        n, c = x.shape[:2]
        weights = self.conv_mask(x).flatten(2).softmax(dim=2)  # (N, 1, HW)
        return torch.matmul(x.flatten(2), weights.transpose(1, 2)).view(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        context = self.context(x)
        out = x
        if self.channel_mul is not None:
            out = out * self.channel_mul(context).sigmoid()
        if self.channel_add is not None:
            out = out + self.channel_add(context)
        return out
