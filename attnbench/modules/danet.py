"""DANet's position and channel attention modules (Fu et al., arXiv 1809.02983), after the official
PAM_Module and CAM_Module of junfu1115/DANet (encoding/nn/da_att.py).

PAM: query / key 1x1 convs to C // 8, value 1x1 conv to C (with biases); attention = softmax over keys
of query . key between all positions; out = gamma * (value aggregated by attention) + x.
CAM: no convs; energy = X X^T between channels (N, C, C); out = gamma * softmax(energy') X + x.
gamma is a learnable scalar initialised to 0 in each, so each starts as the identity.

Where the paper and the official code disagree (the code is followed; tests pin each):
- CAM: eq. (3) takes softmax(X X^T); the code takes softmax(max_row(energy) - energy), which by the
  softmax's shift invariance is softmax(-X X^T): weight goes to the least similar channels.
- the official DANetHead wraps each module in its own conv-BN-ReLU (3x3 convs from 2048 to 512
  channels before, 3x3 conv after) and sums the two branch outputs. As a gate only the modules are
  kept: mode "both" returns PAM(x) + CAM(x), the head's sum without the convs around it. Each module
  carries its own residual, so "both" starts at 2x, not at x.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Choice
from attnbench.modules.registry import register_module

MODES = ("both", "pam", "cam")
PAM_REDUCTION = 8  # official query / key width in_dim // 8


class PositionAttention(nn.Module):
    """PAM: gamma * V softmax(Q^T K)^T + x over all H*W positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // PAM_REDUCTION, 1)
        self.key_conv = nn.Conv2d(channels, channels // PAM_REDUCTION, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        query = self.query_conv(x).flatten(2).transpose(1, 2)  # (N, HW, C/8)
        energy = torch.matmul(query, self.key_conv(x).flatten(2))  # (N, HW, HW)
        attention = torch.softmax(energy, dim=-1)
        out = torch.matmul(self.value_conv(x).flatten(2), attention.transpose(1, 2))  # (N, C, HW)
        return self.gamma * out.reshape(x.shape) + x


class ChannelAttention(nn.Module):
    """CAM: gamma * softmax(max - X X^T) X + x between the C channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)  # (N, C, HW)
        energy = torch.matmul(flat, flat.transpose(1, 2))  # (N, C, C)
        energy_new = energy.amax(dim=-1, keepdim=True) - energy  # official energy_new
        out = torch.matmul(torch.softmax(energy_new, dim=-1), flat)
        return self.gamma * out.reshape(x.shape) + x


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    if hp["mode"] != "cam" and channels < PAM_REDUCTION:
        raise ConfigError("mode", hp["mode"], f"cam at {channels} channels (PAM needs C // {PAM_REDUCTION} >= 1)")


@register_module(
    "danet",
    kind="gate",
    paper="Dual Attention Network for Scene Segmentation, arXiv 1809.02983",
    code="junfu1115/DANet",
    params={"mode": Choice("both", choices=MODES, help="PAM(x) + CAM(x) as the DANet head sums them, or one module")},
    check_channels=_check_channels,
)
class DualAttention(nn.Module):
    """PAM, CAM, or their sum."""

    def __init__(self, channels: int, mode: str = "both") -> None:
        super().__init__()
        self.pam = PositionAttention(channels) if mode != "cam" else None
        self.cam = ChannelAttention(channels) if mode != "pam" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.cam is None:
            assert self.pam is not None  # mode cam is the only one without PAM
            return self.pam(x)
        if self.pam is None:
            return self.cam(x)
        return self.pam(x) + self.cam(x)
