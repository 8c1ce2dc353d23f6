"""Large Kernel Attention from the Visual Attention Network (Guo et al., arXiv 2202.09741).

A K x K kernel decomposed into a (2d-1) x (2d-1) depthwise conv, a ceil(K/d) x ceil(K/d)
depthwise conv with dilation d, and a 1x1 conv; output = input * attention, with no
sigmoid (official code). K=21, d=3 gives 5x5 dw, 7x7 dw dilation 3 (padding 9), 1x1.
The switches reproduce the component ablation of VAN's Table 3.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Bool, Choice, Int
from attnbench.modules.registry import register_module


def lka_kernels(kernel_size: int, dilation: int) -> tuple[int, int]:
    """(local depthwise kernel, dilated depthwise kernel) for a K x K receptive field with dilation d."""
    return 2 * dilation - 1, math.ceil(kernel_size / dilation)


def same_padding(kernel: int, dilation: int = 1) -> int | str:
    """Symmetric padding keeping the size at stride 1, or 'same' when it must be asymmetric."""
    total = dilation * (kernel - 1)
    return total // 2 if total % 2 == 0 else "same"


def _check(channels: int, hp: dict) -> None:
    local, dilated = lka_kernels(hp["kernel_size"], hp["dilation"])
    if hp["kernel_size"] <= local:
        raise ConfigError("kernel_size", hp["kernel_size"],
                          f"larger than the local kernel 2d-1 = {local} for dilation {hp['dilation']}")
    if hp["drop_dw"] and hp["drop_dw_d"] and hp["drop_pw"]:
        raise ConfigError("drop_pw", True, "false when drop_dw and drop_dw_d are both true (nothing would be left)")


@register_module(
    "lka",
    kind="gate",
    paper="Visual Attention Network, arXiv 2202.09741",
    code="Visual-Attention-Network/VAN-Classification",
    params={
        "kernel_size": Int(21, low=3, high=63, help="K: receptive field of the decomposed kernel"),
        "dilation": Int(3, low=1, high=5, help="d: dilation of the second depthwise conv"),
        "drop_dw": Bool(False, help="ablation: remove the local depthwise conv"),
        "drop_dw_d": Bool(False, help="ablation: remove the dilated depthwise conv"),
        "drop_pw": Bool(False, help="ablation: remove the 1x1 conv"),
        "sigmoid": Bool(False, help="ablation: squash the attention with a sigmoid"),
        "combine": Choice("multiply", choices=("multiply", "add"), help="ablation: input * attention or input + attention"),
    },
    check_channels=_check,
)
class LKA(nn.Module):
    """u * conv1x1(dwconv_dilated(dwconv(u)))."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 21,
        dilation: int = 3,
        drop_dw: bool = False,
        drop_dw_d: bool = False,
        drop_pw: bool = False,
        sigmoid: bool = False,
        combine: str = "multiply",
    ) -> None:
        super().__init__()
        local, dilated = lka_kernels(kernel_size, dilation)
        self.sigmoid = sigmoid
        self.combine = combine
        self.conv0 = None if drop_dw else nn.Conv2d(channels, channels, local, padding=same_padding(local), groups=channels)
        self.conv_spatial = None if drop_dw_d else nn.Conv2d(
            channels, channels, dilated, padding=same_padding(dilated, dilation), groups=channels, dilation=dilation
        )
        self.conv1 = None if drop_pw else nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        attn = x
        for conv in (self.conv0, self.conv_spatial, self.conv1):
            if conv is not None:
                attn = conv(attn)
        if self.sigmoid:
            attn = attn.sigmoid()
        return x * attn if self.combine == "multiply" else x + attn
