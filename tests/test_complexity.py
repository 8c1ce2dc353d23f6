"""measure_complexity against counts written out by hand, published figures, and FlopCounterMode."""
from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.measure import ComplexityResult, complexity, measure_complexity
from attnbench.modules import build_module
from attnbench.modules.dcn import TORCHVISION_DEFORM, DeformConv
from attnbench.modules.slots import SLOT_FLAG, attention_slots

N, C, H, W = 1, 32, 14, 10  # W != H so a swapped spatial size would show
HW, CHW = H * W, C * H * W


def _clean(result: ComplexityResult) -> None:
    """Every op counted, and FlopCounterMode agreeing with 2 * macs."""
    assert result.uncounted_ops == []
    assert result.cross_check_rel_diff < 1e-6
    assert result.flops == 2 * result.macs + result.elementwise_flops
    assert sum(result.flops_by_op.values()) == result.flops
    assert sum(result.macs_by_op.values()) == result.macs


class TinyNet(nn.Module):
    """Strided conv, BN, ReLU, 3x3 max-pool, grouped conv with bias, mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.pool(self.relu(self.bn(self.conv1(x)))))
        return self.head(x.mean(dim=(2, 3)))


def test_tiny_convnet_by_hand():
    result = measure_complexity(TinyNet(), (2, 3, 16, 12))
    # conv: N*Cout*Ho*Wo*(Cin/groups)*kh*kw; linear: N*in*out
    conv1 = 2 * 8 * 8 * 6 * 3 * 3 * 3  # 16x12 -> 8x6
    conv2 = 2 * 16 * 4 * 3 * (8 // 4) * 3 * 3  # after the pool: 4x3
    head = 2 * 16 * 10
    assert result.macs_by_op == {"conv": conv1 + conv2, "linear": head}
    assert result.macs == 27968
    # element-wise: BN 2 per element, ReLU 1, max-pool 9 taps per output, mean 1 per input element
    assert result.flops_by_op["batch_norm"] == 2 * (2 * 8 * 8 * 6)
    assert result.flops_by_op["relu"] == 2 * 8 * 8 * 6
    assert result.flops_by_op["max_pool2d"] == 2 * 8 * 4 * 3 * 9
    assert result.flops_by_op["mean"] == 2 * 16 * 4 * 3
    assert result.elementwise_flops == 1536 + 768 + 1728 + 384
    assert result.params == 8 * 3 * 9 + 2 * 8 + (16 * 2 * 9 + 16) + (16 * 10 + 10)
    assert result.attention_params == 0 and result.by_slot == {}
    assert result.flop_counter_flops == 2 * result.macs
    _clean(result)


def test_se_by_hand():
    r = 8
    result = measure_complexity(build_module("se", C, reduction=r), (N, C, H, W))
    assert result.macs == 2 * C * (C // r)  # the two 1x1 FCs, biases not counted
    # pool reads C*H*W, ReLU on C/r, sigmoid on C, scale writes C*H*W; fvcore alone would skip all four
    assert result.flops_by_op == {
        "adaptive_avg_pool2d": CHW, "relu": C // r, "sigmoid": C, "mul": CHW, "conv": 2 * 2 * C * (C // r),
    }
    assert result.elementwise_flops == CHW + C // r + C + CHW
    _clean(result)


def test_se_hard_sigmoid_counted():
    result = measure_complexity(build_module("se", C, reduction=8, gate="hard_sigmoid"), (N, C, H, W))
    assert result.flops_by_op["hardsigmoid"] == C
    _clean(result)


def test_cbam_by_hand():
    r, k = 8, 7
    result = measure_complexity(build_module("cbam", C, reduction=r, spatial_kernel=k), (N, C, H, W))
    mlp = C * (C // r) + (C // r) * C
    assert result.macs_by_op == {"linear": 2 * mlp, "conv": 2 * k * k * HW}  # MLP on avg and max; 2 -> 1 conv
    assert result.flops_by_op["mean"] == 2 * CHW  # channel-gate pool, then the spatial gate's channel mean
    assert result.flops_by_op["amax"] == 2 * CHW
    assert result.flops_by_op["relu"] == 2 * (C // r)
    assert result.flops_by_op["add"] == 2 * C  # sum() of the two MLP outputs starts from 0
    assert result.flops_by_op["sigmoid"] == C + HW
    assert result.flops_by_op["batch_norm"] == 2 * HW
    assert result.flops_by_op["mul"] == 2 * CHW
    assert result.elementwise_flops == 6 * CHW + 2 * (C // r) + 3 * C + 3 * HW
    _clean(result)


def test_eca_by_hand():
    k = 5
    result = measure_complexity(build_module("eca", C, kernel_size=k), (N, C, H, W))
    assert result.macs == C * k  # conv1d over the C pooled values
    assert result.elementwise_flops == CHW + C + CHW  # pool, sigmoid, scale
    _clean(result)


def test_lka_by_hand():
    result = measure_complexity(build_module("lka", C, kernel_size=21, dilation=3), (N, C, H, W))
    assert result.macs == CHW * 5 * 5 + CHW * 7 * 7 + C * CHW  # 5x5 dw, 7x7 dw dilation 3, 1x1
    assert result.elementwise_flops == CHW  # u * attn, no sigmoid
    _clean(result)


def test_msca_by_hand():
    scales = (7, 11, 21)
    result = measure_complexity(build_module("msca", C, scales=scales, base_kernel=5), (N, C, H, W))
    strips = sum(CHW * k + CHW * k for k in scales)  # 1 x k then k x 1, depthwise
    assert result.macs == CHW * 5 * 5 + strips + C * CHW
    assert result.elementwise_flops == len(scales) * CHW + CHW  # branch sums, then u * attn
    _clean(result)


class _Cumsum(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(x, dim=1)


class _BitwiseNot(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.bitwise_not(x > 0)  # fvcore's own skip list hides bitwise_not


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x * x


class _PythonOp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _Square.apply(x)


@pytest.mark.parametrize(
    "module, op",
    [(_Cumsum(), "aten::cumsum"), (_BitwiseNot(), "aten::bitwise_not"), (_PythonOp(), "prim::PythonOp._Square")],
)
def test_op_without_handle_is_reported(module, op):
    result = measure_complexity(nn.Sequential(nn.Conv2d(3, 4, 1), module), (1, 3, 4, 4))
    assert op in result.uncounted_ops
    assert result.macs == 4 * 3 * 4 * 4


class _SizeArithmetic(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], x.shape[1] * x.shape[2] // 2, -1)  # traced as 0-dim mul and floor_divide


def test_shape_arithmetic_is_free():
    result = measure_complexity(_SizeArithmetic(), (2, 3, 4, 5))
    assert result.elementwise_flops == 0 and result.uncounted_ops == []


class _MatmulBroadcast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight @ x  # (6, 5) @ (N, 5, L): the weight broadcasts over the batch


def test_matmul_counts_broadcast_batch():
    # fvcore's stock handle drops the second operand's batch (it would say 6*5*7)
    result = measure_complexity(_MatmulBroadcast(), (3, 5, 7))
    assert result.macs_by_op == {"matmul": 3 * 6 * 5 * 7}
    _clean(result)


class _Einsum(nn.Module):
    def __init__(self, equation: str, *shapes: tuple[int, ...]) -> None:
        super().__init__()
        self.equation = equation
        self.others = nn.ParameterList(nn.Parameter(torch.randn(s)) for s in shapes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum(self.equation, x, *self.others)


@pytest.mark.parametrize(
    "equation, x_shape, others, macs",
    [
        ("bij,bjk->bik", (2, 3, 4), [(2, 4, 5)], 2 * 3 * 4 * 5),
        ("nchw,oc->nohw", (2, 3, 4, 5), [(6, 3)], 2 * 3 * 4 * 5 * 6),
        ("...ij,jk", (2, 3, 4), [(4, 5)], 2 * 3 * 4 * 5),  # ellipsis and implicit output
        ("ij,jk,kl->il", (2, 3), [(3, 4), (4, 5)], 2 * 3 * 4 + 2 * 4 * 5),  # left to right
        ("bij,bjk->bk", (2, 3, 4), [(2, 4, 5)], 2 * 4 * 5),  # i is summed out before the product
    ],
)
def test_einsum_matches_flop_counter(equation, x_shape, others, macs):
    result = measure_complexity(_Einsum(equation, *others), x_shape)
    assert result.macs_by_op == {"einsum": macs}
    _clean(result)


def test_einsum_outer_product_is_a_known_difference():
    # a pair that contracts nothing runs as a broadcast multiply: MACs here, invisible to FlopCounterMode
    result = measure_complexity(_Einsum("i,j->ij", (5,)), (3,))
    assert result.macs == 15
    assert result.flop_counter_flops == 0


def _flagged(module: nn.Module) -> nn.Module:
    setattr(module, SLOT_FLAG, True)
    return module


class SlottedNet(nn.Module):
    """A stem conv, then an SE slot, a deformable-conv slot and an empty slot, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.gate = _flagged(build_module("se", 16, reduction=4))
        self.deform = _flagged(DeformConv(16, 8, stride=2, backend="torch"))
        self.empty = _flagged(build_module("none", 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.empty(self.deform(self.gate(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_by_slot_and_attention_params():
    model = SlottedNet()
    result = measure_complexity(model, (1, 3, 8, 8))
    assert list(result.by_slot) == list(attention_slots(model)) == ["gate", "deform", "empty"]
    se_params = (16 * 4 + 4) + (4 * 16 + 16)
    offset_params = 27 * 16 * 9 + 27  # offset conv of a v2 3x3 DCN: 3*k*k channels, with bias
    assert result.by_slot["gate"] == {"macs": 2 * 16 * 4, "elementwise_flops": 16 * 64 + 4 + 16 + 16 * 64, "params": se_params}
    assert result.by_slot["deform"]["params"] == offset_params  # the main weight replaces a conv: not overhead
    assert result.by_slot["deform"]["macs"] == 8 * 4 * 4 * 16 * 9 + 27 * 4 * 4 * 16 * 9
    assert result.by_slot["empty"] == {"macs": 0, "elementwise_flops": 0, "params": 0}
    assert result.attention_params == se_params + offset_params
    assert result.attention_params_share == pytest.approx(result.attention_params / result.params)
    _clean(result)


def test_deformable_conv_pure_path_by_hand():
    n, c_in, c_out, k, size, stride = 2, 8, 6, 3, 9, 2
    out = (size + 2 * (k // 2) - k) // stride + 1
    result = measure_complexity(DeformConv(c_in, c_out, stride=stride, backend="torch"), (n, c_in, size, size))
    samples = n * c_in * k * k * out * out
    assert result.macs_by_op == {
        "conv": n * 3 * k * k * out * out * c_in * k * k,  # offset and mask conv
        "matmul": n * c_out * out * out * c_in * k * k,  # the deformable weighted sum
    }
    assert result.flops_by_op["grid_sampler"] == complexity.BILINEAR_FLOPS * samples
    _clean(result)


DEFORM_SCHEMA = (
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor"
)


@pytest.fixture(scope="module")
def standin_deform_op():
    """An op with torchvision::deform_conv2d's schema (zeros out), so the handle sees real traced values."""
    library = torch.library.Library("attnbench_test", "DEF")
    library.define(DEFORM_SCHEMA)

    def kernel(x: Tensor, weight: Tensor, offset: Tensor, *args: object) -> Tensor:
        return x.new_zeros(x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])

    library.impl("deform_conv2d", kernel, "CompositeExplicitAutograd")
    yield torch.ops.attnbench_test.deform_conv2d
    del library


class _StandinDeformConv(nn.Module):
    """DeformConv's forward with the deformable sum through an op called like torchvision's."""

    def __init__(self, dcn: DeformConv, op: object) -> None:
        super().__init__()
        self.dcn, self.op = dcn, op

    def forward(self, x: Tensor) -> Tensor:
        d = self.dcn
        offset = d.conv_offset(x)
        mask = offset.new_zeros(0)
        if d.modulated:
            taps = d.deformable_groups * d.kernel_size ** 2
            offset, logits = offset.split([2 * taps, taps], dim=1)
            mask = logits.sigmoid()
        bias = x.new_zeros(d.out_channels)
        p, s = d.padding, d.stride
        return self.op(x, d.weight, offset, mask, bias, s, s, p, p, 1, 1, 1, d.deformable_groups, d.modulated)


@pytest.mark.parametrize("modulated", [True, False])
def test_deform_conv2d_handle_matches_pure_path(standin_deform_op, monkeypatch, modulated):
    name = "attnbench_test::deform_conv2d"
    monkeypatch.setitem(complexity.HANDLES, name, complexity.HANDLES[complexity.DEFORM_CONV_OP])
    monkeypatch.setitem(complexity.FLOP_COUNTER_FORMULAS, name, complexity.FLOP_COUNTER_FORMULAS[complexity.DEFORM_CONV_OP])
    n, c_in, c_out, k, size = 2, 8, 6, 3, 7
    dcn = DeformConv(c_in, c_out, stride=2, kernel_size=k, deformable_groups=2, modulated=modulated, backend="torch")
    shape = (n, c_in, size, size)
    op_path = measure_complexity(_StandinDeformConv(dcn, standin_deform_op), shape)
    pure_path = measure_complexity(dcn, shape)
    assert op_path.macs == pure_path.macs
    assert op_path.macs_by_op["deform_conv2d"] == pure_path.macs_by_op["matmul"] == n * c_out * 4 * 4 * c_in * k * k
    samples = n * c_in * k * k * 4 * 4
    sampling = op_path.flops_by_op["deform_conv2d"] - 2 * op_path.macs_by_op["deform_conv2d"]
    # the pure path's grid_sample, plus its mask product when modulated
    assert sampling == pure_path.flops_by_op["grid_sampler"] + (samples if modulated else 0)
    _clean(op_path)


@pytest.mark.skipif(not TORCHVISION_DEFORM, reason="torchvision.ops does not import here")
def test_torchvision_and_pure_paths_agree():
    shape = (2, 8, 9, 9)
    torch_path = measure_complexity(DeformConv(8, 6, stride=2, backend="torch"), shape)
    vision_path = measure_complexity(DeformConv(8, 6, stride=2, backend="torchvision"), shape)
    assert vision_path.macs == torch_path.macs
    _clean(vision_path)


def test_training_flags_restored_and_result_repeatable():
    model = TinyNet().train()
    model.bn.eval()
    first = measure_complexity(model, (1, 3, 16, 12))
    assert model.training and model.conv1.training and not model.bn.training
    assert measure_complexity(model, (1, 3, 16, 12)) == first


def test_to_dict_is_flat_and_json_able():
    flat = measure_complexity(SlottedNet(), (1, 3, 8, 8)).to_dict()
    assert not any(isinstance(v, dict) for v in flat.values())
    assert flat["by_slot/gate/macs"] == 128 and flat["macs_by_op/conv"] > 0
    assert json.loads(json.dumps(flat)) == flat


class _Noisy(nn.Module):
    """Trips tracer warnings (the pure deformable path), an op without a handle and a never-called module."""

    def __init__(self) -> None:
        super().__init__()
        self.deform = DeformConv(4, 4, backend="torch")
        self.spare = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(self.deform(x), dim=1)


def test_quiet_but_reported(caplog, capsys):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        result = measure_complexity(_Noisy(), (1, 4, 6, 6))
    assert caught == [] and caplog.records == [] and capsys.readouterr() == ("", "")
    assert result.uncounted_ops == ["aten::cumsum"]
    assert result.uncalled_modules == ["spare"]  # its weights did no work
    assert result.params == sum(p.numel() for p in _Noisy().parameters())


@pytest.mark.parametrize("shape", [(), (1, 0, 4), (1, 3.0, 4), "1,3", (True, 3)])
def test_bad_input_shape(shape):
    with pytest.raises(ConfigError, match="input_shape"):
        measure_complexity(TinyNet(), shape)


@pytest.mark.parametrize(
    "name, params, macs", [("resnet18", 11_689_512, 1_814_073_344), ("resnet50", 25_557_032, 4.089e9)]
)
def test_published_resnets(name, params, macs):
    """torchvision's ResNet-18 / -50 at 224x224: published params and MACs (1.814 G / 4.089 G)."""
    backbones = pytest.importorskip("attnbench.backbones", exc_type=ImportError)
    result = measure_complexity(backbones.build_model(name), (1, 3, 224, 224))
    assert result.params == params
    assert result.macs == pytest.approx(macs, rel=1e-3)
    assert result.macs_by_op["linear"] == 512 * (4 if name == "resnet50" else 1) * 1000
    _clean(result)


def test_se_resnet50_slots():
    """SE-ResNet-50, r=16: 28,088,024 params (SE paper: 28.1 M); each block's SE adds 2*C*C/16 MACs."""
    backbones = pytest.importorskip("attnbench.backbones", exc_type=ImportError)
    model = backbones.build_model("resnet50", "se")
    result = measure_complexity(model, (1, 3, 224, 224))
    blocks = {256: 3, 512: 4, 1024: 6, 2048: 3}  # output channels of each stage: blocks
    assert result.params == 28_088_024
    assert result.attention_params == sum(n * (2 * c * (c // 16) + c // 16 + c) for c, n in blocks.items())
    assert result.macs - 4_089_184_256 == sum(n * 2 * c * (c // 16) for c, n in blocks.items())
    assert list(result.by_slot) == list(attention_slots(model))
    assert sum(s["macs"] for s in result.by_slot.values()) == result.macs - 4_089_184_256
    _clean(result)
