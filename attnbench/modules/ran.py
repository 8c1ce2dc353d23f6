"""The soft mask branch of the Residual Attention Network (Wang et al., arXiv 1704.06904) as a gate,
after the official fwang91/residual-attention-network imagenet_model/Attention-56-deploy.prototxt
(Caffe; the structure of its AttentionA/B/C mask branches is followed layer for layer).

output = (1 + M(x)) * x (attention residual learning), M the soft mask branch: bottom-up, n
times a 3x3 stride-2 max-pool followed by r residual units (2r at the lowest resolution);
top-down, at each of the n - 1 intermediate scales a bilinear upsampling to that scale plus a
skip connection (one residual unit on the bottom-up features of that scale), then r residual
units; a last bilinear upsampling to the input size; then BN-ReLU-conv1x1-BN-ReLU-conv1x1
(no biases) and a sigmoid. Attention-56 uses n = 3, 2, 1 in its 56x56, 28x28 and 14x14
stages (down to 7x7 for a 224 input), r = 1. The residual units are the prototxt's
pre-activation bottlenecks: x + conv1x1(BN-ReLU(conv3x3(BN-ReLU(conv1x1(BN-ReLU(x)))))),
width C / 4, no biases; each BN-ReLU belongs to the unit reading it (the prototxt names it
after its input blob).

Where this differs from the Caffe network, and why:
- The trunk branch is the backbone's own block; the mask reads the gate's input x, where the
  prototxt's mask reads the trunk's input (its first, shared residual unit) and multiplies the
  trunk's output. As a gate both are x.
- Caffe pools in ceil mode (PyTorch's ceil_mode=True), and its Interp layer (DeepLab's, in the
  authors' buptwangfei/caffe) is bilinear with aligned corners (align_corners=True).
- The prototxt has r = 1 only; r > 1 follows the paper's definition (r units between adjacent
  pooling / upsampling layers). The skip connections are always one unit each.
- The deploy prototxt carries no initialisation: PyTorch's defaults.
A map too small for n pools (a 1x1 side, which a 3x3 stride-2 pool cannot take) is refused
when the forward sees it: a channels-only check cannot know the map size.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Bool, Int
from attnbench.modules.registry import Placement, register_module


class PreActUnit(nn.Module):
    """Pre-activation bottleneck residual unit of the prototxt, width C / 4."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        width = channels // 4
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return x + self.conv3(self.relu(self.bn3(out)))


def pooled_side(side: int) -> int:
    """Side after Caffe's 3x3 stride-2 max-pool without padding (ceil mode)."""
    return -(-(side - 3) // 2) + 1


def max_downsamples(height: int, width: int) -> int:
    """How many 3x3 stride-2 pools an H x W map takes (each needs a side of at least 2)."""
    count = 0
    while min(height, width) >= 2:
        height, width, count = pooled_side(height), pooled_side(width), count + 1
    return count


def _check(channels: int, hp: dict) -> None:
    if channels < 4:
        raise ConfigError("channels", channels, "at least 4 (the residual units are C / 4 wide)")


def _upsample(x: Tensor, like: Tensor) -> Tensor:
    """Caffe's Interp layer with a second bottom: bilinear to that blob's size, corners aligned."""
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=True)


@register_module(
    "ran",
    kind="gate",
    paper="Residual Attention Network for Image Classification, arXiv 1704.06904",
    code="fwang91/residual-attention-network",
    params={
        "downsamples": Int(1, low=1, high=6, per_stage=True,
                           help="n: max-pool steps of the mask (Attention-56: 3, 2, 1 at 56, 28, 14); n - 1 skips"),
        "units": Int(1, low=1, high=4, help="r: residual units between adjacent pooling / upsampling layers"),
        "attention_residual": Bool(True, help="(1 + M) * x; false: naive attention learning M * x (paper's NAL)"),
    },
    check_channels=_check,
    placement=Placement(position="post", stages="all_but_last", blocks=(-1,)),  # Attention-56: one per stage at 56, 28, 14
)
class ResidualAttention(nn.Module):
    """(1 + M(x)) * x with M the bottom-up top-down soft mask branch."""

    def __init__(self, channels: int, downsamples: int = 1, units: int = 1, attention_residual: bool = True) -> None:
        super().__init__()
        _check(channels, {})
        self.downsamples = downsamples
        self.attention_residual = attention_residual
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # down[i]: the units after the (i+1)-th pool; the lowest scale has 2r (r down, r up)
        self.down = nn.ModuleList(
            nn.Sequential(*(PreActUnit(channels) for _ in range(units * (2 if i == downsamples - 1 else 1))))
            for i in range(downsamples)
        )
        # skips[i] and up[i] belong to the scale of down[i], for the n - 1 intermediate scales
        self.skips = nn.ModuleList(PreActUnit(channels) for _ in range(downsamples - 1))
        self.up = nn.ModuleList(nn.Sequential(*(PreActUnit(channels) for _ in range(units))) for _ in range(downsamples - 1))
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
        )

    def mask(self, x: Tensor) -> Tensor:
        """M(x) in (0, 1), same shape as x."""
        height, width = x.shape[2:]
        if max_downsamples(height, width) < self.downsamples:
            raise ConfigError(
                "downsamples", self.downsamples,
                f"at most {max_downsamples(height, width)} for a {height}x{width} map"
                " (a 3x3 stride-2 max-pool needs a side of 2)",
            )
        scales = []
        out = x
        for level in self.down:
            out = level(self.pool(out))
            scales.append(out)
        for i in reversed(range(self.downsamples - 1)):
            out = self.up[i](_upsample(out, scales[i]) + self.skips[i](scales[i]))
        return self.head(_upsample(out, x)).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        mask = self.mask(x)
        return x * mask + x if self.attention_residual else x * mask
