"""SimAM, a parameter-free attention module (Yang et al., ICML 2021), after the official simam_module of
ZjjConan/SimAM (networks/attentions/simam_module.py).

Per channel, d = (x - mean_hw x)^2, v = sum_hw d / n with n = H*W - 1, inverse energy
1/e = d / (4 (v + lambda)) + 0.5, output x * sigmoid(1/e): a weight for every element.

Where the paper and the official code disagree (the code is followed; a test pins it): the paper's
closed form (eq. 5) takes the variance over the M = H*W neurons (1/M); the code divides by
n = H*W - 1, so a 1 x 1 map divides zero by zero (NaN), as the official module does. The paper's
lambda is 1e-4 (the default here); the repository's ImageNet and COCO commands pass 0.1.
"""
from __future__ import annotations

from torch import Tensor, nn

from attnbench.modules.hparams import Float
from attnbench.modules.registry import register_module


@register_module(
    "simam",
    kind="gate",
    paper="SimAM: A Simple, Parameter-Free Attention Module for CNNs, ICML 2021",
    code="ZjjConan/SimAM",
    params={"e_lambda": Float(1e-4, low=1e-12, high=10.0, log=True, help="lambda of the energy function (eq. 5)")},
)
class SimAM(nn.Module):
    """SimAM: x * sigmoid((x - mu)^2 / (4 (var + lambda)) + 1/2), var over H*W - 1."""

    def __init__(self, channels: int, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        inverse_energy = d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * inverse_energy.sigmoid()
