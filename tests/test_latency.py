"""Latency: statistics against numpy, timing against a known sleep, options, repeatability, the module alone."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from attnbench.backbones import build_model
from attnbench.core.errors import ConfigError
from attnbench.measure import slot_shapes
from attnbench.measure.latency import LatencyOptions, measure_latency, random_input
from attnbench.measure.slot_shapes import measure_slots, module_signature, record_slot_shapes
from attnbench.measure.stats import percentile, summarize
from attnbench.modules.slots import Site, SlotPlan

FAST = dict(warmup=1, repeats=3)


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


class Probe(nn.Module):
    """Records what the forward saw: mode, grad state, input shape and layout, compute dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        self.seen.append({
            "training": self.training, "grad": torch.is_grad_enabled(), "shape": tuple(x.shape),
            "channels_last": x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
            "dtype": out.dtype, "threads": torch.get_num_threads(), "x": x,
        })
        return out


class Sleep(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_statistics_match_numpy(n: int) -> None:
    values = np.random.default_rng(n).lognormal(0.0, 0.5, size=n).tolist()
    for q in (0, 10, 25, 33.3, 50, 75, 90, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)
    s = summarize(values)
    assert s.median == pytest.approx(np.median(values), rel=1e-12)
    assert s.iqr == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25), rel=1e-12, abs=1e-15)
    assert s.p10 == pytest.approx(np.percentile(values, 10), rel=1e-12)
    assert s.p90 == pytest.approx(np.percentile(values, 90), rel=1e-12)
    assert s.mean == pytest.approx(np.mean(values), rel=1e-12)
    assert s.std == pytest.approx(np.std(values, ddof=1) if n > 1 else 0.0, rel=1e-9)
    assert s.count == n


def test_percentile_interpolates_between_order_statistics() -> None:
    # Written out: position (n-1)q/100 = 0.75 between 10 and 20 -> 17.5.
    assert percentile([20.0, 10.0], 75) == 17.5


def test_timing_matches_a_known_sleep() -> None:
    result = measure_latency(Sleep(0.004), (1,), LatencyOptions(warmup=1, repeats=10))
    assert 4.0 <= result.median_ms < 8.0  # time.sleep never returns early; a busy 2-core VM may wake it late
    assert result.samples == 10 and len(result.times_ms) == 10
    assert result.throughput_ips == pytest.approx(1 / (result.median_ms / 1e3))
    s = summarize(result.times_ms)
    assert (result.median_ms, result.iqr_ms, result.p10_ms, result.p90_ms, result.mean_ms, result.std_ms) == (
        s.median, s.iqr, s.p10, s.p90, s.mean, s.std)


def test_min_time_adds_whole_rounds() -> None:
    result = measure_latency(Sleep(0.002), (1,), LatencyOptions(warmup=0, repeats=4, min_time_s=0.03))
    assert sum(result.times_ms) >= 30.0
    assert result.samples % 4 == 0 and result.samples >= 12  # 12 x 2 ms is the least that reaches 30 ms


def test_forward_runs_in_eval_no_grad_with_the_options() -> None:
    probe = Probe().train()
    before = torch.get_num_threads()
    result = measure_latency(probe, (3, 8, 8), LatencyOptions(batch_size=5, channels_last=True, dtype="bf16", threads=1, **FAST))
    seen = probe.seen[-1]
    assert seen["training"] is False and seen["grad"] is False
    assert seen["shape"] == (5, 3, 8, 8) and seen["channels_last"]
    assert seen["dtype"] == torch.bfloat16  # autocast on; weights stay fp32
    assert probe.conv.weight.dtype == torch.float32
    assert seen["threads"] == 1 and result.threads == 1
    assert torch.get_num_threads() == before and probe.training
    assert result.throughput_ips == pytest.approx(5 / (result.median_ms / 1e3))


def test_input_is_seeded_random_never_zeros() -> None:
    probe = Probe()
    measure_latency(probe, (3, 8, 8), LatencyOptions(seed=7, **FAST))
    x = probe.seen[-1]["x"]
    assert bool((x != 0).all())
    assert torch.equal(x, random_input((1, 3, 8, 8), "cpu", seed=7))
    assert not torch.equal(x, random_input((1, 3, 8, 8), "cpu", seed=8))
    assert 0.5 < float(x.std()) < 1.5  # standard normal


