"""The training loop, seeds and deterministic mode, and statistics over seeds."""
from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.train import (
    DataSpec,
    TensorSplit,
    TrainConfig,
    deterministic,
    load_dataset,
    lr_factor,
    param_groups,
    seed_everything,
    summarize,
    t_critical,
    train_model,
)
from attnbench.train.augment import BatchAugment
from attnbench.train.loop import evaluate


def _convnet(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes),
    )


def _synthetic(samples: int = 96, classes: int = 10):
    return load_dataset(DataSpec("synthetic", image_size=8, synthetic_samples=samples, num_classes=classes))


def test_one_epoch_on_digits_lowers_the_loss() -> None:
    data = load_dataset(DataSpec(image_size=16))
    seed_everything(0)
    model = _convnet()
    config = TrainConfig(epochs=1, batch_size=32, lr=0.2)
    augment = BatchAugment(data.info.mean, data.info.std, None, "cpu")
    before, _, _ = evaluate(model, data.val, augment, 10, config, torch.device("cpu"))
    result = train_model(model, data, config)
    record = result.final
    assert not result.failed and len(result.epochs) == 1
    # Chance is ln(10) = 2.30 and 10 %; seeds 0-4 reach 1.43-1.63 and 44-59 %.
    assert before > 2.2 and record.val_loss < before - 0.5
    assert record.val_top1 > 30 and record.val_top5 >= record.val_top1
    assert record.images_per_s > 0 and record.epoch_time_s > 0


class _NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3))) * float("nan")


@pytest.mark.parametrize("model, config", [
    (_NaNModel, TrainConfig(epochs=3, batch_size=32)),
    (_convnet, TrainConfig(epochs=3, batch_size=32, lr=1e6)),
])
def test_non_finite_loss_fails_without_raising(model, config) -> None:
    seen = []
    result = train_model(model(), _synthetic(), config, on_epoch=seen.append)
    assert result.failed and "non-finite" in result.error
    assert len(seen) == len(result.epochs) < 3


def _train_twice(seed_a: int, seed_b: int) -> tuple[dict, dict]:
    data = _synthetic(samples=64)
    states = []
    for seed in (seed_a, seed_b):
        seed_everything(0)  # same initial weights; the run's own seed drives order and augmentation
        model = _convnet()
        train_model(model, data, TrainConfig(epochs=2, batch_size=16, seed=seed, deterministic=True))
        states.append(model.state_dict())
    return states[0], states[1]


