"""Parameters, MACs and FLOPs of a model on one input, from fvcore's JIT trace with a handle for every op counted.

Conventions (the numbers mean exactly this):

- `macs`: multiply-accumulates of the dense ops only: convolutions, linear layers, matmul /
  mm / bmm / baddbmm / einsum, and the weighted sum of a deformable convolution. One fused
  multiply-add is one MAC, the unit published tables call "FLOPs" (torchvision, the SE and VAN
  papers). Bias additions are not counted, as in fvcore, FlopCounterMode and those tables.
- `elementwise_flops`: one FLOP per element per arithmetic pass, for everything else:
  element-wise ops (activations, gates, +, -, x, /) one per output element; reductions and
  global / adaptive pools one per input element read; windowed pools one per window tap
  (output elements x kernel area); logsumexp 2 per input element (exp, accumulate); std / var 3;
  softmax and log_softmax 3 per element (exp, accumulate, normalise); batch norm with running
  statistics 2 per element (its folded scale and shift), with batch statistics 5; layer /
  group / instance norm 4 per element, 5 with an affine (fvcore's figures); resampling per
  output value: nearest 1, bilinear 4 (one weighted neighbour each), bicubic 16. A deformable
  convolution samples N*Cin*k*k*Ho*Wo values bilinearly (4 FLOPs each) and, when modulated (v2),
  multiplies each by its mask (1 more): the same figures the pure-PyTorch path's grid_sample
  and mask product give, so both paths agree on `macs` and on the sampling cost.
- `flops = 2 * macs + elementwise_flops`.
- Ops that only move or create data (views, cat, slicing, padding, arange, dropout in eval...;
  `ZERO_COST_OPS`) and scalar arithmetic the tracer records from shape computations (0-dim
  results) cost nothing. Any other op without a handle is listed by name in `uncounted_ops`:
  fvcore's own skip list also hides ops that do arithmetic (relu, clamp, max, comparisons),
  so it is replaced by ours.
- Cross-check: `torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per MAC of the dense
  ATen kernels (mm, addmm, bmm, baddbmm, convolution) and nothing element-wise, so
  `flop_counter_flops` should equal `2 * macs`. Known differences: a 1-D dot product and an
  einsum pair that contracts nothing (torch multiplies element-wise) are MACs here and
  invisible to FlopCounterMode. It runs on meta-device copies of the weights (no arithmetic
  done), falling back to a real forward for kernels without a meta implementation.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from math import prod
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from attnbench.core.errors import ConfigError
from attnbench.measure.shapes_only import ValueWatch, shape_kernels
from attnbench.modules.slots import attention_slots

with warnings.catch_warnings():
    # fvcore.nn's package init scripts its focal loss, which torch flags as deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis, jit_analysis
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


class _Analysis(FlopCountAnalysis):
    """fvcore's analysis with our handle table and our zero-cost list, and silent.

    With `graphs` (a list), the traced graph is appended to it (the shapes-only count checks it).
    """

    def __init__(self, model: nn.Module, inputs: tuple[Tensor, ...], graphs: list[Any] | None = None) -> None:
        super().__init__(model, inputs)
        self._graphs = graphs
        self.clear_op_handles().set_op_handle(**HANDLES)
        self.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("no_tracer_warning")

    def _analyze(self) -> Any:
        graphs = self._graphs
        if graphs is None or self._stats is not None:
            return super()._analyze()
        trace = jit_analysis._get_scoped_trace_graph

        def kept(*args: Any) -> Any:
            graph = trace(*args)
            graphs.append(graph)
            return graph

        jit_analysis._get_scoped_trace_graph = kept  # under shape_kernels' lock: one trace at a time
        try:
            return super()._analyze()
        finally:
            jit_analysis._get_scoped_trace_graph = trace

    def _should_ignore_node(self, node: Any) -> bool:
        # fvcore's skip list hides ops that compute (relu, clamp, max, eq...); only prim:: plumbing
        # and ZERO_COST_OPS may go uncounted without being reported
        kind = node.kind()
        return kind in ZERO_COST_OPS or (kind.startswith("prim::") and super()._should_ignore_node(node))


@dataclass(frozen=True)
class ComplexityResult:
    """Parameter, MAC and FLOP counts of one model on one input shape (see the module docstring for the rules)."""

    input_shape: tuple[int, ...]
    params: int
    attention_params: int
    attention_params_share: float
    macs: int
    elementwise_flops: int
    flops: int
    macs_by_op: dict[str, int]
    flops_by_op: dict[str, int]
    by_slot: dict[str, dict[str, int]]
    uncounted_ops: list[str]
    uncalled_modules: list[str]
    flop_counter_flops: int | None
    cross_check_rel_diff: float | None

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-able: nested counts become keys such as "macs_by_op/conv" and "by_slot/layer1.0.attention/macs"."""
        flat: dict[str, Any] = {
            "input_shape": list(self.input_shape), "params": self.params, "attention_params": self.attention_params,
            "attention_params_share": self.attention_params_share, "macs": self.macs,
            "elementwise_flops": self.elementwise_flops, "flops": self.flops,
            "uncounted_ops": list(self.uncounted_ops), "uncalled_modules": list(self.uncalled_modules),
            "flop_counter_flops": self.flop_counter_flops, "cross_check_rel_diff": self.cross_check_rel_diff,
        }
        flat.update({f"macs_by_op/{op}": n for op, n in self.macs_by_op.items()})
        flat.update({f"flops_by_op/{op}": n for op, n in self.flops_by_op.items()})
        for slot, counts in self.by_slot.items():
            flat.update({f"by_slot/{slot}/{key}": n for key, n in counts.items()})
        return flat


