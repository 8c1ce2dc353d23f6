"""MobileNetV2 (Sandler et al., arXiv 1801.04381) with torchvision's layout and initialisation, and slots.

As torchvision/models/mobilenetv2.py builds it: a 3x3 stride-2 conv to 32 channels, 17 inverted
residual blocks in the 7 groups of the paper's (t, c, n, s) table (Table 2), a 1x1 conv to 1280,
global average pooling, dropout 0.2 and a Linear layer. Every conv is bias-free and followed by
BatchNorm, and by ReLU6 except the projections (the linear bottlenecks); a block expands to
round(t * C_in) channels (none when t = 1), filters them depthwise (3x3, the group's stride in its
first block) and projects them to c, adding its input when the shapes allow. 3,504,872 parameters,
300,774,272 MACs at 224 x 224 (torchvision's published 0.301 GFLOPS).
State-dict names are torchvision's (features.N..., classifier.1), so its weights load (slot weights aside).

Stages are the 7 bottleneck groups, numbered 1..7 in the table's order (stage 1: t=1, c=16).
A gating module sits in each block of the chosen stages, in one of two positions:
- depthwise: after the depthwise conv's BN and ReLU6, on the t * C_in expanded channels: Coordinate
  Attention's official mbv2_ca.py (houqb/CoordAttention, formerly Andrew-Qibin), whose t = 1 block has
  none (stages 2-7);
- projection: after the projection's BN, before the residual addition: ECA-Net's official
  eca_mobilenetv2.py (BangguWu/ECANet), in all 17 blocks (stages 1-7).

Initialisation is torchvision's loop over every module, slot modules included, as the official CA and
ECA MobileNetV2 code run it over their attention modules: Kaiming-normal fan-out convs, BatchNorm
(1, 0), Linear N(0, 0.01) with zero bias. A slot module's own special init (CBAM's zero BN weight) is
overwritten there too, as it would be in that code.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.backbones.registry import BackboneEntry, register_backbone
from attnbench.modules.slots import Planner, Site

# (t, c, n, s) of the paper's Table 2, one row per stage: expansion, output channels, blocks, first stride
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STAGES = tuple(range(1, len(SETTINGS) + 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT = 0.2
POSITIONS = ("depthwise", "projection")


class ConvBNReLU6(nn.Sequential):
    """Bias-free conv ("same" padding), BatchNorm, ReLU6: torchvision's Conv2dNormActivation as MobileNetV2 uses it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


def _hidden(in_channels: int, expand_ratio: int) -> int:
    """Expanded width of a block, as torchvision rounds it."""
    return int(round(in_channels * expand_ratio))


class InvertedResidual(nn.Module):
    """1x1 expand (t > 1), 3x3 depthwise, 1x1 linear projection, residual when stride 1 and widths match; one slot."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, where: tuple[int, int, int],
                 plan: Planner) -> None:
        super().__init__()
        hidden = _hidden(in_channels, expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = [] if expand_ratio == 1 else [ConvBNReLU6(in_channels, hidden, 1)]
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        # the slot follows the depthwise ConvBNReLU6 or the projection's BN (the last layer)
        depthwise = plan.position == "depthwise"
        self.slot_after = len(layers) - 3 if depthwise else len(layers) - 1
        stage, block, blocks = where
        self.attention = plan.gate(Site("gate", stage, block, plan.position, hidden if depthwise else out_channels,
                                        blocks=blocks))

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for index, layer in enumerate(self.conv):
            out = layer(out)
            if index == self.slot_after:
                out = self.attention(out)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0), with a slot in every inverted residual block."""

    def __init__(self, plan: Planner, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, STEM_CHANNELS, stride=2)]
        in_channels = STEM_CHANNELS
        for stage, (t, c, n, s) in zip(STAGES, SETTINGS):
            for i in range(n):
                layers.append(InvertedResidual(in_channels, c, s if i == 0 else 1, t, (stage, i, n), plan))
                in_channels = c
        layers.append(ConvBNReLU6(in_channels, LAST_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(LAST_CHANNELS, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNetV2 initialisation, over every module in order (slot modules included; their norms
    without affine and linears without bias, which torchvision's own layers do not have, are skipped)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_mobilenet_v2(plan: Planner, num_classes: int) -> MobileNetV2:
    """MobileNetV2 with the plan's module in the chosen position of the chosen stages' blocks."""
    return MobileNetV2(plan, num_classes)


register_backbone(BackboneEntry(
    name="mobilenet_v2",
    builder=build_mobilenet_v2,
    stages=STAGES,
    default_stages=(2, 3, 4, 5, 6, 7),  # the default position's paper (CA): no module in the t = 1 block
    conv_stages=(),
    positions=POSITIONS,
    min_input=32,
    family="mobilenet",
    paper="MobileNetV2, arXiv 1801.04381; torchvision layout",
    accepts=("gate",),
))
