"""The Residual Attention Network's soft mask gate against a functional rebuild of the paper's mask
branch, the official Attention-56 prototxt's parameter counts and Caffe's pooling / Interp
conventions, and its hyperparameters."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry
from attnbench.modules.ran import _upsample


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and BN running statistics, so every layer takes part."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.3)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)


def bn_relu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return torch.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def unit(u: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-activation bottleneck: x + W3 * BR(W2 * BR(W1 * BR(x)))."""
    out = F.conv2d(bn_relu(x, u.bn1), u.conv1.weight)
    out = F.conv2d(bn_relu(out, u.bn2), u.conv2.weight, padding=1)
    return x + F.conv2d(bn_relu(out, u.bn3), u.conv3.weight)


def caffe_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Caffe's 3x3 stride-2 max-pool: ceil((H - 3) / 2) + 1 windows, the last one clipped to the map."""
    h, w = x.shape[2:]
    out_h, out_w = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
    padded = F.pad(x, (0, 2 * out_w + 1 - w, 0, 2 * out_h + 1 - h), value=float("-inf"))
    return F.max_pool2d(padded, 3, 2)


def interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Caffe Interp along one axis: output i samples input i * (n_in - 1) / (n_out - 1), linearly."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        pos = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = min(int(pos), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        a[i, lo] += 1 - (pos - lo)
        a[i, hi] += pos - lo
    return a


def interp(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    a_h, a_w = interp_matrix(x.shape[2], size[0]), interp_matrix(x.shape[3], size[1])
    return a_h.to(x.dtype) @ x @ a_w.to(x.dtype).T


def soft_mask(ran: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Paper sec. 3.2: max-pool + units down to the lowest scale, then upsample + skip + units back up."""
    scales, out = [], x
    for level in ran.down:
        out = caffe_max_pool(out)
        for u in level:
            out = unit(u, out)
        scales.append(out)
    for i in reversed(range(len(ran.down) - 1)):
        out = interp(out, scales[i].shape[2:]) + unit(ran.skips[i], scales[i])
        for u in ran.up[i]:
            out = unit(u, out)
    out = interp(out, x.shape[2:])
    bn0, _, conv0, bn1, _, conv1 = ran.head
    out = F.conv2d(bn_relu(F.conv2d(bn_relu(out, bn0), conv0.weight), bn1), conv1.weight)
    return torch.sigmoid(out)


@pytest.mark.parametrize("downsamples,units,size", [(2, 1, (11, 9)), (3, 1, (16, 16)), (1, 2, (7, 8))])
def test_matches_functional_mask_branch(downsamples: int, units: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    ran = build_module("ran", 8, downsamples=downsamples, units=units).double().eval()
    randomise(ran)
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    torch.testing.assert_close(ran(x), (1 + soft_mask(ran, x)) * x)


def test_naive_attention_learning_switch() -> None:
    torch.manual_seed(0)
    ran = build_module("ran", 8, attention_residual=False).double().eval()
    randomise(ran)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(ran(x), soft_mask(ran, x) * x)


@pytest.mark.parametrize("channels,downsamples,expected", [(256, 3, 695296), (512, 2, 1926656), (1024, 1, 4335616)])
def test_parameter_count_of_official_prototxt(channels: int, downsamples: int, expected: int) -> None:
    # fwang91/residual-attention-network bc207a8, imagenet_model/Attention-56-deploy.prototxt: the learnable
    # blobs (conv weights, BN scale and shift) of the AttentionA_1 / B_1 / C_1 "mask" layers, run layer by
    # layer in a scratch interpreter with Caffe's pooling, BN and Interp formulas; outputs matched this module
    # to 2e-14 in float64 at 56x56 / 28x28 / 14x14 (and odd sizes) after copying every weight (4e-6 when the
    # interpolation coordinates are rounded to float32, as Caffe computes them).
    assert n_params(build_module("ran", channels, downsamples=downsamples)) == expected


@pytest.mark.parametrize("downsamples,units,down,skips,up",
                         [(3, 1, [1, 1, 2], 2, [1, 1]), (2, 2, [2, 4], 1, [2]), (1, 1, [2], 0, [])])
def test_attention56_unit_layout(downsamples: int, units: int, down: list[int], skips: int, up: list[int]) -> None:
    """Prototxt AttentionA: pool, res1_1, pool, res2_1, pool, res3_1, res3_2; skips res1, res2; up res2_1, res1_1."""
    ran = build_module("ran", 16, downsamples=downsamples, units=units)
    assert [len(level) for level in ran.down] == down
    assert len(ran.skips) == skips and [len(level) for level in ran.up] == up
    unit0 = ran.down[0][0]
    assert (unit0.conv1.out_channels, unit0.conv2.kernel_size, unit0.conv3.out_channels) == (4, (3, 3), 16)
    assert all(m.bias is None for m in ran.modules() if isinstance(m, nn.Conv2d))


def test_pooling_is_caffe_ceil_mode_and_upsampling_aligns_corners() -> None:
    ran = build_module("ran", 8, downsamples=2)
    sizes = []
    for level in ran.down:
        level.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    ran(torch.randn(1, 8, 14, 14))
    assert sizes == [7, 3]  # floor mode would give 6 and 2
    x = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    up = _upsample(x, torch.empty(1, 1, 5, 7))
    assert torch.equal(up[..., 0, 0], x[..., 0, 0]) and torch.equal(up[..., -1, -1], x[..., -1, -1])


def test_maps_too_small_for_the_pools_are_refused() -> None:
    ran = build_module("ran", 8, downsamples=3)
    with pytest.raises(ConfigError) as info:
        ran(torch.randn(1, 8, 4, 4))  # 4 -> 2 -> 1 -> no third pool
    assert info.value.key == "downsamples" and "at most 2" in str(info.value)
    with pytest.raises(ConfigError):
        build_module("ran", 8)(torch.randn(1, 8, 1, 5))
    assert build_module("ran", 8).eval()(torch.randn(1, 8, 2, 2)).shape == (1, 8, 2, 2)


def test_paper_defaults() -> None:
    assert get_module_entry("ran").schema.defaults() == {"downsamples": 1, "units": 1, "attention_residual": True}


@pytest.mark.parametrize("channels,hp,key",
                         [(2, {}, "channels"), (8, {"downsamples": 0}, "downsamples"), (8, {"units": 5}, "units")])
def test_bad_values_name_their_key(channels: int, hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("ran", channels, **hp)
    assert info.value.key == key
