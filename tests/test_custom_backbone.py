"""Your own backbone: modules attached to a model built outside attnbench equal the built-in backbones.

`PlainResNet50` below is written after torchvision's `resnet50()` (torchvision/models/resnet.py: the
module names, the stride on the 3x3 conv, zero-init off) and knows nothing of attnbench. Attaching
`se`, `eca` or `cbam` after every `layer*.*.bn3` must give the built-in SE/ECA/CBAM-ResNet-50: the
same parameter count, the same MACs and FLOPs per slot and in all, and the same outputs once the
built-in model's weights are copied in.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnbench import ConfigError, attach, build_model, measure_complexity
from attnbench.backbones import attention_slots
from attnbench.backbones.custom import GateAfter, matches


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class PlainResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3)
        self.layer2 = self._layer(128, 4, stride=2)
        self.layer3 = self._layer(256, 6, stride=2)
        self.layer4 = self._layer(512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def _layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def built_in_name(name: str) -> str:
    """The built-in backbone's name for a parameter of the attached model: `bn3.module.w` is `bn3.w`,
    `bn3.attention.fc1.w` is `attention.fc1.w` (the built-in block holds its gate as `attention`)."""
    if ".bn3.attention." in name:
        return name.replace(".bn3.attention.", ".attention.")
    return name.replace(".bn3.module.", ".bn3.")


def copy_weights_from(built_in: nn.Module, attached: nn.Module) -> None:
    source = built_in.state_dict()
    target = attached.state_dict()
    assert {built_in_name(k) for k in target} == set(source)
    attached.load_state_dict({k: source[built_in_name(k)] for k in target})


def test_plain_resnet50_is_torchvisions_resnet50() -> None:
    assert n_params(PlainResNet50()) == 25_557_032  # and its MACs are the built-in's: see the tests below


# by hand: ResNet-50's 25,557,032, plus per block (C = 256, 512, 1024, 2048 in 3, 4, 6, 3 blocks)
SE_EXTRA = sum(n * (2 * c * (c // 16) + c // 16 + c) for c, n in ((256, 3), (512, 4), (1024, 6), (2048, 3)))
ECA_EXTRA = 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7  # one conv1d of the adaptive kernel k(C) = 5, 5, 5, 7, no bias
CBAM_EXTRA = SE_EXTRA + 16 * (2 * 7 * 7 + 2)  # SE's MLP, and a 7x7 conv 2 -> 1 with its BN in every block


@pytest.mark.slow
@pytest.mark.parametrize("module,params", [("se", 25_557_032 + SE_EXTRA), ("eca", 25_557_032 + ECA_EXTRA),
                                           ("cbam", 25_557_032 + CBAM_EXTRA)])
def test_attached_gate_equals_the_built_in_resnet50(module: str, params: int) -> None:
    torch.manual_seed(0)
    built_in = build_model("resnet50", module)
    attached = attach(PlainResNet50(), module, after=["layer*.*.bn3"])
    assert n_params(attached) == n_params(built_in) == params
    if module == "se":
        assert params == 28_088_024
    assert len(attention_slots(attached)) == 16

    ours = measure_complexity(attached, (1, 3, 224, 224))
    theirs = measure_complexity(built_in, (1, 3, 224, 224), cross_check=False)
    assert (ours.params, ours.attention_params, ours.macs, ours.flops) == \
        (theirs.params, theirs.attention_params, theirs.macs, theirs.flops)
    assert ours.cross_check_rel_diff == 0 and not ours.uncounted_ops
    renamed = {name.replace(".bn3.attention", ".attention"): counts for name, counts in ours.by_slot.items()}
    assert renamed == theirs.by_slot and all(counts["macs"] > 0 for counts in renamed.values())

    copy_weights_from(built_in, attached)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    built_in.eval(), attached.eval()
    with torch.no_grad():
        assert torch.equal(attached(x), built_in(x))


@pytest.mark.slow
def test_replaced_convs_equal_the_built_in_dcn_resnet50() -> None:
    torch.manual_seed(0)
    built_in = build_model("resnet50", "dcn")  # DCNv2 in conv3-conv5: torchvision's layer2-layer4
    attached = attach(PlainResNet50(), "dcn", replace_convs=["layer[234].*.conv2"])
    assert len(attention_slots(attached)) == 13
    ours = measure_complexity(attached, (1, 3, 224, 224))
    theirs = measure_complexity(built_in, (1, 3, 224, 224), cross_check=False)
    assert (ours.params, ours.attention_params, ours.macs, ours.flops) == \
        (theirs.params, theirs.attention_params, theirs.macs, theirs.flops)
    assert ours.by_slot == {name: theirs.by_slot[name] for name in ours.by_slot}  # the built-in also lists its identity gates
    assert ours.cross_check_rel_diff == 0 and not ours.uncounted_ops
    attached.load_state_dict(built_in.state_dict())  # a replacing module keeps the conv's name
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    built_in.eval(), attached.eval()
    with torch.no_grad():
        assert torch.equal(attached(x), built_in(x))


class Tiny(nn.Module):
    """conv-bn-relu twice and a classifier: small enough to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 1, bias=False),
        )
        self.unused = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_patterns_match_whole_dotted_names() -> None:
    assert matches("layer*.*.bn3", "layer1.0.bn3") and not matches("layer*.*.bn3", "layer1.0.downsample.bn3")
    assert matches("layer1.*", "layer1.0") and not matches("layer1.*", "layer1.0.conv1")
    assert matches("**.bn3", "layer1.0.bn3") and matches("**.bn3", "bn3") and matches("layer1.**", "layer1")
    assert matches("features.[14]", "features.4") and not matches("features.[14]", "features.2")
    assert matches("stage?.conv", "stage2.conv") and not matches("Stage?.conv", "stage2.conv")  # case-sensitive


