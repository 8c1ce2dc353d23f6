"""Optuna storages from URLs, through the backend each URL's scheme names (attnbench.store.backends).

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

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

from attnbench.core.errors import ConfigError
from attnbench.store.backends import backend_for
from attnbench.store.backends.rdb import retry_callback
from attnbench.store.urls import JOURNAL_PREFIX, reason, redact, where

__all__ = ["JOURNAL_PREFIX", "ask", "open_storage", "redact", "retry_callback", "store_errors"]


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
    return backend_for(url).open(url, retry_stale)


@contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn a store that fails to read or write (damaged, read-only, full) into one ConfigError naming it."""
    try:
        yield
    except ConfigError:
        raise
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, ValueError,
            KeyError) as error:  # Optuna wraps a failed commit (read-only, full, locked) in StorageInternalError
        raise ConfigError("storage", redact(url), f"a store that can be read and written; {where(url)} failed: "
                          f"{reason(error, url)}") from None
