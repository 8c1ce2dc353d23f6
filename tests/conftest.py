"""Fixtures shared by several test files."""
from __future__ import annotations

from pathlib import Path

import pytest
from hostile import fresh_copy, measured_store


@pytest.fixture(scope="session")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results directory holding one completed grid, made once per test session (copy it before writing)."""
    return measured_store(tmp_path_factory.mktemp("measured"))


@pytest.fixture
def results(measured: Path, tmp_path: Path) -> Path:
    """A private copy of `measured` for a test to run bad input against."""
    return fresh_copy(measured, tmp_path)
