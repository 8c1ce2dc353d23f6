"""Polarized Self-Attention (Liu et al., arXiv 2107.00782), after the official PSA_p and PSA_s of
DeLightCMU/PSA (semantic-segmentation/network/PSA.py); mode "parallel" is PSA_p, "sequential" PSA_s.

Channel-only branch (the code's spatial_pool): W_v (C -> C/2) and W_q (C -> 1) 1x1 convs without bias;
softmax of W_q(x) over the H*W positions pools W_v(x) to a C/2 vector; W_z brings it to C; sigmoid;
x times that channel mask. Spatial-only branch (the code's channel_pool): W_q, W_v (C -> C/2, no bias);
the global average of W_q(x) (C/2 values) dotted with W_v(x) at every position gives one map; sigmoid;
x times that spatial mask. parallel: ch(x) + sp(x); sequential: sp(ch(x)).

The two official modules differ from the paper, and from each other (the code is followed; tests pin each):
- W_z: the paper's is a 1x1 conv C/2 -> C with a LayerNorm; PSA_p has the bias-free 1x1 conv only, PSA_s
  a bottleneck conv C/2 -> C/8 -> LayerNorm -> ReLU -> conv C/8 -> C, both convs with biases.
- spatial-only softmax: the paper's eq. applies it to the pooled query, over its C/2 channels; PSA_p
  applies it to the product, over the H*W positions (then the sigmoid); PSA_s to W_v(x), over the
  positions of each of its C/2 maps, and none to the pooled query.
Initialisation as the code: the four W_q / W_v convs Kaiming-normal (fan in), W_z PyTorch's default.
The released HRNet (network/hrnetv2.py) puts PSA_s after the first conv-BN-ReLU of every BasicBlock.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Choice
from attnbench.modules.registry import register_module

MODES = ("parallel", "sequential")
BOTTLENECK = 4  # PSA_s: ratio of its W_z bottleneck, on top of the C/2 inner width


def _projection(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A bias-free 1x1 conv, Kaiming-normal with fan in (the official reset_parameters)."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


class ChannelOnly(nn.Module):
    """x * sigmoid(W_z(W_v(x) softmax_positions(W_q(x))^T)), W_z a conv (PSA_p) or a bottleneck (PSA_s)."""

    def __init__(self, channels: int, bottleneck: bool) -> None:
        super().__init__()
        inner = channels // 2
        self.conv_v_right = _projection(channels, inner)
        self.conv_q_right = _projection(channels, 1)
        if bottleneck:
            squeezed = inner // BOTTLENECK
            self.conv_up: nn.Module = nn.Sequential(
                nn.Conv2d(inner, squeezed, 1),
                nn.LayerNorm([squeezed, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(squeezed, channels, 1),
            )
        else:
            self.conv_up = nn.Conv2d(inner, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        values = self.conv_v_right(x).flatten(2)  # (N, C/2, HW)
        weights = torch.softmax(self.conv_q_right(x).flatten(2), dim=2)  # (N, 1, HW)
        context = torch.matmul(values, weights.transpose(1, 2))[..., None]  # (N, C/2, 1, 1)
        return x * torch.sigmoid(self.conv_up(context))


class SpatialOnly(nn.Module):
    """x * sigmoid(GAP(W_q(x)) . W_v(x)), softmax over positions after the product (PSA_p) or on W_v(x) (PSA_s)."""

    def __init__(self, channels: int, softmax_values: bool) -> None:
        super().__init__()
        self.softmax_values = softmax_values
        self.conv_q_left = _projection(channels, channels // 2)
        self.conv_v_left = _projection(channels, channels // 2)

    def forward(self, x: Tensor) -> Tensor:
        query = self.conv_q_left(x).mean(dim=(2, 3))[:, None, :]  # (N, 1, C/2)
        values = self.conv_v_left(x).flatten(2)  # (N, C/2, HW)
        if self.softmax_values:
            context = torch.matmul(query, torch.softmax(values, dim=2))
        else:
            context = torch.softmax(torch.matmul(query, values), dim=2)
        return x * torch.sigmoid(context).reshape(x.shape[0], 1, *x.shape[2:])


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    needed = 2 * BOTTLENECK if hp["mode"] == "sequential" else 2
    if channels < needed:
        raise ConfigError("mode", hp["mode"], f"a mode this width allows (it needs >= {needed} channels, has {channels})")


@register_module(
    "psa",
    kind="gate",
    paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression, arXiv 2107.00782",
    code="DeLightCMU/PSA",
    params={"mode": Choice("parallel", choices=MODES, help="PSA_p: ch(x) + sp(x); PSA_s: sp(ch(x))")},
    check_channels=_check_channels,
)
class PolarizedSelfAttention(nn.Module):
    """PSA_p or PSA_s."""

    def __init__(self, channels: int, mode: str = "parallel") -> None:
        super().__init__()
        self.mode = mode
        sequential = mode == "sequential"
        self.channel = ChannelOnly(channels, bottleneck=sequential)
        self.spatial = SpatialOnly(channels, softmax_values=sequential)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "sequential":
            return self.spatial(self.channel(x))
        return self.channel(x) + self.spatial(x)
