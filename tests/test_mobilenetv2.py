"""MobileNetV2 against torchvision's published figures and layout, and the official CA and ECA MobileNetV2 counts."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnbench import ConfigError, build_model, measure_complexity
from attnbench.backbones import attention_slots, get_backbone_entry, probe_sites
from attnbench.modules import module_names


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_parameters_and_macs_are_torchvisions() -> None:
    model = build_model("mobilenet_v2")
    # torchvision MobileNet_V2_Weights meta: "num_params": 3504872, "_ops": 0.301 (GMACs at 224 x 224)
    assert n_params(model) == 3_504_872
    result = measure_complexity(model, (1, 3, 224, 224))
    # every conv and the classifier, bias additions not counted: 300.77 M; the same count on torchvision's
    # module tree, rebuilt from torchvision/models/mobilenetv2.py in scratch (its weights load here exactly)
    assert result.macs == 300_774_272 and round(result.macs / 1e9, 3) == 0.301
    assert result.uncounted_ops == [] and result.cross_check_rel_diff == 0
    assert result.attention_params == 0


def test_layout_and_state_dict_names_are_torchvisions() -> None:
    model = build_model("mobilenet_v2")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["features.0.0.weight"] == (32, 3, 3, 3)  # stem: 3x3 stride 2 to 32
    assert shapes["features.1.conv.0.0.weight"] == (32, 1, 3, 3)  # t = 1: no expansion, depthwise first
    assert shapes["features.1.conv.1.weight"] == (16, 32, 1, 1)
    assert shapes["features.2.conv.0.0.weight"] == (96, 16, 1, 1)  # t = 6 expansion
    assert shapes["features.2.conv.1.0.weight"] == (96, 1, 3, 3)
    assert shapes["features.17.conv.2.weight"] == (320, 960, 1, 1)
    assert shapes["features.18.0.weight"] == (1280, 320, 1, 1)
    assert shapes["classifier.1.weight"] == (1000, 1280)
    assert len(model.features) == 19 and all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2]
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 35  # stem, 17 dw, 16 expansions, head; none after projections
    strides = [block.conv[-3][0].stride[0] for block in model.features[1:18]]
    assert strides == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert [block.use_residual for block in model.features[1:18]].count(True) == 10


def test_initialisation_is_torchvisions() -> None:
    model = build_model("mobilenet_v2")
    head = model.features[18][0].weight
    assert head.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.02)  # Kaiming normal, fan-out
    depthwise = model.features[17].conv[1][0].weight
    assert depthwise.std().item() == pytest.approx(math.sqrt(2 / (960 * 9)), rel=0.05)  # fan-out = C * k * k
    fc = model.classifier[1]
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02) and not fc.bias.any()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and not m.bias.any() for m in bns)


def test_initialisation_reaches_slot_modules() -> None:
    # torchvision's loop over every module, as the official CA and ECA MobileNetV2 code run it: SE's 1x1 convs
    # get Kaiming fan-out weights and zero biases instead of nn.Conv2d's defaults
    se = next(m for m in attention_slots(build_model("mobilenet_v2", "se", position="projection")).values() if n_params(m))
    assert not se.reduce.bias.any() and not se.expand.bias.any()
    assert se.reduce.weight.std().item() == pytest.approx(math.sqrt(2 / se.reduce.out_channels), rel=0.2)


@pytest.mark.parametrize("position", ["depthwise", "projection"])
def test_slot_channels_and_stages(position: str) -> None:
    entry = get_backbone_entry("mobilenet_v2")
    assert entry.stages == (1, 2, 3, 4, 5, 6, 7) and entry.positions == ("depthwise", "projection")
    model = build_model("mobilenet_v2", "se", stages=list(entry.stages), position=position, reduction=4)
    seen: dict[int, list[int]] = {}
    stage_of_block = [1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7]
    for block, stage in zip(model.features[1:18], stage_of_block):
        seen.setdefault(stage, []).append(block.attention.reduce.in_channels)
    if position == "depthwise":  # the expanded widths round(t * C_in)
        assert seen == {1: [32], 2: [96, 144], 3: [144, 192, 192], 4: [192, 384, 384, 384],
                        5: [384, 576, 576], 6: [576, 960, 960], 7: [960]}
    else:  # the c column of the (t, c, n, s) table
        assert seen == {1: [16], 2: [24, 24], 3: [32] * 3, 4: [64] * 4, 5: [96] * 3, 6: [160] * 3, 7: [320]}
    sites = probe_sites("mobilenet_v2", position).sites  # what validation checks the modules against
    assert {s: [x.channels for x in sites if x.stage == s] for s in entry.stages} == seen


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("position", ["depthwise", "projection"])
def test_slot_positions_inside_the_block(position: str) -> None:
    model = build_model("mobilenet_v2", position=position).eval()
    block = model.features[3]  # stage 2, second block: residual
    with torch.no_grad():
        block.conv[3].running_mean.fill_(0.5)
        block.conv[3].bias.fill_(0.25)
    block.attention = _Zero()
    x = torch.randn(2, 24, 8, 8)
    out = block(x)
    if position == "depthwise":  # the projection of zeros is zero; its BN then shifts by bias - mean * scale
        shift = 0.25 - 0.5 / math.sqrt(1 + block.conv[3].eps)
        torch.testing.assert_close(out, x + shift)
    else:  # the whole residual branch is gated away, the identity stays
        torch.testing.assert_close(out, x)


def test_defaults_and_refusals() -> None:
    entry = get_backbone_entry("mobilenet_v2")
    assert entry.default_stages == (2, 3, 4, 5, 6, 7)  # CA's: no module in the t = 1 block
    model = build_model("mobilenet_v2", "se")
    gated = [i for i, block in enumerate(model.features[1:18], start=1) if n_params(block.attention)]
    assert gated == list(range(2, 18)) and model.features[2].attention.reduce.in_channels == 96  # depthwise
    with pytest.raises(ConfigError) as err:
        build_model("mobilenet_v2", "se", position="standard")
    assert err.value.key == "position"
    with pytest.raises(ConfigError) as err:
        build_model("mobilenet_v2", "se", stages=[8])
    assert err.value.key == "stages"
    with pytest.raises(ConfigError) as err:
        build_model("mobilenet_v2", "dcn")
    assert err.value.key == "attention"


def test_eca_mobilenetv2_parameter_count() -> None:
    # BangguWu/ECANet models/eca_mobilenetv2.py (b332f6b), eca_mobilenet_v2() run in scratch: 3,504,903 parameters;
    # eca_layer after the projection's BN in all 17 blocks, k_size 1 where c < 96 (stages 1-4), else 3 (stages 5-7).
    # One plan takes one kernel size, so the two halves are built apart and their additions summed.
    base = 3_504_872
    small = build_model("mobilenet_v2", "eca", position="projection", stages=[1, 2, 3, 4], kernel_size=1)
    large = build_model("mobilenet_v2", "eca", position="projection", stages=[5, 6, 7], kernel_size=3)
    assert base + (n_params(small) - base) + (n_params(large) - base) == 3_504_903


@pytest.mark.skipif("coord" not in module_names(), reason="no coordinate attention module registered")
def test_ca_mobilenetv2_parameter_count_and_macs() -> None:
    # houqb/CoordAttention (formerly Andrew-Qibin) mbv2_ca.py (227af76), mbv2_ca() run in scratch: 3,950,648
    # parameters, 306,666,368 MACs at 224 x 224 by measure_complexity; CoordAtt(hidden, hidden) after the
    # depthwise BN + ReLU6 of the 16 blocks with t = 6 (its outputs equal this model's after mapping the weights)
    model = build_model("mobilenet_v2", "coord")
    assert n_params(model) == 3_950_648
    result = measure_complexity(model, (1, 3, 224, 224), cross_check=False)
    assert result.macs == 306_666_368 and result.uncounted_ops == []


@pytest.mark.parametrize("position", ["depthwise", "projection"])
def test_forward_backward_and_counts_with_a_module(position: str) -> None:
    model = build_model("mobilenet_v2", "se", stages=[1, 2, 3, 4, 5, 6, 7], position=position, num_classes=10)
    result = measure_complexity(model, (1, 3, 32, 32))
    assert result.uncounted_ops == [] and result.cross_check_rel_diff == 0 and result.uncalled_modules == []
    assert len(result.by_slot) == 17 and result.attention_params > 0
    model.train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eca_slot_is_the_official_layer() -> None:
    # eca_layer(oup, k) on the block output before the residual add, as in eca_mobilenetv2.py's InvertedResidual
    model = build_model("mobilenet_v2", "eca", position="projection", stages=[5], kernel_size=3).eval()
    block = model.features[12]  # stage 5, second block: 96 -> 96, residual
    x = torch.randn(1, 96, 6, 6)
    branch = block.conv(x)
    gate = torch.sigmoid(torch.nn.functional.conv1d(branch.mean(dim=(2, 3))[:, None], block.attention.conv.weight, padding=1))
    expected = x + branch * gate[:, 0, :, None, None]
    torch.testing.assert_close(block(x), expected)
