"""Peak memory of inference and of one training step, and the retry-on-OOM wrapper.

CUDA: the caching allocator's own counters (`torch.cuda.max_memory_allocated` /
`max_memory_reserved`), peak allocated taken above the bytes live just before the step.

CPU: PyTorch keeps no peak counter for host memory. With
`torch.profiler.profile(profile_memory=True)` its CPU allocator reports every
allocation and free together with the running total of bytes it handed out
while profiling ("Total Allocated" on each `[memory]` trace event). The CPU
figure is the highest such total during the step minus the total before it:
the peak of bytes live from PyTorch's CPU allocator, temporaries inside ops
included. Memory that libraries allocate on their own (oneDNN scratch space,
the Python heap) is not in it, and there is no reserved figure (None).
"""
from __future__ import annotations

import functools
import gc
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from attnbench.core.modes import eval_mode
from attnbench.measure.latency import autocast, check_device, check_dtype, check_input_shape, check_positive_int, random_input
from attnbench.measure.native_stderr import silenced_native_stderr

T = TypeVar("T")
_OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA / PyTorch's CPU allocator


@dataclass(frozen=True)
class MemoryResult:
    """Peak memory of one point, in bytes; `method` says how the peaks were read."""

    device: str
    dtype: str
    batch_size: int
    method: str  # "cuda-allocator" or "cpu-profiler" (see the module docstring)
    parameter_bytes: int  # parameters and buffers, the weights the baseline already holds
    inference_peak_bytes: int  # eval forward under no_grad, above the baseline
    train_peak_bytes: int  # forward + backward + SGD step, gradients and optimizer state included
    saved_for_backward_bytes: int  # unique storages autograd saved in the training forward, parameters excluded
    inference_reserved_bytes: int | None  # CUDA caching allocator's peak reserved, absolute
    train_reserved_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """Fields as one flat dict."""
        return asdict(self)


def measure_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str = "cpu",
    dtype: str = "fp32",
    batch_size: int = 1,
    channels_last: bool = False,
    seed: int = 0,
) -> MemoryResult:
    """Peak memory of an eval forward and of one training step of `model` on a seeded random batch.

    The training step is forward under autocast, cross-entropy on random labels when the output is
    (batch, classes) else the output's sum, backward, then SGD with momentum 0.9 (the ResNet recipe,
    so the momentum buffers count). The model is moved to `device` in place; its weights, buffers,
    gradients and train/eval mode are restored afterwards.
    """
    check_device(device)
    check_dtype(device, dtype)
    check_positive_int("batch_size", batch_size)
    shape = check_input_shape(input_shape)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
    x = random_input((batch_size, *shape), device, seed, channels_last)
    parameter_bytes = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    state = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
    grads = [p.grad for p in model.parameters()]
    saved: dict[int, int] = {}
    with eval_mode(model):  # the training step below switches to train mode; every module's own mode comes back
        try:
            inference_peak, inference_reserved, train_peak, train_reserved = _peaks(model, x, device, dtype, seed, saved)
        finally:
            model.load_state_dict(state)
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad
    return MemoryResult(
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        method="cuda-allocator" if device == "cuda" else "cpu-profiler",
        parameter_bytes=parameter_bytes,
        inference_peak_bytes=inference_peak,
        train_peak_bytes=train_peak,
        saved_for_backward_bytes=sum(saved.values()),
        inference_reserved_bytes=inference_reserved,
        train_reserved_bytes=train_reserved,
    )


def _peaks(model: nn.Module, x: Tensor, device: str, dtype: str, seed: int,
           saved: dict[int, int]) -> tuple[int, int | None, int, int | None]:
    """(inference peak, reserved, training-step peak, reserved) of `model` on `x`, the model in eval mode on entry."""
    def infer() -> None:
        with torch.no_grad(), autocast(device, dtype):
            model(x)

    inference_peak, inference_reserved = _peak(device, infer)
    model.train()
    for p in model.parameters():
        p.grad = None
    train_peak, train_reserved = _peak(device, functools.partial(_train_step, model, x, device, dtype, seed, saved))
    return inference_peak, inference_reserved, train_peak, train_reserved


def _train_step(model: nn.Module, x: Tensor, device: str, dtype: str, seed: int, saved: dict[int, int]) -> None:
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: Tensor) -> Tensor:
        # Keep sizes only: holding the tensors here would keep them alive and move the peak.
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        out = model(x)
        if out.dim() == 2:
            labels = torch.randint(out.shape[1], (out.shape[0],), generator=torch.Generator().manual_seed(seed)).to(device)
            loss = F.cross_entropy(out, labels)
        else:
            loss = out.float().sum()
    loss.backward()
    optimizer.step()


def _peak(device: str, fn: Callable[[], None]) -> tuple[int, int | None]:
    gc.collect()
    if device == "cuda":
        # Empty the cache so reserved bytes belong to this step, not to earlier points.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline, torch.cuda.max_memory_reserved()
    with silenced_native_stderr(), torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "memory.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return cpu_peak_from_trace(events), None


def cpu_peak_from_trace(events: list[dict[str, Any]]) -> int:
    """Peak CPU bytes live above the level at the first allocator event, from a chrome trace's `[memory]` events."""
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0),
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    first = memory[0]["args"]
    baseline = first["Total Allocated"] - first["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in memory) - baseline)


def is_oom(error: BaseException) -> bool:
    """Whether `error` is an out-of-memory failure (CUDA's typed error, or an allocator's RuntimeError)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OOM_MESSAGES)


@dataclass(frozen=True)
class OomRetry(Generic[T]):
    """Outcome of `with_oom_retry`: the value at the batch size that fitted, or oom=True past the floor."""

    value: T | None
    batch_size: int | None  # the batch actually used; None when even the floor ran out of memory
    attempts: tuple[int, ...]  # batch sizes tried, in order
    oom: bool
    error: str | None  # the last out-of-memory message, if any attempt hit one

    def to_dict(self) -> dict[str, Any]:
        """Retry bookkeeping as a flat dict (the value is reported by its own to_dict)."""
        return {"batch_size_used": self.batch_size, "attempts": list(self.attempts), "oom": self.oom, "oom_error": self.error}


def with_oom_retry(fn: Callable[[int], T], batch_size: int, floor: int = 1) -> OomRetry[T]:
    """Call fn(batch); on out-of-memory halve the batch and retry down to `floor`, never raising OOM.

    Errors other than out-of-memory propagate.
    """
    check_positive_int("floor", floor)
    check_positive_int("batch_size", batch_size, low=floor)
    attempts: list[int] = []
    error: str | None = None
    batch = batch_size
    while batch >= floor:
        attempts.append(batch)
        try:
            return OomRetry(fn(batch), batch, tuple(attempts), False, error)
        except Exception as exc:  # noqa: BLE001 - filtered right below
            if not is_oom(exc):
                raise
            error = str(exc)
        # Outside the except block the traceback, and the tensors its frames hold, are gone.
        _release_memory()
        batch //= 2
    return OomRetry(None, None, tuple(attempts), True, error)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
