"""Selective Kernel convolution (Li et al., arXiv 1903.06586), after the official SKNet-50.

The official code is Caffe (implus/SKNet, models/sknet50.prototxt); this follows its layer graph.
Split: one branch per kernel, each a grouped conv -> BN -> ReLU; a k x k kernel is a 3x3 conv
with dilation (k - 1) / 2 (the paper's "5x5" is 3x3 dilation 2). Fuse: U = sum of the branches,
global average pool, 1x1 conv C -> d without bias, BN, ReLU, with d = max(C // r, L). Select:
one 1x1 conv d -> M*C without bias (the prototxt's B_fc2; the paper's M matrices stacked branch
after branch), softmax across the M branches per channel, V = sum_m a_m * U_m.

Paper and code agree on the unit; what the paper leaves open, the prototxt fixes: no conv has a
bias, the stride is in every branch conv, and V goes straight into the block's 1x1 expansion conv
(there is no BN or ReLU after the unit in SKNet-50). Weights start as the prototxt's fillers:
"msra" (He normal, fan-in) for the branch convs, Gaussian std 0.01 for the two FC convs.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Bool, Int, OddKernels
from attnbench.modules.registry import Placement, register_module


def _check_groups(channels: int, groups: int) -> None:
    if channels % groups:
        raise ConfigError("groups", groups, f"a divisor of the {channels} channels")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    _check_groups(channels, hp["groups"])


@register_module(
    "sk",
    kind="conv",
    paper="Selective Kernel Networks, arXiv 1903.06586",
    code="implus/SKNet (Caffe prototxt)",
    params={
        "kernels": OddKernels((3, 5), low=3, high=11, help="branch kernel sizes; M = how many (paper: 3 and 5)"),
        "dilated": Bool(True, help="k x k as a 3x3 conv with dilation (k-1)/2 (paper); false: a plain k x k conv"),
        "groups": Int(32, low=1, high=1024, help="G: groups of every branch conv"),
        "reduction": Int(16, low=1, high=1024, log=True, help="r: the fuse FC has max(C // r, L) outputs"),
        "min_dim": Int(32, low=1, high=1024, help="L: smallest width of the fuse FC"),
        "select": Bool(True, help="softmax attention across branches; false: plain sum (the paper's rows without SK)"),
    },
    check_channels=_check_channels,
    placement=Placement(stages="all"),  # every block of all four stages
    includes_norm=True,  # its branches end in BN and ReLU: the block's own after the 3x3 go
)
class SelectiveKernel(nn.Module):
    """SK convolution: M conv-BN-ReLU branches fused by a per-channel softmax over the branches."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        kernels: tuple[int, ...] = (3, 5),
        dilated: bool = True,
        groups: int = 32,
        reduction: int = 16,
        min_dim: int = 32,
        select: bool = True,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        _check_groups(channels, groups)
        _check_groups(out_channels, groups)
        self.out_channels = out_channels
        self.branches = nn.ModuleList()
        for k in kernels:
            dilation = (k - 1) // 2 if dilated else 1
            size = 3 if dilated else k
            conv = nn.Conv2d(channels, out_channels, size, stride, padding=(k - 1) // 2, dilation=dilation, groups=groups,
                             bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")  # Caffe's msra filler
            self.branches.append(nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
        self.fuse: nn.Sequential | None = None
        self.select: nn.Conv2d | None = None
        if select:
            hidden = max(out_channels // reduction, min_dim)
            squeeze = nn.Conv2d(out_channels, hidden, 1, bias=False)
            self.fuse = nn.Sequential(squeeze, nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
            self.select = nn.Conv2d(hidden, len(kernels) * out_channels, 1, bias=False)
            nn.init.normal_(squeeze.weight, std=0.01)  # the prototxt's gaussian filler
            nn.init.normal_(self.select.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        features = [branch(x) for branch in self.branches]
        fused = features[0]
        for feature in features[1:]:
            fused = fused + feature
        if self.fuse is None or self.select is None:
            return fused
        logits = self.select(self.fuse(fused.mean(dim=(2, 3), keepdim=True)))
        # (N, M*C, 1, 1) -> (N, M, C, 1, 1): branch-major, as the prototxt's Reshape (0, M, -1, 0)
        weights = logits.view(x.shape[0], len(features), self.out_channels, 1, 1).softmax(dim=1)
        out = weights[:, 0] * features[0]
        for m in range(1, len(features)):
            out = out + weights[:, m] * features[m]
        return out
