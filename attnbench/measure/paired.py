"""Paired, interleaved latency: a baseline and its variants timed in alternating rounds, changes with bootstrap intervals.

Timing each model on its own, one after another, lets drift in the machine's speed (another
process, clocks, the allocator and caches still growing early in a process) land between the
baseline's timing and a variant's, with the size of the overheads being measured. Here every
member of one comparison group (the baseline, its variants and an A/A copy of the baseline) is
made ready at once, and then timed in `rounds` rounds; each round visits every member once, in
a fresh random order, and takes `per_round` timed forwards of it (by default one: many short
rounds). Drift slower than a round hits every member of the round alike and cancels in the
per-round ratios; every turn follows another model's forward, so no member meets warmer caches
than the others. On the 2-core CPU machine, 100 rounds of one forward gave an A/A interval a
third as wide as 20 rounds of five forwards, for the same number of forwards.

- A member's per-round figure is the median of its forwards in that round.
- A variant's change against the baseline is the median over rounds of its per-round ratio to
  the baseline, as a percentage: `100 * (median_r(v_r / b_r) - 1)`.
- Its 95 % interval: the 2.5th and 97.5th percentiles of that median over `resamples` bootstrap
  resamples of the rounds (rounds drawn with replacement: each round is one pair).
- The A/A change is the same figure for a second copy of the baseline (same weights, its own
  memory): the noise floor of the run; a method that works reports it near zero with an
  interval covering zero.

The sequential method is here too, for comparison (`sequential_change`): the two medians of
separately timed runs, with a bootstrap interval resampling each run's forwards independently.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.measure.latency import (
    LatencyOptions,
    LatencyResult,
    Timed,
    check_input_shape,
    fixed_threads,
    latency_result,
    timing_context,
)
from attnbench.measure.stats import percentile

CONFIDENCE = 0.95
RESAMPLES = 2000
AA = "baseline (A/A copy)"  # the member name of the baseline's second copy


@dataclass(frozen=True)
class Change:
    """A latency change against the baseline in percent, with its bootstrap interval and what it rests on."""

    pct: float
    ci_low_pct: float
    ci_high_pct: float
    rounds: int

    def includes_zero(self) -> bool:
        """Whether the interval covers no change."""
        return self.ci_low_pct <= 0.0 <= self.ci_high_pct


@dataclass(frozen=True)
class PairedResult:
    """Paired timing of one group: each member's timing, per-round figures, and the changes against the baseline."""

    baseline: str
    members: dict[str, LatencyResult]  # every forward of each member, pooled over rounds (the usual statistics)
    per_round_ms: dict[str, tuple[float, ...]]  # each member's median per round, in round order
    changes: dict[str, Change]  # by variant name (not the baseline); the A/A copy under AA when timed
    rounds: int
    per_round: int

    @property
    def aa(self) -> Change | None:
        """The A/A control's change: the run's noise floor."""
        return self.changes.get(AA)


