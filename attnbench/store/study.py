"""The results store: grids and searches as Optuna studies, one trial per point.

The Optuna storage is the record (SQLite under results/ by default). A trial carries
its point (`point`, `point_key`), its measurements (`result`) or its error (`error`),
and who ran it (`owner`), so a killed run can be told apart from a running one.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from attnbench.errors import ConfigError
from attnbench.config.point import Point
from attnbench.store.storage import ask, open_storage

DEFAULT_RESULTS = Path("results")
DEFAULT_DB = "attnbench.db"


def default_storage(results_dir: Path = DEFAULT_RESULTS) -> str:
    """SQLite file under the results directory."""
    return f"sqlite:///{results_dir / DEFAULT_DB}"


def check_writable(results_dir: Path) -> None:
    """Fail early, with the path named, if results cannot be written."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError("results", str(results_dir), f"a writable directory ({error.strerror or error})") from None


def open_study(name: str, storage: str) -> optuna.Study:
    """Create or load the study `name` in `storage` (quietly); see attnbench.store.storage for the URLs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=open_storage(storage), load_if_exists=True, direction="minimize")


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _owner_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the process that started a trial still runs; unknowable for other hosts (assumed alive)."""
    if not owner or owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_interrupted(study: optuna.Study,
                     on_reaped: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
    """Mark trials left RUNNING by a dead process on this host as FAIL (interrupted); return how many.

    `on_reaped(study, trial)` gets each reaped trial as it was while running (a search queues it
    again). When two workers reap the same trial, only the one whose update lands counts it.
    """
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _owner_alive(trial.user_attrs.get("owner")):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: the process running it died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        reaped += 1
        if on_reaped is not None:
            on_reaped(study, trial)
    return reaped


def done_keys(study: optuna.Study) -> set[str]:
    """Keys of points with a completed trial."""
    return {t.user_attrs["point_key"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "point_key" in t.user_attrs}


def start_trial(study: optuna.Study, point: Point) -> optuna.Trial:
    """A RUNNING trial holding the point, committed before measuring, so a crash shows what was running."""
    trial = ask(study)
    own_trial(trial)
    attach_point(trial, point)
    return trial


def own_trial(trial: optuna.Trial) -> None:
    """Record this process (host and pid) as the trial's owner, so its death can be noticed."""
    trial.set_user_attr("owner", _owner())


def attach_point(trial: optuna.Trial, point: Point) -> None:
    """Record the point a trial measures: its fields, key and label."""
    trial.set_user_attr("point", point.to_dict())
    trial.set_user_attr("point_key", point.key)
    trial.set_user_attr("label", point.variant_label())


def finish_trial(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any]) -> None:
    """Record measurements and complete the trial (nominal objective: MACs)."""
    trial.set_user_attr("result", result)
    study.tell(trial, float(result.get("macs", 0.0)))


def fail_trial(study: optuna.Study, trial: optuna.Trial, error: BaseException | str) -> None:
    """Record the error and fail the trial; the grid goes on."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    trial.set_user_attr("error", message.splitlines()[0][:500] if message else "unknown error")
    study.tell(trial, state=TrialState.FAIL)


def trial_rows(study: optuna.Study, states: Iterable[TrialState] = (TrialState.COMPLETE, TrialState.FAIL)) -> list[dict[str, Any]]:
    """One flat row per trial: point fields, measurements, state and error; latest trial per point wins."""
    rows: dict[str, dict[str, Any]] = {}
    for trial in sorted(study.get_trials(deepcopy=False, states=tuple(states)), key=lambda t: t.number):
        if "point" not in trial.user_attrs:
            continue
        key = trial.user_attrs["point_key"]
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
