"""Out-of-memory retries shared by the batch-bound measurements (latency, memory)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from attnbench.measure.memory import with_oom_retry

T = TypeVar("T")


def with_memory(measure: Callable[[int], T], batch_size: int, floor: int) -> tuple[T, int]:
    """`measure(batch)` halving the batch on out-of-memory; below `floor` the point fails as OOM."""
    attempt = with_oom_retry(measure, batch_size, floor)
    if attempt.oom:
        raise MemoryError(f"out of memory down to batch {attempt.batch_size}: {attempt.error}")
    assert attempt.value is not None and attempt.batch_size is not None
    return attempt.value, attempt.batch_size
