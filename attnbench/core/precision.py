"""The one precision vocabulary: fp32, bf16 and fp16, the torch dtypes they name, and what runs under autocast."""
from __future__ import annotations

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast runs in for `precision`, or None for fp32 (no autocast: weights and math stay fp32)."""
    return None if precision == "fp32" else PRECISIONS[precision]