@dataclass(frozen=True)
class PairedOptions:
    """How many rounds and forwards per round; the timing itself follows a LatencyOptions."""

    rounds: int = 50
    per_round: int = 1
    round_warmup: int = 0  # untimed forwards at the start of each member's turn
    aa: bool = True
    seed: int = 0  # the round orders and the bootstrap
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE

    def validate(self) -> None:
        """ConfigError naming the first field out of range."""
        for key, low in (("rounds", 2), ("per_round", 1), ("round_warmup", 0), ("resamples", 100)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(key, value, f"an integer >= {low}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError("confidence", self.confidence, "a level in [0.5, 1)")


def rounds_for(options: LatencyOptions, rounds: int | None = None) -> PairedOptions:
    """Paired options spending `options.repeats` timed forwards per member (at least) over `rounds` rounds.

    `rounds=None`: one round per timed forward (the most rounds: drift has the least room).
    """
    rounds = max(2, options.repeats if rounds is None else min(rounds, options.repeats))
    return PairedOptions(rounds=rounds, per_round=max(1, -(-options.repeats // rounds)), seed=options.seed)


def median(values: Sequence[float]) -> float:
    """The median (numpy's interpolation)."""
    return percentile(list(values), 50.0)


def paired_change(variant: Sequence[float], baseline: Sequence[float], *, resamples: int = RESAMPLES,
                  confidence: float = CONFIDENCE, seed: int = 0) -> Change:
    """The median per-round ratio of `variant` to `baseline` as a change in percent, with a bootstrap interval over rounds."""
    if len(variant) != len(baseline) or len(variant) < 2:
        raise ValueError(f"paired rounds differ or are too few: {len(variant)} and {len(baseline)}")
    ratios = np.asarray(variant, dtype=float) / np.asarray(baseline, dtype=float)
    n = len(ratios)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    medians = np.median(ratios[draws], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return Change(100 * (float(np.median(ratios)) - 1), 100 * (float(low) - 1), 100 * (float(high) - 1), n)


def sequential_change(variant: Sequence[float], baseline: Sequence[float], *, resamples: int = RESAMPLES,
                      confidence: float = CONFIDENCE, seed: int = 0) -> Change:
    """The ratio of two separately timed runs' medians as a change in percent, each run's forwards bootstrapped on their own."""
    rng = np.random.default_rng(seed)

    def resampled(values: Sequence[float]) -> np.ndarray:
        array = np.asarray(values, dtype=float)
        return np.median(array[rng.integers(0, len(array), size=(resamples, len(array)))], axis=1)

    ratios = resampled(variant) / resampled(baseline)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return Change(100 * (median(variant) / median(baseline) - 1), 100 * (float(low) - 1), 100 * (float(high) - 1),
                  min(len(variant), len(baseline)))


def measure_paired(models: Mapping[str, nn.Module], baseline: str, input_shape: Sequence[int],
                   options: LatencyOptions, paired: PairedOptions | None = None) -> PairedResult:
    """Time every model of one group in interleaved rounds under `options`; changes of each against `baseline`.

    All models are timed at the same batch, dtype, layout and device, and must be ready on the
    device together. With `paired.aa`, a deep copy of the baseline joins as the A/A control.
    Models are moved to the device in place, as `measure_latency` does.
    """
    paired = paired or PairedOptions(seed=options.seed)
    paired.validate()
    options.validate()
    shape = check_input_shape(input_shape)
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models ({', '.join(models)})")
    members = dict(models)
    if paired.aa:
        members[AA] = copy.deepcopy(models[baseline])
    names = list(members)
    rng = random.Random(paired.seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    with fixed_threads(options.threads) as threads, timing_context(options):
        ready = {name: Timed(members[name], shape, options) for name in names}
        entered: list[Timed] = []
        try:
            for name in names:
                entered.append(ready[name].__enter__())
            for name in rng.sample(names, len(names)):
                ready[name].warm(options.warmup)
            done = 0
            while done < paired.rounds or min(sum(samples[n]) for n in names) < options.min_time_s * 1e3:
                for name in rng.sample(names, len(names)):
                    ready[name].warm(paired.round_warmup)
                    times = ready[name].sample(paired.per_round)
                    samples[name] += times
                    per_round[name].append(median(times))
                done += 1
        finally:
            for timed in reversed(entered):
                timed.__exit__(None, None, None)
    changes = {name: paired_change(per_round[name], per_round[baseline], resamples=paired.resamples,
                                   confidence=paired.confidence, seed=paired.seed + index)
               for index, name in enumerate(names) if name != baseline}
    return PairedResult(
        baseline=baseline,
        members={name: latency_result(samples[name], threads, shape, options) for name in names},
        per_round_ms={name: tuple(values) for name, values in per_round.items()},
        changes=changes,
        rounds=done,
        per_round=paired.per_round,
    )
