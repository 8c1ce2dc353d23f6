"""PostgreSQL, the storage for several machines: shared grid and search with killed workers, and connection errors.

Needs a server: ATTNBENCH_TEST_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:PORT/DB (.ci/run starts one on
127.0.0.1:5433 and sets it). Each test works in a schema of its own, dropped afterwards.
"""
from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attnbench.core.errors import ConfigError
from attnbench.store.storage import open_storage

URL = os.environ.get("ATTNBENCH_TEST_POSTGRES_URL", "")
needs_server = pytest.mark.skipif(
    not URL, reason="PostgreSQL NOT TESTED: set ATTNBENCH_TEST_POSTGRES_URL (.ci/run does) to run the multi-machine tests")


@pytest.fixture
def schema_url() -> Iterator[str]:
    """The test server's URL with a fresh schema first on the search path."""
    psycopg2 = pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2-binary) is not installed")
    schema = f"attnbench_test_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(URL)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{URL}{'&' if '?' in URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        connection.close()


@needs_server
@pytest.mark.slow
def test_postgres_three_workers_two_killed_elsewhere(schema_url: str, tmp_path: Path) -> None:
    from test_workers import shared_session

    shared_session(schema_url, tmp_path, elsewhere=True)


def test_unreachable_server_is_named_without_its_password() -> None:
    pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2-binary) is not installed")
    with pytest.raises(ConfigError) as error:
        open_storage("postgresql://bench:pa55word@127.0.0.1:1/optuna")
    message = str(error.value)
    assert message.startswith("storage='postgresql://***@127.0.0.1:1/optuna' is not allowed: a reachable storage; ")
    assert "connecting to 127.0.0.1:1 failed: " in message and "pa55word" not in message


def test_a_missing_driver_says_what_to_install() -> None:
    if importlib.util.find_spec("pg8000") is not None:
        pytest.skip("pg8000 is installed: no driver is missing")
    with pytest.raises(ConfigError, match=r"pg8000 is missing; for PostgreSQL: pip install -e \".\[postgres\]\""):
        open_storage("postgresql+pg8000://bench:pa55word@127.0.0.1:1/optuna")
