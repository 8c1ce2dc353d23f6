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

import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from attnbench.config.point import Point
from attnbench.store.owners import (
    LEASE,
    LEASE_RENEW_SECONDS,
    LEASE_SECONDS,
    OWNER,
    describe_owner,
    on_this_host,
    owner_alive,
)
from attnbench.store.processes import release_cut_reads
from attnbench.store.study import start_trial, trial_point_key

POLL_SECONDS = 1.0  # how often an idle worker looks for trials of dead workers while others finish theirs
DIED = "interrupted: the process running it died"
Reaped = Callable[[optuna.Study, FrozenTrial], None]


class _HeartbeatStorage(Protocol):
    """What SQL storages add to Optuna's BaseStorage (optuna.storages._heartbeat.BaseHeartbeat)."""

    def get_heartbeat_interval(self) -> int | None: ...

    def record_heartbeat(self, trial_id: int) -> None: ...


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage, or None where it keeps none (journal)."""
    storage = study._storage
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


@contextmanager
def keep_alive(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """While the block runs, tell other workers the trial's process lives: a heartbeat (SQL) or a lease (journal)."""
    interval = heartbeat_interval(study)

    def renew() -> None:
        if interval is None:
            study._storage.set_trial_user_attr(trial._trial_id, LEASE, time.time() + LEASE_SECONDS)
        else:
            cast(_HeartbeatStorage, study._storage).record_heartbeat(trial._trial_id)  # it has an interval

    # The first renewal is written before the work starts: a trial without any never counts as stale.
    renew()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LEASE_RENEW_SECONDS if interval is None else interval):
            try:
                renew()
            except Exception:  # a database hiccup must not end the renewals of a trial that still runs
                pass

    thread = threading.Thread(target=beat, name=f"keep-alive-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def reap(study: optuna.Study, on_reaped: Reaped | None = None, *, pid: int | None = None,
         reason: str = DIED) -> int:
    """Mark RUNNING trials whose owner is dead (or, given `pid`, owned by that process here) as FAIL; return how many.

    `on_reaped(study, trial)` gets each reaped trial as it was while running (a search queues it
    again). When two workers reap the same trial, only the one whose update lands counts it.
    """
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER) or {}
        if pid is not None:
            if owner.get("pid") != pid or not on_this_host(owner):
                continue
        elif owner_alive(owner, trial.user_attrs.get(LEASE)):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "error", reason)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        reaped += 1
        if on_reaped is not None:
            on_reaped(study, trial)
    return reaped


def interrupted_here(study: optuna.Study, interruption: BaseException) -> int:
    """Mark every RUNNING trial this process owns as interrupted; return how many.

    An interruption may land between a claim and the measurement that follows it (the trial
    written, the `try` that would mark it not yet entered); this finds such a trial too.
    """
    release_cut_reads()
    return reap(study, pid=os.getpid(), reason=f"interrupted: {type(interruption).__name__}")


def recover(study: optuna.Study, on_reaped: Reaped | None = None) -> int:
    """Fail the trials of dead workers so that their work is done again; return how many.

    Stale heartbeats find dead workers on any machine (SQL storages, after the grace period),
    expired leases likewise on stores without heartbeats; process ids find them at once on
    this machine (every storage).
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    stale = 0
    if running:
        stale = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if t.number in running and "error" not in t.user_attrs)
    return stale + reap(study, on_reaped)


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
              if t.number != trial.number and trial_point_key(t) == point.key and holds_point(t, since)]
    if not rivals:
        return True
    trial.set_user_attr("claim_lost_to", min(rivals))
    study.tell(trial, state=TrialState.PRUNED)
    return False


def waiting_for(trials: Sequence[FrozenTrial]) -> str:
    """What a worker with nothing left to start waits for: the running trials of others and who runs them."""
    shown = ", ".join(f"trial {t.number} ({describe_owner(t.user_attrs.get(OWNER), t.user_attrs.get(LEASE))})"
                      for t in trials[:3])
    more = f" and {len(trials) - 3} more" if len(trials) > 3 else ""
    return f"waiting for {len(trials)} point{'s' * (len(trials) != 1)} other workers run: {shown}{more}"


def _wait_for_others(trials: Sequence[FrozenTrial], keys: set[str], told: str, poll: float,
                     on_wait: Callable[[str], None] | None) -> str | None:
    """Nothing left to claim: wait one `poll` while other workers run some of `keys`, saying so when that changes.

    Returns what was told (the next call's `told`), or None when no other worker runs any of them (all done).
    """
    others = [t for t in trials if t.state == TrialState.RUNNING and trial_point_key(t) in keys]
    if not others:
        return None
    message = waiting_for(others)
    if on_wait is not None and message.split(":")[0] != told.split(":")[0]:
        on_wait(message)
    time.sleep(poll)
    return message


def grid_claims(study: optuna.Study, points: Sequence[Point], since: int, poll: float = POLL_SECONDS,
                on_wait: Callable[[str], None] | None = None) -> Iterator[tuple[Point, optuna.Trial]]:
    """Claimed (point, trial) pairs until every point is held; waits while others still run some of them.

    `on_wait(message)` hears what it waits for whenever that changes.
    """
    keys = {p.key for p in points}
    told = ""
    while True:
        recover(study)
        trials = study.get_trials(deepcopy=False)
        held = {trial_point_key(t) for t in trials if holds_point(t, since)}
        todo = [p for p in points if p.key not in held]
        if not todo:
            waited = _wait_for_others(trials, keys, told, poll, on_wait)  # stay to take over if one of them dies
            if waited is None:
                return
            told = waited
            continue
        trial = claim(study, todo[0], since)
        if trial is None:
            time.sleep(random.uniform(0.0, poll / 4))  # break the tie with a worker that gave up too
            continue
        yield todo[0], trial


GROUP_RELEASED = "group_released"  # user attribute of a claim given back so that a group is never split


def group_claims(study: optuna.Study, groups: Sequence[Sequence[Point]], since: int, poll: float = POLL_SECONDS,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[list[tuple[Point, optuna.Trial]]]:
    """Claimed groups: each time, every pending point of one group, so that one worker measures a group together.

    Paired timing compares the points of a group within one process. A group another worker has
    begun (one of its points RUNNING) is left to it; a claim lost half-way through a group gives
    back the claims already made (PRUNED, `group_released`), and the group is tried again later.
    Waits, as grid_claims does, while others still run points of the groups.
    """
    keys = {p.key for group in groups for p in group}
    told = ""
    while True:
        recover(study)
        trials = study.get_trials(deepcopy=False)
        held = {trial_point_key(t) for t in trials if holds_point(t, since)}
        running = {trial_point_key(t) for t in trials if t.state == TrialState.RUNNING}
        todo = [[p for p in group if p.key not in held] for group in groups if not any(p.key in running for p in group)]
        todo = [group for group in todo if group]
        if not todo:
            waited = _wait_for_others(trials, keys, told, poll, on_wait)  # stay to take over if one of them dies
            if waited is None:
                return
            told = waited
            continue
        claimed: list[tuple[Point, optuna.Trial]] = []
        for point in todo[0]:
            trial = claim(study, point, since)
            if trial is None:
                break
            claimed.append((point, trial))
        else:
            yield claimed
            continue
        for _, trial in claimed:  # another worker holds part of the group: give the rest back whole
            trial.set_user_attr(GROUP_RELEASED, True)
            study.tell(trial, state=TrialState.PRUNED)
        time.sleep(random.uniform(0.0, poll / 4))
