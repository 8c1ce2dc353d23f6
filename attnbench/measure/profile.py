"""torch.profiler traces of a model's forward, written where TensorBoard's PyTorch profiler plugin finds them.

`tensorboard_trace_handler(out_dir)` names each file `<worker>.<time>.pt.trace.json`;
torch-tb-profiler reads `out_dir` as one run, and the same Chrome-trace JSON opens in Perfetto.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from attnbench.core.modes import eval_mode
from attnbench.measure.latency import (
    autocast,
    check_device,
    check_dtype,
    check_input_shape,
    check_positive_int,
    fixed_threads,
    random_input,
)
from attnbench.measure.native_stderr import silenced_native_stderr


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int],
    out_dir: str | Path,
    device: str = "cpu",
    steps: int = 3,
    *,
    wait: int = 1,
    warmup: int = 1,
    batch_size: int = 1,
    dtype: str = "fp32",
    threads: int | None = None,
    worker_name: str | None = None,
    profile_memory: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Profile `steps` eval forwards (after `wait` skipped and `warmup` discarded ones); return the traces written.

    Shapes and memory are recorded so the plugin's operator and memory views have data. The model is
    moved to `device` in place; its train/eval mode is restored.
    """
    check_device(device)
    check_dtype(device, dtype)
    shape = check_input_shape(input_shape)
    check_positive_int("steps", steps)
    check_positive_int("wait", wait, low=0)
    check_positive_int("warmup", warmup, low=0)
    check_positive_int("batch_size", batch_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.pt.trace.json"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with eval_mode(model), fixed_threads(threads):
        model.to(device)
        x = random_input((batch_size, *shape), device, seed)
        with silenced_native_stderr(), profile(
            activities=activities,
            schedule=schedule(wait=wait, warmup=warmup, active=steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(out), worker_name=worker_name),
            record_shapes=True,
            profile_memory=profile_memory,
        ) as prof, torch.no_grad(), autocast(device, dtype):
            for _ in range(wait + warmup + steps):
                model(x)
                if device == "cuda":
                    # Each step's kernels belong to that step in the plugin's step view.
                    torch.cuda.synchronize()
                prof.step()
    return sorted(set(out.glob("*.pt.trace.json")) - before)
