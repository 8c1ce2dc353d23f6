"""Memory: peaks and saved-for-backward bytes counted by hand, restoration, and the OOM retry path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.measure.memory import cpu_peak_from_trace, is_oom, measure_memory, with_oom_retry

F32 = 4


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))


def test_cpu_peaks_counted_by_hand() -> None:
    batch = 64
    result = measure_memory(mlp(), (256,), batch_size=batch)
    params = (256 * 512 + 512 + 512 * 10 + 10) * F32
    hidden = batch * 512 * F32
    logits = batch * 10 * F32
    assert result.method == "cpu-profiler" and result.parameter_bytes == params
    # Inference: the first Linear's output is still alive while ReLU writes its own.
    assert result.inference_peak_bytes == 2 * hidden
    # Saved for backward: the input (first addmm), ReLU's output (also the second addmm's input, counted
    # once), log_softmax's output, the int64 labels and nll_loss's scalar total weight. Weights excluded.
    assert result.saved_for_backward_bytes == batch * 256 * F32 + hidden + logits + batch * 8 + F32
    # Training peak at the SGD step: gradients + momentum buffers (one parameter-sized set each),
    # with the logits, labels and loss still referenced; activations were freed by backward.
    assert result.train_peak_bytes == 2 * params + logits + batch * 8 + F32
    assert result.inference_reserved_bytes is None and result.train_reserved_bytes is None


def test_peaks_scale_with_batch() -> None:
    small, large = (measure_memory(mlp(), (256,), batch_size=b) for b in (16, 64))
    assert large.inference_peak_bytes == 4 * small.inference_peak_bytes


def test_model_is_left_as_found() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    model(torch.randn(2, 3, 8, 8))
    model.eval()
    sentinel = torch.full_like(model[0].weight, 3.0)
    model[0].weight.grad = sentinel
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_memory(model, (3, 8, 8), batch_size=4, dtype="bf16")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert model[0].weight.grad is sentinel and model[4].weight.grad is None
    assert not model.training


def test_gating_output_uses_sum_loss() -> None:
    # A 4-D output takes the sum loss: nothing but the input is saved (the product saves both operands,
    # one of which is the parameter).
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1, 4, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    result = measure_memory(Scale(), (4, 8, 8), batch_size=2)
    assert result.saved_for_backward_bytes == 2 * 4 * 8 * 8 * F32


def test_cpu_peak_from_trace_subtracts_the_starting_level() -> None:
    def event(ts: float, size: int, total: int, device_type: int = 0) -> dict:
        return {"name": "[memory]", "ts": ts, "args": {"Bytes": size, "Total Allocated": total, "Device Type": device_type}}

    events = [event(3, -100, 1100), event(1, 100, 1100), event(2, 200, 1300), event(4, 0, 99_999, device_type=1)]
    assert cpu_peak_from_trace(events) == 300  # started at 1000 live bytes, peaked at 1300
    assert cpu_peak_from_trace([]) == 0


def test_bad_arguments() -> None:
    for kwargs, key in ((dict(device="gpu"), "device"), (dict(dtype="int8"), "dtype"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ConfigError) as error:
            measure_memory(mlp(), (256,), **kwargs)
        assert error.value.key == key


# --- OOM ---------------------------------------------------------------------------------------

def fits_below(limit: int, error: type[BaseException] = torch.cuda.OutOfMemoryError, message: str = "CUDA out of memory"):
    calls: list[int] = []

    def fn(batch: int) -> str:
        calls.append(batch)
        if batch > limit:
            raise error(message)
        return f"ran {batch}"

    return fn, calls


def test_oom_halves_until_it_fits() -> None:
    fn, calls = fits_below(10)
    outcome = with_oom_retry(fn, 64, floor=1)
    assert calls == [64, 32, 16, 8]
    assert (outcome.value, outcome.batch_size, outcome.attempts, outcome.oom) == ("ran 8", 8, (64, 32, 16, 8), False)
    assert "out of memory" in outcome.error
    assert outcome.to_dict() == {"batch_size_used": 8, "attempts": [64, 32, 16, 8], "oom": False, "oom_error": outcome.error}


def test_oom_past_the_floor_is_recorded_not_raised() -> None:
    fn, calls = fits_below(4, RuntimeError, "CUDA error: out of memory")
    outcome = with_oom_retry(fn, 64, floor=8)
    assert calls == [64, 32, 16, 8]
    assert outcome.oom and outcome.value is None and outcome.batch_size is None and outcome.attempts == (64, 32, 16, 8)


def test_first_try_that_fits_has_no_error() -> None:
    fn, calls = fits_below(100)
    outcome = with_oom_retry(fn, 64)
    assert calls == [64] and outcome.error is None and not outcome.oom


def test_other_errors_propagate() -> None:
    fn, _ = fits_below(10, ValueError, "shape mismatch")
    with pytest.raises(ValueError):
        with_oom_retry(fn, 64)


def test_real_cpu_allocator_failure_is_oom() -> None:
    with pytest.raises(RuntimeError) as error:
        torch.empty(1 << 60, dtype=torch.uint8)
    assert is_oom(error.value)
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_retry_arguments_checked() -> None:
    with pytest.raises(ConfigError) as error:
        with_oom_retry(lambda b: b, 4, floor=8)
    assert error.value.key == "batch_size"
    with pytest.raises(ConfigError) as error:
        with_oom_retry(lambda b: b, 4, floor=0)
    assert error.value.key == "floor"


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peaks() -> None:
    batch = 64
    model = mlp().cuda()
    model(torch.randn(batch, 256, device="cuda")).sum().backward()  # cuBLAS workspace outside the numbers
    model.zero_grad(set_to_none=True)
    result = measure_memory(model, (256,), device="cuda", batch_size=batch)
    params = (256 * 512 + 512 + 512 * 10 + 10) * F32
    assert result.method == "cuda-allocator"
    assert result.inference_peak_bytes >= 2 * batch * 512 * F32
    assert result.train_peak_bytes >= 2 * params
    assert result.train_reserved_bytes >= result.train_peak_bytes
