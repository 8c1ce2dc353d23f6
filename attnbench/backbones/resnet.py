"""ResNet-18/34/50/101/152 with torchvision's layout and initialisation, and CIFAR-style variants.

Stages are numbered as in the ResNet paper: conv2_x ... conv5_x are stages 2..5
(torchvision's layer1..layer4), so DCNv2's "conv3-conv5" convention is stages 3, 4, 5.

A gating module sits in one of the SE paper's integration positions (Table 14):
- standard: after the block's last BN, before the residual addition (SE and CBAM papers);
- pre: on the block input, before the residual unit;
- post: after the addition and the final ReLU;
- identity: on the identity branch, in parallel with the residual unit.
A conv-replacing module (dcn) takes the place of each 3x3 conv of the chosen stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from attnbench.backbones.registry import SLOT_FLAG, BackboneEntry, SlotPlan, register_backbone

POSITIONS = ("standard", "pre", "post", "identity")
STAGES = (2, 3, 4, 5)
STAGE_WIDTHS = (64, 128, 256, 512)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class _Block(nn.Module):
    """Shared residual wiring of both block types; subclasses build `residual`."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, stage: int, plan: SlotPlan) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.position = plan.position
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)
        self.attention = plan.gate(in_channels if plan.position == "pre" else out_channels, stage)

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.position == "pre":
            x_in = self.attention(x)
            out = self.residual(x_in)
            identity = x
        else:
            out = self.residual(x)
            identity = x
            if self.position == "standard":
                out = self.attention(out)
        if self.downsample is not None:
            identity = self.downsample(identity)
        if self.position == "identity":
            identity = self.attention(identity)
        out = self.relu(out + identity)
        return self.attention(out) if self.position == "post" else out


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, stage: int, plan: SlotPlan) -> None:
        super().__init__(in_channels, planes, stride, stage, plan)
        self.conv1 = plan.conv3x3(in_channels, planes, stride, stage)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = plan.conv3x3(planes, planes, 1, stage)
        self.bn2 = nn.BatchNorm2d(planes)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_Block):
    """1x1 reduce, 3x3 (stride here: torchvision's "v1.5"), 1x1 expand (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, stage: int, plan: SlotPlan) -> None:
        super().__init__(in_channels, planes, stride, stage, plan)
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = plan.conv3x3(planes, planes, stride, stage)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """torchvision's ResNet, with slots; `cifar=True` swaps the stem for a 3x3 stride-1 conv without max-pool."""

    def __init__(self, block: type[_Block], depths: tuple[int, ...], plan: SlotPlan, num_classes: int, cifar: bool = False) -> None:
        super().__init__()
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 64
        for index, (stage, planes, depth) in enumerate(zip(STAGES, STAGE_WIDTHS, depths)):
            blocks = []
            for i in range(depth):
                stride = 2 if index > 0 and i == 0 else 1
                blocks.append(block(in_channels, planes, stride, stage, plan))
                in_channels = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_like_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def init_like_torchvision(model: nn.Module) -> None:
    """Kaiming fan-out for convs, BN to (1, 0), as torchvision does; slot modules keep their paper's init,
    except a conv-replacing slot's main weight, which is the backbone's 3x3 conv."""
    slot_members: set[int] = set()
    for module in model.modules():
        if getattr(module, SLOT_FLAG, False):
            slot_members.update(id(m) for m in module.modules())
            if hasattr(module, "weight") and isinstance(module.weight, nn.Parameter) and module.weight.dim() == 4:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    for module in model.modules():
        if id(module) in slot_members:
            continue
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


@dataclass(frozen=True)
class _Arch:
    block: type[_Block]
    depths: tuple[int, ...]


ARCHS = {
    18: _Arch(BasicBlock, (2, 2, 2, 2)),
    34: _Arch(BasicBlock, (3, 4, 6, 3)),
    50: _Arch(Bottleneck, (3, 4, 6, 3)),
    101: _Arch(Bottleneck, (3, 4, 23, 3)),
    152: _Arch(Bottleneck, (3, 8, 36, 3)),
}


def _stage_channels(arch: _Arch, stage: int, position: str) -> tuple[int, ...]:
    """Channel counts the slots of `stage` see at `position` (pre sees each block's input)."""
    index = STAGES.index(stage)
    out_channels = STAGE_WIDTHS[index] * arch.block.expansion
    if position != "pre":
        return (out_channels,)
    first_in = 64 if index == 0 else STAGE_WIDTHS[index - 1] * arch.block.expansion
    return (first_in, out_channels) if arch.depths[index] > 1 else (first_in,)


def _build(arch: _Arch, cifar: bool, plan: SlotPlan, num_classes: int) -> ResNet:
    return ResNet(arch.block, arch.depths, plan, num_classes, cifar=cifar)


for _depth, _arch in ARCHS.items():
    for _cifar in (False, True):
        register_backbone(BackboneEntry(
            name=f"{'cifar_' if _cifar else ''}resnet{_depth}",
            builder=partial(_build, _arch, _cifar),
            stages=STAGES,
            default_stages=STAGES,
            conv_stages=(3, 4, 5),
            positions=POSITIONS,
            stage_channels=partial(_stage_channels, _arch),
            min_input=8 if _cifar else 32,
            family="cifar_resnet" if _cifar else "resnet",
            paper="Deep Residual Learning, arXiv 1512.03385" + (" (CIFAR-style 3x3 stem)" if _cifar else "; torchvision layout"),
        ))
