"""Silence what native code writes to file descriptor 2 (kineto prints a line per profiler start and stop)."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def silenced_native_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null for the block; Python's own stderr writes are flushed first and resume after."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
