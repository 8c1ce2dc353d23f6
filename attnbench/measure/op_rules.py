"""How each traced op is counted: fvcore handles for the dense and element-wise ops, and the free ones.

The conventions these rules implement are set out in attnbench.measure.complexity. Each rule is a
small fvcore handle (inputs, outputs of one traced node -> a Counter of (kind, op name) -> count);
`HANDLES` maps every counted op to its rule, `ZERO_COST_OPS` lists the ops that cost nothing, and
`FLOP_COUNTER_FORMULAS` gives FlopCounterMode the rules of the non-ATen ops for the cross-check.
"""
from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from math import prod
from typing import Any

import torch

with warnings.catch_warnings():
    # fvcore.nn's package init scripts its focal loss, which torch flags as deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
    from fvcore.nn.jit_handles import Handle, addmm_flop_jit, bmm_flop_jit, conv_flop_count, get_shape, linear_flop_jit

MACS = "macs"
ELEMENTWISE = "elementwise"
BILINEAR_FLOPS = 4  # one weighted neighbour per corner of the sampling cell
RESAMPLE_FLOPS = {0: BILINEAR_FLOPS, 1: 1, 2: 16}  # grid_sampler's interpolation_mode: bilinear, nearest, bicubic
DEFORM_CONV_OP = "torchvision::deform_conv2d"

ZERO_COST_OPS: frozenset[str] = frozenset("aten::" + name for name in (
    # views and layout
    "view", "view_as", "reshape", "reshape_as", "_reshape_alias", "flatten", "unflatten", "squeeze", "squeeze_",
    "unsqueeze", "unsqueeze_", "transpose", "transpose_", "t", "permute", "movedim", "expand", "expand_as",
    "contiguous", "alias", "detach", "detach_", "lift_fresh", "size", "numel", "dim", "Int", "Float", "ScalarImplicit",
    # copies and gathers
    "clone", "copy_", "to", "type_as", "cat", "concat", "stack", "chunk", "split", "split_with_sizes", "unbind",
    "select", "slice", "narrow", "index", "index_select", "gather", "repeat", "repeat_interleave", "roll", "flip",
    "constant_pad_nd", "pad",
    # creation
    "arange", "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like", "full", "full_like",
    "new_zeros", "new_ones", "new_empty", "new_full",
    # identity at inference (measure_complexity runs in eval mode)
    "dropout", "dropout_", "feature_dropout", "alpha_dropout",
))

ACTIVATIONS = (
    "relu", "relu6", "hardtanh", "leaky_relu", "elu", "gelu", "silu", "mish", "hardswish", "hardsigmoid",
    "sigmoid", "tanh", "softplus",
)
ARITHMETIC = (
    "add", "sub", "rsub", "mul", "div", "neg", "reciprocal", "pow", "sqrt", "rsqrt", "exp", "log", "erf", "abs",
    "sign", "clamp", "clamp_min", "clamp_max", "floor", "ceil", "round", "floor_divide", "remainder",
    "maximum", "minimum", "where", "masked_fill", "eq", "ne", "lt", "le", "gt", "ge",
)
REDUCTIONS = (
    "mean", "sum", "amax", "amin", "max", "min", "prod", "norm",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
)
WINDOW_POOLS = ("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d")


def _numel(value: Any) -> int:
    """Elements of a traced tensor value; 0 for a non-tensor argument (a Python scalar, None)."""
    shape = get_shape(value)
    return 0 if shape is None else prod(shape)


def _ints(value: Any) -> list[int] | None:
    """A traced int-list argument (kernel size...), or None where it was computed from a tensor at trace time."""
    node = value.node()
    items = [v.toIValue() for v in node.inputs()] if node.kind() == "prim::ListConstruct" else value.toIValue()
    if isinstance(items, int):
        items = [items]
    return list(items) if items is not None and all(isinstance(i, int) for i in items) else None


def dense(name: str, macs: Callable[[list[Any], list[Any]], int]) -> Handle:
    """Handle counting `macs(inputs, outputs)` multiply-accumulates under `name`."""
    return lambda inputs, outputs: Counter({(MACS, name): int(macs(inputs, outputs))})