def test_same_seed_reproduces_bit_exactly_on_cpu() -> None:
    a, b = _train_twice(3, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c, d = _train_twice(3, 4)
    assert not all(torch.equal(c[k], d[k]) for k in c)


def test_callback_gets_every_epoch_and_its_exception_propagates() -> None:
    class Pruned(Exception):
        pass

    seen = []
    result = train_model(_convnet(), _synthetic(), TrainConfig(epochs=2, batch_size=32), on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2] and seen == result.epochs

    def prune(record) -> None:
        raise Pruned(record.epoch)

    with pytest.raises(Pruned):
        train_model(_convnet(), _synthetic(), TrainConfig(epochs=2, batch_size=32), on_epoch=prune)


def test_top5_only_from_five_classes() -> None:
    result = train_model(_convnet(3), _synthetic(classes=3), TrainConfig(epochs=1, batch_size=32))
    assert result.final.val_top5 is None


class _Lookup(nn.Module):
    """Returns fixed logits for the sample whose index the image encodes (pixel value = index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].round().long()]


def test_evaluate_matches_hand_computed_metrics() -> None:
    logits = torch.tensor([
        [5.0, 4, 3, 2, 1, 0],  # label 0: top-1
        [5.0, 4, 3, 2, 1, 0],  # label 4: top-5 only
        [5.0, 4, 3, 2, 1, 0],  # label 5: miss
        [0.0, 0, 0, 0, 0, 9],  # label 5: top-1
    ])
    labels = torch.tensor([0, 4, 5, 5])
    split = TensorSplit(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2), labels)
    augment = BatchAugment((0.0,) * 3, (1.0,) * 3, None, "cpu")
    loss, top1, top5 = evaluate(_Lookup(logits), split, augment, 6, TrainConfig(batch_size=3), torch.device("cpu"))
    expected = sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits.tolist(), labels.tolist())) / 4
    assert (top1, top5) == (50.0, 75.0)
    assert loss == pytest.approx(expected, rel=1e-6)


def test_lr_factor_formulas() -> None:
    total, warm = 100, 10
    assert [lr_factor("cosine", s, total, warm) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor("cosine", 10, total, warm) == pytest.approx(1.0)
    assert lr_factor("cosine", 55, total, warm) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor("cosine", 99, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor("onecycle", 0, total, warm) == pytest.approx(1 / 25 + (24 / 25) * 0.1)
    assert lr_factor("onecycle", 9, total, warm) == pytest.approx(1.0)
    assert lr_factor("onecycle", 55, total, warm) == pytest.approx(0.5)


def test_schedule_drives_the_optimizer() -> None:
    data = _synthetic(samples=80)  # 64 train images: 4 steps of 16 per epoch
    seen = []
    train_model(_convnet(), data, TrainConfig(epochs=2, batch_size=16, lr=0.2, warmup_epochs=1), on_epoch=seen.append)
    # The last step of epoch 1 ends the warm-up (factor 1); epoch 2's last is step 7 of cosine over 4 steps.
    assert seen[0].lr == pytest.approx(0.2)
    assert seen[1].lr == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))


def test_weight_decay_spares_norm_weights_and_biases() -> None:
    model = _convnet()
    decay, no_decay = param_groups(model, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "3.weight", "7.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["1.bias", "1.weight", "3.bias", "7.bias"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)


def test_grad_clip_bounds_the_update() -> None:
    seed_everything(0)
    model = _convnet()
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(epochs=1, batch_size=16, lr=0.1, weight_decay=0.0, grad_clip=1e-6)
    train_model(model, _synthetic(samples=80), config)
    # 4 SGD steps, each moving by lr·v with |v| <= (1 + 0.9 + 0.81 + ...)·clip < 10·clip.
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    assert 0 < moved < 4 * 0.1 * 10 * 1e-6


def test_bf16_autocast_channels_last_label_smoothing_run_on_cpu() -> None:
    config = TrainConfig(epochs=1, batch_size=32, amp="bf16", channels_last=True, label_smoothing=0.1,
                         optimizer="adamw", lr=1e-3, schedule="onecycle")
    result = train_model(_convnet(), _synthetic(), config)
    assert not result.failed and math.isfinite(result.final.train_loss)


@pytest.mark.parametrize("fields, key", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "lamb"}, "optimizer"),
    ({"schedule": "step"}, "schedule"),
    ({"amp": "fp8"}, "amp"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"warmup_epochs": 10}, "warmup_epochs"),
    ({"grad_clip": 0.0}, "grad_clip"),
    ({"compile": "yes"}, "compile"),
    ({"optimizer": "adamw", "nesterov": True}, "nesterov"),
])
def test_bad_train_config_names_key_and_value(fields: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(**fields)
    assert error.value.key == key and str(error.value).startswith(f"{key}={fields[key]!r}")


_TORCH_WORDING = ("adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, but you set "
                  "'torch.use_deterministic_algorithms(True, warn_only=True)'.")


def test_deterministic_sets_flags_collects_warnings_and_restores() -> None:
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    with deterministic(True) as report:
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        for _ in range(2):
            warnings.warn(_TORCH_WORDING, UserWarning, stacklevel=2)
        with pytest.warns(UserWarning, match="unrelated"):
            warnings.warn("unrelated", UserWarning, stacklevel=2)
    assert report.nondeterministic_ops == ["adaptive_max_pool2d_backward_cuda"]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == saved


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_adaptive_max_pool_backward_is_reported() -> None:
    x = torch.randn(2, 4, 8, 8, device="cuda", requires_grad=True)
    with deterministic(True) as report:
        nn.functional.adaptive_max_pool2d(x, 1).sum().backward()
    assert any("adaptive_max_pool2d" in op for op in report.nondeterministic_ops)


def test_t_critical_matches_tables() -> None:
    # Two-sided 95% values from standard Student-t tables.
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert t_critical(dof) == pytest.approx(value, abs=5e-4)
    assert t_critical(4, 0.99) == pytest.approx(4.604, abs=5e-4)


def test_summarize_mean_sample_std_and_interval() -> None:
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary.mean == 3.0 and summary.std == pytest.approx(math.sqrt(2.5))  # ddof=1
    assert summary.half_width == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5))
    assert summary.ci_low < 3.0 < summary.ci_high
    assert summary.format(1) == "3.0 ± 1.6"
    single = summarize([71.5])
    assert single.n == 1 and math.isnan(single.std) and single.format() == "71.50"
    with pytest.raises(ValueError):
        summarize([])
