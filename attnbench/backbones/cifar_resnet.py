"""He et al.'s CIFAR ResNets (arXiv 1512.03385, section 4.2): ResNet-20/32/44/56/110.

A 3x3 stem of 16 channels, three stages of n basic blocks at 16, 32 and 64 channels
(32x32, 16x16 and 8x8 maps for a 32x32 input), global average pooling and a linear
classifier; 6n+2 layers. Shortcuts are the paper's option A: identity, subsampled and
zero-padded in channels where the shape changes, so they have no parameters (the
paper's Table 6 counts: 0.27 M, 0.46 M, 0.66 M, 0.85 M, 1.7 M).

Stages are numbered 1..3. Slots and positions are those of the ImageNet ResNets.
"""
from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.backbones.registry import BackboneEntry, register_backbone
from attnbench.backbones.resnet import POSITIONS, BasicBlock, Layout, Where, init_like_torchvision
from attnbench.modules.slots import Planner

STAGES = (1, 2, 3)
WIDTHS = (16, 32, 64)
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: take every `stride`-th pixel and pad the new channels with zeros."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs with slots in every block."""

    # set by name in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, blocks_per_stage: int, plan: Planner, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = WIDTHS[0]
        for index, (stage, width) in enumerate(zip(STAGES, WIDTHS)):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if index > 0 and i == 0 else 1
                block = BasicBlock(in_channels, width, stride, Where(stage, i, blocks_per_stage), plan, Layout())
                if block.downsample is not None:
                    block.downsample = ZeroPadShortcut(in_channels, width, stride)
                blocks.append(block)
                in_channels = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_like_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _build(blocks_per_stage: int, plan: Planner, num_classes: int) -> CifarResNet:
    return CifarResNet(blocks_per_stage, plan, num_classes)


for _depth, _n in DEPTHS.items():
    register_backbone(BackboneEntry(
        name=f"cifar_resnet{_depth}",
        builder=partial(_build, _n),
        stages=STAGES,
        default_stages=STAGES,
        conv_stages=(2, 3),
        positions=POSITIONS,
        min_input=4,
        family="cifar_resnet_he",  # He et al.'s 3-stage CIFAR ResNets, not the 4-stage cifar_resnet18...
        paper="Deep Residual Learning, arXiv 1512.03385, section 4.2 (CIFAR-10 ResNets, option A shortcuts)",
        default_input=32,
    ))
