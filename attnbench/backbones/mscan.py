"""MSCAN-T/S/B/L, the encoder of SegNeXt (Guo et al., arXiv 2209.08575), after the official mscan.py.

MSCAN is VAN's network with two changes: the stride-4 stem is two 3x3 stride-2 convs
(BatchNorm after each, GELU between) instead of one 7x7 stride-4 conv, and the spatial
mixer is MSCA instead of LKA. The blocks, 3x3 stride-2 patch embeddings, per-stage
LayerNorm and initialisation are VAN's, so this file only adds the stem and the configs.
The official configs' SyncBN is plain BatchNorm2d here (the same on one device).

The official MSCAN is a segmentation backbone returning four feature maps and has no
classification head; for ImageNet-style use we add VAN's: global average pooling of the
last stage's normalised map, then a Linear layer.
"""
from __future__ import annotations

from torch import nn

from attnbench.backbones.van import StageConfig, VisualAttentionNetwork, register_family
from attnbench.modules.slots import Planner

# Official SegNeXt backbone settings (local_configs: the shared mscan.py base and each size's
# override). Drop-path rates are those configs' (0.1, 0.1, 0.1, 0.3); the stage LayerNorms use
# PyTorch's default eps 1e-5, unlike VAN's 1e-6.
MSCAN_CONFIGS: dict[str, StageConfig] = {
    "mscan_t": StageConfig((32, 64, 160, 256), (3, 3, 5, 2), (8, 8, 4, 4), 0.1, 1e-5),
    "mscan_s": StageConfig((64, 128, 320, 512), (2, 2, 4, 2), (8, 8, 4, 4), 0.1, 1e-5),
    "mscan_b": StageConfig((64, 128, 320, 512), (3, 3, 12, 3), (8, 8, 4, 4), 0.1, 1e-5),
    "mscan_l": StageConfig((64, 128, 320, 512), (3, 5, 27, 3), (8, 8, 4, 4), 0.3, 1e-5),
}


class StemConv(nn.Sequential):
    """Two 3x3 stride-2 convs to stride 4: conv -> BN -> GELU -> conv -> BN, half the width in between."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        mid = out_channels // 2
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )


def build_mscan(config: StageConfig, plan: Planner, num_classes: int) -> VisualAttentionNetwork:
    """An MSCAN with the plan's module in the spatial-mixer slot of each block."""
    return VisualAttentionNetwork(config, plan, num_classes, stem=StemConv)


register_family(MSCAN_CONFIGS, build_mscan, "mscan", "SegNeXt, arXiv 2209.08575")
