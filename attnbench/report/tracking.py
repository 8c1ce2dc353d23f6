"""W&B mirror of the store: one run per study holding a table of every point, training curves grouped by study.

W&B is never the record. Measurements are in the Optuna storage before anything here sees
them, and every W&B call is guarded: the first failure (wandb not importable, no network, a
bad key) prints one warning line on stderr and turns W&B off for the rest of the tracker, so a
measurement is never lost or held up. Offline by default: runs go under RESULTS/wandb/ and
`wandb sync RESULTS/wandb/offline-run-*` uploads them later.

The standard WANDB_* variables are honoured: WANDB_MODE (and WANDB_DISABLED) where no mode is
given, WANDB_DIR for where runs go, WANDB_PROJECT, WANDB_ENTITY and WANDB_RUN_GROUP for where they
are filed; WANDB_TAGS, WANDB_NOTES, WANDB_API_KEY, WANDB_BASE_URL are read by wandb itself. The
harness makes several runs (the points table, one per trained seed), so it names each run itself:
WANDB_NAME is not used, and a WANDB_RUN_ID meant for one run is not given to all of them.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
import pandas as pd

from attnbench.core.errors import ConfigError
from attnbench.report.tables import points_frame
from attnbench.store.storage import redact
from attnbench.store.study import trial_rows

MODES = ("offline", "online", "disabled")
PROJECT = "attnbench"
TABLE_KEY = "points"
REFRESH_S = 30.0  # re-log the table at most this often while a grid runs (each log writes the whole table)
INIT_TIMEOUT_S = 30.0  # online init against an unreachable server gives up after this
LOGIN_TIMEOUT_S = 30.0  # an interactive login prompt nobody answers gives up after this

_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key|credential", re.IGNORECASE)

T = TypeVar("T")


def sanitize(value: Any) -> Any:
    """A config value safe to hand to W&B: strings redacted, values under secret-looking keys hidden."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): "***" if _SECRET_KEY.search(str(k)) else sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's older spellings
TRUE = ("1", "true", "yes", "on")


def default_mode() -> str:
    """W&B mode when none is given: disabled under WANDB_DISABLED, else WANDB_MODE where it names a mode, else offline."""
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in TRUE:
        return "disabled"
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    mode = MODE_ALIASES.get(mode, mode)
    return mode if mode in MODES else "offline"


def _env(name: str) -> str | None:
    """A WANDB_* variable's value; None where unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def run_root(results_dir: Path) -> Path:
    """Where wandb writes its `wandb/` folder of runs: WANDB_DIR where set, else the results directory."""
    return Path(_env("WANDB_DIR") or results_dir).expanduser()


def init_arguments(study: str, results_dir: Path) -> dict[str, Any]:
    """wandb.init's filing arguments.

    The WANDB_* variables where set, else attnbench's defaults (project attnbench, grouped by study).
    """
    arguments: dict[str, Any] = {"project": _env("WANDB_PROJECT") or PROJECT, "group": _env("WANDB_RUN_GROUP") or study,
                                 "dir": str(run_root(results_dir))}
    if entity := _env("WANDB_ENTITY"):
        arguments["entity"] = entity
    if _env("WANDB_RUN_ID"):
        arguments["id"] = uuid.uuid4().hex[:8]  # one id for several runs would make them one run
    return arguments


def _cell(value: Any) -> Any:
    """A table cell W&B accepts in any column: scalars as they are, containers as JSON text, missing as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (bool, int, float)):
        return value
    return redact(json.dumps(value, default=str, separators=(",", ":")))


def flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One table row: the point's hyperparameters spread into `hp/<name>` columns, every cell W&B-safe."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key == "point_hyperparameters" and isinstance(value, Mapping):
            flat.update({f"hp/{name}": _cell(v) for name, v in value.items()})
        else:
            flat[key] = _cell(value)
    return flat


