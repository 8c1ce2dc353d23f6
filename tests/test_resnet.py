"""ResNets: torchvision's exact parameter counts and init, published SE/CBAM counts, slots and positions."""
from __future__ import annotations

import math

import pytest
import torch

from attnbench import ConfigError, build_model
from attnbench.backbones import attention_slots


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# torchvision.models.resnetXX(): the documented parameter counts of its model builders.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}


@pytest.mark.parametrize("name,expected", TORCHVISION_PARAMS.items())
def test_torchvision_parameter_counts(name: str, expected: int) -> None:
    assert n_params(build_model(name)) == expected


def _se_extra(stage_channels: list[tuple[int, int]], r: int = 16) -> int:
    """SE's parameters by hand: per block two FCs C->C/r->C with biases."""
    return sum(blocks * (2 * c * (c // r) + c // r + c) for c, blocks in stage_channels)


def test_se_resnet50_matches_the_se_paper() -> None:
    model = build_model("resnet50", "se", reduction=16)
    extra = _se_extra([(256, 3), (512, 4), (1024, 6), (2048, 3)])
    assert n_params(model) == 25_557_032 + extra
    assert round(n_params(model) / 1e6, 1) == 28.1  # SE paper, Table 2: SE-ResNet-50 28.1 M


def test_cbam_resnet50_matches_the_cbam_paper() -> None:
    # CBAM paper, Table 4: ResNet50 + CBAM, 28.09 M parameters.
    assert round(n_params(build_model("resnet50", "cbam")) / 1e6, 2) == 28.09


def test_init_is_torchvisions() -> None:
    torch.manual_seed(0)
    model = build_model("resnet50", "dcn")
    conv = model.layer1[0].conv2  # 3x3, 64 -> 64: kaiming normal, fan_out = 64 * 9
    assert abs(conv.weight.std().item() - math.sqrt(2 / (64 * 9))) < 0.01
    assert torch.all(model.layer1[0].bn1.weight == 1) and torch.all(model.layer1[0].bn1.bias == 0)
    dcn = model.layer3[0].conv2
    assert abs(dcn.weight.std().item() - math.sqrt(2 / (256 * 9))) < 0.005  # replaced conv: backbone init
    assert all(torch.all(p == 0) for p in dcn.overhead_parameters())  # offset conv stays zero (DCN papers)


def test_slots_and_stages() -> None:
    model = build_model("resnet50", "se", stages=[4, 5])
    slots = attention_slots(model)
    assert len(slots) == 3 + 4 + 6 + 3  # one per block, identity outside stages 4 and 5
    gating = [n for n, m in slots.items() if type(m).__name__ == "SqueezeExcitation"]
    assert len(gating) == 6 + 3 and all(n.startswith(("layer3", "layer4")) for n in gating)
    dcn_slots = attention_slots(build_model("resnet50", "dcn"))
    dcn_names = [n for n, m in dcn_slots.items() if type(m).__name__ == "DeformConv"]
    assert len(dcn_names) == 4 + 6 + 3 and all(n.endswith("conv2") for n in dcn_names)


@pytest.mark.parametrize("position,channels", [("standard", 64), ("pre", 64), ("post", 64), ("identity", 64)])
def test_positions_run_and_use_the_right_channels(position: str, channels: int) -> None:
    model = build_model("cifar_resnet18", "se", position=position, num_classes=10, reduction=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    first = model.layer2[0].attention  # stage 3's first block: in 64, out 128
    assert first.reduce.in_channels == (64 if position == "pre" else 128)


def test_position_changes_the_function() -> None:
    x = torch.randn(1, 3, 32, 32)
    outputs = []
    for position in ("standard", "pre", "post", "identity"):
        torch.manual_seed(0)
        model = build_model("cifar_resnet18", "se", position=position, num_classes=10, reduction=4).eval()
        outputs.append(model(x))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not torch.allclose(outputs[i], outputs[j])


def test_cifar_stem() -> None:
    model = build_model("cifar_resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert n_params(model) == 11_689_512 - 64 * 3 * 49 + 64 * 3 * 9 - 513 * 1000 + 513 * 10


@pytest.mark.parametrize("kwargs,key", [
    ({"backbone": "resnet51"}, "backbone"),
    ({"backbone": "resnet18", "stages": [1]}, "stages"),
    ({"backbone": "resnet18", "position": "middle"}, "position"),
    ({"backbone": "resnet18", "attention": "se", "reduction": 128}, "reduction"),
    ({"backbone": "resnet18", "num_classes": 0}, "num_classes"),
])
def test_bad_placement(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(**kwargs)
    assert info.value.key == key
