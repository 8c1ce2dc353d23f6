"""The module alone: each attention slot's real input shape, and its latency timed at that shape."""
from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.core.modes import eval_mode
from attnbench.measure.latency import LatencyOptions, LatencyResult, check_input_shape, measure_latency, random_input
from attnbench.modules.slots import attention_slots


def record_slot_shapes(model: nn.Module, input_shape: Sequence[int], seed: int = 0) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape (no batch dimension) each slot sees in one eval forward of `model`.

    Slots the forward never reaches are absent; a slot called more than once keeps its first shape.
    """
    shape = check_input_shape(input_shape)
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(name, tuple(args[0].shape[1:]))

        return hook

    handles = [module.register_forward_pre_hook(recorder(name)) for name, module in attention_slots(model).items()]
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        with eval_mode(model), torch.no_grad():
            model(random_input((1, *shape), str(device), seed))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def module_signature(module: nn.Module) -> Hashable:
    """What decides a module's cost: its submodules' types and settings and its tensors' shapes and dtypes."""
    parts: list[Hashable] = []
    for name, sub in module.named_modules():
        settings = tuple(sorted(
            (key, value) for key, value in vars(sub).items()
            if not key.startswith("_") and key != "training" and _is_setting(value)
        ))
        parts.append((name, type(sub).__module__, type(sub).__qualname__, sub.extra_repr(), settings))
    tensors = [*module.named_parameters(), *module.named_buffers()]
    parts.append(tuple((name, tuple(t.shape), str(t.dtype)) for name, t in tensors))
    return tuple(parts)


def _is_setting(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return isinstance(value, tuple) and all(_is_setting(item) for item in value)


def measure_slots(
    model: nn.Module, input_shape: Sequence[int], options: LatencyOptions | None = None
) -> dict[str, LatencyResult]:
    """Latency of each slot module alone at the shape it sees inside `model`, by slot name.

    Slots with the same signature and shape are timed once and share the result. Each timed
    module is a copy, so `model` stays on its device untouched.
    """
    options = options or LatencyOptions()
    options.validate()
    slots = attention_slots(model)
    timed: dict[Hashable, LatencyResult] = {}
    results: dict[str, LatencyResult] = {}
    for name, shape in record_slot_shapes(model, input_shape, options.seed).items():
        key = (module_signature(slots[name]), shape)
        if key not in timed:
            timed[key] = measure_latency(copy.deepcopy(slots[name]), shape, options)
        results[name] = timed[key]
    return results
