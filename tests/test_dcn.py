"""DCN v1/v2 against the papers' formula written out, plain conv at init, official layout and counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnbench import build_model, measure_complexity
from attnbench.backbones import attention_slots
from attnbench.core.errors import ConfigError
from attnbench.modules import build_module
from attnbench.modules.dcn import TORCHVISION_DEFORM, DeformConv, dilation_shift
from attnbench.modules.deform_sampling import deform_conv2d


def _interpolate(image: list[list[float]], py: float, px: float) -> float:
    """DCNv1 eq. (3)-(4): x(p) = sum over integer q of g(qy, py) g(qx, px) x(q), g(a, b) = max(0, 1 - |a - b|)."""
    return sum(
        max(0.0, 1 - abs(qy - py)) * max(0.0, 1 - abs(qx - px)) * value
        for qy, row in enumerate(image)
        for qx, value in enumerate(row)
    )


def _reference(x, offset, weight, stride, mask=None, dilation=1):
    """y(p0) = sum_n w(pn) x(p0 + pn + dpn) dmn, looped over every output, channel and tap; pn = d * (a, b)."""
    n_batch, channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    pad = dilation * (k // 2)
    out_h, out_w = offset.shape[-2:]
    groups = offset.shape[1] // (2 * k * k)
    xs, offs, ws = x.tolist(), offset.tolist(), weight.tolist()
    masks = mask.tolist() if mask is not None else None
    out = torch.zeros(n_batch, out_channels, out_h, out_w, dtype=torch.float64)
    outside = {"all": 0, "partly": 0}
    for n in range(n_batch):
        for i in range(out_h):
            for j in range(out_w):
                acc = [0.0] * out_channels
                for c in range(channels):
                    g = c // (channels // groups)
                    for t in range(k * k):
                        dy = offs[n][g * 2 * k * k + 2 * t][i][j]
                        dx = offs[n][g * 2 * k * k + 2 * t + 1][i][j]
                        py = i * stride - pad + dilation * (t // k) + dy
                        px = j * stride - pad + dilation * (t % k) + dx
                        if py <= -1 or py >= height or px <= -1 or px >= width:
                            outside["all"] += 1
                        elif py < 0 or py > height - 1 or px < 0 or px > width - 1:
                            outside["partly"] += 1
                        sample = _interpolate(xs[n][c], py, px)
                        if masks is not None:
                            sample *= masks[n][g * k * k + t][i][j]
                        for o in range(out_channels):
                            acc[o] += ws[o][c][t // k][t % k] * sample
                for o in range(out_channels):
                    out[n, o, i, j] = acc[o]
    return out, outside


def _random_case(n, channels, out_channels, height, width, k, groups, stride, modulated, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pad = k // 2
    out_h, out_w = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    x = torch.randn(n, channels, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(out_channels, channels, k, k, generator=gen, dtype=torch.float64)
    # uniform in [-3, 3): non-integer shifts, many landing partly or wholly outside a 5 x 6 map
    offset = torch.rand(n, 2 * groups * k * k, out_h, out_w, generator=gen, dtype=torch.float64) * 6 - 3
    mask = torch.rand(n, groups * k * k, out_h, out_w, generator=gen, dtype=torch.float64) if modulated else None
    return x, offset, weight, mask


CASES = [
    # (channels, height, width, kernel, groups, stride, modulated)
    *[(4, 5, 6, 3, g, s, m) for g in (1, 2) for s in (1, 2) for m in (False, True)],
    (4, 5, 6, 5, 2, 2, True),
    (2, 1, 4, 3, 1, 1, True),  # a 1-pixel-high map: the normalisation must not divide by size - 1
]


@pytest.mark.parametrize("channels,height,width,k,groups,stride,modulated", CASES)
def test_pure_path_matches_formula(channels, height, width, k, groups, stride, modulated):
    x, offset, weight, mask = _random_case(2, channels, 3, height, width, k, groups, stride, modulated)
    expected, outside = _reference(x, offset, weight, stride, mask)
    got = deform_conv2d(x, offset, weight, stride, k // 2, mask)
    assert outside["all"] > 0 and outside["partly"] > 0  # the zero-outside rule is exercised
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("modulated", [False, True])
def test_module_follows_official_offset_and_mask_layout(modulated):
    torch.manual_seed(0)
    module = DeformConv(4, 3, stride=2, deformable_groups=2, modulated=modulated, backend="torch").double()
    nn.init.normal_(module.conv_offset.weight, std=0.5)
    nn.init.normal_(module.conv_offset.bias, std=0.5)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    predicted = F.conv2d(x, module.conv_offset.weight, module.conv_offset.bias, stride=2, padding=1)
    mask = None
    if modulated:  # mmcv's DCNv2: o1, o2, mask = chunk(out, 3); offset = cat(o1, o2); mask = sigmoid(mask)
        o1, o2, logits = torch.chunk(predicted, 3, dim=1)
        predicted, mask = torch.cat((o1, o2), dim=1), logits.sigmoid()
    expected, _ = _reference(x, predicted, module.weight.detach(), 2, mask)
    torch.testing.assert_close(module(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("k,groups,stride", [(3, 1, 1), (3, 2, 2), (5, 4, 1), (1, 1, 2)])
@pytest.mark.parametrize("modulated,scale", [(False, 1.0), (True, 0.5)])
def test_fresh_module_is_plain_conv_times_initial_mask(k, groups, stride, modulated, scale):
    torch.manual_seed(0)
    module = DeformConv(8, 6, stride=stride, kernel_size=k, deformable_groups=groups, modulated=modulated, backend="torch")
    x = torch.randn(2, 8, 9, 7)
    # DCNv2 paper and mmcv: zero-initialised offset conv, so offsets 0 and mask sigmoid(0) = 0.5
    expected = scale * F.conv2d(x, module.weight, stride=stride, padding=k // 2)
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


def test_init_offset_undoes_a_backbone_wide_conv_init():
    torch.manual_seed(0)
    module = DeformConv(8, modulated=False, backend="torch")
    for m in module.modules():  # what a torchvision-style ResNet init loop does to every nn.Conv2d
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    x = torch.randn(1, 8, 6, 6)
    plain = F.conv2d(x, module.weight, padding=1)
    assert not torch.allclose(module(x), plain, atol=1e-3)
    module.init_offset()
    torch.testing.assert_close(module(x), plain, atol=1e-5, rtol=1e-5)


def test_gradcheck_pure_sampling():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    # away from integers, where bilinear interpolation has kinks that finite differences straddle
    offset = (torch.rand(1, 36, 3, 3, generator=gen, dtype=torch.float64) * 0.8 + 0.1
              - torch.randint(-2, 2, (1, 36, 3, 3), generator=gen))
    mask = torch.rand(1, 18, 3, 3, generator=gen, dtype=torch.float64)
    offset.requires_grad_(True)
    mask.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d(a[0], a[1], a[2], 1, 1, a[3]), (x, offset, weight, mask))


@pytest.mark.parametrize("modulated", [False, True])
def test_gradients_reach_input_weight_and_offset_conv(modulated):
    torch.manual_seed(0)
    module = DeformConv(4, 4, modulated=modulated, backend="torch")
    nn.init.normal_(module.conv_offset.weight, std=0.1)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    module(x).square().sum().backward()
    for grad in (x.grad, module.weight.grad, module.conv_offset.weight.grad, module.conv_offset.bias.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("cin,cout,k,groups", [(64, 64, 3, 1), (64, 128, 3, 4), (32, 16, 5, 2)])
@pytest.mark.parametrize("modulated", [False, True])
def test_parameter_counts(cin, cout, k, groups, modulated):
    module = build_module("dcn", cin, out_channels=cout, kernel_size=k, deformable_groups=groups, modulated=modulated)
    offset_channels = (3 if modulated else 2) * k * k * groups  # not 2 in all, as the seed article has it
    overhead = k * k * cin * offset_channels + offset_channels
    assert module.conv_offset.out_channels == offset_channels
    assert sum(p.numel() for p in module.overhead_parameters()) == overhead
    assert sum(p.numel() for p in module.parameters()) == k * k * cin * cout + overhead
    assert module.weight.shape == (cout, cin, k, k)
    assert not any("bias" in n for n, _ in module.named_parameters() if "offset" not in n)


def test_dcnv2_64_channel_figures():
    # mmcv's DCNv2(64, 64, 3, 1, 1), and MSRA's example symbol (a 27-filter offset conv with bias):
    # weight 3*3*64*64, conv_offset 27 x 64 x 3 x 3 plus 27 biases
    assert sum(p.numel() for p in build_module("dcn", 64).overhead_parameters()) == 15_579
    assert build_module("dcn", 64).weight.numel() == 36_864
    assert sum(p.numel() for p in build_module("dcn", 64, modulated=False).overhead_parameters()) == 10_386


def test_flop_counter_sees_dense_macs():
    module = DeformConv(16, 32, stride=2, deformable_groups=2, backend="torch")
    x = torch.randn(2, 16, 14, 14)
    with FlopCounterMode(display=False) as counter:
        module(x)
    out_pixels = 2 * 7 * 7
    main_macs = out_pixels * 32 * 16 * 9
    offset_macs = out_pixels * (3 * 9 * 2) * 16 * 9
    assert counter.get_total_flops() == 2 * (main_macs + offset_macs)


def test_fvcore_sees_dense_macs():
    module = DeformConv(16, 32, stride=2, deformable_groups=2, backend="torch")
    analysis = FlopCountAnalysis(module, torch.randn(2, 16, 14, 14)).unsupported_ops_warnings(False)
    out_pixels = 2 * 7 * 7
    assert analysis.by_operator()["matmul"] == out_pixels * 32 * 16 * 9  # fvcore counts one MAC as one flop
    assert analysis.by_operator()["conv"] == out_pixels * (3 * 9 * 2) * 16 * 9


def test_output_keeps_the_input_memory_format():
    module = DeformConv(8, 4, deformable_groups=2, backend="torch")
    nn.init.normal_(module.conv_offset.weight, std=0.3)
    x = torch.randn(2, 8, 5, 6)
    assert module(x).is_contiguous()
    out = module(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, module(x))


def test_registry_builds_default_dcnv2():
    module = build_module("dcn", 32, out_channels=64, stride=2)
    assert isinstance(module, DeformConv)
    assert (module.kernel_size, module.deformable_groups, module.modulated, module.padding) == (3, 1, True, 1)
    assert module(torch.randn(1, 32, 15, 15)).shape == (1, 64, 8, 8)


def test_config_errors():
    with pytest.raises(ConfigError) as err:
        build_module("dcn", 64, deformable_groups=3)
    assert (err.value.key, err.value.value) == ("deformable_groups", 3) and "64" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        build_module("dcn", 64, kernel_size=4)
    assert (err.value.key, err.value.value) == ("kernel_size", 4)
    with pytest.raises(ConfigError):
        DeformConv(64, deformable_groups=3)
    module = DeformConv(8)
    module.backend = "cudnn"
    with pytest.raises(ConfigError) as err:
        module(torch.randn(1, 8, 4, 4))
    assert err.value.key == "backend"


@pytest.mark.skipif(TORCHVISION_DEFORM, reason="torchvision imports here")
def test_torchvision_backend_refused_without_torchvision():
    module = DeformConv(8, backend="torchvision")
    with pytest.raises(ConfigError):
        module(torch.randn(1, 8, 4, 4))
    assert not DeformConv(8).uses_torchvision()


def _perturbed_pair(modulated: bool, dilation: int = 1):
    torch.manual_seed(0)
    module = DeformConv(8, 6, stride=2, deformable_groups=2, modulated=modulated, dilation=dilation, backend="torch")
    nn.init.normal_(module.conv_offset.weight, std=0.3)
    nn.init.normal_(module.conv_offset.bias, std=1.0)
    return module.double(), torch.randn(2, 8, 11, 9, dtype=torch.float64)


@pytest.mark.skipif(not TORCHVISION_DEFORM, reason="torchvision does not import")
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("modulated", [False, True])
def test_pure_path_matches_torchvision(modulated, dilation):
    module, x = _perturbed_pair(modulated, dilation)
    pure = module(x)
    module.backend = "torchvision"
    assert module.uses_torchvision()
    torch.testing.assert_close(module(x), pure, atol=1e-10, rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("modulated", [False, True])
def test_pure_path_cuda_matches_cpu(modulated):
    module, x = _perturbed_pair(modulated)
    expected = module(x)
    module.cuda()
    torch.testing.assert_close(module(x.cuda()).cpu(), expected, atol=1e-10, rtol=1e-10)


def test_offsets_shift_sampling_by_whole_pixels():
    # an offset of exactly (+1 row, -1 column) on every tap equals the plain conv of the shifted image
    module = DeformConv(3, 2, modulated=False, backend="torch")
    nn.init.zeros_(module.conv_offset.weight)
    with torch.no_grad():
        module.conv_offset.bias.copy_(torch.tensor([1.0, -1.0]).repeat(9))
    x = torch.randn(1, 3, 6, 7)
    # y[i, j] = sum_ab w[a, b] x[i - 1 + a + 1, j - 1 + b - 1]: a valid conv over x padded 2 left, 2 below
    expected = F.conv2d(F.pad(x, (2, 0, 0, 2)), module.weight)
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


DILATED = [(2, 3, 1, 1), (2, 3, 2, 2), (3, 3, 2, 1)]  # (dilation, kernel, groups, stride)


@pytest.mark.parametrize("dilation,k,groups,stride", DILATED)
@pytest.mark.parametrize("modulated,mask", [(False, "sigmoid"), (True, "sigmoid"), (True, "2sigmoid")])
def test_dilated_module_matches_formula(dilation, k, groups, stride, modulated, mask):
    # the offset-shift route to dilation in the pure path, against the formula with pn = d * (a, b)
    torch.manual_seed(0)
    module = DeformConv(
        4, 3, stride=stride, kernel_size=k, deformable_groups=groups, modulated=modulated, mask=mask,
        dilation=dilation, backend="torch",
    ).double()
    nn.init.normal_(module.conv_offset.weight, std=0.5)
    nn.init.normal_(module.conv_offset.bias, std=0.5)
    x = torch.randn(1, 4, 7, 6, dtype=torch.float64)
    pad = dilation * (k // 2)
    predicted = F.conv2d(x, module.conv_offset.weight, module.conv_offset.bias, stride=stride, padding=pad, dilation=dilation)
    expected_mask = None
    if modulated:
        taps = groups * k * k
        predicted, logits = predicted[:, : 2 * taps], predicted[:, 2 * taps :]
        expected_mask = logits.sigmoid() * (2 if mask == "2sigmoid" else 1)
    expected, outside = _reference(x, predicted, module.weight.detach(), stride, expected_mask, dilation)
    assert outside["all"] > 0 and outside["partly"] > 0
    assert module(x).shape == F.conv2d(x, module.weight, stride=stride, padding=pad, dilation=dilation).shape
    torch.testing.assert_close(module(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("modulated,mask,scale", [(False, "sigmoid", 1.0), (True, "sigmoid", 0.5), (True, "2sigmoid", 1.0)])
def test_fresh_module_is_dilated_conv_times_initial_mask(dilation, modulated, mask, scale):
    # mmcv (and the DCNv2 paper): mask sigmoid(0) = 0.5; MSRA's DCNv2 example_symbol.py: 2 * sigmoid(0) = 1
    torch.manual_seed(0)
    module = DeformConv(8, 6, stride=2, deformable_groups=2, modulated=modulated, mask=mask, dilation=dilation, backend="torch")
    x = torch.randn(2, 8, 9, 7)
    expected = scale * F.conv2d(x, module.weight, stride=2, padding=dilation, dilation=dilation)
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


def test_mask_and_dilation_hyperparameters():
    module = build_module("dcn", 16)
    assert (module.mask, module.dilation, module.padding) == ("sigmoid", 1, 1)  # today's behaviour stays the default
    module = build_module("dcn", 16, mask="2sigmoid", dilation=2, kernel_size=5)
    assert (module.mask, module.dilation, module.padding) == ("2sigmoid", 2, 4)
    assert (module.conv_offset.dilation, module.conv_offset.padding) == ((2, 2), (4, 4))  # as mmcv's conv_offset
    assert "tap_shift" not in module.state_dict()  # derived from the hyperparameters, not a weight
    for key, value in [("mask", "tanh"), ("dilation", 0), ("dilation", 2.0)]:
        with pytest.raises(ConfigError) as err:
            build_module("dcn", 16, **{key: value})
        assert (err.value.key, err.value.value) == (key, value)


def test_dilation_shift_moves_taps_to_the_dilated_grid():
    shift = dilation_shift(3, 2, 1).flatten().view(9, 2)
    # tap (a, b) moves by (d - 1) * ((a, b) - 1): corners by one pixel outwards, the centre not at all
    assert shift[0].tolist() == [-1.0, -1.0] and shift[4].tolist() == [0.0, 0.0] and shift[8].tolist() == [1.0, 1.0]
    assert shift[2].tolist() == [-1.0, 1.0] and shift[7].tolist() == [1.0, 0.0]
    assert dilation_shift(3, 2, 4).shape == (72, 1, 1) and not dilation_shift(5, 1, 2).any()


def test_dilated_pure_path_counts_the_dense_macs():
    shape = (1, 8, 9, 9)
    plain = measure_complexity(DeformConv(8, 6, deformable_groups=2, backend="torch"), shape)
    dilated = measure_complexity(DeformConv(8, 6, deformable_groups=2, dilation=2, backend="torch"), shape)
    assert dilated.macs == plain.macs and dilated.uncounted_ops == [] and dilated.cross_check_rel_diff == 0
    # the shift of the offset map is the one element-wise op dilation adds to the pure path
    assert dilated.elementwise_flops - plain.elementwise_flops == 2 * 2 * 9 * 9 * 9


def test_msra_dcnv1_resnet101_layout():
    # msracver/Deformable-ConvNets rfcn/symbols/resnet_v1_101_rfcn_dcn.py (and faster_rcnn's): res5a-c branch2b are
    # DeformableConvolution(num_filter=512, kernel 3, pad 2, dilate 2, num_deformable_group=4, no_bias), each fed by a
    # Convolution(num_filter=72, kernel 3, pad 2, dilate 2) with bias, zero-initialised; nothing deformable elsewhere
    model = build_model("resnet101", "dcn", stages=[5], modulated=False, deformable_groups=4, dilation=2)
    deformable = {n: m for n, m in attention_slots(model).items() if isinstance(m, DeformConv)}
    assert list(deformable) == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    for module in deformable.values():
        assert (module.in_channels, module.out_channels, module.dilation, module.padding) == (512, 512, 2, 2)
        assert module.conv_offset.out_channels == 72 and module.conv_offset.dilation == (2, 2)
        assert sum(p.numel() for p in module.overhead_parameters()) == 72 * 512 * 9 + 72
        assert not module.conv_offset.weight.any() and not module.conv_offset.bias.any()
    # MSRA's res5 runs at stride 1 (output stride 16); this torchvision-layout ResNet keeps stride 2 there
    assert deformable["layer4.0.conv2"].stride == 2
