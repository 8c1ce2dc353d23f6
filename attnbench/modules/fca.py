"""Multi-spectral channel attention of FcaNet (Qin et al., arXiv 2012.11879), after the official
cfzd/FcaNet model/layer.py (MultiSpectralAttentionLayer, MultiSpectralDCTLayer).

The channels are split into n consecutive groups; group k is compressed by the 2-D DCT basis of
frequency (u_k, v_k) (a fixed buffer, not a parameter), giving one value per channel; then SE's
FC (C/r, no bias) -> ReLU -> FC (no bias) -> sigmoid -> channel-wise scale. The frequencies are
the paper's selections on a 7x7 frequency grid (top-k from its per-frequency ablation, the k
lowest, the k worst), scaled by dct_size // 7 as the official code does, so (1, 1) on 7x7 is
(2, 2) on 14x14; the scale is floor division, so a size that is not a multiple of 7 (say 10)
keeps the 7x7 indices on its own grid. A map whose size differs from dct_size is first
adaptive-average-pooled to dct_size x dct_size (official code, for detection inputs).

The official ResNet sets the DCT size per stage from the block's planes (56/28/14/7 for
64/128/256/512 planes: the map size at a 224 input, so it never pools there); a module here
sees only its channel count, so dct_size is one hyperparameter, 7 by default (the frequency
grid itself, and stage 5's size in the official ResNet-50).

Paper vs code: the paper's eq. (1)-(3) drop the DCT normalisation; the code's filters are the
orthonormal DCT-II, cos(pi u (i + 1/2) / H) / sqrt(H), times sqrt(2) when u > 0 (per axis), so
the (0, 0) component is sqrt(HW) * GAP rather than HW * GAP (tests pin the code's).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Choice, Int
from attnbench.modules.registry import register_module

# Frequency indices (u along H, v along W) on the 7x7 grid, in the order of the official
# get_freq_indices (cfzd/FcaNet model/layer.py); a selection "topK" takes the first K pairs.
FREQUENCY_TABLES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "top": (
        (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1),
        (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3),
    ),
    "low": (
        (0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4),
        (0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3),
    ),
    "bot": (
        (6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6),
        (6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3),
    ),
}
SELECTIONS = tuple(f"{kind}{count}" for kind in ("top", "low", "bot") for count in (1, 2, 4, 8, 16, 32))


def selected_frequencies(selection: str, dct_size: int) -> list[tuple[int, int]]:
    """The (u, v) pairs of a selection such as "top16", scaled from the 7x7 grid by dct_size // 7."""
    xs, ys = FREQUENCY_TABLES[selection[:3]]
    count, scale = int(selection[3:]), dct_size // 7
    return [(u * scale, v * scale) for u, v in zip(xs[:count], ys[:count])]


def dct_basis(frequency: int, size: int) -> list[float]:
    """Orthonormal 1-D DCT-II basis of `frequency` on `size` points (the official build_filter)."""
    values = [math.cos(math.pi * frequency * (pos + 0.5) / size) / math.sqrt(size) for pos in range(size)]
    return [v * math.sqrt(2) for v in values] if frequency else values


def dct_filters(channels: int, frequencies: list[tuple[int, int]], size: int) -> Tensor:
    """(C, size, size) filters: the k-th of len(frequencies) equal channel groups gets basis (u_k, v_k)."""
    part = channels // len(frequencies)
    filters = torch.zeros(channels, size, size)
    for k, (u, v) in enumerate(frequencies):
        # product in double precision, then stored in float32, as the official code does
        along_h = torch.tensor(dct_basis(u, size), dtype=torch.float64)
        along_w = torch.tensor(dct_basis(v, size), dtype=torch.float64)
        filters[k * part:(k + 1) * part] = torch.outer(along_h, along_w)
    return filters


def _check(channels: int, hp: dict[str, Any]) -> None:
    count = int(hp["frequencies"][3:])
    if channels % count:
        raise ConfigError("frequencies", hp["frequencies"], f"a selection whose count divides the {channels} channels")
    if hp["reduction"] > channels:
        raise ConfigError("reduction", hp["reduction"], f"at most the channel count {channels} (C // reduction must be >= 1)")


@register_module(
    "fca",
    kind="gate",
    paper="FcaNet: Frequency Channel Attention Networks, arXiv 2012.11879",
    code="cfzd/FcaNet",
    params={
        "frequencies": Choice("top16", choices=SELECTIONS,
                              help="frequency selection: top-k, k lowest or k bottom of the 7x7 grid"),
        "reduction": Int(16, low=1, high=1024, log=True, help="r: hidden width of the FCs is C // r"),
        "dct_size": Int(7, low=7, high=112, per_stage=True,
                        help="side of the DCT grid; other maps are adaptive-average-pooled to it"),
    },
    check_channels=_check,
)
class MultiSpectralAttention(nn.Module):
    """x * sigmoid(W2 relu(W1 DCT(x))), each channel group compressed by its own DCT frequency."""

    dct_filters: Tensor

    def __init__(self, channels: int, frequencies: str = "top16", reduction: int = 16, dct_size: int = 7) -> None:
        super().__init__()
        _check(channels, {"frequencies": frequencies, "reduction": reduction})
        self.dct_size = dct_size
        self.register_buffer("dct_filters", dct_filters(channels, selected_frequencies(frequencies, dct_size), dct_size))
        self.reduce = nn.Linear(channels, channels // reduction, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x
        if x.shape[2:] != (self.dct_size, self.dct_size):
            pooled = F.adaptive_avg_pool2d(x, self.dct_size)
        compressed = (pooled * self.dct_filters).sum(dim=(2, 3))
        weights = self.expand(self.act(self.reduce(compressed))).sigmoid()
        return x * weights[:, :, None, None]
