"""Paired, interleaved latency: the change statistics, the rounds, the runner's groups and the grid's group claims."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from attnbench.config.ablation import parse_ablation
from attnbench.config.point import make_point
from attnbench.core.errors import ConfigError
from attnbench.measure.latency import LatencyOptions
from attnbench.measure.paired import AA, PairedOptions, measure_paired, paired_change, rounds_for, sequential_change
from attnbench.run.columns import declared
from attnbench.run.measurements import MEASUREMENTS
from attnbench.run.measurements.latency import group_key
from attnbench.run.runner import comparison_groups, grouped_measurements, parse_options, run_group, run_point
from attnbench.store.grid import run_grid
from attnbench.store.study import open_study, trial_rows
from attnbench.store.workers import GROUP_RELEASED, group_claims

CHANGE_KEYS = ("latency_change_pct", "latency_change_ci_low_pct", "latency_change_ci_high_pct")
AA_KEYS = ("latency_aa_change_pct", "latency_aa_change_ci_low_pct", "latency_aa_change_ci_high_pct")
TINY = {"warmup": 1, "repeats": 4, "rounds": 2, "slots": False}
GRID = {
    "name": "paired",
    "backbones": [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}],
    "batch_sizes": [1, 2],
    "variants": [{"module": "se"}, {"module": "eca"}],
    "measure": {"latency": TINY},
}


def test_change_of_a_constant_ratio_is_exact() -> None:
    baseline = [10.0, 12.0, 9.0, 11.0, 30.0]  # drift between rounds does not matter to a paired ratio
    change = paired_change([1.05 * b for b in baseline], baseline)
    assert change.pct == pytest.approx(5.0)
    assert change.ci_low_pct == pytest.approx(5.0) and change.ci_high_pct == pytest.approx(5.0)
    assert change.rounds == 5 and not change.includes_zero()


def test_change_is_the_median_ratio_and_its_interval_covers_it() -> None:
    rng = random.Random(1)
    baseline = [10 + rng.random() for _ in range(40)]
    variant = [b * (1.02 + rng.gauss(0, 0.01)) for b in baseline]
    change = paired_change(variant, baseline)
    ratios = sorted(v / b for v, b in zip(variant, baseline))
    assert change.pct == pytest.approx(100 * ((ratios[19] + ratios[20]) / 2 - 1))
    assert change.ci_low_pct < change.pct < change.ci_high_pct
    assert 1.0 < change.ci_low_pct and change.ci_high_pct < 3.0


def test_paired_change_refuses_unpaired_rounds() -> None:
    with pytest.raises(ValueError):
        paired_change([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_change([1.0], [1.0])


def test_sequential_change_is_the_ratio_of_medians() -> None:
    change = sequential_change([2.0, 2.2, 2.1], [1.0, 1.1, 1.05])
    assert change.pct == pytest.approx(100.0)
    assert change.ci_low_pct <= change.pct <= change.ci_high_pct


def test_rounds_spread_the_repeats() -> None:
    paired = rounds_for(LatencyOptions(repeats=50), 10)
    assert (paired.rounds, paired.per_round) == (10, 5)
    assert (rounds_for(LatencyOptions(repeats=3), 10).rounds, rounds_for(LatencyOptions(repeats=3), 10).per_round) == (3, 1)
    default = rounds_for(LatencyOptions(repeats=50))  # one forward per model per round
    assert (default.rounds, default.per_round, default.round_warmup) == (50, 1, 0)


@pytest.mark.parametrize("field, value", [("rounds", 1), ("per_round", 0), ("round_warmup", -1), ("resamples", 5)])
def test_bad_paired_options_name_their_key(field: str, value: int) -> None:
    with pytest.raises(ConfigError) as caught:
        PairedOptions(**{field: value}).validate()
    assert caught.value.key == field


class Logged(nn.Module):
    """A model that notes each forward in a log shared by all (a class attribute: copies share it too)."""

    log: list[str] = []

    def __init__(self, name: str, log: list[str] | None = None) -> None:
        super().__init__()
        self.name = name
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Logged.log.append(self.name)
        return x * self.scale


def test_rounds_visit_every_member_in_a_fresh_order() -> None:
    Logged.log.clear()
    log = Logged.log
    models = {name: Logged(name) for name in ("base", "a", "b")}
    paired = PairedOptions(rounds=12, per_round=2, round_warmup=1, seed=3)
    result = measure_paired(models, "base", (4,), LatencyOptions(warmup=1), paired)
    assert result.rounds == 12 and set(result.members) == {"base", "a", "b", AA}
    timed = log[4:]  # after one warm-up forward each (the A/A copy logs as "base" too)
    turns = [timed[i:i + 3] for i in range(0, len(timed), 3)]  # round_warmup + per_round forwards per turn
    assert all(len(set(turn)) == 1 for turn in turns)
    rounds = [[turn[0] for turn in turns[r * 4:(r + 1) * 4]] for r in range(12)]
    assert all(sorted(order) == ["a", "b", "base", "base"] for order in rounds)
    assert len({tuple(order) for order in rounds}) > 1  # not the same order every round
    assert all(len(result.per_round_ms[name]) == 12 for name in result.members)
    assert all(result.members[name].samples == 24 for name in result.members)
    assert set(result.changes) == {"a", "b", AA} and result.aa is result.changes[AA]


def test_the_aa_copy_has_the_baselines_weights_in_its_own_memory() -> None:
    base = Logged("base")
    with torch.no_grad():
        base.scale.fill_(3.0)
    result = measure_paired({"base": base}, "base", (4,), LatencyOptions(warmup=0), PairedOptions(rounds=2, per_round=1))
    assert set(result.changes) == {AA}
    assert base.scale.item() == 3.0  # the baseline itself is untouched


class Sleepy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return x


def test_min_time_adds_rounds() -> None:
    models = {"base": Sleepy(), "v": Sleepy()}
    result = measure_paired(models, "base", (4,), LatencyOptions(warmup=0, min_time_s=0.02),
                            PairedOptions(rounds=2, per_round=1, round_warmup=0))
    assert result.rounds > 2
    assert min(sum(result.members[n].times_ms) for n in result.members) >= 20.0


def test_columns_are_declared_by_the_latency_plugin() -> None:
    keys = {column.key for column in MEASUREMENTS.get("latency", "measurement").columns}
    assert set(CHANGE_KEYS + AA_KEYS) <= keys
    assert set(CHANGE_KEYS + AA_KEYS) <= set(declared())


def test_paired_is_the_default_and_false_keeps_sequential() -> None:
    assert grouped_measurements(parse_options({"latency": True}, None, "cpu")) == ["latency"]
    assert grouped_measurements(parse_options({"latency": {"paired": False}}, None, "cpu")) == []
    assert grouped_measurements(parse_options({}, None, "cpu")) == []


@pytest.mark.parametrize("value, key", [({"paired": "yes"}, "measure.latency.paired"), ({"rounds": 1}, "measure.latency.rounds"),
                                        ({"rounds": True}, "measure.latency.rounds")])
def test_bad_pairing_settings_name_their_key(value: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_options({"latency": value}, None, "cpu")
    assert caught.value.key == key


def test_groups_put_the_baseline_first() -> None:
    points = parse_ablation(GRID).points
    groups = comparison_groups(list(reversed(points)))
    assert len(groups) == 2
    for group in groups:
        assert group[0].attention == "none" and len({group_key(p) for p in group}) == 1


def test_run_group_writes_changes_and_the_aa_control() -> None:
    points = [p for p in parse_ablation(GRID).points if p.batch_size == 2]
    options = parse_options(GRID["measure"], None, "cpu").validate(tuple(points))
    rows = run_group(points, options)
    by_module = {p.attention: row for p, row in zip(points, rows)}
    assert all(isinstance(row, dict) for row in rows)
    assert all(row["latency_method"] == "paired" and row["latency_rounds"] == 2 for row in rows)
    assert all(row["latency_group_size"] == 4 and row["batch_size_used"] == 2 for row in rows)
    for name in ("se", "eca"):
        low, value, high = (by_module[name][k] for k in ("latency_change_ci_low_pct", "latency_change_pct",
                                                           "latency_change_ci_high_pct"))
        assert low <= value <= high and not any(k in by_module[name] for k in AA_KEYS)
    assert all(k in by_module["none"] for k in AA_KEYS) and not any(k in by_module["none"] for k in CHANGE_KEYS)
    single = run_point(points[1], parse_options({"latency": {**TINY, "paired": False}}, None, "cpu"))
    assert single["latency_method"] == "sequential" and "latency_change_pct" not in single
    counts = ("params", "macs", "flops", "flop_counter_flops", "elementwise_flops")
    assert all(single[k] == by_module[points[1].attention][k] for k in counts)


def test_run_group_without_its_baseline_builds_one() -> None:
    points = [p for p in parse_ablation(GRID).points if p.batch_size == 1 and p.attention != "none"]
    rows = run_group(points, parse_options(GRID["measure"], None, "cpu"))
    baseline = make_point("cifar_resnet20", "none", input_size=8, num_classes=10)
    assert all(row["latency_baseline_key"] == baseline.key and "latency_change_pct" in row for row in rows)


def test_a_point_that_fails_leaves_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.run.measurements import base

    points = [p for p in parse_ablation(GRID).points if p.batch_size == 1]
    real = base.build_point_model

    def broken(point, seed=0):
        if point.attention == "eca":
            raise RuntimeError("eca will not build")
        return real(point, seed)

    monkeypatch.setattr(base, "build_point_model", broken)
    rows = run_group(points, parse_options(GRID["measure"], None, "cpu"))
    by_module = {p.attention: row for p, row in zip(points, rows)}
    assert isinstance(by_module["eca"], RuntimeError)
    assert "latency_change_pct" in by_module["se"] and "latency_aa_change_pct" in by_module["none"]


def fake_group(points, options, **_):
    """Rows from a formula, noting which process measured which group."""
    log = Path(os.environ["PAIRED_TEST_LOG"])
    with log.open("a") as out:
        out.write(f"{os.getpid()} {' '.join(sorted(p.key for p in points))}\n")
    return [{"macs": 1000 + i, "latency_median_ms": 1.0, "latency_method": "paired"} for i, _ in enumerate(points)]


def test_the_grid_stores_one_trial_per_point_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ablation = parse_ablation(GRID)
    storage = f"journal:{tmp_path / 'store.journal'}"
    options = parse_options(GRID["measure"], None, "cpu")
    monkeypatch.setenv("PAIRED_TEST_LOG", str(tmp_path / "log"))
    calls = []

    def interrupted(points, options, **_):
        calls.append(len(points))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the second group
        return fake_group(points, options)

    with pytest.raises(KeyboardInterrupt):
        run_grid(ablation, storage, options, progress=False, run_group=interrupted)
    study = open_study("paired", storage)
    states = sorted(t.state.name for t in study.get_trials())
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 3
    summary = run_grid(ablation, storage, options, progress=False, run_group=fake_group)
    assert (summary.completed, summary.skipped, summary.failed) == (3, 3, 0)
    complete = [t for t in open_study("paired", storage).get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len({t.user_attrs["point_key"] for t in complete}) == 6
    assert len(trial_rows(open_study("paired", storage))) >= 6


def test_a_group_begun_elsewhere_is_left_to_it(tmp_path: Path) -> None:
    ablation = parse_ablation(GRID)
    study = open_study("paired", f"journal:{tmp_path / 'store.journal'}", for_writing=True)
    groups = comparison_groups(ablation.points)
    first = group_claims(study, groups, -1)
    claimed = next(first)
    assert [p.key for p, _ in claimed] == [p.key for p in groups[0]]
    second = next(group_claims(study, groups, -1))  # another worker: the first group is running
    assert [p.key for p, _ in second] == [p.key for p in groups[1]]


def test_a_claim_lost_half_way_gives_the_group_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.store import workers

    ablation = parse_ablation(GRID)
    study = open_study("paired", f"journal:{tmp_path / 'store.journal'}", for_writing=True)
    group = comparison_groups(ablation.points)[0]
    real, attempts = workers.claim, []

    def racing(study, point, since):
        attempts.append(point.key)
        if len(attempts) == 2:
            return None  # a rival took the second point a moment ago (and gave it up again)
        return real(study, point, since)

    monkeypatch.setattr(workers, "claim", racing)
    monkeypatch.setattr(workers.time, "sleep", lambda seconds: None)
    claimed = next(group_claims(study, [group], -1))
    assert [p.key for p, _ in claimed] == [p.key for p in group]  # claimed again, whole
    released = [t for t in study.get_trials() if t.user_attrs.get(GROUP_RELEASED)]
    assert [t.state for t in released] == [TrialState.PRUNED]  # the first claim, given back
