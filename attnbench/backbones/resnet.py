"""ResNets with slots: torchvision's layout and initialisation, and the layouts the attention papers used.

Stages are numbered as in the ResNet paper: conv2_x ... conv5_x are stages 2..5
(torchvision's layer1..layer4), so DCNv2's "conv3-conv5" convention is stages 3, 4, 5.

A gating module sits in one of the SE paper's integration positions (Table 14):
- standard: after the block's last BN, before the residual addition (SE and CBAM papers);
- pre: on the block input, before the residual unit;
- post: after the addition and the final ReLU (between blocks: BAM and non-local sit here);
- identity: on the identity branch, in parallel with the residual unit.
A conv-replacing module (dcn, sk, splat, mhsa) takes the place of each 3x3 conv of the chosen
stages; one that brings its own BN and activation (sk, splat) replaces those too.

Layouts (`Layout`): torchvision's ("v1.5": the stride on the 3x3 conv); Caffe's, which the SE
and CBAM papers' GFLOPs are for (stride on the first 1x1, max pool without padding in ceil mode);
ResNet-D's deep stem and average-pool shortcuts (ResNeSt's base); ResNeXt's grouped widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from attnbench.backbones.registry import BackboneEntry, register_backbone
from attnbench.modules.slots import SLOT_FLAG, Planner, Site

POSITIONS = ("standard", "pre", "post", "identity")
STAGES = (2, 3, 4, 5)
STAGE_WIDTHS = (64, 128, 256, 512)
STEMS = ("single", "deep", "cifar")


@dataclass(frozen=True)
class Layout:
    """How a ResNet's stem, pooling, strides, shortcuts and block widths are laid out."""

    stem: str = "single"  # single: 7x7 stride 2 (torchvision); deep: three 3x3 (ResNet-D); cifar: one 3x3, no pool
    caffe_pool: bool = False  # max pool without padding, in ceil mode (Caffe), instead of padding 1
    stride_in_1x1: bool = False  # Caffe's bottleneck: the stride on the first 1x1 conv, not on the 3x3
    avg_down: bool = False  # ResNet-D shortcut: average pool, then a stride-1 1x1 conv
    groups: int = 1  # ResNeXt cardinality of the 3x3 conv
    width_per_group: int = 64  # ResNeXt bottleneck width per group
    stem_width: int = 32  # deep stem: width of its first two convs


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def shortcut(in_channels: int, out_channels: int, stride: int, layout: Layout) -> nn.Module:
    """The projection shortcut: a strided 1x1 conv and BN, or (ResNet-D) an average pool then a 1x1 conv and BN."""
    if not layout.avg_down:
        return nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    # the official ResNeSt keeps a 1x1 pool where the stride is 1 (it does nothing, as its counts show)
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, _conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))


@dataclass(frozen=True)
class Where:
    """A block's place: its stage, its index in the stage and the stage's number of blocks."""

    stage: int
    block: int
    blocks: int

    def site(self, kind: str, position: str, channels: int, **conv: int) -> Site:
        """The site at `position` of this block."""
        return Site(kind, self.stage, self.block, position, channels, blocks=self.blocks, **conv)  # type: ignore[arg-type]


