"""The results store: grids and searches as Optuna studies, one trial per point.

The Optuna storage is the record (SQLite under results/ by default). A trial carries
its point (`point`, `point_key`), its measurements (`result`) or its error (`error`),
and who ran it (`owner`), so a killed run can be told apart from a running one.
"""
from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from attnbench.config.point import Point
from attnbench.core.errors import ConfigError
from attnbench.run.measurements.complexity import MACS, PARAMS
from attnbench.run.measurements.latency import LATENCY
from attnbench.run.measurements.training import TOP1
from attnbench.store.owners import OWNER, owner_record
from attnbench.store.processes import release_cut_reads, signals_held
from attnbench.store.storage import ask, open_storage, store_errors

HEADLINE = (PARAMS, MACS, LATENCY, TOP1)  # also stored as user attributes of their own
OPENED = "last_opened"  # study attribute a writing run sets first: the proof that the store takes writes
DEFAULT_RESULTS = Path("results")
DEFAULT_DB = "attnbench.db"


def default_storage(results_dir: Path = DEFAULT_RESULTS) -> str:
    """SQLite file under the results directory."""
    return f"sqlite:///{results_dir / DEFAULT_DB}"


def open_study(name: str, storage: str, *, for_writing: bool = False) -> optuna.Study:
    """Create or load the study `name` in `storage` (quietly); see attnbench.store.storage for the URLs.

    `for_writing` proves, before anything is measured, that the store takes a write (a read-only
    or full SQLite file fails here, as one ConfigError, not at the first finished point).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with store_errors(storage):
        study = optuna.create_study(study_name=name, storage=open_storage(storage), load_if_exists=True,
                                    direction="minimize")
        if for_writing:
            study.set_user_attr(OPENED, time.time())
            if study.metric_names is None and "search" not in study.user_attrs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([MACS.key])  # a grid's one value: what it is, for the dashboard
    return study


@functools.lru_cache(maxsize=1 << 16)
def _key_of_stored_point(point_json: str) -> str | None:
    try:
        return Point.from_dict(json.loads(point_json)).key
    except (ConfigError, TypeError, KeyError, ValueError):  # a module or field this version does not know
        return None


def trial_point_key(trial: FrozenTrial | optuna.Trial) -> str | None:
    """The key of the point a trial holds, derived from the stored point.

    Keys of other key versions (attnbench.config.point.KEY_VERSION) are thereby migrated on read:
    Optuna allows no change to a finished trial's attributes, and the stored point says everything.
    The stored `point_key` serves where the point cannot be rebuilt.
    """
    attrs = trial.user_attrs
    point = attrs.get("point")
    derived = None if point is None else _key_of_stored_point(json.dumps(point, sort_keys=True))
    return derived or attrs.get("point_key")


def done_keys(study: optuna.Study) -> set[str]:
    """Keys of points with a completed trial."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return {key for trial in trials if (key := trial_point_key(trial)) is not None}


def start_trial(study: optuna.Study, point: Point) -> optuna.Trial:
    """A RUNNING trial holding the point, committed before measuring, so a crash shows what was running."""
    with signals_held():  # an interruption waits for these writes: no RUNNING trial is left without its owner
        trial = ask(study)
        own_trial(trial)
        attach_point(trial, point)
    return trial


def own_trial(trial: optuna.Trial) -> None:
    """Record this process (host, pid, start time) as the trial's owner, so its death can be noticed."""
    trial.set_user_attr(OWNER, owner_record())


def attach_point(trial: optuna.Trial, point: Point) -> None:
    """Record the point a trial measures: its fields, key and label."""
    trial.set_user_attr("point", point.to_dict())
    trial.set_user_attr("point_key", point.key)
    trial.set_user_attr("label", point.variant_label())


def finish_trial(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any]) -> None:
    """Record the measurements (and the headline ones on their own, for optuna-dashboard) and complete the trial.

    Optuna needs a value to complete a trial: a grid's study records the point's MACs under the
    metric name "macs" (set by `open_study`), so a dashboard's "best trial" says what it is.
    """
    trial.set_user_attr("result", result)
    for column in HEADLINE:  # the dashboard cuts long attributes at 1,024 characters; these stay whole and sortable
        if result.get(column.key) is not None:
            trial.set_user_attr(column.key, result[column.key])
    study.tell(trial, float(result.get(MACS.key, 0.0)))


def fail_trial(study: optuna.Study, trial: optuna.Trial, error: BaseException | str) -> None:
    """Record the error and fail the trial; the grid goes on."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    release_cut_reads()  # marking a trial interrupted must not wait on a read the interruption cut short
    trial.set_user_attr("error", message.splitlines()[0][:500] if message else "unknown error")
    study.tell(trial, state=TrialState.FAIL)


def trial_rows(study: optuna.Study,
               states: Iterable[TrialState] = (TrialState.COMPLETE, TrialState.FAIL)) -> list[dict[str, Any]]:
    """One flat row per trial: point fields, measurements, state and error; latest trial per point wins."""
    rows: dict[str | None, dict[str, Any]] = {}  # None: a stored point this version cannot rebuild, without its key
    for trial in sorted(study.get_trials(deepcopy=False, states=tuple(states)), key=lambda t: t.number):
        if "point" not in trial.user_attrs:
            continue
        key = trial_point_key(trial)
        if key in rows and rows[key]["state"] == "COMPLETE" and trial.state != TrialState.COMPLETE:
            continue
        rows[key] = {
            "point_key": key,
            "label": trial.user_attrs.get("label", ""),
            **{f"point_{k}" if k in ("hyperparameters",) else k: v for k, v in trial.user_attrs["point"].items()},
            **trial.user_attrs.get("result", {}),
            "state": trial.state.name,
            "error": trial.user_attrs.get("error", ""),
            "trial": trial.number,
        }
    return list(rows.values())