def _split(counts: Counter) -> tuple[dict[str, int], dict[str, int]]:
    """(MACs by op, element-wise FLOPs by op) from a handle Counter keyed by (kind, op)."""
    macs = {op: int(n) for (kind, op), n in sorted(counts.items()) if kind == MACS}
    flops = {op: int(n) for (kind, op), n in sorted(counts.items()) if kind == ELEMENTWISE}
    return macs, flops


def _own_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters a slot adds: all of them, or only `overhead_parameters()` for a module replacing a conv."""
    overhead = getattr(module, "overhead_parameters", None)
    return list(overhead()) if callable(overhead) else list(module.parameters())


def _count(parameters: list[nn.Parameter]) -> int:
    """Elements of distinct parameters (a shared one counts once)."""
    return sum({id(p): p.numel() for p in parameters}.values())


def _slot_counts(analysis: _Analysis, name: str, module: nn.Module) -> dict[str, int]:
    """MACs, element-wise FLOPs and own parameters of one slot module."""
    macs, elementwise_flops = _split(analysis.by_operator(name))
    return {
        "macs": sum(macs.values()),
        "elementwise_flops": sum(elementwise_flops.values()),
        "params": _count(_own_parameters(module)),
    }


def flop_counter_flops(model: nn.Module, x: Tensor, *, on_meta: bool = True) -> int:
    """FLOPs `FlopCounterMode` counts for one forward: 2 per MAC of the dense kernels it knows.

    `on_meta=False` runs the forward where `x` is, as it comes (under shape_kernels: from shapes).
    """
    mapping = {}
    for name, formula in FLOP_COUNTER_FORMULAS.items():
        namespace, op = name.split("::")
        packet = getattr(getattr(torch.ops, namespace), op, None)  # None: the op's library is not loaded
        if packet is not None:
            mapping[packet] = formula
    if not on_meta:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(x)
        return int(counter.get_total_flops())
    tensors = chain(model.named_parameters(), model.named_buffers())
    state = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            torch.func.functional_call(model, state, (x.to("meta"),))
    except (NotImplementedError, RuntimeError):
        # a kernel without a meta implementation: count on a real forward instead
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(x)
    return int(counter.get_total_flops())


def _random_input(model: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    """A seeded standard-normal input on the model's device, in its floating dtype."""
    reference = next((t for t in chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
    return x if reference is None else x.to(device=reference.device, dtype=reference.dtype)


def _checked_shape(input_shape: Any) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape
    ):
        raise ConfigError("input_shape", input_shape, "a tuple of positive integers, batch first")
    return tuple(input_shape)


def measure_complexity(model: nn.Module, input_shape: tuple[int, ...], *, cross_check: bool = True,
                       shapes_only: bool = False) -> ComplexityResult:
    """Parameters, MACs and FLOPs of `model` on a seeded random input of `input_shape`, in eval mode without grad.

    `shapes_only`: try `count_shapes_only` first (the same counts without the forward's
    arithmetic), and trace for real where it cannot vouch for them.
    """
    input_shape = _checked_shape(input_shape)
    if shapes_only and (result := count_shapes_only(model, input_shape)) is not None:
        return result if cross_check else dataclasses.replace(result, flop_counter_flops=None, cross_check_rel_diff=None)
    result = _measure(model, input_shape, cross_check=cross_check, shapes_only=False)
    assert result is not None
    return result


def count_shapes_only(model: nn.Module, input_shape: tuple[int, ...]) -> ComplexityResult | None:
    """measure_complexity's counts from a trace whose heavy kernels answer from shapes; None where it cannot vouch.

    The trace runs under attnbench.measure.shapes_only.shape_kernels: the graph and its shapes
    are the real trace's, its arithmetic is skipped, so the weights' values do not matter (a
    model built on the meta device and given uninitialised memory will do). None when a value
    computed from the input or the weights reached a shape or Python (ValueWatch), when a kernel
    could not be stood in for, or when FlopCounterMode's count disagrees with 2 x MACs: count
    such a model with `measure_complexity` on its initialised weights (values then decide).
    """
    return _measure(model, _checked_shape(input_shape), cross_check=True, shapes_only=True)


def _measure(model: nn.Module, input_shape: tuple[int, ...], *, cross_check: bool,
             shapes_only: bool) -> ComplexityResult | None:
    """measure_complexity's counts; None when a shapes-only trace cannot vouch for them."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    watch = ValueWatch()
    checked: int | None = None
    try:
        with torch.no_grad():
            x = _random_input(model, input_shape)
            if shapes_only:
                graphs: list[Any] = []
                try:
                    with shape_kernels():
                        with watch.reads_caught():
                            analysis = _Analysis(model, (x,), graphs)
                            total = analysis.by_operator()
                        # FlopCounterMode dispatches above the CPU kernels: the shapes serve it too
                        checked = flop_counter_flops(model, x, on_meta=False)
                except Exception:  # a kernel the shapes cannot stand in for: count the ordinary way
                    return None
                for graph in graphs:
                    watch.check_graph(graph)
                if not watch.exact:
                    return None
            else:
                analysis = _Analysis(model, (x,))
                total = analysis.by_operator()
                checked = flop_counter_flops(model, x) if cross_check else None
    finally:
        for module, training in modes.items():
            module.training = training

    macs_by_op, elementwise_by_op = _split(total)
    macs, elementwise_flops = sum(macs_by_op.values()), sum(elementwise_by_op.values())
    if shapes_only and checked != 2 * macs:
        return None  # the independent counter disagrees: let the ordinary trace say so
    ops = sorted(macs_by_op.keys() | elementwise_by_op.keys())
    slots = attention_slots(model)
    params = _count(list(model.parameters()))
    attention_params = _count([p for module in slots.values() for p in _own_parameters(module)])
    named = dict(model.named_modules())
    # weights that did no work in this forward: unused, or run through .forward() and counted in the caller
    uncalled = sorted(
        n for n in analysis.uncalled_modules() if n in named and next(named[n].parameters(recurse=False), None) is not None
    )
    # the denominator is floored at 1 so a model without dense ops gets a finite (JSON-able) difference
    rel_diff = None if checked is None else abs(checked - 2 * macs) / max(2 * macs, 1)
    return ComplexityResult(
        input_shape=input_shape,
        params=params,
        attention_params=attention_params,
        attention_params_share=attention_params / params if params else 0.0,
        macs=macs,
        elementwise_flops=elementwise_flops,
        flops=2 * macs + elementwise_flops,
        macs_by_op=macs_by_op,
        flops_by_op={op: 2 * macs_by_op.get(op, 0) + elementwise_by_op.get(op, 0) for op in ops},
        by_slot={name: _slot_counts(analysis, name, module) for name, module in slots.items()},
        uncounted_ops=sorted(analysis.unsupported_ops()),
        uncalled_modules=uncalled,
        flop_counter_flops=checked,
        cross_check_rel_diff=rel_diff,
    )
