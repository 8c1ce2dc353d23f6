"""scSE against the paper's equations, the official code's parameter counts, and its max-out combination."""
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
    """Random weights and biases, so every term of the reference takes part."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


def channel_se(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """cSE: z_k = mean of u_k over the map; s = sigmoid(W1 relu(W2 z)); x_k = s_k u_k."""
    fc1, fc2 = module.cse.fc1, module.cse.fc2
    z = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    s = torch.sigmoid(F.linear(torch.relu(F.linear(z, fc1.weight, fc1.bias)), fc2.weight, fc2.bias))
    return x * s[:, :, None, None]


def spatial_se(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """sSE: q = W_sq * U (a 1x1 conv to one channel); x_ij = sigmoid(q_ij) u_ij."""
    conv = module.sse.conv
    q = torch.einsum("nchw,c->nhw", x, conv.weight.flatten()) + conv.bias
    return x * torch.sigmoid(q)[:, None]


@pytest.mark.parametrize("channels,reduction", [(8, 2), (12, 4)])
def test_matches_the_equations(channels: int, reduction: int) -> None:
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    for mode in ("cse", "sse", "scse"):
        module = build_module("scse", channels, mode=mode, reduction=reduction).double().eval()
        randomise(module)
        if mode == "cse":
            expected = channel_se(module, x)
        elif mode == "sse":
            expected = spatial_se(module, x)
        else:
            expected = torch.maximum(channel_se(module, x), spatial_se(module, x))  # the official max-out
        torch.testing.assert_close(module(x), expected)
    module = build_module("scse", channels, reduction=reduction, combine="add").double().eval()
    randomise(module)
    torch.testing.assert_close(module(x), channel_se(module, x) + spatial_se(module, x))  # the paper's X_cSE + X_sSE


# ai-med/squeeze_and_excitation acdd26e, squeeze_and_excitation/squeeze_and_excitation.py, run in scratch:
# sum(p.numel()) of ChannelSpatialSELayer(C), ChannelSELayer(C), SpatialSELayer(C) (reduction_ratio 2);
# with their state dicts loaded into this module (cSE. -> cse., sSE. -> sse.) the outputs on a random
# (2, C, 7, 9) input were equal (max |diff| 0.0, float32) in all three modes.
@pytest.mark.parametrize("channels,scse,cse,sse", [(64, 4257, 4192, 65), (256, 66177, 65920, 257)])
def test_parameter_counts_of_the_official_code(channels: int, scse: int, cse: int, sse: int) -> None:
    assert n_params(build_module("scse", channels)) == scse
    assert n_params(build_module("scse", channels, mode="cse")) == cse
    assert n_params(build_module("scse", channels, mode="sse")) == sse


def test_official_layout() -> None:
    module = build_module("scse", 16)
    assert isinstance(module.cse.fc1, nn.Linear) and module.cse.fc1.out_features == 8  # C // 2
    assert module.cse.fc1.bias is not None and module.cse.fc2.bias is not None
    assert module.sse.conv.kernel_size == (1, 1) and module.sse.conv.out_channels == 1 and module.sse.conv.bias is not None


def test_the_code_takes_the_max_where_the_paper_adds() -> None:
    """Paper: X_scSE = X_cSE + X_sSE; official ChannelSpatialSELayer: torch.max of the two (the default)."""
    module = build_module("scse", 4).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.cse.fc2.bias.fill_(10.0)  # channel gate ~1
        module.sse.conv.bias.fill_(-10.0)  # spatial gate ~0
    x = torch.rand(1, 4, 3, 3) + 0.5
    cse, sse = module.cse(x), module.sse(x)
    torch.testing.assert_close(module(x), cse)  # max picks the channel branch
    added = build_module("scse", 4, combine="add").eval()
    added.load_state_dict(module.state_dict())
    torch.testing.assert_close(added(x), cse + sse)
    assert not torch.allclose(added(x), module(x))


def test_modes_keep_only_their_branch() -> None:
    x = torch.randn(2, 8, 4, 5)
    cse = build_module("scse", 8, mode="cse").eval()
    sse = build_module("scse", 8, mode="sse").eval()
    assert cse.sse is None and sse.cse is None
    ratio = cse(x) / x  # one weight per channel, the same at every position
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    ratio = sse(x) / x  # one weight per position, the same in every channel
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_defaults_are_the_official_code() -> None:
    entry = get_module_entry("scse")
    assert entry.kind == "gate"
    assert entry.schema.defaults() == {"mode": "scse", "reduction": 2, "combine": "max"}


@pytest.mark.parametrize("hp,key", [
    ({"mode": "csse"}, "mode"),
    ({"combine": "concat"}, "combine"),
    ({"reduction": 0}, "reduction"),
    ({"reduction": 32}, "reduction"),
    ({"reduction": 32, "mode": "cse"}, "reduction"),
])
def test_bad_hyperparameters_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("scse", 16, **hp)
    assert info.value.key == key


def test_spatial_only_has_no_reduction_to_check() -> None:
    assert n_params(build_module("scse", 16, mode="sse", reduction=32)) == 17
