"""FcaNet's multi-spectral channel attention against the paper's DCT formulas, the official code's
parameter counts, its frequency tables and scaling, and its hyperparameter checks."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def basis(frequency: int, size: int) -> torch.Tensor:
    """Orthonormal DCT-II basis: cos(pi f (i + 1/2) / N) / sqrt(N), times sqrt(2) for f > 0."""
    i = torch.arange(size, dtype=torch.float64)
    scale = (2.0 if frequency else 1.0) / size
    return torch.cos(math.pi * frequency * (i + 0.5) / size) * math.sqrt(scale)


def reference(fca: nn.Module, x: torch.Tensor, freqs: list[tuple[int, int]], size: int) -> torch.Tensor:
    """Split channels into len(freqs) groups, 2-D DCT component (u, v) of each, SE's FCs, sigmoid, scale."""
    n, c, h, w = x.shape
    pooled = F.avg_pool2d(x, h // size) if h != size else x  # the tests use multiples: pooling is exact
    parts = pooled.chunk(len(freqs), dim=1)
    compressed = torch.cat([
        (part * torch.outer(basis(u, size), basis(v, size)).to(x.dtype)).sum(dim=(2, 3))
        for part, (u, v) in zip(parts, freqs)
    ], dim=1)
    hidden = torch.relu(F.linear(compressed, fca.reduce.weight))
    return x * torch.sigmoid(F.linear(hidden, fca.expand.weight))[:, :, None, None]


TOP4 = [(0, 0), (0, 1), (6, 0), (0, 5)]  # the first four of the official top table


@pytest.mark.parametrize("size,hw", [(7, 7), (7, 14), (14, 14)])
def test_matches_paper_dct_formula(size: int, hw: int) -> None:
    torch.manual_seed(0)
    fca = build_module("fca", 32, frequencies="top4", reduction=4, dct_size=size).double().eval()
    with torch.no_grad():
        for p in fca.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 32, hw, hw, dtype=torch.float64)
    scale = size // 7
    freqs = [(u * scale, v * scale) for u, v in TOP4]
    # the filters are stored in float32 (as the official buffer), so float64 agrees to ~1e-7
    torch.testing.assert_close(fca(x), reference(fca, x, freqs, size), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,expected", [(64, 512), (256, 8192)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # cfzd/FcaNet aa5fb63, model/layer.py: sum(p.numel()) of MultiSpectralAttentionLayer(channels, 56, 56)
    # and (channels, 14, 14), top16, reduction 16; its DCT buffer equalled ours bit for bit and the outputs
    # matched exactly (max |diff| 0.0) after copying the FC weights, also with pooling (256 ch, 14x14 map, dct 7).
    fca = build_module("fca", channels)
    assert n_params(fca) == expected


def test_dct_filters_are_a_buffer_not_a_parameter() -> None:
    fca = build_module("fca", 64)
    assert "dct_filters" in dict(fca.named_buffers()) and "dct_filters" in fca.state_dict()
    assert all(p.dim() == 2 for p in fca.parameters())  # only the two FC weights
    assert fca.dct_filters.shape == (64, 7, 7)


def test_gap_is_the_dc_component_with_the_codes_normalisation() -> None:
    """Paper eq. (3): f_00 = HW * GAP with unnormalised bases; the code's orthonormal DCT gives sqrt(HW) * GAP."""
    fca = build_module("fca", 16, frequencies="top1", dct_size=7)
    x = torch.randn(2, 16, 7, 7)
    compressed = (x * fca.dct_filters).sum(dim=(2, 3))
    torch.testing.assert_close(compressed, 7 * x.mean(dim=(2, 3)))
    torch.testing.assert_close(fca.dct_filters[0], torch.full((7, 7), 1 / 7))


def test_frequencies_scale_by_floor_of_dct_size_over_7() -> None:
    """Official: index * (dct_h // 7): (0, 1) becomes (0, 2) at 14 but stays (0, 1) at 10."""
    at14 = build_module("fca", 32, frequencies="top2", dct_size=14).dct_filters
    torch.testing.assert_close(at14[16], torch.outer(basis(0, 14), basis(2, 14)).float())
    at10 = build_module("fca", 32, frequencies="top2", dct_size=10).dct_filters
    torch.testing.assert_close(at10[16], torch.outer(basis(0, 10), basis(1, 10)).float())


def test_selection_tables_of_the_official_code() -> None:
    fca = build_module("fca", 32, frequencies="bot2")  # bottom table starts (6, 6), (1, 4)
    torch.testing.assert_close(fca.dct_filters[0], torch.outer(basis(6, 7), basis(6, 7)).float())
    torch.testing.assert_close(fca.dct_filters[16], torch.outer(basis(1, 7), basis(4, 7)).float())
    low = build_module("fca", 32, frequencies="low32")  # the 32nd lowest is (4, 3)
    torch.testing.assert_close(low.dct_filters[31], torch.outer(basis(4, 7), basis(3, 7)).float())


def test_selection_changes_the_forward() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 32, 7, 7)
    top, low = build_module("fca", 32, frequencies="top16").eval(), build_module("fca", 32, frequencies="low16").eval()
    low.load_state_dict({**top.state_dict(), "dct_filters": low.dct_filters})
    assert not torch.allclose(top(x), low(x))


def test_paper_defaults() -> None:
    assert get_module_entry("fca").schema.defaults() == {"frequencies": "top16", "reduction": 16, "dct_size": 7}


@pytest.mark.parametrize("channels,hp,key", [
    (24, {}, "frequencies"),  # 16 frequency groups do not divide 24 channels
    (32, {"frequencies": "top3"}, "frequencies"),
    (32, {"frequencies": "top32", "reduction": 64}, "reduction"),
    (32, {"dct_size": 6}, "dct_size"),
])
def test_bad_values_name_their_key(channels: int, hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("fca", channels, **hp)
    assert info.value.key == key
