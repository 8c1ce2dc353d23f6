"""Optuna storages from URLs: SQLite (default), a journal file, PostgreSQL; with heartbeats on the SQL ones.

- `sqlite:///results/attnbench.db`: one file, good for one process or a few on one machine.
- `journal:PATH`: Optuna's append-only journal file, for many processes on one machine
  (no heartbeats: a dead worker on this machine is found by its process id instead).
- `postgresql://USER:PASSWORD@HOST:PORT/DB`: several machines on one study (`pip install
  -e ".[postgres]"`).

SQL storages record a heartbeat for every running trial; a trial whose heartbeat stops for
`2 * HEARTBEAT_SECONDS` (its worker was killed, or its machine went away) is failed by the
next worker that looks, and a search queues it again with the same parameters.
"""
from __future__ import annotations

import importlib.util
import re
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from attnbench.errors import ConfigError

HEARTBEAT_SECONDS = 60  # a running trial's worker writes a heartbeat this often; silent for twice this = dead
MAX_RETRIES = 3  # a search trial whose worker died is queued again at most this often (a point that kills workers stops)
JOURNAL_PREFIX = "journal:"
SQL_SCHEMES = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_S = 60  # several processes take turns writing one SQLite file
CONNECT_TIMEOUT_S = 10  # fail fast, with the host named, when a database server does not answer
CREATE_ATTEMPTS = 3
ALLOWED = "sqlite:///FILE, journal:FILE, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):\S*@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_?key)=)[^&;\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL passwords (scheme://user:PASSWORD@host) and secret query parameters replaced by ***."""
    return _QUERY_SECRET.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>:***@", text))


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Queues a dead worker's trial again (state WAITING, same parameters) so the next worker runs it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def ask(study: optuna.Study) -> optuna.Trial:
    """`study.ask()` without Optuna's warning that heartbeats belong to `Study.optimize`: our workers keep them too."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def open_storage(url: str, *, retry_stale: bool = False) -> BaseStorage:
    """The Optuna storage a URL names; ConfigError (password redacted, host named) if it cannot be opened.

    With `retry_stale`, a trial failed for a stale heartbeat is queued again (searches); grids
    leave it failed and claim its point afresh.
    """
    if url.startswith(JOURNAL_PREFIX):
        return _journal(url)
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if scheme not in SQL_SCHEMES:
        raise ConfigError("storage", redact(url), ALLOWED)
    timeout = {"timeout": SQLITE_BUSY_TIMEOUT_S} if scheme == "sqlite" else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return _rdb(_with_driver(url), {"connect_args": timeout}, retry_stale)
    except ImportError as error:
        missing = getattr(error.__cause__, "name", None) or error.name or "its driver"
        raise ConfigError("storage", redact(url), f"a URL whose driver is installed ({missing} is missing; "
                          "for PostgreSQL: pip install -e \".[postgres]\")") from None
    except Exception as error:  # SQLAlchemy's OperationalError and friends: the driver's own words say why
        raise ConfigError("storage", redact(url), f"a reachable storage; {_where(url)} failed: {_reason(error, url)}") from None


def _rdb(url: str, engine_kwargs: dict, retry_stale: bool) -> RDBStorage:
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


def _with_driver(url: str) -> str:
    """postgresql:// through psycopg2 (the `postgres` extra) where psycopg 3, SQLAlchemy 2.1's default, is absent."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _journal(url: str) -> JournalStorage:
    path = Path(url[len(JOURNAL_PREFIX):].removeprefix("//"))
    if not path.name:
        raise ConfigError("storage", url, "journal:FILE with a file name, e.g. journal:results/attnbench.journal")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as error:
        raise ConfigError("storage", url, f"a journal file in a writable directory ({error.strerror or error})") from None


def _where(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return f"opening {parts.path.removeprefix('/') or 'an in-memory database'}"
    return f"connecting to {parts.hostname or 'localhost'}:{parts.port or 5432}"


def _reason(error: BaseException, url: str) -> str:
    """The driver's first line of explanation, never containing the password."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    password = urlsplit(url).password
    return reason.replace(password, "***") if password else reason
