"""Split-Attention convolution of ResNeSt (Zhang et al., arXiv 2004.08955), after the official
SplAtConv2d (zhanghang1989/ResNeSt, resnest/torch/models/splat.py) and its Bottleneck (resnet.py).

One 3x3 conv without bias makes R*C channels with K*R groups, then BN and ReLU; the R splits of C
channels are summed, average pooled, and go through a 1x1 conv C -> c' (K groups, with bias), BN,
ReLU and a 1x1 conv c' -> R*C (K groups, with bias), c' = max(C_in * R // reduction, 32). The
r-softmax takes, per cardinal group and channel, the softmax across the R splits (a sigmoid when
R = 1, which is then an SE-like gate); the output is the attention-weighted sum of the splits.

Paper vs code: the paper draws each split as its own transform of one cardinal group; the code
(and the paper's "radix-major" appendix layout) runs one grouped conv, so the split r of cardinal
group k sees the input channel slice number r*K + k, of C_in / (K*R) channels; that is followed
here. The official block has BN and ReLU inside the unit and none after it. In a strided block
ResNeSt-50 does not stride the conv: a 3x3 average pool (stride s, padding 1, zeros counted)
follows the unit ("avd", avd_first=False); the "fast" ablation models pool before it instead.
The official ResNet inits every conv He-normal with fan-out (biases keep PyTorch's default) and
BN to (1, 0); the unit inits itself so, whatever backbone holds it.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Bool, Int
from attnbench.modules.registry import Placement, register_module

MIN_INTER_CHANNELS = 32  # the official floor of c'


def _inter_channels(channels: int, radix: int, reduction: int) -> int:
    return max(channels * radix // reduction, MIN_INTER_CHANNELS)


def _check(channels: int, out_channels: int, hp: dict[str, Any]) -> None:
    radix, groups = hp["radix"], hp["groups"]
    if channels % (groups * radix):
        key, value = ("radix", radix) if channels % radix else ("groups", groups)
        raise ConfigError(key, value, f"groups * radix ({groups} * {radix}) must divide the {channels} input channels")
    if out_channels % groups:
        raise ConfigError("groups", groups, f"a divisor of the {out_channels} output channels")
    inter = _inter_channels(channels, radix, hp["reduction"])
    if inter % groups:
        raise ConfigError("groups", groups, f"a divisor of the {inter} attention channels")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    _check(channels, channels, hp)


@register_module(
    "splat",
    kind="conv",
    paper="ResNeSt: Split-Attention Networks, arXiv 2004.08955",
    code="zhanghang1989/ResNeSt",
    params={
        "radix": Int(2, low=1, high=8, help="R: splits per cardinal group (1: a sigmoid gate)"),
        "groups": Int(1, low=1, high=64, help="K: cardinal groups"),
        "reduction": Int(4, low=1, high=64, log=True, help="attention width c' = max(C_in * R // reduction, 32)"),
        "avd": Bool(True, help="strided: a 3x3 average pool with the stride instead of a strided conv (ResNeSt-50)"),
        "avd_first": Bool(False, help="that pool before the unit instead of after it (the 'fast' models)"),
    },
    check_channels=_check_channels,
    placement=Placement(stages="all"),  # every block of all four stages
    includes_norm=True,  # its branches end in BN and ReLU: the block's own after the 3x3 go
)
class SplitAttentionConv(nn.Module):
    """Split-attention 3x3 conv: R splits weighted by an r-softmax from their pooled sum."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        radix: int = 2,
        groups: int = 1,
        reduction: int = 4,
        avd: bool = True,
        avd_first: bool = False,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        _check(channels, out_channels, {"radix": radix, "groups": groups, "reduction": reduction})
        self.radix, self.groups, self.out_channels = radix, groups, out_channels
        self.pool_stride = stride if avd and stride > 1 else 1
        self.avd_first = avd_first
        conv_stride = 1 if self.pool_stride > 1 else stride
        inter = _inter_channels(channels, radix, reduction)
        self.conv = nn.Conv2d(channels, out_channels * radix, 3, conv_stride, padding=1, groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(out_channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(out_channels, inter, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, out_channels * radix, 1, groups=groups)
        for conv in (self.conv, self.fc1, self.fc2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def _pool(self, x: Tensor) -> Tensor:
        # nn.AvgPool2d(3, stride, padding=1) as the official avd_layer: padded zeros count
        return F.avg_pool2d(x, 3, self.pool_stride, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_stride > 1 and self.avd_first:
            x = self._pool(x)
        x = self.relu(self.bn0(self.conv(x)))
        splits = x.split(self.out_channels, dim=1)
        gap = splits[0]
        for split in splits[1:]:
            gap = gap + split
        logits = self.fc2(self.relu(self.bn1(self.fc1(gap.mean(dim=(2, 3), keepdim=True)))))
        if self.radix == 1:
            out = logits.sigmoid() * x
        else:
            # fc2's outputs are (K, R, C/K) per sample; softmax across R, then split-major (R, C)
            n = x.shape[0]
            weights = logits.view(n, self.groups, self.radix, -1).transpose(1, 2).softmax(dim=1)
            weights = weights.reshape(n, self.radix, self.out_channels, 1, 1)
            out = weights[:, 0] * splits[0]
            for r in range(1, self.radix):
                out = out + weights[:, r] * splits[r]
        if self.pool_stride > 1 and not self.avd_first:
            out = self._pool(out)
        return out
