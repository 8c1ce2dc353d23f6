"""Involution (Li et al., arXiv 2103.06255), after the official pure-PyTorch operator
(d-li14/involution, cls/mmcls/models/utils/involution_naive.py) and RedNet's bottleneck
(cls/mmcls/models/backbones/rednet.py; it runs the CuPy operator of involution_cuda.py, with the
same layers and the same sum).

Kernel generation, per output position: a 1x1 conv C -> C // r without bias, BN, ReLU, then a
1x1 conv C // r -> K*K*G with bias, G = C // group_channels; its outputs are group-major (the K*K
taps of group 0, then of group 1, ...). Each channel of group g is then the sum over the K x K
window (zero padding (K-1)/2, the conv's stride) of its input times that group's tap weights;
the channel count does not change. With stride s > 1 the kernels come from a s x s average pool
(stride s) of the input, as the official code does. RedNet replaces every 3x3 conv of the
ResNet-50 bottlenecks with a 7x7 involution (group channels 16, r = 4) and keeps the block's BN
and ReLU after it; its init (mmcv kaiming_init) is He normal with fan-out for both convs, biases 0.

Paper vs code: the paper's kernel function is W1 relu(BN(W0 x)) with no bias; the code's second
conv has one (mmcv's ConvModule adds a bias where no norm follows), kept here. The paper speaks of
G groups; the code fixes the channels per group (16), so G follows C. The window is taken with
slices of the padded input stacked per tap, the values nn.Unfold gives, in ops the FLOP counter
counts (one multiply and one summand per tap, channel and output position).

An involution cannot change the channel count, and RedNet never asks it to: a conv that does (the
first conv of a widening basic block, ResNet-18's and the CIFAR ResNets') is refused before any
model is built, rather than given a projection the official code does not have.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Int
from attnbench.modules.registry import Placement, register_module


def _check_conv(in_channels: int, out_channels: int, stride: int, hp: dict[str, Any]) -> None:
    if out_channels != in_channels:
        raise ConfigError("attention", "involution", f"a module for convs that keep their channels (this one maps "
                          f"{in_channels} to {out_channels}): choose stages whose 3x3 convs do, or a bottleneck ResNet")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    if channels % hp["group_channels"]:
        raise ConfigError("group_channels", hp["group_channels"], f"a divisor of the {channels} channels")
    if hp["reduction"] > channels:
        raise ConfigError("reduction", hp["reduction"], f"at most the channel count {channels} (C // reduction must be >= 1)")


@register_module(
    "involution",
    kind="conv",
    paper="Involution: Inverting the Inherence of Convolution for Visual Recognition, arXiv 2103.06255",
    code="d-li14/involution",
    params={
        "kernel_size": Int(7, low=1, high=15, odd=True, help="K: the window of each position's own kernel (RedNet: 7)"),
        "group_channels": Int(16, low=1, high=1024, help="C / G: channels sharing one kernel (official: 16)"),
        "reduction": Int(4, low=1, high=1024, log=True, help="r: kernel generation width C // r (official: 4)"),
    },
    check_channels=_check_channels,
    check_conv=_check_conv,
    placement=Placement(stages="all"),  # RedNet: every bottleneck of all four stages
)
class Involution(nn.Module):
    """Involution: a K x K kernel generated at every position from that pixel, shared by a channel group."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        kernel_size: int = 7,
        group_channels: int = 16,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        hp = {"group_channels": group_channels, "reduction": reduction}
        _check_conv(channels, channels if out_channels is None else out_channels, stride, hp)
        _check_channels(channels, hp)
        self.kernel_size, self.stride = kernel_size, stride
        self.groups = channels // group_channels
        hidden = channels // reduction
        reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.reduce = nn.Sequential(reduce, nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.span = nn.Conv2d(hidden, kernel_size * kernel_size * self.groups, 1)
        for conv in (reduce, self.span):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # mmcv kaiming_init
        assert self.span.bias is not None
        nn.init.zeros_(self.span.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        k, s = self.kernel_size, self.stride
        out_h, out_w = (height - 1) // s + 1, (width - 1) // s + 1
        kernels = self.span(self.reduce(x if s == 1 else F.avg_pool2d(x, s, s)))
        if tuple(kernels.shape[2:]) != (out_h, out_w):
            # the s x s pool floors a size it does not divide, the window rounds up: the official naive
            # operator fails here too (its view does not fit), the CuPy one reads past the kernel map
            raise ValueError(f"involution with stride {s} needs a map size divisible by it, got {height}x{width}")
        pad = (k - 1) // 2
        padded = F.pad(x, (pad, pad, pad, pad))
        taps = [padded[:, :, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s] for i in range(k) for j in range(k)]
        patches = torch.stack(taps, dim=2).view(n, self.groups, c // self.groups, k * k, out_h, out_w)
        weights = kernels.view(n, self.groups, 1, k * k, out_h, out_w)
        return (weights * patches).sum(dim=3).view(n, c, out_h, out_w)