def test_to_dict_is_flat_and_echoes_options() -> None:
    options = LatencyOptions(batch_size=2, threads=1, **FAST)
    row = measure_latency(small_convnet(), (3, 8, 8), options).to_dict()
    assert row["batch_size"] == 2 and row["dtype"] == "fp32" and row["threads"] == 1 and row["samples"] == 3
    assert row["input_shape"] == [3, 8, 8]
    assert "times_ms" not in row and not any(isinstance(v, dict) for v in row.values())


def test_same_point_twice_agrees_within_five_percent() -> None:
    # This 2-core VM is shared with other jobs. Batch 4 keeps each activation at 512 KB, inside the
    # core's L2: at batch 8 a neighbour thrashing the shared cache moved the median from 1.1 ms to
    # 2.6-6.5 ms, while batch 4 held at 0.58 ms. A pair can still straddle a burst of preemption,
    # so up to ten short back-to-back pairs are tried (one in ten needed a second under load 5).
    model = small_convnet()
    options = LatencyOptions(batch_size=4, warmup=3, repeats=20, threads=1)
    measure_latency(model, (3, 32, 32), options)
    gaps = []
    for _ in range(10):
        first, second = (measure_latency(model, (3, 32, 32), options).median_ms for _ in range(2))
        gaps.append(abs(first - second) / min(first, second))
        if gaps[-1] <= 0.05:
            break
    assert min(gaps) <= 0.05, gaps