def conv_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::_convolution: N * Cout * prod(out spatial) * Cin/groups * prod(kernel) (transposed: input spatial)."""
    transposed = bool(inputs[6].toIValue())
    return conv_flop_count(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0]), transposed=transposed)


def matmul_shapes_macs(a: list[int], b: list[int]) -> int:
    """MACs of torch.matmul on these shapes, with 1-D operands and batch broadcasting as torch treats them."""
    a = [1, *a] if len(a) == 1 else a
    b = [*b, 1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return prod(batch) * a[-2] * a[-1] * b[-1]


def matmul_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::matmul / aten::mm (fvcore's handle drops the second operand's batch dims)."""
    return matmul_shapes_macs(get_shape(inputs[0]), get_shape(inputs[1]))


def baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::baddbmm(self, batch1, batch2, ...): the batched product; the scaled add is not counted, like a bias."""
    return matmul_shapes_macs(get_shape(inputs[1]), get_shape(inputs[2]))


def einsum_equation_macs(equation: str, shapes: list[list[int]]) -> int:
    """MACs of torch.einsum without opt_einsum: operands contracted left to right, each pair as one batched matmul.

    A pair multiplies every index it keeps (needed by the output or a later operand) with every
    index both operands share; an index only one operand has and nothing needs is summed out
    beforehand (a reduction, not MACs).
    """
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    # name the dims under "..." with characters einsum cannot use, right-aligned as broadcasting aligns them
    rank = max((len(s) - len(t) + 3 for t, s in zip(terms, shapes) if "..." in t), default=0)
    spare = "".join(chr(0x100 + i) for i in range(rank))
    terms = [t.replace("...", spare[rank - (len(s) - len(t) + 3):]) if "..." in t else t for t, s in zip(terms, shapes)]
    if arrow:
        out = out.replace("...", spare)
    else:
        letters = "".join(terms)
        out = spare + "".join(sorted(c for c in set(letters) - set(spare) if letters.count(c) == 1))
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)
    macs, current = 0, set(terms[0])
    for i, term in enumerate(terms[1:], start=1):
        needed = set(out).union(*terms[i + 1:])
        kept = (current | set(term)) & needed
        macs += prod(sizes[c] for c in (current & set(term)) | kept)
        current = kept
    return macs


def einsum_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """aten::einsum(equation, operands, path)."""
    operands = inputs[1].node().inputs()
    return einsum_equation_macs(inputs[0].toIValue(), [get_shape(v) for v in operands])


def elementwise(name: str, per_element: int = 1) -> Handle:
    """Handle: `per_element` FLOPs per element of the first input or of the output, whichever is larger.

    The larger is the output for element-wise ops (broadcasting only grows it) and the input
    for reductions, so one rule covers both.
    """

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        first, out = _numel(inputs[0]), _numel(outputs[0])
        scalar = get_shape(outputs[0]) == [] and first <= 1  # shape arithmetic recorded by the tracer
        return Counter({(ELEMENTWISE, name): 0 if scalar else per_element * max(first, out)})

    return handle


def window_pool(name: str) -> Handle:
    """Handle for avg / max pooling: one FLOP per window tap, output elements x kernel area."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        kernel = _ints(inputs[1])
        if kernel is None:
            # a kernel traced from the input's size is a global window (lp_pool2d's): each input read once
            taps = _numel(inputs[0])
        else:
            spatial = len(get_shape(outputs[0])) - 2
            taps = _numel(outputs[0]) * prod(kernel * spatial if len(kernel) == 1 else kernel)
        return Counter({(ELEMENTWISE, name): taps})

    return handle


def batch_norm(inputs: list[Any], outputs: list[Any]) -> Counter:
    """aten::batch_norm: 2 per element with running statistics (a folded scale and shift), 5 with batch statistics."""
    per_element = 5 if inputs[5].toIValue() else 2
    return Counter({(ELEMENTWISE, "batch_norm"): per_element * _numel(inputs[0])})


