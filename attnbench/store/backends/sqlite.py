"""`sqlite:///PATH`: one file, the default; good for one process or a few on one machine (heartbeats)."""
from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage

from attnbench.core.errors import ConfigError
from attnbench.store.backends.base import Backend, register_backend
from attnbench.store.backends.rdb import check_port, open_rdb
from attnbench.store.urls import redact

SQLITE_BUSY_TIMEOUT_S = 60  # several processes take turns writing one SQLite file


@register_backend
class SQLite(Backend):
    order = 10
    scheme = "sqlite"
    heartbeats = True
    example = "sqlite:///FILE"

    def open(self, url: str, retry_stale: bool) -> BaseStorage:
        check_port(url, url)
        if _in_memory(url):
            raise ConfigError("storage", redact(url), "a SQLite file, sqlite:///PATH: an in-memory database vanishes "
                              "when the process ends, and other workers cannot see it")
        return open_rdb(url, url, {"timeout": SQLITE_BUSY_TIMEOUT_S}, retry_stale, "SQLite comes with Python")

    def test_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.db'}"


def _in_memory(url: str) -> bool:
    """Whether a SQLite URL names an in-memory database (sqlite://, sqlite:///:memory:, mode=memory)."""
    path = url.split("://", 1)[1].split("?", 1)[0] if "://" in url else ""
    return path in ("", "/") or path.removeprefix("/").startswith(":memory:") or "mode=memory" in url
