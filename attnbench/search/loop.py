"""The search loop: ask for a trial, sample its point, run it (measure, and train for accuracy), tell; until enough.

Several workers (processes, machines) run this loop on one study. `trials` counts the
study's finished trials, whoever ran them: completed, pruned, and failed with an error.
A trial interrupted by its worker's death does not count: it is queued again with the same
parameters (a stale heartbeat, or a dead process on this machine) and the next free
worker runs it. Two workers that both see one trial left may both start one (Optuna's
documented race), so a study can end up to workers - 1 trials over.
"""
from __future__ import annotations

import functools
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from attnbench.config.point import Point
from attnbench.core.checks import check_int
from attnbench.core.errors import ConfigError
from attnbench.run.measurements import EpochCallback
from attnbench.run.runner import RunOptions, run_point
from attnbench.search.objectives import metric_value, pruning_callback, set_constraints
from attnbench.search.samplers import make_pruner, make_sampler
from attnbench.search.setup import SearchSetup
from attnbench.store.processes import run_in_workers, signals_held
from attnbench.store.storage import ask, open_storage, retry_callback, store_errors
from attnbench.store.study import attach_point, fail_trial, own_trial, trial_point_key
from attnbench.store.workers import DIED, POLL_SECONDS, interrupted_here, keep_alive, reap, recover


class Run(Protocol):
    """Measures one point, as run_point does; the search passes `options` and `on_epoch` by name."""

    def __call__(self, point: Point, options: RunOptions, on_epoch: EpochCallback | None) -> dict[str, Any]: ...


OUTCOMES = ("completed", "pruned", "failed", "reused")


@dataclass(frozen=True)
class SearchSummary:
    """What a worker (or, merged, a command) did, and how many finished trials the study has."""

    study: str
    ran: int
    completed: int
    pruned: int
    failed: int
    reused: int  # the point was measured before in this study: its values were copied
    retried: int  # trials of dead workers run again
    finished: int
    seconds: float


