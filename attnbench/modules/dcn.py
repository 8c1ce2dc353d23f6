"""Deformable convolution, v1 (Dai et al., arXiv 1703.06211) and v2 (Zhu et al., arXiv 1811.11168).

Replaces a bias-free k x k conv of a backbone. An offset conv (same kernel, stride and padding,
with bias, zero-initialised) predicts 2*k*k offsets per deformable group (v1), or, as in the
official DCNv2 code, 3*k*k channels split into offsets and mask logits (v2; mask = sigmoid).
At initialisation the offsets are zero, so v1 equals the plain conv and v2, whose mask starts
at sigmoid(0) = 0.5, equals half of it (the DCNv2 paper's stated initial values: 0 and 0.5).

Backbones that re-initialise every nn.Conv2d must call `init_offset()` afterwards (as mmdet's
ResNet does for its DCN blocks), or the offset conv stops starting at zero.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.errors import ConfigError
from attnbench.hparams import Bool, Int
from attnbench.modules.deform_sampling import deform_conv2d
from attnbench.modules.registry import register_module

try:
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    TORCHVISION_DEFORM = True
# a torchvision built for another torch fails with RuntimeError rather than ImportError
except (ImportError, RuntimeError):
    torchvision_deform_conv2d = None
    TORCHVISION_DEFORM = False

BACKENDS = ("auto", "torch", "torchvision")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    groups = hp["deformable_groups"]
    if channels % groups:
        raise ConfigError("deformable_groups", groups, f"a divisor of the {channels} input channels")


@register_module(
    "dcn",
    kind="conv",
    paper="Deformable ConvNets v1, arXiv 1703.06211; v2, arXiv 1811.11168",
    params={
        "kernel_size": Int(3, low=1, high=7, odd=True, help="k: taps per side of the deformable kernel"),
        "deformable_groups": Int(1, low=1, high=64, help="G: channel groups with their own offsets (and mask)"),
        "modulated": Bool(True, help="v2 modulation mask; false = v1"),
    },
    check_channels=_check_channels,
)
class DeformConv(nn.Module):
    """Deformable k x k conv without bias; `backend` picks the pure-PyTorch or the torchvision kernel."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        kernel_size: int = 3,
        deformable_groups: int = 1,
        modulated: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_channels(channels, {"deformable_groups": deformable_groups})
        self.in_channels = channels
        self.out_channels = channels if out_channels is None else out_channels
        self.stride = stride
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.deformable_groups = deformable_groups
        self.modulated = modulated
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(self.out_channels, channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        taps = deformable_groups * kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(channels, (3 if modulated else 2) * taps, kernel_size, stride, self.padding)
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset conv, so the module starts as the plain conv (v2: times the 0.5 mask)."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def overhead_parameters(self) -> list[nn.Parameter]:
        """What deformation adds over the plain conv it replaces: the offset (and mask) conv."""
        return list(self.conv_offset.parameters())

    def uses_torchvision(self) -> bool:
        """Whether forward runs torchvision's kernel (backend 'torchvision', or 'auto' where it imports)."""
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, "one of " + ", ".join(BACKENDS))
        if self.backend == "torchvision" and not TORCHVISION_DEFORM:
            raise ConfigError("backend", self.backend, "auto or torch: torchvision.ops does not import here")
        return self.backend != "torch" and TORCHVISION_DEFORM

    def forward(self, x: Tensor) -> Tensor:
        offset = self.conv_offset(x)
        mask = None
        if self.modulated:
            # equals the official chunk into (o1, o2, mask) then cat(o1, o2), without the copy
            taps = self.deformable_groups * self.kernel_size * self.kernel_size
            offset, logits = offset.split([2 * taps, taps], dim=1)
            mask = logits.sigmoid()
        if self.uses_torchvision():
            return torchvision_deform_conv2d(x, offset, self.weight, stride=self.stride, padding=self.padding, mask=mask)
        return deform_conv2d(x, offset, self.weight, self.stride, self.padding, mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"deformable_groups={self.deformable_groups}, modulated={self.modulated}, backend={self.backend!r}"
        )