def statistics_norm(name: str, affine_index: int) -> Handle:
    """Handle for layer / group / instance norm: 4 FLOPs per element, 5 with an affine (fvcore's figures)."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        affine = get_shape(inputs[affine_index]) is not None
        return Counter({(ELEMENTWISE, name): (5 if affine else 4) * _numel(inputs[0])})

    return handle


def grid_sampler(inputs: list[Any], outputs: list[Any]) -> Counter:
    """aten::grid_sampler: bilinear 4, nearest 1, bicubic 16 FLOPs per sampled value."""
    per_value = RESAMPLE_FLOPS[inputs[2].toIValue()]
    return Counter({(ELEMENTWISE, "grid_sampler"): per_value * _numel(outputs[0])})


def deform_conv2d(inputs: list[Any], outputs: list[Any]) -> Counter:
    """torchvision::deform_conv2d: the dense conv's MACs, bilinear sampling of every tap, and the v2 mask product."""
    x, weight, out = get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0])
    batch, out_channels, *out_spatial = out
    macs = batch * out_channels * prod(out_spatial) * prod(weight[1:])  # N*Cout*Ho*Wo*(Cin/groups)*k*k
    samples = batch * x[1] * prod(weight[2:]) * prod(out_spatial)  # N*Cin*k*k*Ho*Wo
    per_sample = BILINEAR_FLOPS + (1 if inputs[13].toIValue() else 0)
    return Counter({(MACS, "deform_conv2d"): macs, (ELEMENTWISE, "deform_conv2d"): per_sample * samples})


def _with_inplace(names: tuple[str, ...], make: Callable[[str], Handle]) -> dict[str, Handle]:
    """aten::name and its in-place aten::name_ under one counter name."""
    return {f"aten::{n}{suffix}": make(n) for n in names for suffix in ("", "_")}


HANDLES: dict[str, Handle] = {
    "aten::_convolution": dense("conv", conv_macs),
    "aten::linear": dense("linear", linear_flop_jit),
    "aten::addmm": dense("addmm", addmm_flop_jit),
    "aten::mm": dense("mm", matmul_macs),
    "aten::matmul": dense("matmul", matmul_macs),
    "aten::bmm": dense("bmm", bmm_flop_jit),
    "aten::baddbmm": dense("baddbmm", baddbmm_macs),
    "aten::einsum": dense("einsum", einsum_macs),
    DEFORM_CONV_OP: deform_conv2d,
    **_with_inplace(ACTIVATIONS + ARITHMETIC, elementwise),
    **{f"aten::{n}": elementwise(n) for n in REDUCTIONS},
    "aten::logsumexp": elementwise("logsumexp", 2),
    "aten::std": elementwise("std", 3),
    "aten::var": elementwise("var", 3),
    "aten::softmax": elementwise("softmax", 3),
    "aten::log_softmax": elementwise("log_softmax", 3),
    **{f"aten::{n}": window_pool(n) for n in WINDOW_POOLS},
    "aten::batch_norm": batch_norm,
    "aten::layer_norm": statistics_norm("layer_norm", 2),
    "aten::group_norm": statistics_norm("group_norm", 2),
    "aten::instance_norm": statistics_norm("instance_norm", 1),
    "aten::grid_sampler": grid_sampler,
    "aten::upsample_nearest2d": elementwise("upsample_nearest2d", RESAMPLE_FLOPS[1]),
    "aten::upsample_bilinear2d": elementwise("upsample_bilinear2d", RESAMPLE_FLOPS[0]),
    "aten::upsample_bicubic2d": elementwise("upsample_bicubic2d", RESAMPLE_FLOPS[2]),
}


def deform_conv2d_flop_formula(input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any, **kwargs: Any) -> int:
    """FlopCounterMode formula for torchvision::deform_conv2d: 2 FLOPs per MAC of its weighted sum."""
    return 2 * prod(out_shape) * prod(weight_shape[1:])


# FlopCounterMode formulas for non-ATen ops, by the same names the JIT handles use
FLOP_COUNTER_FORMULAS: dict[str, Callable[..., int]] = {DEFORM_CONV_OP: deform_conv2d_flop_formula}