def open_search_study(setup: SearchSetup, storage: str, seed: int | None = None) -> optuna.Study:
    """Create or join the search's study; ConfigError if the name holds a different search or a grid."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with store_errors(storage):
        study = optuna.create_study(
            study_name=setup.study, storage=open_storage(storage, retry_stale=True),
            sampler=make_sampler(setup.sampler, seed), pruner=make_pruner(setup.pruner), directions=setup.directions,
            load_if_exists=True,
        )
        _check_same_search(study, setup)
    return study


def _check_same_search(study: optuna.Study, setup: SearchSetup) -> None:
    """Record what this study searches, or refuse a run that would mix another search into it."""
    mine = {"objectives": [m.name for m in setup.objectives], "budgets": setup.budgets, "space": setup.space.describe()}
    recorded = study.user_attrs.get("search")
    if recorded is None:
        if study.get_trials(deepcopy=False) or [d.name.lower() for d in study.directions] != setup.directions:
            raise ConfigError("search.study", setup.study,
                              "a new name: the storage has a study of that name that is not a search")
        study.set_user_attr("search", mine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([m.name for m in setup.objectives])  # what a dashboard shows the values as
        return
    if recorded["objectives"] != mine["objectives"]:
        raise ConfigError("search.objectives", mine["objectives"],
                          f"{recorded['objectives']} as in the existing study {setup.study!r}, or a new search.study name")
    for part in ("budgets", "space"):
        if recorded[part] != mine[part]:
            raise ConfigError("search.study", setup.study,
                              f"a new name: the existing study of this name has other {part} (its trials would not compare)")


def run_search(
    setup: SearchSetup,
    storage: str,
    options: RunOptions,
    *,
    trials: int | None = None,
    progress: bool = True,
    run: Run = run_point,
    workers: int = 1,
    worker: int = 0,
    poll: float = POLL_SECONDS,
) -> SearchSummary:
    """Run trials until the study has `trials` finished ones (default: the file's); `workers` processes share them.

    `run(point, options, on_epoch)` measures (and, when `options.train` is set, trains) a point:
    the runner by default; the pruner watches the epochs it reports.
    """
    target = setup.trials if trials is None else trials
    check_int("trials", target)
    if workers != 1:
        parts = run_in_workers(run_search, workers, setup, storage, options, trials=target, run=run, poll=poll,
                               local={"progress": progress},
                               on_child_death=functools.partial(requeue_dead_worker, setup, storage))
        totals = {name: sum(getattr(p, name) for p in parts) for name in ("ran", *OUTCOMES, "retried")}
        return SearchSummary(setup.study, **totals, finished=max(p.finished for p in parts),
                             seconds=max(p.seconds for p in parts))
    with store_errors(storage):
        return _search_here(setup, storage, options, target, progress, run, worker, poll)


def requeue_dead_worker(setup: SearchSetup, storage: str, pid: int, how: str) -> None:
    """Fail the running trial of worker process `pid`, which just died, and queue it again with its parameters."""
    reap(open_search_study(setup, storage), retry_callback(), pid=pid, reason=f"{DIED} (worker pid {pid} {how})")


def _search_here(setup: SearchSetup, storage: str, options: RunOptions, target: int, progress: bool, run: Run,
                 worker: int, poll: float) -> SearchSummary:
    started = time.perf_counter()
    study = open_search_study(setup, storage, None if setup.seed is None else setup.seed + worker)
    if not setup.needs_training:
        options = options.without("training")  # no objective needs accuracy: do not train for it
    retry = retry_callback()
    counts: Counter[str] = Counter()
    bar = tqdm(total=target, desc=setup.study, unit="trial", disable=not progress or worker > 0, dynamic_ncols=True)
    try:
        while True:
            recover(study, on_reaped=retry)
            finished, running, waiting = tally(study)
            bar.update(min(finished, target) - bar.n)
            if finished >= target:
                break
            if not waiting and finished + running >= target:
                time.sleep(poll)  # others run the last trials; stay to run them again if a worker dies
                continue
            outcome, retried = _run_trial(study, setup, functools.partial(run, options=options))
            counts[outcome] += 1
            counts["retried"] += retried
    except KeyboardInterrupt as interruption:  # also a trial asked for a moment ago, its evaluation not yet begun
        interrupted_here(study, interruption)
        raise
    bar.close()
    outcomes = {outcome: counts[outcome] for outcome in OUTCOMES}
    return SearchSummary(setup.study, ran=sum(outcomes.values()), **outcomes, retried=counts["retried"],
                         finished=finished, seconds=time.perf_counter() - started)


def tally(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, waiting) trials; a trial failed by its worker's death is not finished."""
    finished = running = waiting = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:
            running += 1
        elif trial.state == TrialState.WAITING:
            waiting += 1
        elif trial.state != TrialState.FAIL or _failed_on_its_own(trial):
            finished += 1
    return finished, running, waiting


def _failed_on_its_own(trial: FrozenTrial) -> bool:
    error = trial.user_attrs.get("error", "")
    return bool(error) and not error.startswith("interrupted")


def _run_trial(study: optuna.Study, setup: SearchSetup, run: Callable[..., dict[str, Any]]) -> tuple[str, bool]:
    """Evaluate one trial (a queued retry first, if any); return its outcome and whether it was a retry."""
    with signals_held():  # an interruption waits for these writes: no RUNNING trial is left without its owner
        trial = ask(study)
        own_trial(trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(
            study._storage.get_trial(trial._trial_id)) is not None
    try:
        point = setup.space.sample(trial)
    except ConfigError as error:  # a combination the module refuses: a failed trial, the search goes on
        fail_trial(study, trial, f"invalid point: {error}")
        return "failed", retried
    attach_point(trial, point)
    same = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if trial_point_key(t) == point.key), None)
    if same is not None:
        trial.set_user_attr("same_as", same.number)
        trial.set_user_attr("result", same.user_attrs.get("result", {}))
        set_constraints(trial, setup.budgets, same.user_attrs.get("result", {}))
        study.tell(trial, same.values)
        return "reused", retried
    try:
        with keep_alive(study, trial):
            on_epoch = pruning_callback(trial) if setup.pruner.name != "none" else None
            row = run(point, on_epoch=on_epoch)
            trial.set_user_attr("result", row)
            set_constraints(trial, setup.budgets, row)
            values = [metric_value(metric, row) for metric in setup.objectives]
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("pruned", str(pruned))
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned", retried
    except ConfigError as error:  # the runs cannot give what the search asks for: stop, do not burn every trial
        fail_trial(study, trial, str(error))
        raise
    except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (attnbench.store.processes.Terminated)
        fail_trial(study, trial, f"interrupted: {type(interruption).__name__}")
        raise
    except Exception as error:  # OOM, NaN loss, ...: recorded with the trial, the search goes on
        fail_trial(study, trial, error)
        return "failed", retried
    study.tell(trial, values)
    return "completed", retried

