"""GC block against a functional rebuild, the official code's parameter counts, init and switches."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def transform(seq: nn.Sequential, context: torch.Tensor) -> torch.Tensor:
    """W_v2 ReLU(LN(W_v1 c)) on (N, C) contexts; LN over the planes with biased variance."""
    conv1, norm, _, conv2 = seq
    h = F.linear(context, conv1.weight.flatten(1), conv1.bias)
    mean, var = h.mean(dim=1, keepdim=True), h.var(dim=1, unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight.flatten() + norm.bias.flatten()
    return F.linear(torch.relu(h), conv2.weight.flatten(1), conv2.bias)


def reference(gc: nn.Module, x: torch.Tensor, pooling: str, fusions: tuple[str, ...]) -> torch.Tensor:
    """GCNet eq. (3): z_i = x_i (x) sigmoid(T_mul(c)) + T_add(c), c = sum_j softmax_j(W_k x_j) x_j."""
    flat = x.flatten(2)  # (N, C, HW)
    if pooling == "att":
        logits = torch.einsum("c,ncj->nj", gc.conv_mask.weight.flatten(), flat) + gc.conv_mask.bias
        weights = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        context = (flat * weights[:, None, :]).sum(dim=2)
    else:
        context = flat.mean(dim=2)
    out = x
    if "channel_mul" in fusions:
        out = out * torch.sigmoid(transform(gc.channel_mul, context))[:, :, None, None]
    if "channel_add" in fusions:
        out = out + transform(gc.channel_add, context)[:, :, None, None]
    return out


@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize("fusions", [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")])
def test_matches_functional_reference(pooling: str, fusions: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    gc = build_module("gc", 32, ratio=0.25, pooling=pooling, fusions=list(fusions)).double().eval()
    randomise(gc)
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(gc(x), reference(gc, x, pooling, fusions))


def test_official_init_add_block_is_identity_mul_block_halves() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 64, 6, 6)
    gc = build_module("gc", 64)
    assert torch.equal(gc(x), x)  # last conv of channel_add all zeros
    assert torch.all(gc.conv_mask.bias == 0) and abs(gc.conv_mask.weight.std().item() - (2 / 64) ** 0.5) < 0.06
    torch.testing.assert_close(build_module("gc", 64, fusions=["channel_mul"])(x), x / 2)
    first = gc.channel_add[0].weight
    assert first.abs().sum() > 0  # the first conv keeps PyTorch's default init


def test_hidden_planes_truncate_like_the_official_int() -> None:
    assert build_module("gc", 48).channel_add[0].out_channels == 3
    assert build_module("gc", 48, ratio=0.3).channel_add[0].out_channels == 14  # int(14.4)
    assert build_module("gc", 64, ratio=0.25).channel_add[1].normalized_shape == (16, 1, 1)


@pytest.mark.parametrize("channels,pooling,fusions,expected", [
    (64, "att", ["channel_add"], 653), (256, "att", ["channel_add"], 8753),
    (64, "att", ["channel_add", "channel_mul"], 1241), (256, "att", ["channel_add", "channel_mul"], 17249),
    (64, "avg", ["channel_mul"], 588), (256, "avg", ["channel_mul"], 8496),
])
def test_parameter_count_of_official_code(channels: int, pooling: str, fusions: list[str], expected: int) -> None:
    # xvjiarui/GCNet 029db54, mmdet/ops/gcb/context_block.py, and open-mmlab/mmcv a8073c7,
    # mmcv/cnn/bricks/context_block.py: sum(p.numel()) of ContextBlock(channels, 1/16, pooling, fusions)
    # (mmcv's init helpers stubbed); outputs matched this module to 2e-15 (float64) after copying weights.
    assert n_params(build_module("gc", channels, pooling=pooling, fusions=fusions)) == expected


def test_defaults_and_bad_values() -> None:
    assert get_module_entry("gc").schema.defaults() == {"ratio": 1 / 16, "pooling": "att", "fusions": ("channel_add",)}
    cases = [
        (16, {"ratio": 1 / 32}, "ratio"),  # int(16 / 32) = 0 hidden planes
        (64, {"ratio": 0.0}, "ratio"),
        (64, {"ratio": 2.0}, "ratio"),
        (64, {"pooling": "max"}, "pooling"),
        (64, {"fusions": []}, "fusions"),
        (64, {"fusions": ["channel_concat"]}, "fusions"),
    ]
    for channels, hp, key in cases:
        with pytest.raises(ConfigError) as info:
            build_module("gc", channels, **hp)
        assert info.value.key == key, hp
    assert build_module("gc", 16).channel_add[0].out_channels == 1
