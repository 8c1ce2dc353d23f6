"""Gated Channel Transformation (Yang et al., arXiv 1909.11519), after the official GCT of z-x-yang/GCT
(PyTorch/GCT.py).

Global context embedding s_c = alpha_c * sqrt(sum_hw x^2 + eps) ("l2"), or alpha_c * sum_hw |x| ("l1";
`after_relu` drops the abs, for inputs known to be non-negative). Channel normalisation:
s_c * gamma_c / sqrt(mean_c s^2 + eps) ("l2"), or s_c * gamma_c / (mean_c |s| + eps) ("l1").
Gating: x * (1 + tanh(normalised + beta_c)).

Where the paper and the official code disagree (the code is followed; a test pins it): the paper's
eq. (2) normalises by sqrt(C) / sqrt(sum_c s^2 + eps); the code takes the channel mean, which puts
C * eps there: sqrt(C) / sqrt(sum_c s^2 + C * eps). Likewise l1 divides by mean_c |s| + eps, i.e.
C / (sum_c |s| + C * eps). Official init: alpha 1, gamma 0, beta 0, so every gate starts at
1 + tanh(0) = 1 and the block is the identity. The official training also exempts beta from weight
decay, and places a GCT before every convolution of the network (the stem's and each downsample's too).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from attnbench.modules.hparams import Bool, Choice, Float
from attnbench.modules.registry import register_module

MODES = ("l2", "l1")


@register_module(
    "gct",
    kind="gate",
    paper="Gated Channel Transformation for Visual Recognition, arXiv 1909.11519",
    code="z-x-yang/GCT",
    params={
        "mode": Choice("l2", choices=MODES, help="norm of the embedding and of the channel normalisation"),
        "epsilon": Float(1e-5, low=1e-12, high=1.0, log=True, help="eps of the norms (positive: a constant map divides by it)"),
        "after_relu": Bool(False, help="l1 only: inputs are non-negative, so skip the abs"),
    },
)
class GatedChannelTransformation(nn.Module):
    """GCT block: x * (1 + tanh(gamma * norm(alpha * embed(x)) + beta))."""

    def __init__(self, channels: int, mode: str = "l2", epsilon: float = 1e-5, after_relu: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.epsilon = epsilon
        self.after_relu = after_relu
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "l2":
            embedding = (x.pow(2).sum(dim=(2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
            norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
        else:
            magnitude = x if self.after_relu else x.abs()
            embedding = magnitude.sum(dim=(2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (embedding.abs().mean(dim=1, keepdim=True) + self.epsilon)
        return x * (1 + torch.tanh(embedding * norm + self.beta))
