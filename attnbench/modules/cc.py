"""Recurrent criss-cross attention (CCNet, Huang et al., arXiv 1811.11721), after the official pure-PyTorch
CrissCrossAttention of speedinghzl/CCNet (cc_attention/functions.py, master / pure-python branch).

One step: query and key 1x1 convs to C // 8 channels, value 1x1 conv to C (all with biases);
each position u attends over its row and its column, H + W - 1 positions: the column energies get
-inf on their diagonal so u itself is counted once (in the row). One softmax over the H + W
energies, then out = gamma * (column aggregate + row aggregate) + x, gamma a learnable scalar
initialised to 0. RCCA applies the same step `recurrence` times (shared weights; paper: R = 2).

Where the paper and the official code disagree (the code is followed; a test pins it): the paper's
aggregation adds the attended values to the input directly; the code scales them by gamma, which
starts at 0, so the module starts as the identity. The official trainer's --recurrence defaults
(0 in train.py, 1 in evaluate.py) are not the paper's R = 2, which the README's released model uses;
R = 2 is the default here. No CUDA extension: matmul and softmax only.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.modules.gates import reduced_channels_check
from attnbench.modules.hparams import Int
from attnbench.modules.registry import register_module


@register_module(
    "cc",
    kind="gate",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation, arXiv 1811.11721",
    code="speedinghzl/CCNet",
    params={
        "recurrence": Int(2, low=1, high=8, help="R: criss-cross steps with shared weights"),
        "reduction": Int(8, low=1, high=1024, log=True, help="query / key width C // reduction (official: 8)"),
    },
    check_channels=reduced_channels_check(),
)
class CrissCrossAttention(nn.Module):
    """RCCA: `recurrence` criss-cross attention steps sharing one set of weights."""

    def __init__(self, channels: int, recurrence: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def step(self, x: Tensor) -> Tensor:
        """One criss-cross attention: gamma * (column + row aggregate) + x."""
        h = x.shape[2]
        query, key, value = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        # column energies (N, W, H, H') and row energies (N, H, W, W')
        energy_col = torch.matmul(query.permute(0, 3, 2, 1), key.permute(0, 3, 1, 2))
        rows = torch.arange(h, device=x.device)
        energy_col = energy_col.masked_fill(rows[:, None] == rows[None, :], float("-inf"))  # official INF diagonal
        energy_row = torch.matmul(query.permute(0, 2, 3, 1), key.permute(0, 2, 1, 3))
        attention = torch.softmax(torch.cat([energy_col.permute(0, 2, 1, 3), energy_row], dim=3), dim=3)
        att_col, att_row = attention[..., :h], attention[..., h:]
        # out_col[n, c, i, j] = sum_i' v[n, c, i', j] att_col[n, i, j, i']; out_row likewise along the row
        out_col = torch.matmul(value.permute(0, 3, 1, 2), att_col.permute(0, 2, 3, 1)).permute(0, 2, 3, 1)
        out_row = torch.matmul(value.permute(0, 2, 1, 3), att_row.transpose(2, 3)).permute(0, 2, 1, 3)
        return self.gamma * (out_col + out_row) + x

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.recurrence):
            x = self.step(x)
        return x
