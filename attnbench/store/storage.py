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
import json
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
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
JOURNAL_RECHECK_S = 1.0  # a journal's last record may be half written by another worker: look again after this
CUT_OFF = "is cut off (no newline at its end)"
ALLOWED = "sqlite:///FILE, journal:FILE, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


_SCHEME = re.compile(r"[A-Za-z][\w+.-]*://")
# the host part after a URL's userinfo (a name or address, an optional port), then a path (strong evidence)
# or the end of the URL (weaker: a password with a space could be mistaken for it, so a path wins)
_HOST = r"@(?:\[[^\]\s]*\]|[\w.%-]+)(?::[^/?#\s@]*)?"
_USERINFO_ENDS = (re.compile(_HOST + r"(?=[/?#])"), re.compile(_HOST + r"(?=[\s,;'\")]|$)"))
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_?key)=)[^&;\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the whole userinfo of every URL (scheme://USER:PASSWORD@host) and secret query values as ***.

    The userinfo ends at the first `@` followed by a host (and port) and a path, or failing that the
    end of the URL: a password may hold raw `@`, `/`, `:` or spaces and is still hidden whole (at
    worst a little more than the userinfo is hidden).
    """
    pieces, position = [], 0
    for match in _SCHEME.finditer(text):
        if match.start() < position:
            continue  # inside a userinfo already hidden
        if text.startswith("/", match.end()):
            continue  # no authority (sqlite:///path)
        line_end = text.find("\n", match.end())
        end = len(text) if line_end < 0 else line_end
        host = next((m for m in (p.search(text, match.end(), end) for p in _USERINFO_ENDS) if m), None)
        if host is None:
            continue
        pieces += [text[position:match.end()], "***"]
        position = host.start()
    pieces.append(text[position:])
    return _QUERY_SECRET.sub(r"\g<head>***", "".join(pieces))


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
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in SQL_SCHEMES:
        raise ConfigError("storage", redact(url), ALLOWED)
    try:
        parts.port  # noqa: B018  (urlsplit checks the port only when it is read)
    except ValueError:
        raise ConfigError("storage", redact(url), "a URL whose port is a number in 1-65535") from None
    if scheme == "sqlite" and _in_memory(url):
        raise ConfigError("storage", redact(url), "a SQLite file, sqlite:///PATH: an in-memory database vanishes "
                          "when the process ends, and other workers cannot see it")
    timeout = {"timeout": SQLITE_BUSY_TIMEOUT_S} if scheme == "sqlite" else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return _rdb(_with_driver(url), {"connect_args": timeout}, retry_stale)
    except ImportError as error:
        missing = getattr(error.__cause__, "name", None) or error.name or "its driver"
        raise ConfigError("storage", redact(url), f"a URL whose driver is installed ({missing} is missing; "
                          "for PostgreSQL: pip install -e \".[postgres]\")") from None
    except Exception as error:  # SQLAlchemy's OperationalError and friends: the driver's own words say why
        raise ConfigError("storage", redact(url), f"a reachable storage; {_where(url)} failed: {_reason(error, url)}") from None


def _in_memory(url: str) -> bool:
    """Whether a SQLite URL names an in-memory database (sqlite://, sqlite:///:memory:, mode=memory)."""
    path = url.split("://", 1)[1].split("?", 1)[0]
    return path in ("", "/") or path.removeprefix("/").startswith(":memory:") or "mode=memory" in url


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
    _check_journal(url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as error:
        raise ConfigError("storage", url, f"a journal file in a writable directory ({error.strerror or error})") from None
    except Exception as error:  # records that parse but do not replay
        raise ConfigError("storage", url, f"a journal file Optuna can replay ({type(error).__name__}: {error}); "
                          "nothing was written to it") from None


def _check_journal(url: str, path: Path) -> None:
    """Refuse a journal with a record that is not whole JSON before Optuna opens it.

    Optuna skips a broken last record and then appends after it, which leaves the broken record
    in the middle of the file, where every later replay fails; so nothing may be written to it.
    """
    problem = _journal_problem(url, path)
    if problem is not None and problem.endswith(CUT_OFF):
        time.sleep(JOURNAL_RECHECK_S)  # another worker may be writing that record right now
        problem = _journal_problem(url, path)
    if problem is not None:
        raise ConfigError("storage", url, f"a whole journal file: {problem}; the file is corrupt or truncated, so "
                          "nothing was written to it (restore it or use another file)")


def _journal_problem(url: str, path: Path) -> str | None:
    """'line N is ...' for the first record that is not a whole journal record, or None."""
    if not path.is_file():
        return None
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as error:
        raise ConfigError("storage", url, f"a readable journal file ({error.strerror or error})") from None
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "op_code" not in record:
            return f"line {number} is not a journal record"
    return f"line {len(lines)} {CUT_OFF}" if lines[-1] else None


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn a store that fails to read or write (damaged, read-only, full) into one ConfigError naming it."""
    try:
        yield
    except ConfigError:
        raise
    except (sqlalchemy.exc.SQLAlchemyError, OSError, ValueError, KeyError) as error:
        raise ConfigError("storage", redact(url), f"a store that can be read and written; {_where(url)} failed: "
                          f"{_reason(error, url)}") from None


def _where(url: str) -> str:
    if url.startswith(JOURNAL_PREFIX):
        return f"using the journal file {url.removeprefix(JOURNAL_PREFIX)}"
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return f"opening {parts.path.removeprefix('/') or 'an in-memory database'}"
    return f"connecting to {parts.hostname or 'localhost'}:{parts.port or 5432}"


def _reason(error: BaseException, url: str) -> str:
    """The driver's first line of explanation, never containing the password."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    password = urlsplit(url).password
    return redact(reason.replace(password, "***") if password else reason)
