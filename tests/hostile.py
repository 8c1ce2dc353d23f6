"""Shared by the hostile-input tests: a store with measured rows, and a check that bad input leaves it intact."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import yaml

from attnbench.cli import main

EARLIER = {
    "name": "earlier",
    "backbones": [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}],
    "variants": [{"module": "se", "grid": {"reduction": [4]}}],
}


def write(path: Path, data: object) -> Path:
    """A YAML (or text) file at `path`."""
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def completed_rows(db: Path) -> list[tuple]:
    """(study, number, state) of every trial in a SQLite store."""
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "select studies.study_name, trials.number, trials.state from trials join studies using (study_id) "
            "order by 1, 2").fetchall()


def measured_store(folder: Path) -> Path:
    """A results directory under `folder` whose store holds the completed `earlier` grid."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = write(folder / "earlier.yaml", EARLIER)
    results = folder / "results"
    assert main(["--grid", str(grid), "--results", str(results), "--wandb", "disabled", "--quiet"]) == 0
    return results


def fresh_copy(measured: Path, tmp_path: Path) -> Path:
    """A private copy of a measured results directory."""
    results = tmp_path / "results"
    shutil.copytree(measured, results)
    return results


def assert_one_line_refusal(capsys, status: int, *fragments: str) -> str:
    """Exit status 2 and exactly one stderr line, `bench.py: error: ...`, containing every fragment; no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("bench.py: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
