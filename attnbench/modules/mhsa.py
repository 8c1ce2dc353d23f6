"""Multi-head self-attention of BoTNet (Srinivas et al., arXiv 2101.11605), after the paper's
reference code, a TensorFlow gist by its first author (aravindsrinivas/56359b79f0ce4449bcb04ab4b56a57a2:
group_pointwise, relpos_self_attention, relative_logits, rel_to_abs, MHSA, BoT_Block).

q, k, v: 1x1 projections without bias to out_channels = heads x d. Logits, per head, over all
H*W positions: q k^T (content-content) plus q r^T (content-position), with q scaled by d^-1/2
first, so both terms are scaled; softmax; the output is the weights times v, heads concatenated,
with no output projection. Relative position logits are 2-D and factorised: a learned r_height
(2H-1, d) and r_width (2W-1, d), shared by the heads; the logit of query (x, y) and key (p, q)
gets q_xy . r_height[p - x + H - 1] + q_xy . r_width[q - y + W - 1], computed as the gist does
(one product with every relative embedding, then the pad-and-reshape rel_to_abs). Their shapes
are fixed by the map, so the module is built for one input size and refuses any other.
A stride of 2 is a 2x2 average pool after the attention (BoT_Block; TF 'SAME' padding, which
leaves the padding out of the mean, as ceil_mode does here). The block then applies BN and ReLU.

Where the paper is silent the code decides: q is scaled by d^-1/2 before both products (pinned).
Init is the gist's: q, k, v weights normal std 0.01; the position embeddings normal with MEAN
d^-1/2 and std 1, TF1's default stddev (the gist's comment: its stddev argument went to the mean,
"providing code as is"). `encoding="absolute"` follows the gist's commented-out absolute_logits:
embeddings (H, d) and (W, d), summed per key position.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules.hparams import Bool, Choice, Int
from attnbench.modules.registry import Placement, register_module

ENCODINGS = ("relative", "absolute", "none")


def rel_to_abs(x: Tensor) -> Tensor:
    """(..., L, 2L-1) relative logits to (..., L, L) absolute: out[i, j] = x[i, j - i + L - 1] (pads and views only)."""
    *batch, length, _ = x.shape
    x = F.pad(x, (0, 1)).flatten(-2)  # a zero column, then rows laid end to end
    x = F.pad(x, (0, length - 1))  # (L+1) rows of 2L-1: row i is now shifted left by i
    return x.view(*batch, length + 1, 2 * length - 1)[..., :length, length - 1:]


def _check(out_channels: int, hp: dict[str, Any]) -> None:
    if out_channels % hp["heads"]:
        raise ConfigError("heads", hp["heads"], f"a divisor of the {out_channels} output channels")
    if not hp["content"] and hp["encoding"] == "none":
        raise ConfigError("content", False, "true when encoding is none (no logits would be left)")


def _check_channels(channels: int, hp: dict[str, Any]) -> None:
    _check(channels, hp)


@register_module(
    "mhsa",
    kind="conv",
    paper="Bottleneck Transformers for Visual Recognition (BoTNet), arXiv 2101.11605",
    code="aravindsrinivas/56359b79f0ce4449bcb04ab4b56a57a2 (TensorFlow gist)",
    params={
        "heads": Int(4, low=1, high=64, help="attention heads; each has d = out_channels // heads"),
        "encoding": Choice("relative", choices=ENCODINGS,
                           help="content-position logits: 2-D relative (paper), absolute, or none"),
        "content": Bool(True, help="content-content logits q k^T; false: content-position only (the paper's ablation)"),
    },
    check_channels=_check_channels,
    placement=Placement(stages="last"),  # BoT50: every block of c5
)
class MultiHeadSelfAttention(nn.Module):
    """All-to-all multi-head self-attention over a fixed H x W map, with 2-D position logits."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        heads: int = 4,
        encoding: str = "relative",
        content: bool = True,
        feature_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        _check(out_channels, {"heads": heads, "encoding": encoding, "content": content})
        if feature_size is None:
            raise ConfigError("feature_size", None, "the (H, W) of the input map, which sizes the position embeddings")
        if stride not in (1, 2):
            raise ConfigError("stride", stride, "1 or 2 (BoT_Block pools 2x2 after the attention)")
        self.out_channels, self.stride, self.heads = out_channels, stride, heads
        self.encoding, self.content = encoding, content
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))
        height, width = self.feature_size
        dim = out_channels // heads
        self.qkv = nn.Conv2d(channels, 3 * out_channels, 1, bias=False)
        nn.init.normal_(self.qkv.weight, std=0.01)  # group_pointwise's initializer
        self.rel_height = self.rel_width = self.abs_height = self.abs_width = None
        if encoding == "relative":
            self.rel_height = nn.Parameter(torch.empty(2 * height - 1, dim))
            self.rel_width = nn.Parameter(torch.empty(2 * width - 1, dim))
        elif encoding == "absolute":
            self.abs_height = nn.Parameter(torch.empty(height, dim))
            self.abs_width = nn.Parameter(torch.empty(width, dim))
        for embedding in (self.rel_height, self.rel_width, self.abs_height, self.abs_width):
            if embedding is not None:
                nn.init.normal_(embedding, mean=dim**-0.5, std=1.0)  # the gist's initializer, as released

    def _position_logits(self, q: Tensor) -> Tensor:
        """(N, heads, H, W, H, W) content-position logits of q (N, heads, H, W, d)."""
        if self.encoding == "absolute":
            assert self.abs_height is not None and self.abs_width is not None  # built with the encoding
            embedding = self.abs_height[:, None, :] + self.abs_width[None, :, :]
            return torch.einsum("nhxyd,pqd->nhxypq", q, embedding)
        rel_w = rel_to_abs(torch.einsum("nhxyd,md->nhxym", q, self.rel_width))  # (N, h, H, W, W): [x, y, q]
        rel_h = torch.einsum("nhxyd,md->nhyxm", q, self.rel_height)  # query row x next to its 2H-1 offsets
        rel_h = rel_to_abs(rel_h).transpose(2, 3)  # (N, h, H, W, H): [x, y, p]
        return rel_h[..., :, None] + rel_w[..., None, :]

    def forward(self, x: Tensor) -> Tensor:
        n, _, height, width = x.shape
        if (height, width) != self.feature_size:
            h0, w0 = self.feature_size
            raise ConfigError("input_size", (height, width), f"the {h0}x{w0} map this module was built for")
        dim = self.out_channels // self.heads
        q, k, v = self.qkv(x).view(n, 3, self.heads, dim, height * width).unbind(1)  # head-major channels
        q = q * dim**-0.5
        logits = None
        if self.content:
            logits = torch.einsum("nhdi,nhdj->nhij", q, k)
        if self.encoding != "none":
            q_map = q.transpose(2, 3).reshape(n, self.heads, height, width, dim)
            positional = self._position_logits(q_map).reshape(n, self.heads, height * width, height * width)
            logits = positional if logits is None else logits + positional
        assert logits is not None  # __init__ refuses content=False with encoding none
        weights = logits.softmax(dim=-1)
        out = torch.einsum("nhij,nhdj->nhdi", weights, v).reshape(n, self.out_channels, height, width)
        if self.stride == 2:
            out = F.avg_pool2d(out, 2, 2, ceil_mode=True)
        return out

    def extra_repr(self) -> str:
        return (
            f"out_channels={self.out_channels}, stride={self.stride}, heads={self.heads}, "
            f"encoding={self.encoding!r}, content={self.content}, feature_size={self.feature_size}"
        )
