"""A model of your own, as attnbench sees it: plain PyTorch, nothing imported from attnbench.

`examples/custom_backbone.yaml` names `custom_backbone:small_resnet` as its factory; attnbench
imports this file from the ablation file's folder, builds the model on the meta device to find the
slots its patterns name, then builds it for real, with a module in those slots, for every point.
"""
from __future__ import annotations

from torch import Tensor, nn


class Block(nn.Module):
    """A residual block: two 3x3 convs with BN, a 1x1 projection where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, three stages of `depth` blocks (the 2nd and 3rd halve the map), global pool, classifier."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), depth: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, channels = [], widths[0]
        for index, width in enumerate(widths):
            blocks = [Block(channels if i == 0 else width, width, 2 if index > 0 and i == 0 else 1) for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def small_resnet(widths: list[int] = (16, 32, 64), depth: int = 2, num_classes: int = 10) -> SmallResNet:
    """The factory the ablation file names."""
    return SmallResNet(tuple(widths), depth, num_classes)
