"""Double attention block (A^2-Nets, Chen et al., arXiv 1810.11579). There is no official code: this
follows the paper's equations and its Figure 2.

Three 1x1 convs (with biases) give A = phi(X) (c_m maps), B = theta(X) and V = rho(X) (c_n maps each).
Gather (eqs. 3-4): G = A softmax(B)^T, each of B's c_n maps a softmax over the h*w positions, so G holds
c_n global descriptors of c_m channels (second-order attention pooling). Distribute (eq. 5): at each
position i, z_i = G softmax(v_i), the softmax over the c_n descriptors. Together Z = [A softmax(B)^T] softmax(V)
(eq. 6). A last 1x1 conv expands Z from c_m back to C and its output is added to X (Sec. 3.3).
c_m = C // reduction_m and c_n = C // reduction_n; defaults 4 and 4 (C / 4 each). No special
initialisation is described, so PyTorch's defaults stand.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Int
from attnbench.modules.registry import register_module


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    for key in ("reduction_m", "reduction_n"):
        if hp[key] > channels:
            raise ConfigError(key, hp[key], f"at most the channel count {channels} (C // {key} must be >= 1)")


@register_module(
    "a2",
    kind="gate",
    paper="A^2-Nets: Double Attention Networks, arXiv 1810.11579",
    code="none (no official code; the paper's eqs. 3-6 and Figure 2)",
    params={
        "reduction_m": Int(4, low=1, high=1024, log=True, help="c_m = C // reduction_m: width of A and of each descriptor"),
        "reduction_n": Int(4, low=1, high=1024, log=True, help="c_n = C // reduction_n: number of descriptors (B and V)"),
    },
    check_channels=_check_channels,
)
class DoubleAttention(nn.Module):
    """X + conv(Z), Z = [A softmax_positions(B)^T] softmax_descriptors(V)."""

    def __init__(self, channels: int, reduction_m: int = 4, reduction_n: int = 4) -> None:
        super().__init__()
        c_m, c_n = channels // reduction_m, channels // reduction_n
        self.conv_a = nn.Conv2d(channels, c_m, 1)
        self.conv_b = nn.Conv2d(channels, c_n, 1)
        self.conv_v = nn.Conv2d(channels, c_n, 1)
        self.expand = nn.Conv2d(c_m, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        a = self.conv_a(x).flatten(2)  # (N, c_m, hw)
        attention_maps = torch.softmax(self.conv_b(x).flatten(2), dim=2)  # gather: over positions
        attention_vectors = torch.softmax(self.conv_v(x).flatten(2), dim=1)  # distribute: over descriptors
        descriptors = torch.matmul(a, attention_maps.transpose(1, 2))  # G: (N, c_m, c_n)
        z = torch.matmul(descriptors, attention_vectors)  # (N, c_m, hw)
        return x + self.expand(z.reshape(n, -1, h, w))