def table_data(rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) for a W&B table: the union of every row's columns, in order of first appearance."""
    flat = [flat_row(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    return columns, [[row.get(column) for column in columns] for row in flat]


def _records(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    return points_frame(list(rows)).to_dict("records")  # the same columns (deltas included) as the exports


def _import_wandb() -> Any:
    # Before the import: wandb reads these once, and they keep its console output and service quiet.
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    import wandb

    return wandb


def _settings(wandb: Any, mode: str) -> Any:
    """Quiet settings with bounded waits; no system stats or metadata probes (the harness records its own)."""
    return wandb.Settings(
        mode=mode, silent=True, quiet=True, show_info=False, show_warnings=False, console="off",
        disable_git=True, save_code=False, x_save_requirements=False,
        x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
        init_timeout=INIT_TIMEOUT_S, login_timeout=LOGIN_TIMEOUT_S,
    )


class StudyTracker:
    """W&B mirror of one study: a run (named and grouped after the study) whose `points` table is re-logged as points finish."""

    def __init__(self, study: str, mode: str = "offline", results_dir: Path = Path("results"),
                 config: Mapping[str, Any] | None = None, refresh_s: float = REFRESH_S) -> None:
        if mode not in MODES:
            raise ConfigError("wandb", mode, "one of " + ", ".join(MODES))
        self.study = study
        self.mode = mode
        self.results_dir = Path(results_dir)
        self.config = sanitize(dict(config or {}))
        self.refresh_s = refresh_s
        self.enabled = mode != "disabled"
        self.seconds = 0.0  # spent inside W&B calls, so its overhead stays visible
        self.run_dir: Path | None = None
        self._run: Any = None
        self._wandb: Any = None
        self._last_log = -math.inf
        self._curves_seen = -1  # trials up to this number had their training curves logged

    def _guard(self, action: str, call: Callable[[], T]) -> T | None:
        """Run a W&B call; on the first failure warn once on stderr and switch W&B off."""
        if not self.enabled:
            return None
        started = time.perf_counter()
        try:
            return call()
        except Exception as error:  # any W&B failure; measurements are already stored
            self.enabled = False
            reason = redact(" ".join(str(error).split()))[:200]
            print(f"warning: W&B {action} failed ({type(error).__name__}: {reason}); W&B logging is off for "
                  f"study {self.study!r}, measurements are safe in the store", file=sys.stderr)
            return None
        finally:
            self.seconds += time.perf_counter() - started

    def _init(self, name: str, job_type: str, config: Mapping[str, Any]) -> Any:
        if self._wandb is None:
            self._wandb = _import_wandb()
            # The process-wide settings too: wandb's own usage telemetry reads those, not the run's, and
            # would otherwise contact the W&B server from an offline run.
            self._wandb.setup(settings=_settings(self._wandb, self.mode))
        arguments = init_arguments(self.study, self.results_dir)
        Path(arguments["dir"]).mkdir(parents=True, exist_ok=True)
        return self._wandb.init(
            name=name, job_type=job_type, config=sanitize(dict(config)), settings=_settings(self._wandb, self.mode),
            reinit="create_new", **arguments,
        )

    def _log_table(self, rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> None:
        if self._run is None:
            self._run = self._init(self.study, "grid", {"study": self.study, **self.config})
            self.run_dir = Path(self._run.dir).parent
        columns, data = table_data(_records(rows))
        self._run.log({TABLE_KEY: self._wandb.Table(columns=columns, data=data, allow_mixed_types=True)})
        self._run.summary["points"] = len(data)

    def _due(self, force: bool) -> bool:
        """Whether a table refresh is wanted now (and, if so, start the next interval)."""
        if not self.enabled or (not force and time.monotonic() - self._last_log < self.refresh_s):
            return False
        self._last_log = time.monotonic()
        return True

    def log_points(self, rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, force: bool = False) -> None:
        """Log the table of all points (store rows or an export frame); at most once per refresh interval unless forced."""
        if self._due(force):
            self._guard("table logging", lambda: self._log_table(rows))

    def on_point(self, study: optuna.Study) -> None:
        """Grid callback after each stored point: log new training curves; when a refresh is due, re-log the table."""
        if self.enabled:
            self._log_new_curves(study)
        if self._due(force=False):
            self._guard("table logging", lambda: self._log_table(trial_rows(study)))

    def log_training_curve(self, point_label: str, epochs: Sequence[Mapping[str, Any] | Any],
                           config: Mapping[str, Any] | None = None) -> None:
        """One run per trained point, grouped by study: each epoch (a mapping or an `EpochRecord`) logged at step = its epoch."""

        def log() -> None:
            run = self._init(point_label, "train", {"study": self.study, "point": point_label, **self.config, **(config or {})})
            for index, record in enumerate(epochs, start=1):
                values = record.as_dict() if hasattr(record, "as_dict") else dict(record)
                step = int(values.pop("epoch", index))
                run.log({k: c for k, c in ((k, _cell(v)) for k, v in values.items()) if c is not None}, step=step)
            run.finish()

        self._guard("training-curve logging", log)

    def _log_new_curves(self, study: optuna.Study) -> None:
        """One curve run per seed of each newly completed trained point (the runner's `train_curves`)."""
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        for trial in sorted((t for t in finished if t.number > self._curves_seen), key=lambda t: t.number):
            self._curves_seen = trial.number
            curves = trial.user_attrs.get("result", {}).get("train_curves") or []
            label = trial.user_attrs.get("label", f"trial {trial.number}")
            backbone = trial.user_attrs.get("point", {}).get("backbone", "")
            for seed, epochs in enumerate(curves):
                self.log_training_curve(f"{backbone} {label} seed {seed}".strip(), epochs, {"trial": trial.number})

    def finish(self, rows: pd.DataFrame | Sequence[Mapping[str, Any]] | None = None) -> str | None:
        """Log the final table (when rows are given) and close the run; returns a line saying where the run is."""
        if rows is not None:
            self.log_points(rows, force=True)
        if self._run is None:
            return None
        run, self._run = self._run, None
        self._guard("finish", run.finish)
        if not self.enabled:
            return None
        if self.mode == "offline":
            return f"W&B offline run in {self.run_dir}; upload with: wandb sync {self.run_dir}"
        return f"W&B run {getattr(run, 'url', None) or self.study}"


def log_training_curve(study: str, point_label: str, epochs: Sequence[Mapping[str, Any] | Any], *, mode: str = "offline",
                       results_dir: Path = Path("results"), config: Mapping[str, Any] | None = None) -> None:
    """Log one point's per-epoch records as a W&B run in the group named after its study (never raises for W&B)."""
    StudyTracker(study, mode, results_dir, config).log_training_curve(point_label, epochs)
