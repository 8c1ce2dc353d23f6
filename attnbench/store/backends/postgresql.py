"""`postgresql://USER:PASSWORD@HOST:PORT/DB`: several machines on one study (heartbeats; the `postgres` extra)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from optuna.storages import BaseStorage

from attnbench.store.backends.base import Backend, register_backend
from attnbench.store.backends.rdb import check_port, open_rdb
from attnbench.store.urls import quoted_userinfo

CONNECT_TIMEOUT_S = 10  # fail fast, with the host named, when a database server does not answer
TEST_URL_VARIABLE = "ATTNBENCH_TEST_POSTGRES_URL"


@register_backend
class PostgreSQL(Backend):
    order = 30
    scheme = "postgresql"
    heartbeats = True
    example = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    untested_because = f"{TEST_URL_VARIABLE} is not set (.ci/run sets it where it can start a PostgreSQL server)"

    def open(self, url: str, retry_stale: bool) -> BaseStorage:
        quoted = quoted_userinfo(url)  # a raw @ or / in the password must not become the host
        check_port(quoted, url)
        return open_rdb(_with_driver(quoted), url, {"connect_timeout": CONNECT_TIMEOUT_S}, retry_stale,
                        'for PostgreSQL: pip install -e ".[postgres]"')

    def test_url(self, tmp_path: Path) -> str | None:
        return os.environ.get(TEST_URL_VARIABLE) or None  # a shared server: tests use fresh study names


def _with_driver(url: str) -> str:
    """postgresql:// through psycopg2 (the `postgres` extra) where psycopg 3, SQLAlchemy 2.1's default, is absent."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url
