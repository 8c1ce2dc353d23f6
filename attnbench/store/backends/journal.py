"""`journal:PATH`: Optuna's append-only journal file, for many processes on one machine.

No heartbeats: a dead worker on this machine is found by its process id, one elsewhere by the
lease its keep-alive renews (attnbench.store.owners).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from attnbench.core.errors import ConfigError
from attnbench.store.backends.base import Backend, register_backend
from attnbench.store.urls import JOURNAL_PREFIX

JOURNAL_RECHECK_S = 1.0  # a journal's last record may be half written by another worker: look again after this
CUT_OFF = "is cut off (no newline at its end)"


@register_backend
class Journal(Backend):
    order = 20
    scheme = "journal"
    example = "journal:FILE"

    def claims(self, url: str) -> bool:
        return url.startswith(JOURNAL_PREFIX)

    def open(self, url: str, retry_stale: bool) -> BaseStorage:
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

    def test_url(self, tmp_path: Path) -> str:
        return f"{JOURNAL_PREFIX}{tmp_path / 'contract.journal'}"


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
