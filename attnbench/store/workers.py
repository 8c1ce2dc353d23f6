"""Several workers on one study: claiming grid points, heartbeats, taking over dead workers' trials, local processes.

Workers share nothing but the Optuna storage. A grid worker claims a point by creating its
RUNNING trial and then looking for any other trial that holds the same point (done, under
way, queued, or failed in this run); if there is one, it gives its own up (state PRUNED,
`claim_lost_to`). Checking after writing makes a double claim impossible: of two workers
that both wrote, the later checker sees the earlier writer. Both may give up in a tie;
the point is then claimed again a moment later. ("Lowest trial number wins" would not be
safe: the lower number may write its claim after the higher one has already checked.)
"""
from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from attnbench.errors import ConfigError
from attnbench.config.point import Point
from attnbench.store.study import reap_interrupted, start_trial

POLL_SECONDS = 1.0  # how often an idle worker looks for trials of dead workers while others finish theirs
T = TypeVar("T")


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage, or None where it keeps none (journal)."""
    storage = study._storage
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


@contextmanager
def keep_alive(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat while the block runs, so other workers know its process lives."""
    interval = heartbeat_interval(study)
    if interval is None:
        yield
        return
    # The first beat is written before the work starts: a trial without any heartbeat never counts as stale.
    study._storage.record_heartbeat(trial._trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                study._storage.record_heartbeat(trial._trial_id)
            except Exception:  # a database hiccup must not end the heartbeats of a trial that still runs
                pass

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def recover(study: optuna.Study, on_reaped: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
    """Fail the trials of dead workers so that their work is done again; return how many.

    Stale heartbeats find dead workers on any machine (SQL storages, after the grace period);
    process ids find them at once on this machine (every storage).
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    stale = 0
    if running:
        stale = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if t.number in running and "error" not in t.user_attrs)
    return stale + reap_interrupted(study, on_reaped)


def holds_point(trial: FrozenTrial, since: int) -> bool:
    """Whether a trial keeps its point from being claimed: done, under way, queued, or failed after trial `since`.

    A point that failed in an earlier run (number <= since) is tried again; one interrupted is always.
    """
    if trial.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING):
        return True
    error = trial.user_attrs.get("error", "")
    return trial.state == TrialState.FAIL and trial.number > since and bool(error) and not error.startswith("interrupted")


def last_trial_number(study: optuna.Study) -> int:
    """The highest trial number so far (-1 for none): failures after it belong to this run."""
    return max((t.number for t in study.get_trials(deepcopy=False)), default=-1)


def claim(study: optuna.Study, point: Point, since: int) -> optuna.Trial | None:
    """A RUNNING trial for the point, or None when another trial holds it (ours is then given up)."""
    trial = start_trial(study, point)
    return trial if keep_claim(study, trial, point, since) else None


def keep_claim(study: optuna.Study, trial: optuna.Trial, point: Point, since: int) -> bool:
    """Whether our trial, its point already written, is the only holder; if not, give it up (PRUNED)."""
    rivals = [t.number for t in study.get_trials(deepcopy=False)
              if t.number != trial.number and t.user_attrs.get("point_key") == point.key and holds_point(t, since)]
    if not rivals:
        return True
    trial.set_user_attr("claim_lost_to", min(rivals))
    study.tell(trial, state=TrialState.PRUNED)
    return False


def grid_claims(study: optuna.Study, points: Sequence[Point], since: int,
                poll: float = POLL_SECONDS) -> Iterator[tuple[Point, optuna.Trial]]:
    """Claimed (point, trial) pairs until every point is held; waits while others still run some of them."""
    keys = {p.key for p in points}
    while True:
        recover(study)
        trials = study.get_trials(deepcopy=False)
        held = {t.user_attrs.get("point_key") for t in trials if holds_point(t, since)}
        todo = [p for p in points if p.key not in held]
        if not todo:
            if not any(t.state == TrialState.RUNNING and t.user_attrs.get("point_key") in keys for t in trials):
                return
            time.sleep(poll)  # another worker runs the last points; stay to take over if it dies
            continue
        trial = claim(study, todo[0], since)
        if trial is None:
            time.sleep(random.uniform(0.0, poll / 4))  # break the tie with a worker that gave up too
            continue
        yield todo[0], trial


def run_in_workers(fn: Callable[..., T], workers: int, *args: Any, local: dict[str, Any] | None = None,
                   **kwargs: Any) -> list[T]:
    """fn(*args, worker=0, **local, **kwargs) here and fn(*args, worker=i, **kwargs) in workers-1 new processes.

    Returns the results of the workers that finished (a killed one has none). Each worker gets
    an equal share of the CPU threads. `local` holds what cannot or should not cross processes
    (progress bars, trackers).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers", workers, "a positive integer")
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and open connections
    results = context.SimpleQueue()
    children = [context.Process(target=_child, args=(fn, args, {**kwargs, "worker": index}, threads, results))
                for index in range(1, workers)]
    for child in children:
        child.start()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mine = fn(*args, worker=0, **(local or {}), **kwargs)
    except BaseException:
        for child in children:
            child.terminate()  # their running trials are reaped as interrupted by the next run
        raise
    finally:
        torch.set_num_threads(previous)
        for child in children:
            child.join()
    gathered = [mine]
    while not results.empty():
        gathered.append(results.get())
    return gathered


def _child(fn: Callable[..., T], args: tuple, kwargs: dict[str, Any], threads: int, results: Any) -> None:
    torch.set_num_threads(threads)
    try:
        results.put(fn(*args, **kwargs))
    except KeyboardInterrupt:  # the parent reports the interruption once
        raise SystemExit(130) from None
