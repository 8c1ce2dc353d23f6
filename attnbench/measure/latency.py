"""Latency of a model (or one module) at a given input: CUDA events on the GPU, perf_counter on the CPU.

The run helpers here (device and dtype checks, autocast, seeded random input,
fixed thread count) are shared by the memory and profile measurements so that
all three run a point the same way.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from attnbench.core.errors import ConfigError
from attnbench.measure.stats import summarize

DEVICES = ("cpu", "cuda")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Used when torch does not report the L2 size; triton's do_bench flushes with a 256 MB buffer too.
_FALLBACK_L2_BYTES = 256 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def compile_modes() -> tuple[str, ...]:
    """The torch.compile modes this torch knows (the names torch.compile's docs point to)."""
    import torch._inductor  # about a second to import: only when a mode is checked

    return tuple(torch._inductor.list_mode_options())


def check_device(device: str, key: str = "device") -> None:
    """Raise ConfigError unless `device` is "cpu", or "cuda" with a visible GPU."""
    if device not in DEVICES:
        raise ConfigError(key, device, "one of " + ", ".join(DEVICES))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, device, "cpu: torch.cuda.is_available() is False here")


def check_dtype(device: str, dtype: str, key: str = "dtype") -> None:
    """Raise ConfigError unless `dtype` is one of DTYPES and autocast on `device` can run it."""
    if dtype not in DTYPES:
        raise ConfigError(key, dtype, "one of " + ", ".join(DTYPES))
    if dtype == "fp32":
        return
    if device == "cuda":
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(key, dtype, "fp32 or fp16: this GPU has no bf16 (torch.cuda.is_bf16_supported() is False)")
        return
    # CPU autocast's dtype list is not public; an unsupported one only warns and disables itself.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(device_type=device, dtype=DTYPES[dtype]):
            pass
    if any("Disabling autocast" in str(w.message) for w in caught):
        raise ConfigError(key, dtype, f"fp32 or a dtype this torch's {device} autocast supports")


def check_input_shape(input_shape: Sequence[int], key: str = "input_shape") -> tuple[int, ...]:
    """The per-sample input shape (no batch dimension) as a tuple of positive ints, or ConfigError."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape:
        raise ConfigError(key, input_shape, "a non-empty sequence of positive ints, without the batch dimension")
    for side in input_shape:
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ConfigError(key, input_shape, "a non-empty sequence of positive ints, without the batch dimension")
    return tuple(input_shape)


def check_positive_int(key: str, value: Any, low: int = 1) -> None:
    """Raise ConfigError unless `value` is an int >= low (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"an integer >= {low}")


def autocast(device: str, dtype: str, cache_enabled: bool = True) -> AbstractContextManager[Any]:
    """Autocast to `dtype` on `device`; a no-op for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[dtype], cache_enabled=cache_enabled)


def random_input(shape: Sequence[int], device: str, seed: int = 0, channels_last: bool = False) -> Tensor:
    """Standard-normal input drawn from a seeded CPU generator (same values on every device), never zeros."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=generator).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count (the current one when None) and restore it afterwards."""
    previous = torch.get_num_threads()
    count = previous if threads is None else threads
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class LatencyOptions:
    """How to time a point; `validate` checks every field against this machine."""

    device: str = "cpu"
    batch_size: int = 1
    dtype: str = "fp32"  # bf16 / fp16 run under autocast; weights stay fp32
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False  # capture one forward and time its replays (CUDA only)
    cold_l2: bool = False  # overwrite a buffer larger than L2 before every repeat (CUDA only)
    warmup: int = 10
    repeats: int = 50  # samples per round
    min_time_s: float = 0.0  # rounds of `repeats` continue until this much time was measured
    threads: int | None = None  # torch intra-op threads; None keeps (and records) the current count
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError naming the first option that cannot run here."""
        check_device(self.device)
        check_positive_int("batch_size", self.batch_size)
        check_dtype(self.device, self.dtype)
        for key in ("channels_last", "compile", "cuda_graphs", "cold_l2"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, getattr(self, key), "true or false")
        # "default" is always a mode; asking torch costs an import of inductor.
        if self.compile_mode != "default" and self.compile_mode not in compile_modes():
            raise ConfigError("compile_mode", self.compile_mode, "one of " + ", ".join(compile_modes()))
        for key in ("cuda_graphs", "cold_l2"):
            if getattr(self, key) and self.device != "cuda":
                raise ConfigError(key, True, "false unless device is cuda")
        if self.cuda_graphs and self.compile:
            raise ConfigError("cuda_graphs", True, "false with compile: use compile_mode='reduce-overhead' for graphs")
        check_positive_int("warmup", self.warmup, low=0)
        check_positive_int("repeats", self.repeats)
        min_time = self.min_time_s
        if isinstance(min_time, bool) or not isinstance(min_time, (int, float)) or not 0 <= min_time < float("inf"):
            raise ConfigError("min_time_s", self.min_time_s, "a finite number of seconds >= 0")
        if self.threads is not None:
            cores = os.cpu_count() or 1
            if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= cores:
                raise ConfigError("threads", self.threads, f"null or an integer from 1 to {cores} (os.cpu_count())")
        check_positive_int("seed", self.seed, low=0)


@dataclass(frozen=True)
class LatencyResult:
    """Timing summary of one point, in milliseconds per batch, with the options that produced it."""

    median_ms: float
    iqr_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    samples: int
    throughput_ips: float  # images per second: batch_size / median
    threads: int  # torch intra-op threads in force while timing
    input_shape: tuple[int, ...]  # per sample, without the batch dimension
    options: LatencyOptions
    times_ms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Statistics and options as one flat dict (raw times left out)."""
        row = asdict(self.options)
        row.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("options", "times_ms")})
        row["input_shape"] = list(self.input_shape)
        return row