class _Block(nn.Module):
    """Shared residual wiring of both block types; subclasses build `residual`."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, where: Where, plan: Planner, layout: Layout) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.position = plan.position
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = shortcut(in_channels, out_channels, stride, layout)
        self.relu = nn.ReLU(inplace=True)
        channels = in_channels if plan.position == "pre" else out_channels
        self.attention = plan.gate(where.site("gate", plan.position, channels))

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.position == "pre":
            out = self.residual(self.attention(x))
        else:
            out = self.residual(x)
            if self.position == "standard":
                out = self.attention(out)
        identity = x if self.downsample is None else self.downsample(x)
        if self.position == "identity":
            identity = self.attention(identity)
        out = self.relu(out + identity)
        return self.attention(out) if self.position == "post" else out


def _replaceable_conv(plan: Planner, where: Where, name: str, in_channels: int, out_channels: int, stride: int,
                      groups: int = 1) -> tuple[nn.Module, bool]:
    """The 3x3 conv at this site (or the module replacing it), and whether that module brings its own BN and ReLU."""
    site = where.site("conv", name, in_channels, out_channels=out_channels, stride=stride, groups=groups)
    module = plan.conv(site, lambda: _conv3x3(in_channels, out_channels, stride, groups))
    return module, plan.brings_norm(site)


class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, where: Where, plan: Planner, layout: Layout) -> None:
        super().__init__(in_channels, planes, stride, where, plan, layout)
        self.conv1, own1 = _replaceable_conv(plan, where, "conv1", in_channels, planes, stride)
        self.bn1: nn.Module = nn.Identity() if own1 else nn.BatchNorm2d(planes)
        self.act1: nn.Module = nn.Identity() if own1 else self.relu
        self.conv2, own2 = _replaceable_conv(plan, where, "conv2", planes, planes, 1)
        self.bn2: nn.Module = nn.Identity() if own2 else nn.BatchNorm2d(planes)

    def residual(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152); the stride on the 3x3 (torchvision) or the first 1x1 (Caffe)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, where: Where, plan: Planner, layout: Layout) -> None:
        super().__init__(in_channels, planes, stride, where, plan, layout)
        width = planes * layout.width_per_group // 64 * layout.groups
        first, middle = (stride, 1) if layout.stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_channels, width, first)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2, own = _replaceable_conv(plan, where, "conv2", width, width, middle, layout.groups)
        self.bn2: nn.Module = nn.Identity() if own else nn.BatchNorm2d(width)
        self.act2: nn.Module = nn.Identity() if own else self.relu
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def stem(layout: Layout) -> tuple[nn.Module, nn.Module]:
    """(conv1, maxpool) of the layout; bn1 and its ReLU follow conv1 in every layout."""
    if layout.stem == "cifar":
        return nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.Identity()
    pool = nn.MaxPool2d(3, stride=2, ceil_mode=True) if layout.caffe_pool else nn.MaxPool2d(3, stride=2, padding=1)
    if layout.stem == "single":
        return nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), pool
    w = layout.stem_width
    deep = nn.Sequential(
        _conv3x3(3, w, 2), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        _conv3x3(w, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        _conv3x3(w, 64),
    )
    return deep, pool


class ResNet(nn.Module):
    """torchvision's ResNet, with slots, in the given layout."""

    # set by name in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, block: type[_Block], depths: tuple[int, ...], plan: Planner, num_classes: int,
                 layout: Layout = Layout()) -> None:
        super().__init__()
        self.conv1, self.maxpool = stem(layout)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 64
        for index, (stage, planes, depth) in enumerate(zip(STAGES, STAGE_WIDTHS, depths)):
            blocks = []
            for i in range(depth):
                stride = 2 if index > 0 and i == 0 else 1
                blocks.append(block(in_channels, planes, stride, Where(stage, i, depth), plan, layout))
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
class Arch:
    """A depth's block type and blocks per stage."""

    block: type[_Block]
    depths: tuple[int, ...]


ARCHS = {
    18: Arch(BasicBlock, (2, 2, 2, 2)),
    34: Arch(BasicBlock, (3, 4, 6, 3)),
    50: Arch(Bottleneck, (3, 4, 6, 3)),
    101: Arch(Bottleneck, (3, 4, 23, 3)),
    152: Arch(Bottleneck, (3, 8, 36, 3)),
}


def _build(arch: Arch, layout: Layout, plan: Planner, num_classes: int) -> ResNet:
    return ResNet(arch.block, arch.depths, plan, num_classes, layout)


def register_resnet(name: str, depth: int, layout: Layout, paper: str, family: str = "resnet") -> None:
    """Register a ResNet of `depth` in `layout` under `name`."""
    cifar = layout.stem == "cifar"
    register_backbone(BackboneEntry(
        name=name, builder=partial(_build, ARCHS[depth], layout), stages=STAGES, default_stages=STAGES,
        conv_stages=(3, 4, 5), positions=POSITIONS, min_input=8 if cifar else 32, family=family, paper=paper,
        default_input=32 if cifar else 224,
    ))


RESNET_PAPER = "Deep Residual Learning, arXiv 1512.03385"
for _depth in ARCHS:
    register_resnet(f"resnet{_depth}", _depth, Layout(), RESNET_PAPER + "; torchvision layout")
    register_resnet(f"cifar_resnet{_depth}", _depth, Layout(stem="cifar"), RESNET_PAPER + " (CIFAR-style 3x3 stem)",
                    family="cifar_resnet")
for _depth in (50, 101, 152):
    register_resnet(f"resnet{_depth}_caffe", _depth, Layout(caffe_pool=True, stride_in_1x1=True),
                    RESNET_PAPER + "; Caffe layout of the SE and CBAM papers (stride in the first 1x1)", "resnet_caffe")
register_resnet("resnet50_d", 50, Layout(stem="deep", avg_down=True),
                "Bag of Tricks, arXiv 1812.01187 (ResNet-D: deep stem, average-pool shortcuts); ResNeSt's base", "resnet_d")
register_resnet("resnext50_32x4d", 50, Layout(groups=32, width_per_group=4),
                "Aggregated Residual Transformations (ResNeXt), arXiv 1611.05431; torchvision layout; SKNet's base",
                "resnext")
