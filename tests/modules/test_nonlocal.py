"""Non-local block against the paper's equations, the official codes' parameter counts, and its switches."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module

MODES = ["embedded_gaussian", "gaussian", "dot_product", "concatenation"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and BN running statistics (the block is the identity at init)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        if module.bn is not None:
            module.bn.running_mean.normal_(0, 0.3)
            module.bn.running_var.uniform_(0.5, 1.5)


def conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias)


def reference(block: nn.Module, x: torch.Tensor, mode: str, sub_sample: bool, scale: bool = True) -> torch.Tensor:
    """z_i = x_i + BN(W y_i), y_i = sum_j f(x_i, x_j) g(x_j) / C(x) (paper eqs. 1-4, 6), position by position."""
    pooled = F.max_pool2d(x, 2) if sub_sample else x  # official: phi and g read the pooled input
    g = conv1x1(pooled, block.g).flatten(2)
    if mode == "gaussian":
        theta, phi = x.flatten(2), pooled.flatten(2)
    else:
        theta, phi = conv1x1(x, block.theta).flatten(2), conv1x1(pooled, block.phi).flatten(2)
    positions, others = theta.shape[2], phi.shape[2]
    y = torch.zeros_like(g[:, :, :1]).repeat(1, 1, positions)
    for i in range(positions):
        if mode == "concatenation":
            w = block.concat_project.weight.flatten()
            pair = torch.cat([theta[:, :, i:i + 1].expand(-1, -1, others), phi], dim=1)
            f = torch.relu(torch.einsum("c,ncj->nj", w, pair)) / others
        else:
            dots = torch.einsum("nc,ncj->nj", theta[:, :, i], phi)
            if mode == "dot_product":
                f = dots / others
            else:
                f = torch.softmax(dots * (theta.shape[1] ** -0.5 if mode == "embedded_gaussian" and scale else 1.0), dim=1)
        y[:, :, i] = torch.einsum("nj,ncj->nc", f, g)
    z = conv1x1(y.reshape(x.shape[0], -1, *x.shape[2:]), block.out)
    if block.bn is not None:
        bn = block.bn
        z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return x + z


@pytest.mark.parametrize("sub_sample", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_matches_paper_equations(mode: str, sub_sample: bool) -> None:
    torch.manual_seed(0)
    block = build_module("nonlocal", 8, mode=mode, sub_sample=sub_sample).double().eval()
    randomise(block)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference(block, x, mode, sub_sample))


@pytest.mark.parametrize("channels,expected", [(64, 8480), (256, 132224)])
def test_parameter_count_of_official_caffe2_code(channels: int, expected: int) -> None:
    # facebookresearch/video-nonlocal-net c253ed5, lib/models/nonlocal_helper.py add_nonlocal(dim_inner=C/2),
    # run eagerly through a torch stand-in for its ModelHelper calls: theta/phi/g/out convs with biases + BN
    # scale and shift; outputs matched this module to 1e-13 after copying weights (float64, BN eps matched).
    assert n_params(build_module("nonlocal", channels)) == expected


@pytest.mark.parametrize("mode,channels,expected", [
    ("embedded_gaussian", 64, 8352), ("embedded_gaussian", 256, 131712),
    ("gaussian", 64, 4192), ("gaussian", 256, 65920),
    ("concatenation", 64, 8416), ("concatenation", 256, 131968),
])
def test_parameter_count_of_mmcv_without_bn(mode: str, channels: int, expected: int) -> None:
    # open-mmlab/mmcv a8073c7, mmcv/cnn/bricks/non_local.py NonLocal2d(C, mode=mode) with its default
    # norm_cfg None (mmengine / ConvModule stubbed); outputs matched to 1e-12 without sub-sampling.
    assert n_params(build_module("nonlocal", channels, mode=mode, bn=False)) == expected


@pytest.mark.parametrize("bn", [True, False])
def test_block_is_identity_at_init(bn: bool) -> None:
    block = build_module("nonlocal", 16, bn=bn).eval()
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(block(x), x)
    for conv in (block.theta, block.phi, block.g):
        assert torch.all(conv.bias == 0) and 0.005 < conv.weight.std().item() < 0.015  # normal(std 0.01)
    if bn:  # Caffe2: W normal(0.01), BN gamma 0 (BN_INIT_GAMMA); mmcv with norm_cfg zero-inits the norm too
        assert torch.all(block.bn.weight == 0) and block.out.weight.abs().sum() > 0
    else:  # mmcv default: no BN, W zero-initialised
        assert block.bn is None and torch.all(block.out.weight == 0)


def test_sub_sampling_pools_the_input_of_phi_and_g_as_the_caffe2_code() -> None:
    """The paper (and mmcv) max-pool after phi and g; the Caffe2 code pools x before their convs."""
    torch.manual_seed(1)
    block = build_module("nonlocal", 8, mode="dot_product").double().eval()
    randomise(block)
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    theta = conv1x1(x, block.theta).flatten(2)
    def output(phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(g, (theta.transpose(1, 2) @ phi / phi.shape[2]).transpose(1, 2)).reshape(1, -1, 6, 6)
        return x + block.bn(block.out(y))
    pooled = F.max_pool2d(x, 2)
    official = output(conv1x1(pooled, block.phi).flatten(2), conv1x1(pooled, block.g).flatten(2))
    after = output(F.max_pool2d(conv1x1(x, block.phi), 2).flatten(2), F.max_pool2d(conv1x1(x, block.g), 2).flatten(2))
    torch.testing.assert_close(block(x), official)
    assert not torch.allclose(block(x), after)


def test_embedded_gaussian_is_scaled_as_the_official_code_unlike_the_paper() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    scaled = build_module("nonlocal", 8).double().eval()
    randomise(scaled)
    plain = build_module("nonlocal", 8, use_scale=False).double().eval()
    plain.load_state_dict(scaled.state_dict())
    torch.testing.assert_close(plain(x), reference(plain, x, "embedded_gaussian", True, scale=False))
    assert not torch.allclose(plain(x), scaled(x))
    assert build_module("nonlocal", 8, mode="gaussian", use_scale=True).scale is None  # mmcv scales only embedded


def test_defaults_and_reduction() -> None:
    block = build_module("nonlocal", 64)
    assert block.mode == "embedded_gaussian" and block.theta.out_channels == 32 and block.pool is not None
    assert isinstance(block.bn, nn.BatchNorm2d) and block.scale == 32 ** -0.5
    assert build_module("nonlocal", 64, reduction=4).g.out_channels == 16
    assert build_module("nonlocal", 64, mode="gaussian").theta is None


@pytest.mark.parametrize("hp,key", [
    ({"mode": "softmax"}, "mode"),
    ({"reduction": 32}, "reduction"),
    ({"use_scale": 1}, "use_scale"),
    ({"sub_sample": "yes"}, "sub_sample"),
])
def test_bad_values_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("nonlocal", 16, **hp)
    assert info.value.key == key
