"""Backbone layouts and module placements where the modules were born, pinned to the official counts."""
from __future__ import annotations

import pytest
import torch

from attnbench import ConfigError, build_model, measure_complexity
from attnbench.config.point import make_point
from attnbench.modules.slots import attention_slots


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_eca_takes_the_released_per_stage_kernels() -> None:
    """ECA-ResNet-50 as released (eca_resnet50_k3557): one k per stage; 80 ECA parameters, not eq. (12)'s 86."""
    released = build_model("resnet50", "eca", kernel_size="k3557")
    assert n_params(released) == 25_557_112
    assert n_params(build_model("resnet50", "eca")) == 25_557_032 + 86  # adaptive: 5, 5, 5, 7
    kernels = {name.split(".")[0]: m.kernel_size for name, m in attention_slots(released).items()}
    assert kernels == {"layer1": 3, "layer2": 5, "layer3": 5, "layer4": 7}
    named = make_point("resnet50", "eca", {"kernel_size": "k3557"})
    assert named.key == make_point("resnet50", "eca", {"kernel_size": [3, 5, 5, 7]}).key
    late = build_model("resnet50", "eca", stages=[4, 5], kernel_size=[5, 9])
    assert [m.kernel_size for m in attention_slots(late).values() if hasattr(m, "kernel_size")] == [5] * 6 + [9] * 3


@pytest.mark.parametrize("kernels,key", [([3, 5, 7], "kernel_size"), ([3, 4, 5, 7], "kernel_size[1]"), ("k9", "kernel_size")])
def test_per_stage_values_are_checked(kernels: object, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_point("resnet50", "eca", {"kernel_size": kernels})
    assert error.value.key == key


def test_caffe_layout_gives_the_se_papers_gflops() -> None:
    """SE paper, Table 2: ResNet-50 3.86 and SE-ResNet-50 3.87 GFLOPs, for the Caffe layout (stride in the first 1x1)."""
    plain = build_model("resnet50_caffe")
    assert n_params(plain) == 25_557_032  # the layout moves strides, not weights
    first = plain.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert plain.maxpool.padding == 0 and plain.maxpool.ceil_mode
    assert measure_complexity(plain, (1, 3, 224, 224)).macs == 3_857_973_248
    se = measure_complexity(build_model("resnet50_caffe", "se"), (1, 3, 224, 224))
    squeeze_and_scale = sum(slot["elementwise_flops"] for slot in se.by_slot.values())
    assert round(se.macs / 1e9, 2) == 3.86 and round((se.macs + squeeze_and_scale) / 1e9, 2) == 3.87


@pytest.mark.parametrize("backbone,module,params,macs", [
    ("resnet50_d", "splat", 27_483_240, 5_371_160_576),  # ResNeSt-50: the official resnest50
    ("resnext50_32x4d", "sk", 27_479_784, 4_462_710_784),  # SKNet-50: the official sknet50.prototxt
    ("resnet50", "mhsa", 20_852_008, 4_024_557_568),  # BoT50: the authors' BoT_Stack in c5
    ("resnext50_32x4d", "none", 25_028_904, 4_230_479_872),  # torchvision's resnext50_32x4d
])
def test_networks_where_the_modules_were_born(backbone: str, module: str, params: int, macs: int) -> None:
    model = build_model(backbone, module)
    result = measure_complexity(model, (1, 3, 224, 224))
    assert (n_params(model), result.macs) == (params, macs)
    assert result.uncounted_ops == [] and result.cross_check_rel_diff == 0


def test_modules_with_their_own_norm_replace_the_blocks_bn_and_relu() -> None:
    block = build_model("resnext50_32x4d", "sk").layer1[0]
    assert isinstance(block.bn2, torch.nn.Identity) and isinstance(block.act2, torch.nn.Identity)
    plain = build_model("resnext50_32x4d", "dcn").layer2[0]
    assert isinstance(plain.bn2, torch.nn.BatchNorm2d)


def test_bam_sits_between_stages() -> None:
    """BAM paper: after conv2_x, conv3_x, conv4_x of ResNet-50 (the ends of stages 2-4): 25.92 M."""
    model = build_model("resnet50", "bam")
    placed = [name for name, m in attention_slots(model).items() if type(m).__name__ != "NoAttention"]
    assert placed == ["layer1.2.attention", "layer2.3.attention", "layer3.5.attention"]
    assert all(model.get_submodule(name.rsplit(".", 1)[0]).position == "post" for name in placed)
    assert round(n_params(model) / 1e6, 2) == 25.92


def test_non_local_sits_before_the_last_block_of_res4() -> None:
    placed = [n for n, m in attention_slots(build_model("resnet50", "nonlocal")).items() if type(m).__name__ != "NoAttention"]
    assert placed == ["layer3.4.attention"]
    video = make_point("resnet50", "nonlocal", stages=[3, 4], blocks=[0, 2])
    assert video.variant_label() == "nonlocal@3,4[blocks 0,2]"
    chosen = [n for n, m in attention_slots(build_model("resnet50", "nonlocal", stages=[3, 4], blocks=[0, 2])).items()
              if type(m).__name__ != "NoAttention"]
    assert chosen == ["layer2.0.attention", "layer2.2.attention", "layer3.0.attention", "layer3.2.attention"]


def test_mhsa_is_built_for_the_points_input_size_and_refuses_others() -> None:
    model = build_model("resnet50", "mhsa", input_size=128).eval()
    first = model.layer4[0].conv2
    assert first.feature_size == (8, 8) and model.layer4[1].conv2.feature_size == (4, 4)
    assert model(torch.randn(1, 3, 128, 128)).shape == (1, 1000)
    with pytest.raises(ConfigError) as error:
        model(torch.randn(1, 3, 224, 224))
    assert error.value.key == "input_size"


@pytest.mark.parametrize("kwargs,key,words", [
    ({"attention": "dcn", "hyperparameters": {"deformable_groups": 3}}, "deformable_groups", "divisor"),
    ({"attention": "dcn", "position": "post"}, "position", "gates only"),
    ({"attention": "nonlocal", "blocks": [7]}, "blocks", "it has 6 blocks"),
    ({"attention": "se", "blocks": ["last"]}, "blocks", "block indices"),
])
def test_placements_are_checked_before_any_model_is_built(kwargs: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_point("resnet50", **kwargs)
    assert error.value.key == key and words in str(error.value)
