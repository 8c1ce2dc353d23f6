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
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from attnbench.core.errors import ConfigError
from attnbench.core.modes import eval_mode
from attnbench.measure.shapes_only import ValueWatch, shape_kernels
from attnbench.modules.slots import attention_slots

with warnings.catch_warnings():
    # fvcore.nn's package init scripts its focal loss, which torch flags as deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis, jit_analysis

from attnbench.measure.op_rules import (  # noqa: E402 (after fvcore, whose import is silenced above)
    BILINEAR_FLOPS,
    DEFORM_CONV_OP,
    ELEMENTWISE,
    FLOP_COUNTER_FORMULAS,
    HANDLES,
    MACS,
    ZERO_COST_OPS,
)

__all__ = ["BILINEAR_FLOPS", "DEFORM_CONV_OP", "ELEMENTWISE", "FLOP_COUNTER_FORMULAS", "HANDLES", "MACS", "ZERO_COST_OPS",
           "ComplexityResult", "count_shapes_only", "flop_counter_flops", "measure_complexity"]


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
    with eval_mode(model), torch.no_grad():
        x = _random_input(model, input_shape)
        traced = _shapes_only_trace(model, x) if shapes_only else _trace(model, x, cross_check)
    if traced is None:
        return None
    analysis, total, checked = traced
    return _result(model, input_shape, analysis, total, checked, shapes_only)


def _trace(model: nn.Module, x: Tensor, cross_check: bool) -> tuple[_Analysis, Counter, int | None]:
    """fvcore's counts from a real forward, and FlopCounterMode's (on meta copies) when cross-checking."""
    analysis = _Analysis(model, (x,))
    total = analysis.by_operator()
    return analysis, total, flop_counter_flops(model, x) if cross_check else None


def _shapes_only_trace(model: nn.Module, x: Tensor) -> tuple[_Analysis, Counter, int | None] | None:
    """Both counts from one trace whose heavy kernels only make shapes; None where values could have shaped it."""
    watch = ValueWatch()
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
    return (analysis, total, checked) if watch.exact else None


def _result(model: nn.Module, input_shape: tuple[int, ...], analysis: _Analysis, total: Counter, checked: int | None,
            shapes_only: bool) -> ComplexityResult | None:
    """The result of one trace's counts; None where a shapes-only trace disagrees with FlopCounterMode."""
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
