"""Study names become folders: none may climb out of results/ (issue 9, item 2), in a file or in a shared store."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hostile import assert_one_line_refusal, completed_rows, write

from attnbench.cli import main

BACKBONES = [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}]
SEARCH = {"objectives": ["macs", "params"], "sampler": "random", "trials": 2,
          "modules": {"se": {"reduction": {"low": 2, "high": 16, "log": True}}}}


def files_outside(root: Path, results: Path) -> set[Path]:
    """Every path under `root` that is not inside `results` (what a run may not add to)."""
    return {p for p in root.rglob("*") if results != p and results not in p.parents}


def bad_names(tmp_path: Path) -> dict[str, str]:
    # the absolute path lies in tmp_path: on a tree without the fix a run writes there, and nowhere else
    return {"parent": "..", "current": ".", "separator": "a/b", "absolute": str(tmp_path / "abs"),
            "control character": "bad\x1bname", "newline": "two\nlines", "backslash": "a\\b"}


NAME_CASES = ["parent", "current", "separator", "absolute", "control character", "newline", "backslash"]


@pytest.mark.parametrize("case", NAME_CASES)
def test_a_grid_name_that_is_not_a_folder_is_one_line_and_writes_nothing(tmp_path: Path, results: Path, capsys,
                                                                         case: str) -> None:
    name = bad_names(tmp_path)[case]
    grid = write(tmp_path / "grid.yaml", {"name": name, "backbones": BACKBONES, "variants": ["se"]})
    before, outside = completed_rows(results / "attnbench.db"), files_outside(tmp_path, results)
    status = main(["--grid", str(grid), "--results", str(results), "--wandb", "disabled", "--quiet"])
    assert_one_line_refusal(capsys, status, "name=", "a study name usable as one folder name")
    assert completed_rows(results / "attnbench.db") == before
    assert files_outside(tmp_path, results) == outside
    assert sorted(p.name for p in results.iterdir()) == ["attnbench.db", "earlier"]


@pytest.mark.parametrize("case", NAME_CASES)
def test_a_search_study_that_is_not_a_folder_is_one_line_and_writes_nothing(tmp_path: Path, results: Path, capsys,
                                                                            case: str) -> None:
    name = bad_names(tmp_path)[case]
    search = write(tmp_path / "search.yaml", {"name": "fine", "backbones": BACKBONES, "search": {**SEARCH, "study": name}})
    before, outside = completed_rows(results / "attnbench.db"), files_outside(tmp_path, results)
    status = main(["--search", str(search), "--results", str(results), "--quiet"])
    assert_one_line_refusal(capsys, status, "search.study=", "a study name usable as one folder name")
    assert completed_rows(results / "attnbench.db") == before
    assert files_outside(tmp_path, results) == outside


def _shared_store(path: Path, names: list[str], measured: Path) -> str:
    """A SQLite store written by 'another program' (optuna directly): the measured trials of `earlier` in each study."""
    url = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.load_study(study_name="earlier", storage=f"sqlite:///{measured / 'attnbench.db'}")
    for name in names:
        study = optuna.create_study(study_name=name, storage=url, direction="minimize")
        for measured_trial in source.get_trials(deepcopy=False):
            trial = study.ask()
            for key, value in measured_trial.user_attrs.items():
                trial.set_user_attr(key, value)
            study.tell(trial, measured_trial.value)
    return url


def test_report_skips_stored_names_that_are_not_folders_with_a_warning_each(tmp_path: Path, measured: Path,
                                                                           capsys) -> None:
    work = tmp_path / "work"
    results = work / "results"
    results.mkdir(parents=True)
    absolute = str(tmp_path / "abs" / "path")
    storage = _shared_store(work / "shared.db", ["normal", "../../x", absolute], measured)
    before, outside = completed_rows(work / "shared.db"), files_outside(tmp_path, results)
    status = main(["--report", "--storage", storage, "--results", str(results)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Traceback" not in captured.err, captured.err
    warnings = [line for line in captured.err.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(line.startswith("warning: skipping study ") for line in warnings), captured.err
    assert any("'../../x'" in line for line in warnings) and any(repr(absolute) in line for line in warnings)
    assert all("cannot be a folder" in line for line in warnings)
    assert captured.out.split() == [str(results / "normal" / "report.md")]
    assert [p.name for p in results.iterdir()] == ["normal"]
    assert files_outside(tmp_path, results) == outside, "nothing written outside results/"
    assert not (tmp_path / "x").exists() and not Path(absolute).exists()
    assert completed_rows(work / "shared.db") == before


@pytest.mark.parametrize("name", ["../../x", "..", "a/b"])
def test_report_refuses_a_named_study_that_is_not_a_folder(tmp_path: Path, results: Path, capsys, name: str) -> None:
    before, outside = completed_rows(results / "attnbench.db"), files_outside(tmp_path, results)
    status = main(["--report", name, "--results", str(results)])
    assert_one_line_refusal(capsys, status, "report=", "a study name usable as one folder name")
    assert completed_rows(results / "attnbench.db") == before
    assert files_outside(tmp_path, results) == outside


def test_a_symlinked_study_folder_pointing_outside_results_is_refused(tmp_path: Path, results: Path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (results / "linked").symlink_to(elsewhere, target_is_directory=True)
    grid = write(tmp_path / "grid.yaml", {"name": "linked", "backbones": BACKBONES, "variants": ["se"]})
    before = completed_rows(results / "attnbench.db")
    status = main(["--grid", str(grid), "--results", str(results), "--wandb", "disabled", "--quiet"])
    assert_one_line_refusal(capsys, status, "name='linked'", "points outside it")
    assert list(elsewhere.iterdir()) == []
    assert completed_rows(results / "attnbench.db") == before