def test_attach_leaves_an_ordinary_model() -> None:
    model = Tiny()
    plain = copy.deepcopy(model)
    attach(model, "se", after=["features.1", "features.4"], input_size=16, reduction=4)
    assert isinstance(model.features[1], GateAfter) and model.features[1].num_features == 8  # attributes pass through
    assert list(attention_slots(model)) == ["features.1.attention", "features.4.attention"]
    result = measure_complexity(model, (1, 3, 16, 16))
    # by hand: C -> C/4 -> C with biases after 8 and 16 channels; MACs C * C/4 twice per gate
    assert result.params == sum(p.numel() for p in plain.parameters()) + (2 * 8 * 2 + 2 + 8) + (2 * 16 * 4 + 4 + 16)
    assert result.by_slot["features.1.attention"]["macs"] == 2 * 8 * 2
    assert result.by_slot["features.4.attention"]["macs"] == 2 * 16 * 4
    assert result.cross_check_rel_diff == 0
    model.load_state_dict(plain.state_dict(), strict=False)  # the plain model's keys still load
    assert torch.equal(model.features[1].module.weight, plain.features[1].weight)
    twin = copy.deepcopy(model)  # a copy runs its own gates
    assert twin.features[1].attention is not model.features[1].attention
    model.eval(), twin.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), twin(x))


def test_per_pattern_hyperparameters_and_blocks() -> None:
    model = attach(Tiny(), "eca", after=["features.1", "features.4"], input_size=16, kernel_size=[3, 5])
    assert [m.conv.kernel_size for m in attention_slots(model).values()] == [(3,), (5,)]
    model = attach(PlainResNet50(), "se", after=["layer3.*.bn3", "layer4.*.bn3"], blocks=[-1])
    assert list(attention_slots(model)) == ["layer3.5.bn3.attention", "layer4.2.bn3.attention"]


@pytest.mark.parametrize("kwargs,key,needle", [
    ({"after": ["features.9"]}, "after[0]", "matches none; its modules include"),
    ({"after": ["unused"]}, "after[0]", "unused never runs, so the channels of its slot cannot be found"),
    ({"after": ["fc"]}, "after[0]", "(N, C, H, W) map: fc has shape [1, 4]"),
    ({"after": ["features.1", "features.*"]}, "after[1]", "features.1 is matched by after[0] too"),
    ({"after": ["features..1"]}, "after[0]", "dot-separated components"),
    ({"replace_convs": ["features.1"]}, "replace_convs", "left out for se, a gate module"),
    ({"after": []}, "after", "a non-empty list"),
    ({"after": ["features.1"], "input_size": 0}, "input_size", "a positive integer"),
    ({"after": ["features.1"], "blocks": [2]}, "blocks", "it matches 1 modules"),
    ({"after": ["features.1"], "reduction": 0}, "reduction", ""),
])
def test_attach_refuses_bad_slots_naming_the_argument(kwargs: dict, key: str, needle: str) -> None:
    model = Tiny()
    before = repr(model)
    with pytest.raises(ConfigError) as raised:
        attach(model, "se", **kwargs)
    assert raised.value.key == key and needle in str(raised.value), str(raised.value)
    assert repr(model) == before  # the probe's recorders are gone again


@pytest.mark.parametrize("pattern,needle", [
    ("features.1", "it matches features.1, a BatchNorm2d"),
    ("features.6", "a Conv2d with kernel_size=(1, 1)"),
])
def test_conv_replacement_takes_3x3_same_padded_convs_only(pattern: str, needle: str) -> None:
    with pytest.raises(ConfigError) as raised:
        attach(Tiny(), "dcn", replace_convs=[pattern], input_size=16)
    assert raised.value.key == "replace_convs[0]" and needle in str(raised.value), str(raised.value)
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 8, 3, padding=2))
    for index in ("0", "1"):
        with pytest.raises(ConfigError, match="padding 1, dilation 1, groups 1"):
            attach(nn.Sequential(nn.Conv2d(3, 8, 1), grouped), "dcn", replace_convs=[f"1.{index}"], input_size=16)


def test_a_model_that_cannot_run_on_meta_is_refused() -> None:
    class Stubborn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.scale = torch.ones(1)  # a plain tensor, not a buffer: stays on the CPU

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.scale

    with pytest.raises(ConfigError, match="on the meta device"):
        attach(Stubborn(), "se", after=["conv"], input_size=8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attach_to_a_model_on_cuda_puts_the_modules_there() -> None:
    model = Tiny().cuda().eval()
    attach(model, "se", after=["features.4"], input_size=16, reduction=4)
    attach(model, "dcn", replace_convs=["features.3"], input_size=16)
    assert all(p.is_cuda for p in model.parameters())
    assert not model.features[4].attention.training  # the mode of the module it joins
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16, device="cuda")).shape == (2, 4)


def test_new_modules_take_the_mode_of_the_model() -> None:
    model = attach(Tiny().eval(), "se", after=["features.4"], input_size=16, reduction=4)
    assert not model.features[4].attention.training
    plain = Tiny().train()
    conv = plain.features[3].weight.detach().clone()
    model = attach(plain, "dcn", replace_convs=["features.3"], input_size=16)
    assert model.features[3].training
    assert torch.equal(model.features[3].weight, conv)  # the replacing module starts from the conv's weight
