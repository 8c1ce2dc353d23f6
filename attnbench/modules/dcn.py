"""Deformable convolution, v1 (Dai et al., arXiv 1703.06211) and v2 (Zhu et al., arXiv 1811.11168).

Replaces a bias-free k x k conv (dilation d, padding d*(k-1)/2) of a backbone. An offset conv
(same kernel, stride, padding and dilation, with bias, zero-initialised) predicts 2*k*k offsets per
deformable group (v1), or 3*k*k channels split into offsets and mask logits (v2; the first 2*k*k
are the offsets, as both official codes slice them). The v2 mask comes in two conventions:

- `sigmoid`: mmcv's ModulatedDeformConv2dPack (mmcv/ops/modulated_deform_conv.py) and the DCNv2
  paper (section 3.1: initial offsets and mask 0 and 0.5), so a fresh v2 layer is half the plain conv;
- `2sigmoid`: the DCNv2 authors' own operator example (msracver/Deformable-ConvNets,
  DCNv2_op/example_symbol.py, MXNet: `2 * sigmoid`), so a fresh v2 layer is the plain conv.

At initialisation the offsets are zero, so v1 equals the plain conv. MSRA's DCNv1 ResNet-101
(R-FCN / Faster R-CNN symbols, MXNet) puts deformable convs in stage 5 only, with 4 deformable
groups and dilation 2, its offset conv dilated as well (its DeepLab symbol leaves the offset conv
undilated). The pure-PyTorch path takes dilation by moving each tap of the undilated kernel to its
dilated place through the offsets (one add on the offset map; the torchvision path needs none).

Backbones that re-initialise every nn.Conv2d must call `init_offset()` afterwards (as mmdet's
ResNet does for its DCN blocks), or the offset conv stops starting at zero.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.deform_sampling import deform_conv2d
from attnbench.modules.hparams import Bool, Choice, Int
from attnbench.modules.registry import register_module

try:
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    TORCHVISION_DEFORM = True
# a torchvision built for another torch fails with RuntimeError rather than ImportError
except (ImportError, RuntimeError):
    torchvision_deform_conv2d = None
    TORCHVISION_DEFORM = False

BACKENDS = ("auto", "torch", "torchvision")
MASKS = ("sigmoid", "2sigmoid")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    groups = hp["deformable_groups"]
    if channels % groups:
        raise ConfigError("deformable_groups", groups, f"a divisor of the {channels} input channels")


def dilation_shift(kernel_size: int, dilation: int, deformable_groups: int) -> Tensor:
    """Offsets (2*G*k*k, 1, 1) moving the taps of an undilated k x k kernel to those of the dilated one.

    Tap (a, b) of a kernel with padding d*(k-1)/2 samples p0 + d*(a, b) - d*(k-1)/2; the undilated
    kernel with padding (k-1)/2 samples p0 + (a, b) - (k-1)/2; the difference is (d-1)*((a, b) - (k-1)/2).
    """
    taps = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    rows = taps.repeat_interleave(kernel_size)  # taps are row-major, as in deform_sampling
    cols = taps.repeat(kernel_size)
    shift = (dilation - 1) * torch.stack((rows, cols), dim=1).flatten()  # (row, col) per tap
    return shift.repeat(deformable_groups)[:, None, None]


@register_module(
    "dcn",
    kind="conv",
    paper="Deformable ConvNets v1, arXiv 1703.06211; v2, arXiv 1811.11168",
    code="msracver/Deformable-ConvNets (MXNet); open-mmlab/mmcv ModulatedDeformConv2dPack",
    params={
        "kernel_size": Int(3, low=1, high=7, odd=True, help="k: taps per side of the deformable kernel"),
        "deformable_groups": Int(1, low=1, high=64, help="G: channel groups with their own offsets (and mask)"),
        "modulated": Bool(True, help="v2 modulation mask; false = v1"),
        "mask": Choice("sigmoid", choices=MASKS,
                       help="v2 mask: sigmoid (mmcv, paper; 0.5 at init) or 2*sigmoid (MSRA's DCNv2 example; 1 at init)"),
        "dilation": Int(1, low=1, high=16, help="d: dilation of the kernel (and of the offset conv); padding d*(k-1)/2"),
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
        mask: str = "sigmoid",
        dilation: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_channels(channels, {"deformable_groups": deformable_groups})
        if mask not in MASKS:
            raise ConfigError("mask", mask, "one of " + ", ".join(MASKS))
        self.in_channels = channels
        self.out_channels = channels if out_channels is None else out_channels
        self.stride = stride
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = dilation * (kernel_size // 2)  # the dilated conv's: output size as with dilation 1
        self.deformable_groups = deformable_groups
        self.modulated = modulated
        self.mask = mask
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(self.out_channels, channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        taps = deformable_groups * kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(
            channels, (3 if modulated else 2) * taps, kernel_size, stride, self.padding, dilation=dilation
        )
        # not in the state dict: a function of the hyperparameters
        self.register_buffer("tap_shift", dilation_shift(kernel_size, dilation, deformable_groups), persistent=False)
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset conv, so the module starts as the plain conv (v2: times the initial mask, 0.5 or 1)."""
        nn.init.zeros_(self.conv_offset.weight)
        assert self.conv_offset.bias is not None
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
            # mmcv chunks into (o1, o2, mask) and concatenates o1, o2; MSRA slices at 2*k*k: the same split, no copy
            taps = self.deformable_groups * self.kernel_size * self.kernel_size
            offset, logits = offset.split([2 * taps, taps], dim=1)
            mask = logits.sigmoid() if self.mask == "sigmoid" else 2 * logits.sigmoid()
        if self.uses_torchvision():
            return torchvision_deform_conv2d(
                x, offset, self.weight, stride=self.stride, padding=self.padding, dilation=self.dilation, mask=mask
            )
        if self.dilation > 1:
            offset = offset + self.tap_shift
        return deform_conv2d(x, offset, self.weight, self.stride, self.kernel_size // 2, mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"dilation={self.dilation}, deformable_groups={self.deformable_groups}, modulated={self.modulated}, "
            f"mask={self.mask!r}, backend={self.backend!r}"
        )