@pytest.mark.parametrize(
    ("options", "key"),
    [
        (dict(device="tpu"), "device"),
        (dict(dtype="fp8"), "dtype"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=True), "batch_size"),
        (dict(compile_mode="fastest"), "compile_mode"),
        (dict(cuda_graphs=True), "cuda_graphs"),
        (dict(cold_l2=True), "cold_l2"),
        (dict(channels_last="yes"), "channels_last"),
        (dict(warmup=-1), "warmup"),
        (dict(repeats=0), "repeats"),
        (dict(min_time_s=-1.0), "min_time_s"),
        (dict(threads=0), "threads"),
        (dict(threads=10_000), "threads"),
    ],
)
def test_bad_options_name_key_value_and_allowed(options: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        LatencyOptions(**options).validate()
    assert error.value.key == key and error.value.value == options[key] and error.value.allowed


def test_compile_modes_are_torchs_own() -> None:
    for mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        LatencyOptions(compile_mode=mode).validate()


def test_compile_wraps_the_model_with_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inductor takes ~25 s cold on 2 cores, so only the wiring is checked here: the compiled callable is timed.
    compiled = []

    def fake_compile(model: nn.Module, mode: str) -> nn.Module:
        compiled.append(mode)
        return Sleep(0.002)

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = measure_latency(small_convnet(), (3, 8, 8), LatencyOptions(compile=True, compile_mode="max-autotune", **FAST))
    assert compiled == ["max-autotune"] and result.median_ms >= 2.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is visible")
def test_cuda_refused_without_a_gpu() -> None:
    with pytest.raises(ConfigError) as error:
        LatencyOptions(device="cuda").validate()
    assert error.value.key == "device" and "is_available" in error.value.allowed


def test_bad_input_shape() -> None:
    for shape in ((), (3, 0, 8), "3x8x8", (3, 8.0)):
        with pytest.raises(ConfigError) as error:
            measure_latency(small_convnet(), shape, LatencyOptions(**FAST))
        assert error.value.key == "input_shape"


# --- the module alone ---------------------------------------------------------------------------

class TwoStage(nn.Module):
    """Stem /2, two identical SE slots, conv /2, one wider SE slot, and a slot the forward skips."""

    def __init__(self) -> None:
        super().__init__()
        plan = SlotPlan("se", {"reduction": 4}, stages=(1, 2))
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.a, self.b = plan.gate(Site("gate", 1, 0, "standard", 8)), plan.gate(Site("gate", 1, 0, "standard", 8))
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c = plan.gate(Site("gate", 2, 0, "standard", 16))
        self.unused = plan.gate(Site("gate", 2, 0, "standard", 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.down(self.b(self.a(self.stem(x)))))


def test_slot_shapes_by_hand() -> None:
    model = TwoStage().train()
    # 32x32 -> stride-2 stem -> 16x16 with 8 channels -> stride-2 conv -> 8x8 with 16 channels.
    assert record_slot_shapes(model, (3, 32, 32)) == {"a": (8, 16, 16), "b": (8, 16, 16), "c": (16, 8, 8)}
    assert model.training
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_measure_slots_times_each_distinct_slot_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TwoStage()
    calls = []
    real = slot_shapes.measure_latency

    def counting(module: nn.Module, shape: tuple, options: LatencyOptions):
        calls.append((type(module).__name__, shape))
        return real(module, shape, options)

    monkeypatch.setattr(slot_shapes, "measure_latency", counting)
    results = measure_slots(model, (3, 32, 32), LatencyOptions(**FAST))
    assert set(results) == {"a", "b", "c"}
    assert results["a"] is results["b"] and results["c"] is not results["a"]
    assert sorted(calls) == [("SqueezeExcitation", (8, 16, 16)), ("SqueezeExcitation", (16, 8, 8))]
    assert results["c"].input_shape == (16, 8, 8)


def test_signature_tells_configurations_apart() -> None:
    sigmoid = SlotPlan("se", {"reduction": 4}, stages=(1,)).gate(Site("gate", 1, 0, "standard", 16))
    same = SlotPlan("se", {"reduction": 4}, stages=(1,)).gate(Site("gate", 1, 0, "standard", 16))
    hard = SlotPlan("se", {"reduction": 4, "gate": "hard_sigmoid"}, stages=(1,)).gate(Site("gate", 1, 0, "standard", 16))
    wider = SlotPlan("se", {"reduction": 2}, stages=(1,)).gate(Site("gate", 1, 0, "standard", 16))
    assert module_signature(sigmoid) == module_signature(same)
    assert module_signature(sigmoid) != module_signature(hard)  # differs only in a plain attribute
    assert module_signature(sigmoid) != module_signature(wider)


def test_slot_shapes_of_a_real_backbone() -> None:
    model = build_model("cifar_resnet18", "se", num_classes=10)
    shapes = record_slot_shapes(model, (3, 32, 32))
    # CIFAR ResNet-18: 3x3 stem at 32x32, then stages of 64/128/256/512 channels at 32/16/8/4, two blocks each.
    expected = sorted([(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 2 + [(512, 4, 4)] * 2)
    assert sorted(shapes.values()) == expected


# --- CUDA ---------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_cuda_events_path() -> None:
    result = measure_latency(small_convnet(), (3, 64, 64), LatencyOptions(device="cuda", batch_size=16, warmup=5, repeats=20))
    assert result.samples == 20 and result.median_ms > 0 and result.p10_ms <= result.median_ms <= result.p90_ms


@pytest.mark.cuda
@cuda
def test_cuda_graph_replays_not_slower_than_eager() -> None:
    options = dict(device="cuda", batch_size=16, warmup=5, repeats=30)
    eager = measure_latency(small_convnet(), (3, 64, 64), LatencyOptions(**options))
    graphed = measure_latency(small_convnet(), (3, 64, 64), LatencyOptions(cuda_graphs=True, **options))
    # Replays drop launch gaps: never much slower than eager.
    assert graphed.median_ms <= eager.median_ms * 1.2


@pytest.mark.cuda
@cuda
def test_cold_l2_is_not_faster_than_warm() -> None:
    options = dict(device="cuda", batch_size=64, warmup=5, repeats=30)
    warm = measure_latency(small_convnet(), (3, 32, 32), LatencyOptions(**options))
    cold = measure_latency(small_convnet(), (3, 32, 32), LatencyOptions(cold_l2=True, **options))
    assert cold.median_ms >= warm.median_ms * 0.95
