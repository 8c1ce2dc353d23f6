"""Visual Attention Network, VAN-B0...B3 (Guo et al., arXiv 2202.09741), after the official VAN-Classification code.

Four stages; each opens with an overlapping patch embedding (7x7 stride 4 conv, then 3x3
stride 2, each followed by BatchNorm), stacks blocks, and ends with a LayerNorm over
channels. A block is two pre-norm residual branches with layer scale (init 1e-2) and
stochastic depth:

    x + ls1 * mixer(BN(x)),  mixer(u) = proj_2(slot(GELU(proj_1(u)))) + u
    x + ls2 * mlp(BN(x)),    mlp(u)   = fc2(GELU(dw3x3(fc1(u))))

`slot` is the spatial mixer the attnbench plan puts in: LKA in the paper's VAN, MSCA in
SegNeXt's MSCAN (which reuses these blocks), any gating module, or identity. The head is
global average pooling then a Linear layer.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.backbones.registry import BackboneEntry, register_backbone
from attnbench.modules.slots import Planner, Site

LAYER_SCALE_INIT = 1e-2
StemFactory = Callable[[int, int], nn.Module]  # (in_channels, out_channels) -> stride-4 stem


@dataclass(frozen=True)
class StageConfig:
    """Widths, depths and MLP ratios of the four stages, the training drop-path rate and the stage LayerNorm eps."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    drop_path: float
    norm_eps: float



# Official van_b0..van_b3 definitions; drop-path rates are those of the official ImageNet
# training script (0.1, 0.1, 0.1, 0.2); the stage LayerNorms use eps 1e-6.
VAN_CONFIGS: dict[str, StageConfig] = {
    "van_b0": StageConfig((32, 64, 160, 256), (3, 3, 5, 2), (8, 8, 4, 4), 0.1, 1e-6),
    "van_b1": StageConfig((64, 128, 320, 512), (2, 2, 4, 2), (8, 8, 4, 4), 0.1, 1e-6),
    "van_b2": StageConfig((64, 128, 320, 512), (3, 3, 12, 3), (8, 8, 4, 4), 0.1, 1e-6),
    "van_b3": StageConfig((64, 128, 320, 512), (3, 5, 27, 3), (8, 8, 4, 4), 0.2, 1e-6),
}


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability p while training, rescaling survivors."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW map (the official code normalises flattened tokens)."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Sequential):
    """Overlapping patch embedding: k x k conv with stride s and padding k // 2, then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.BatchNorm2d(out_channels)


class SpatialMixer(nn.Module):
    """proj_1 (1x1) -> GELU -> slot -> proj_2 (1x1), plus the input: the attention branch of a block."""

    def __init__(self, channels: int, slot: nn.Module) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.gate = slot
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_2(self.gate(self.act(self.proj_1(x)))) + x


class ConvMlp(nn.Sequential):
    """fc1 (1x1) -> depthwise 3x3 -> GELU -> fc2 (1x1): the feed-forward branch of a block."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)


class Block(nn.Module):
    """Two pre-BatchNorm residual branches (spatial mixer, MLP), each with layer scale and drop path."""

    def __init__(self, channels: int, mlp_ratio: int, slot: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.mixer = SpatialMixer(channels, slot)
        self.layer_scale_1 = nn.Parameter(torch.full((channels,), LAYER_SCALE_INIT))
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ConvMlp(channels, channels * mlp_ratio)
        self.layer_scale_2 = nn.Parameter(torch.full((channels,), LAYER_SCALE_INIT))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Downsampling embedding, blocks, and a LayerNorm over channels."""

    def __init__(self, embed: nn.Module, blocks: list[Block], channels: int, norm_eps: float) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.Sequential(*blocks)
        self.norm = ChannelLayerNorm(channels, eps=norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.embed(x)))


def van_stem(in_channels: int, out_channels: int) -> nn.Module:
    """VAN's first patch embedding: 7x7 conv, stride 4."""
    return PatchEmbed(in_channels, out_channels, 7, 4)


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 at the first block to `rate` at the last."""
    return [rate * i / (blocks - 1) if blocks > 1 else 0.0 for i in range(blocks)]


def init_weights(module: nn.Module) -> None:
    """The official VAN/MSCAN initialisation, applied to every submodule.

    Slot modules included: the official `apply` reaches its LKA too, so any module put in the
    slot starts as it would inside the official code.

    Linear: truncated normal (std 0.02), zero bias. LayerNorm: weight 1, bias 0.
    Conv2d: normal with std sqrt(2 / fan_out), fan_out = k_h * k_w * out_channels / groups, zero bias.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VisualAttentionNetwork(nn.Module):
    """Four stages (stage1..stage4, numbered as in the papers), global average pooling, Linear head."""

    # added by name in __init__
    stage1: Stage
    stage2: Stage
    stage3: Stage
    stage4: Stage

    def __init__(self, config: StageConfig, plan: Planner, num_classes: int, stem: StemFactory = van_stem,
                 in_channels: int = 3) -> None:
        super().__init__()
        rates = drop_path_rates(config.drop_path, sum(config.depths))
        previous = in_channels
        for index, (dim, depth, ratio) in enumerate(zip(config.dims, config.depths, config.mlp_ratios)):
            stage = index + 1
            embed = stem(previous, dim) if stage == 1 else PatchEmbed(previous, dim, 3, 2)
            blocks = [Block(dim, ratio, plan.gate(Site("gate", stage, i, "mixer", dim, blocks=depth)), rates.pop(0))
                      for i in range(depth)]
            self.add_module(f"stage{stage}", Stage(embed, blocks, dim, config.norm_eps))
            previous = dim
        self.head = nn.Linear(previous, num_classes)
        self.apply(init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's normalised feature map (N, C, H/32, W/32)."""
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def build_van(config: StageConfig, plan: Planner, num_classes: int) -> VisualAttentionNetwork:
    """A VAN with the plan's module in the spatial-mixer slot of each block."""
    return VisualAttentionNetwork(config, plan, num_classes)


def register_family(configs: dict[str, StageConfig], builder: Callable[[StageConfig, Planner, int], nn.Module],
                    family: str, paper: str) -> None:
    """Register one backbone per config; the slot is the spatial mixer of every block, in any of the four stages."""
    for name, config in configs.items():
        register_backbone(BackboneEntry(
            name=name,
            builder=partial(builder, config),
            stages=(1, 2, 3, 4),
            default_stages=(1, 2, 3, 4),
            conv_stages=(),
            positions=("mixer",),
            min_input=32,
            family=family,
            paper=paper,
            accepts=("gate",),
        ))


register_family(VAN_CONFIGS, build_van, "van", "Visual Attention Network, arXiv 2202.09741")