def measure_latency(model: nn.Module, input_shape: Sequence[int], options: LatencyOptions | None = None) -> LatencyResult:
    """Time `model` on a seeded random batch of `input_shape` under `options` (eval mode, no_grad).

    The model is moved to the device (and memory format) in place; its train/eval mode is restored.
    """
    options = options or LatencyOptions()
    options.validate()
    shape = check_input_shape(input_shape)
    with fixed_threads(options.threads) as threads, timing_context(options), Timed(model, shape, options) as timed:
        timed.warm(options.warmup)
        times = _rounds(timed.sample, options)
    return latency_result(times, threads, shape, options)


def latency_result(times: Sequence[float], threads: int, input_shape: tuple[int, ...], options: LatencyOptions) -> LatencyResult:
    """The summary of per-forward times (ms) taken under `options`."""
    summary = summarize(times)
    return LatencyResult(
        median_ms=summary.median,
        iqr_ms=summary.iqr,
        p10_ms=summary.p10,
        p90_ms=summary.p90,
        mean_ms=summary.mean,
        std_ms=summary.std,
        samples=summary.count,
        throughput_ips=options.batch_size / (summary.median / 1e3),
        threads=threads,
        input_shape=input_shape,
        options=options,
        times_ms=tuple(times),
    )


@contextlib.contextmanager
def timing_context(options: LatencyOptions) -> Iterator[None]:
    """no_grad and the options' autocast, around every forward timed under `options`."""
    # Graph capture must not reuse autocast's cast cache from outside the graph.
    with torch.no_grad(), autocast(options.device, options.dtype, cache_enabled=not options.cuda_graphs):
        yield


class Timed:
    """One model made ready to time under `options`: on its device and layout, its input drawn, compiled or captured.

    `warm(n)` runs n untimed forwards; `sample(n)` returns n per-forward times in ms (CUDA events on
    a GPU, perf_counter with the garbage collector paused on the CPU). Use inside `fixed_threads`
    and `timing_context`; leaving restores the model's train/eval mode. Several may be ready at once
    (paired timing alternates between them).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], options: LatencyOptions) -> None:
        self.model, self.input_shape, self.options = model, input_shape, options
        self._step: Callable[[], Any] | None = None
        self._flush: Callable[[], Any] | None = None

    def __enter__(self) -> Timed:
        options = self.options
        self._was_training = self.model.training
        self.model.eval()
        self.model.to(options.device)
        if options.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
        x = random_input((options.batch_size, *self.input_shape), options.device, options.seed, options.channels_last)
        runner = torch.compile(self.model, mode=options.compile_mode) if options.compile else self.model
        if options.device == "cuda" and options.cuda_graphs:
            self._step = _capture_graph(runner, x, options.warmup)
        else:
            self._step = lambda: runner(x)
        self._flush = _l2_flusher() if options.device == "cuda" and options.cold_l2 else None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self._was_training)
        self._step = self._flush = None

    def forward(self) -> None:
        """One untimed forward (no L2 flush, no synchronisation): for another timer to time."""
        assert self._step is not None, "use Timed as a context manager"
        self._step()

    def warm(self, count: int) -> None:
        """`count` untimed forwards (a GPU's queue drained after them)."""
        assert self._step is not None, "use Timed as a context manager"
        for _ in range(count):
            self._step()
        if self.options.device == "cuda":
            torch.cuda.synchronize()

    def sample(self, count: int) -> list[float]:
        """`count` timed forwards, ms each."""
        assert self._step is not None, "use Timed as a context manager"
        if self.options.device == "cuda":
            return _cuda_samples(self._step, count, self._flush)
        return _cpu_samples(self._step, count)


def _rounds(run_round: Callable[[int], list[float]], options: LatencyOptions) -> list[float]:
    times: list[float] = []
    while not times or sum(times) < options.min_time_s * 1e3:
        times += run_round(options.repeats)
    return times


def _cpu_samples(step: Callable[[], Any], count: int) -> list[float]:
    # As timeit does: a collection pause inside one repeat is not the model's latency.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        out = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            out.append((time.perf_counter() - start) * 1e3)
        return out
    finally:
        if gc_was_enabled:
            gc.enable()


def _cuda_samples(step: Callable[[], Any], count: int, flush: Callable[[], None] | None) -> list[float]:
    pairs = []
    for _ in range(count):
        if flush is not None:
            flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def _capture_graph(runner: Callable[[Tensor], Any], x: Tensor, warmup: int) -> Callable[[], Any]:
    # Eager iterations on a side stream first (CUDA graphs docs): lazy init and cuDNN algorithm
    # choice must happen outside the capture.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 1)):
            runner(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runner(x)
    return graph.replay


def _l2_flusher() -> Callable[[], Any]:
    l2_bytes = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or _FALLBACK_L2_BYTES
    buffer = torch.empty(2 * l2_bytes, dtype=torch.uint8, device="cuda")
    return lambda: buffer.fill_(1)
