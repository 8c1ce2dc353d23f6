"""Seeding and deterministic mode, with a record of the ops that could not honour it."""
from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# torch's wording when an op without a deterministic kernel runs under warn_only=True.
NONDETERMINISTIC_MARK = " does not have a deterministic implementation"
# cuBLAS needs a fixed workspace to reduce deterministically (CUDA docs, "Results reproducibility");
# it is read when a cuBLAS handle is created, so it only takes effect if set before the first matmul.
CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DeterminismReport:
    """What a `deterministic` block saw: the ops that ran without a deterministic implementation."""

    enabled: bool
    nondeterministic_ops: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        """Record the op a torch non-determinism warning names, once."""
        op = message.split(NONDETERMINISTIC_MARK)[0].strip()
        if op not in self.nondeterministic_ops:
            self.nondeterministic_ops.append(op)


@contextmanager
def deterministic(enabled: bool = True) -> Iterator[DeterminismReport]:
    """Run a block with deterministic algorithms on (warn-only) or off; restores every flag on exit.

    Enabled: `torch.use_deterministic_algorithms(True, warn_only=True)`, cudnn.deterministic on,
    cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG set if unset. Ops that have no deterministic
    kernel (e.g. adaptive max-pool backward on CUDA, which CBAM uses) still run; their warnings
    are collected in the yielded report instead of being printed. Disabled: deterministic
    algorithms and cudnn.deterministic off, cudnn.benchmark left as it was.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    report = DeterminismReport(enabled)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = enabled
    try:
        with warnings.catch_warnings():
            show = warnings.showwarning

            def capture(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
                if NONDETERMINISTIC_MARK in str(message):
                    report.note(str(message))
                else:
                    show(message, category, filename, lineno, file, line)

            warnings.showwarning = capture
            # torch may warn once per call site; "always" lets every op through to be named.
            warnings.filterwarnings("always", message=".*" + NONDETERMINISTIC_MARK)
            yield report
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]
