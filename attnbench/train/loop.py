"""The short training loop: SGD/AdamW, cosine or one-cycle schedule with warm-up, AMP, per-epoch records.

`train_model` trains in place and returns per-epoch records. A non-finite loss
ends the run with `failed=True` instead of an exception; an exception from the
`on_epoch` callback (e.g. a pruning signal) propagates unchanged.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from attnbench.core.checks import check_int, check_number
from attnbench.core.errors import ConfigError
from attnbench.core.precision import PRECISIONS, autocast_dtype
from attnbench.train.augment import BatchAugment
from attnbench.train.data import LoadedData
from attnbench.train.seeds import deterministic, seed_everything

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle")
ONECYCLE_WARMUP = 0.3  # share of training spent rising when warm-up is left to the schedule (torch's pct_start)
ONECYCLE_START = 1 / 25  # one-cycle starts at lr/25 (Smith & Topin, arXiv 1708.07120; torch's div_factor)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one short training run; validated on construction."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = False
    weight_decay: float = 5e-4  # never applied to norm weights and biases
    schedule: str = "cosine"
    warmup_epochs: float | None = None  # None: 0 for cosine, 30% of training for onecycle
    label_smoothing: float = 0.0
    amp: str = "fp32"  # fp32 (no autocast), or bf16 / fp16 under autocast ("none" is read as fp32)
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None  # max global gradient norm
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1, allowed="an integer >= 1")
        check_int("batch_size", self.batch_size, 1, allowed="an integer >= 1")
        check_int("seed", self.seed, 0, allowed="an integer >= 0")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if self.amp == "none":  # the spelling of earlier versions
            object.__setattr__(self, "amp", "fp32")
        _check_choice("amp", self.amp, tuple(PRECISIONS))
        check_number("lr", self.lr, 0, math.inf, "a number > 0", low_open=True)
        check_number("momentum", self.momentum, 0, 1, "a number in [0, 1)", high_open=True)
        check_number("weight_decay", self.weight_decay, 0, math.inf, "a number >= 0")
        check_number("label_smoothing", self.label_smoothing, 0, 1, "a number in [0, 1)", high_open=True)
        if self.warmup_epochs is not None:
            check_number("warmup_epochs", self.warmup_epochs, 0, self.epochs, f"None or a number in [0, epochs={self.epochs})",
                         high_open=True)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0, math.inf, "None or a number > 0", low_open=True)
        for key in ("nesterov", "channels_last", "compile", "deterministic"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, getattr(self, key), "true or false")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov", self.nesterov, "true only with optimizer sgd and momentum > 0")

    @property
    def resolved_warmup_epochs(self) -> float:
        """Warm-up length in epochs, the schedule's default filled in."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return ONECYCLE_WARMUP * self.epochs if self.schedule == "onecycle" else 0.0


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's measurements; accuracies in percent."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's batches, weighted by batch size, with label smoothing
    val_loss: float  # plain cross-entropy
    val_top1: float
    val_top5: float | None  # None below 5 classes
    lr: float  # of the epoch's last optimizer step
    epoch_time_s: float  # training and validation
    images_per_s: float  # training throughput

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for trackers and stores."""
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of `train_model`: the epoch records, and why it stopped if it failed."""

    epochs: list[EpochRecord] = field(default_factory=list)
    failed: bool = False
    error: str | None = None
    nondeterministic_ops: list[str] = field(default_factory=list)  # seen in deterministic mode
    total_time_s: float = 0.0

    @property
    def final(self) -> EpochRecord | None:
        """The last completed epoch."""
        return self.epochs[-1] if self.epochs else None

    @property
    def best_top1(self) -> float | None:
        """The highest validation top-1 over epochs."""
        return max((r.val_top1 for r in self.epochs), default=None)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr before optimizer step `step` (0-based) of `total_steps`.

    cosine: linear warm-up (step+1)/warmup, then 0.5·(1 + cos(π·t)), t the fraction of the rest done.
    onecycle: linear from 1/25 up to 1 over the warm-up, then linear down to 0 at the end.
    """
    if step < warmup_steps:
        rise = (step + 1) / warmup_steps
        return rise if schedule == "cosine" else ONECYCLE_START + (1 - ONECYCLE_START) * rise
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - progress


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weight decay on weight matrices and kernels, none on 1-D parameters (norm weights, biases)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `config` names, over `param_groups`."""
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def train_model(
    model: nn.Module,
    data: LoadedData | tuple,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `data` = (train, val, info) and validate after every epoch."""
    device = torch.device(device)
    train, val, info = data
    train, val = train.to(device), val.to(device)
    result = TrainResult()
    start = time.perf_counter()
    with deterministic(config.deterministic) as report:
        seed_everything(config.seed)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
        # compiling a module gives a module (OptimizedModule), whatever torch.compile's annotation says
        forward = cast(nn.Module, torch.compile(model)) if config.compile else model
        optimizer = build_optimizer(model, config)
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        warmup_steps = round(config.resolved_warmup_epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(config.schedule, min(step, total_steps - 1), total_steps, warmup_steps))
        augment = BatchAugment(info.mean, info.std, info.augment, device, config.channels_last)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" and device.type == "cuda" else None
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            for images, labels in train.batches(config.batch_size, generator):
                with _autocast(config.amp, device):
                    loss = criterion(forward(augment.train(images, generator)), labels)
                optimizer.zero_grad(set_to_none=True)
                _step(loss, model, optimizer, scaler, config.grad_clip)
                last_lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                loss_sum += loss.detach().float() * labels.shape[0]
            train_loss = loss_sum.item() / len(train)  # the epoch's only host sync in training
            train_time = time.perf_counter() - epoch_start
            if not math.isfinite(train_loss):
                return _failed(result, f"non-finite training loss ({train_loss}) in epoch {epoch}", report, start)
            val_loss, top1, top5 = evaluate(forward, val, augment, info.num_classes, config, device)
            if not math.isfinite(val_loss):
                return _failed(result, f"non-finite validation loss ({val_loss}) after epoch {epoch}", report, start)
            record = EpochRecord(epoch, train_loss, val_loss, top1, top5, last_lr,
                                 time.perf_counter() - epoch_start, len(train) / train_time)
            result.epochs.append(record)
            if on_epoch is not None:
                on_epoch(record)
        result.nondeterministic_ops = list(report.nondeterministic_ops)
    result.total_time_s = time.perf_counter() - start
    return result


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, augment: BatchAugment, num_classes: int,
             config: TrainConfig, device: torch.device) -> tuple[float, float, float | None]:
    """Validation cross-entropy, top-1 and top-5 (None below 5 classes), accuracies in percent."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, dtype=torch.long, device=device)
    k = 5 if num_classes >= 5 else 1
    for images, labels in split.batches(config.batch_size):
        with _autocast(config.amp, device):
            logits = model(augment.normalize(images))
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        hits = logits.topk(k, dim=1).indices == labels[:, None]
        correct += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
    top1, top5 = (100 * c / len(split) for c in correct.tolist())
    return loss_sum.item() / len(split), top1, (top5 if k == 5 else None)


def _step(loss: Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler | None, grad_clip: float | None) -> None:
    if scaler is None:
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _autocast(amp: str, device: torch.device) -> Any:
    dtype = autocast_dtype(amp)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _failed(result: TrainResult, error: str, report: Any, start: float) -> TrainResult:
    result.failed, result.error = True, error
    result.nondeterministic_ops = list(report.nondeterministic_ops)
    result.total_time_s = time.perf_counter() - start
    return result


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, value, "one of " + ", ".join(choices))


