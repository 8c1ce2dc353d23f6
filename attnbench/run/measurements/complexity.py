"""Complexity, always measured: parameters, MACs and FLOPs of the point's model (attnbench.measure.complexity)."""
from __future__ import annotations

from typing import Any, ClassVar

from attnbench.measure.complexity import count_shapes_only, measure_complexity
from attnbench.run.columns import Column, column, family
from attnbench.run.measurements.base import Measurement, PointRun
from attnbench.run.measurements.registry import register_measurement

PARAMS = column("params", "Params (M)", "parameters", "lower", "count", scale=1e-6)
ATTENTION_PARAMS = column("attention_params", "Attn params (M)", "parameters", "lower", "count", scale=1e-6)
ATTENTION_SHARE = column("attention_params_share", "Attn share", "fraction")
MACS = column("macs", "MACs (G)", "MACs", "lower", "count", scale=1e-9)
ELEMENTWISE = column("elementwise_flops", "Element-wise FLOPs (G)", "FLOPs", "lower", "count", scale=1e-9)
FLOPS = column("flops", "FLOPs (G)", "FLOPs", "lower", "count", scale=1e-9)
CROSS_CHECK = column("flop_counter_flops", "FlopCounterMode FLOPs", "FLOPs")
CROSS_CHECK_DIFF = column("cross_check_rel_diff", "cross-check difference", "fraction")
UNCOUNTED = column("uncounted_ops", "uncounted ops", "op names")
UNCALLED = column("uncalled_modules", "uncalled modules", "module names")
INPUT_SHAPE = column("input_shape", "input shape", "dims")
MACS_BY_OP = family("macs_by_op/")
FLOPS_BY_OP = family("flops_by_op/")
BY_SLOT = family("by_slot/", ("macs", "elementwise_flops", "params"))


@register_measurement
class Complexity(Measurement):
    """Parameters, dense MACs, element-wise FLOPs, per op and per slot, cross-checked against FlopCounterMode."""

    name = "complexity"
    section = "always"
    order = 10
    needs_weights = False  # counts read shapes (PointRun.counting_model)
    columns: ClassVar[tuple[Column, ...]] = (PARAMS, ATTENTION_PARAMS, ATTENTION_SHARE, MACS, ELEMENTWISE, FLOPS,
                                             CROSS_CHECK, CROSS_CHECK_DIFF, UNCOUNTED, UNCALLED, INPUT_SHAPE)

    def parse(self, value: Any, key: str) -> Any:
        return True

    def run(self, run: PointRun, settings: Any) -> dict[str, Any]:
        shape = (1, *run.point.input_shape[1:])
        # shapes only (no arithmetic, no initialised weights needed); a model whose values could shape its
        # graph is counted on its initialised weights, as before
        result = count_shapes_only(run.counting_model, shape) or measure_complexity(run.model, shape)
        run.results[self.name] = result
        row: dict[str, Any] = {
            INPUT_SHAPE.key: list(result.input_shape), PARAMS.key: result.params,
            ATTENTION_PARAMS.key: result.attention_params, ATTENTION_SHARE.key: result.attention_params_share,
            MACS.key: result.macs, ELEMENTWISE.key: result.elementwise_flops, FLOPS.key: result.flops,
            UNCOUNTED.key: ", ".join(result.uncounted_ops), UNCALLED.key: list(result.uncalled_modules),
            CROSS_CHECK.key: result.flop_counter_flops, CROSS_CHECK_DIFF.key: result.cross_check_rel_diff,
        }
        row.update({MACS_BY_OP.key(op): n for op, n in result.macs_by_op.items()})
        row.update({FLOPS_BY_OP.key(op): n for op, n in result.flops_by_op.items()})
        for slot, counts in result.by_slot.items():
            row.update({BY_SLOT.key(slot, name): n for name, n in counts.items()})
        return row
