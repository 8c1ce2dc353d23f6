"""Run an ablation's points through the runner into the store, skipping what is already done."""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from tqdm import tqdm

from attnbench.config.ablation import Ablation
from attnbench.config.point import Point
from attnbench.run.runner import RunOptions, comparison_groups, grouped_measurements, run_point
from attnbench.run.runner import run_group as run_point_group
from attnbench.store.processes import run_in_workers
from attnbench.store.storage import store_errors
from attnbench.store.study import done_keys, fail_trial, finish_trial, open_study
from attnbench.store.workers import (
    DIED,
    grid_claims,
    group_claims,
    interrupted_here,
    keep_alive,
    last_trial_number,
    reap,
    recover,
)
from attnbench.train import EpochRecord


@dataclass(frozen=True)
class GridSummary:
    """What a grid run did."""

    total: int
    skipped: int
    completed: int
    failed: int
    interrupted_before: int
    seconds: float
    failed_labels: tuple[str, ...] = ()  # "backbone variant" of each point that failed in this run


def run_grid(
    ablation: Ablation,
    storage: str,
    options: RunOptions,
    *,
    progress: bool = True,
    run: Callable[[Point, RunOptions], dict] = run_point,
    on_point: Callable[[optuna.Study], None] | None = None,
    workers: int = 1,
    worker: int = 0,
    run_group: Callable[..., list] = run_point_group,
) -> GridSummary:
    """Measure every point not yet completed in the study named after the ablation.

    `on_point(study)` runs after each point is stored (completed or failed), e.g. to refresh a W&B table.
    With `workers` > 1 that many processes share the grid; several machines share it by running
    the same command on one storage (attnbench.store.workers says how no point runs twice).
    When a measurement compares the points of a group (paired latency), each worker claims and
    measures whole comparison groups through `run_group(points, options)` (attnbench.run.runner).
    """
    if workers != 1:
        parts = run_in_workers(run_grid, workers, ablation, storage, options, run=run, run_group=run_group,
                               local={"progress": progress, "on_point": on_point},
                               on_child_death=functools.partial(fail_dead_worker, storage, ablation.name))
        return GridSummary(parts[0].total, parts[0].skipped, sum(p.completed for p in parts), sum(p.failed for p in parts),
                           sum(p.interrupted_before for p in parts), max(p.seconds for p in parts),
                           tuple(label for p in parts for label in p.failed_labels))
    with store_errors(storage):
        return _run_here(ablation, storage, options, progress, run, on_point, worker, run_group)


def fail_dead_worker(storage: str, study_name: str, pid: int, how: str) -> None:
    """Fail the running trials of worker process `pid`, which just died, so a live worker takes their points."""
    reap(open_study(study_name, storage), pid=pid, reason=f"{DIED} (worker pid {pid} {how})")


def _run_here(ablation: Ablation, storage: str, options: RunOptions, progress: bool,
              run: Callable[[Point, RunOptions], dict], on_point: Callable[[optuna.Study], None] | None,
              worker: int, run_group: Callable[..., list] = run_point_group) -> GridSummary:
    started = time.perf_counter()
    study = open_study(ablation.name, storage, for_writing=True)
    interrupted = recover(study)
    since = last_trial_number(study)
    done = done_keys(study)
    pending = [p for p in ablation.points if p.key not in done]
    completed = 0
    failed: list[str] = []
    shown = progress and worker == 0
    bar = tqdm(total=len(pending), desc=ablation.name, unit="point", disable=not shown, dynamic_ncols=True)
    # on stderr (stdout carries the table), and under --quiet too: a run that waits must never look hung
    on_wait = (lambda message: bar.write(f"{ablation.name}: {message}", file=sys.stderr)) if worker == 0 else None
    grouped = bool(grouped_measurements(options))  # paired timing: whole comparison groups, each in one process
    try:
        for claimed in group_claims(study, comparison_groups(pending), since, on_wait=on_wait) if grouped else ():
            completed += _run_claimed_group(study, claimed, options, run_group, bar, on_point, failed)
        for point, trial in () if grouped else grid_claims(study, pending, since, on_wait=on_wait):
            label = f"{point.backbone} {point.variant_label()}"[:60]
            bar.set_postfix_str(label)
            try:
                with keep_alive(study, trial):
                    # per-epoch accuracy goes to the trial (Optuna's intermediate values), seed after seed
                    extra = {} if options.train is None else {"on_epoch": _epoch_reporter(trial, options, bar, label)}
                    result = run(point, options, **extra)
            except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (attnbench.store.processes.Terminated)
                fail_trial(study, trial, f"interrupted: {type(interruption).__name__}")
                raise
            except Exception as error:  # any failure is recorded with the point; the grid goes on
                fail_trial(study, trial, error)
                failed.append(label)
            else:
                finish_trial(study, trial, result)
                completed += 1
            if on_point is not None:
                on_point(study)
            bar.update(1)
    except KeyboardInterrupt as interruption:  # also a trial claimed a moment ago, its measurement not yet begun
        interrupted_here(study, interruption)
        raise
    bar.close()
    return GridSummary(len(ablation.points), len(ablation.points) - len(pending), completed, len(failed), interrupted,
                       time.perf_counter() - started, tuple(failed))


def _run_claimed_group(study: optuna.Study, claimed: list[tuple[Point, optuna.Trial]], options: RunOptions,
                       run_group: Callable[..., list], bar: tqdm, on_point: Callable[[optuna.Study], None] | None,
                       failed: list[str]) -> int:
    """Measure one claimed comparison group together and store each point on its own trial; how many completed."""
    points = [point for point, _ in claimed]
    trials = {point.key: trial for point, trial in claimed}
    labels = {p.key: f"{p.backbone} {p.variant_label()}"[:60] for p in points}
    bar.set_postfix_str(f"{points[0].backbone}: {len(points)} points timed together"[:60])
    extra = {} if options.train is None else {
        "on_epoch": lambda p: _epoch_reporter(trials[p.key], options, bar, labels[p.key])}
    try:
        with contextlib.ExitStack() as alive:
            for trial in trials.values():
                alive.enter_context(keep_alive(study, trial))
            results = run_group(points, options, **extra)
    except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM: every trial of the group is interrupted
        for trial in trials.values():
            fail_trial(study, trial, f"interrupted: {type(interruption).__name__}")
        raise
    except Exception as error:  # the group's run itself broke: each of its points fails with that error
        results = [error] * len(points)
    completed = 0
    for point, result in zip(points, results):
        if isinstance(result, BaseException):
            fail_trial(study, trials[point.key], result)
            failed.append(labels[point.key])
        else:
            finish_trial(study, trials[point.key], result)
            completed += 1
        if on_point is not None:
            on_point(study)
        bar.update(1)
    return completed


def _epoch_reporter(trial: optuna.Trial, options: RunOptions, bar: tqdm, label: str) -> Callable[[int, EpochRecord], None]:
    """Report each epoch's validation top-1 at step seed_index * epochs + epoch, and show seed and epoch on the bar."""
    assert options.train is not None
    epochs, seeds = options.train.config.epochs, len(options.train.seeds)

    def report(seed_index: int, record: EpochRecord) -> None:
        trial.report(record.val_top1, seed_index * epochs + record.epoch)
        bar.set_postfix_str(f"{label} seed {seed_index + 1}/{seeds} epoch {record.epoch}/{epochs} top-1 {record.val_top1:.1f}")

    return report
