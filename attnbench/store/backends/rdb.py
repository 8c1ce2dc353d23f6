"""Opening a SQL store through Optuna's RDBStorage, with heartbeats and the table-creation race handled."""
from __future__ import annotations

import time
import warnings
from typing import Any
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from attnbench.core.errors import ConfigError
from attnbench.store.urls import reason, redact, where

HEARTBEAT_SECONDS = 60  # a running trial's worker writes a heartbeat this often; silent for twice this = dead
MAX_RETRIES = 3  # a search trial whose worker died is queued again at most this often (a point that kills workers stops)
CREATE_ATTEMPTS = 3


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Queues a dead worker's trial again (state WAITING, same parameters) so the next worker runs it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def open_rdb(url: str, shown: str, connect_args: dict[str, Any], retry_stale: bool, install_hint: str) -> RDBStorage:
    """RDBStorage on `url`; any failure is one ConfigError naming `shown` (redacted), the host, and the driver's words."""
    try:
        return _create(url, {"connect_args": connect_args}, retry_stale)
    except ImportError as error:
        missing = getattr(error.__cause__, "name", None) or error.name or "its driver"
        raise ConfigError("storage", redact(shown), f"a URL whose driver is installed ({missing} is missing; "
                          f"{install_hint})") from None
    except Exception as error:  # SQLAlchemy's OperationalError and friends: the driver's own words say why
        raise ConfigError("storage", redact(shown), f"a reachable storage; {where(url)} failed: "
                          f"{reason(error, url)}") from None


def _create(url: str, engine_kwargs: dict[str, Any], retry_stale: bool) -> RDBStorage:
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                  heartbeat_stale_trial_callback=retry_callback() if retry_stale else None)
        except sqlalchemy.exc.DatabaseError as error:
            # Workers that start together on a new database all create its tables; the losers find them made.
            lost_race = isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)
            if not lost_race or attempt == CREATE_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
            attempt += 1


def check_port(url: str, shown: str) -> None:
    """ConfigError unless the URL's port, if any, is a number in 1-65535 (urlsplit checks it only when read)."""
    try:
        urlsplit(url).port  # noqa: B018
    except ValueError:
        raise ConfigError("storage", redact(shown), "a URL whose port is a number in 1-65535") from None
