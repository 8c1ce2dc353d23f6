"""Stores that cannot be read or written, and storage URLs that are wrong or secret: one line, exit 2, nothing written.

Issue 9, items 5, 6 and 10. Each test runs `main()` against a results directory whose store
already holds a measured grid (`results`), and checks that its rows are intact afterwards;
a store the test breaks on purpose keeps its bytes.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import assert_one_line_refusal, completed_rows, write

from attnbench.cli import main

BACKBONES = [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}]
MORE = {"name": "more", "backbones": BACKBONES, "variants": [{"module": "eca"}]}


def grid_args(grid: Path, results: Path, *more: str) -> list[str]:
    return ["--grid", str(grid), "--results", str(results), "--wandb", "disabled", "--quiet", *more]


def refused(capsys, results: Path, tmp_path: Path, storage: str, *fragments: str) -> str:
    """Run a new grid on `storage`: one line, exit 2, and the default store's earlier rows intact."""
    before = completed_rows(results / "attnbench.db")
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, results, "--storage", storage))
    line = assert_one_line_refusal(capsys, status, *fragments)
    assert completed_rows(results / "attnbench.db") == before
    assert not (results / "more" / "points.csv").exists(), "nothing exported for a run that never started"
    return line


# --- SQLite files that cannot be read or written -------------------------------------------------------------------


def test_a_damaged_sqlite_file_is_one_line_and_keeps_its_bytes(tmp_path: Path, results: Path, capsys) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(os.urandom(8192))
    bytes_before = damaged.read_bytes()
    refused(capsys, results, tmp_path, f"sqlite:///{damaged}", "storage=", str(damaged), "not a database")
    assert damaged.read_bytes() == bytes_before


def test_a_damaged_default_store_is_one_line(tmp_path: Path, results: Path, capsys) -> None:
    """The default store itself damaged (the realistic case: a disk error, a half-copied file)."""
    db = results / "attnbench.db"
    db.write_bytes(db.read_bytes()[:4096] + os.urandom(4096))
    bytes_before = db.read_bytes()
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "storage=", str(db))
    assert db.read_bytes() == bytes_before


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`path` made immutable with chattr +i (root ignores file modes, not this); skip where that is impossible."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: no way to make a file read-only for root")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i failed here ({done.stderr.strip()}): no way to make a file read-only for root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only for the block: chmod where the modes bind (not root), chattr +i where they do not."""
    if os.geteuid() == 0:
        with immutable(path):
            yield
        return
    mode = path.stat().st_mode
    path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        path.chmod(mode)


SEARCH = {"name": "fine", "backbones": BACKBONES,
          "search": {"study": "found", "objectives": ["macs", "params"], "sampler": "random", "trials": 2,
                     "modules": {"se": {"reduction": {"low": 2, "high": 16, "log": True}}}}}


def test_a_read_only_sqlite_file_is_one_line(tmp_path: Path, results: Path, capsys) -> None:
    store = tmp_path / "readonly.db"
    shutil.copy(results / "attnbench.db", store)
    rows = completed_rows(store)
    with read_only(store):
        bytes_before = store.read_bytes()
        refused(capsys, results, tmp_path, f"sqlite:///{store}", "storage=", "a store that can be read and written",
                "readonly database")
        assert store.read_bytes() == bytes_before
    assert completed_rows(store) == rows


def test_a_search_on_a_read_only_sqlite_file_is_one_line(tmp_path: Path, results: Path, capsys) -> None:
    store = tmp_path / "readonly.db"
    shutil.copy(results / "attnbench.db", store)
    rows = completed_rows(store)
    search = write(tmp_path / "search.yaml", SEARCH)
    with read_only(store):
        status = main(["--search", str(search), "--results", str(results), "--quiet", "--storage", f"sqlite:///{store}"])
        assert_one_line_refusal(capsys, status, "storage=", "readonly database")
    assert completed_rows(store) == rows


@contextlib.contextmanager
def tiny_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` (needs root and mount rights: skipped with the reason elsewhere)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs to fill ({done.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write to `folder` until its file system is full."""
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            while out.write(b"\0" * 4096):
                pass
        except OSError:
            pass


def test_a_full_sqlite_store_is_one_line(tmp_path: Path, results: Path, capsys) -> None:
    with tiny_filesystem(tmp_path / "tiny", "1m") as tiny:
        store = tiny / "store.db"
        shutil.copy(results / "attnbench.db", store)
        rows = completed_rows(store)
        fill(tiny)
        bytes_before = store.read_bytes()
        refused(capsys, results, tmp_path, f"sqlite:///{store}", "storage=", "a store that can be read and written",
                "full")
        assert store.read_bytes() == bytes_before
        assert completed_rows(store) == rows


# --- journal files ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal store holding one completed grid (copy it before writing)."""
    folder = tmp_path_factory.mktemp("journal")
    grid = write(folder / "earlier.yaml", {"name": "earlier", "backbones": BACKBONES,
                                           "variants": [{"module": "se", "grid": {"reduction": [4, 8]}}]})
    journal = folder / "store.journal"
    assert main(grid_args(grid, folder / "results", "--storage", f"journal:{journal}")) == 0
    assert len(journal.read_bytes().splitlines()) > 10
    return journal


def _corrupt_middle(data: bytes) -> bytes:
    lines = data.split(b"\n")
    middle = len(lines) // 2
    return b"\n".join(lines[:middle] + [b'{"op_code": 5, "worker_id": "broken'] + lines[middle:])


def _truncate_last(data: bytes) -> bytes:
    return data.rstrip(b"\n")[:-7]  # the last record cut mid-way, as a crash mid-write leaves it


@pytest.mark.parametrize("case, words", [
    ("corrupt line in the middle", "is not a journal record"),
    ("truncated last line", "is cut off (no newline at its end)"),
])
def test_a_broken_journal_is_one_line_and_left_untouched(tmp_path: Path, results: Path, measured_journal: Path,
                                                         capsys, case: str, words: str) -> None:
    journal = tmp_path / "store.journal"
    damage = _corrupt_middle if case.startswith("corrupt") else _truncate_last
    journal.write_bytes(damage(measured_journal.read_bytes()))
    bytes_before = journal.read_bytes()
    line = refused(capsys, results, tmp_path, f"journal:{journal}", "storage=", words, "nothing was written to it")
    assert str(journal) in line
    assert journal.read_bytes() == bytes_before, "a run must not append to a journal it cannot read"


@pytest.mark.parametrize("case", ["damaged sqlite", "corrupt journal", "truncated journal"])
def test_a_report_from_a_broken_store_is_one_line(tmp_path: Path, results: Path, measured_journal: Path, capsys,
                                                  case: str) -> None:
    if case == "damaged sqlite":
        store, storage = tmp_path / "damaged.db", f"sqlite:///{tmp_path / 'damaged.db'}"
        store.write_bytes(os.urandom(8192))
    else:
        store, storage = tmp_path / "store.journal", f"journal:{tmp_path / 'store.journal'}"
        damage = _corrupt_middle if case.startswith("corrupt") else _truncate_last
        store.write_bytes(damage(measured_journal.read_bytes()))
    bytes_before = store.read_bytes()
    status = main(["--report", "--storage", storage, "--results", str(results)])
    assert_one_line_refusal(capsys, status, "storage=")
    assert store.read_bytes() == bytes_before
    assert sorted(p.name for p in results.iterdir()) == ["attnbench.db", "earlier"]


def test_a_whole_journal_still_opens_and_resumes(tmp_path: Path, measured_journal: Path, capsys) -> None:
    """The control: the same journal undamaged skips its done points."""
    journal = tmp_path / "store.journal"
    shutil.copy(measured_journal, journal)
    grid = write(tmp_path / "earlier.yaml", {"name": "earlier", "backbones": BACKBONES,
                                             "variants": [{"module": "se", "grid": {"reduction": [4, 8]}}]})
    assert main(grid_args(grid, tmp_path / "results", "--storage", f"journal:{journal}")) == 0
    assert "0 measured, 3 already done, 0 failed" in capsys.readouterr().err


# --- URLs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_a_postgresql_url_with_a_bad_port_is_one_line_without_the_password(tmp_path: Path, results: Path, capsys,
                                                                           port: str) -> None:
    line = refused(capsys, results, tmp_path, f"postgresql://bench:hunter2secret@db.example:{port}/bench",
                   "storage=", "port")
    assert "hunter2secret" not in line


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_sqlite_store_is_refused(tmp_path: Path, results: Path, capsys, url: str) -> None:
    refused(capsys, results, tmp_path, url, "storage=", "an in-memory database vanishes")


@pytest.mark.parametrize("password", [
    "pxq@ssw@wrd",       # raw @: the tail after the first @ leaked as a "host name"
    "mys ecr etp",       # spaces: printed whole
    "abc:def/ghi@jkl mno",  # every separator at once
    "zq%40wk",           # already percent-encoded
])
def test_a_password_is_never_printed_however_spelled(tmp_path: Path, results: Path, capsys, password: str) -> None:
    """Port 1 on localhost refuses at once: the error names the right host and never any piece of the password."""
    url = f"postgresql://bench:{password}@127.0.0.1:1/bench"
    before = completed_rows(results / "attnbench.db")
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, results, "--storage", url))
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench.py: error: storage='postgresql://***@127.0.0.1:1/bench'"), \
        captured.err
    pieces = [piece for piece in re.split(r"[@:/ %]", password) if len(piece) >= 3]
    assert pieces and not [piece for piece in pieces if piece in captured.err + captured.out], captured.err
    assert "connecting to 127.0.0.1:1 failed" in lines[0], "the host is the one after the userinfo, not a piece of it"
    assert completed_rows(results / "attnbench.db") == before


# --- output folders, checked before the first point --------------------------------------------------------------


def _trial_count(results: Path) -> int:
    return len(completed_rows(results / "attnbench.db"))


def test_results_being_a_file_is_one_line_before_anything_runs(tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    results.write_text("not a folder")
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "results=", "a folder (this path is a file)")
    assert results.read_text() == "not a folder"


def test_results_under_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, tmp_path / "file" / "results"))
    assert_one_line_refusal(capsys, status, "results=", "a writable directory")


def test_an_unwritable_results_folder_is_refused_before_the_first_point(tmp_path: Path, results: Path, capsys) -> None:
    before = completed_rows(results / "attnbench.db")
    grid = write(tmp_path / "more.yaml", MORE)
    with read_only(results):
        status = main(grid_args(grid, results, "--storage", f"sqlite:///{tmp_path / 'elsewhere.db'}"))
    assert_one_line_refusal(capsys, status, "results=", str(results), "a writable directory")
    assert completed_rows(results / "attnbench.db") == before
    assert not (tmp_path / "elsewhere.db").exists(), "no store, no trial: refused before anything"


def test_a_file_where_the_study_folder_goes_is_refused_before_the_first_point(tmp_path: Path, results: Path,
                                                                              capsys) -> None:
    (results / "more").write_text("a file in the way")
    before = completed_rows(results / "attnbench.db")
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "name=", str(results / "more"), "a folder (this path is a file)")
    assert completed_rows(results / "attnbench.db") == before, "no trial created, no study either"
    assert (results / "more").read_text() == "a file in the way"


def test_a_file_where_the_profile_folder_goes_is_refused_before_the_first_point(tmp_path: Path, results: Path,
                                                                                capsys) -> None:
    (results / "more").mkdir()
    (results / "more" / "profiles").write_text("")
    before = completed_rows(results / "attnbench.db")
    grid = write(tmp_path / "more.yaml", MORE)
    status = main(grid_args(grid, results, "--profile"))
    assert_one_line_refusal(capsys, status, "profile=", "a folder (this path is a file)")
    assert completed_rows(results / "attnbench.db") == before


def test_a_file_where_a_search_folder_goes_is_refused_before_the_first_trial(tmp_path: Path, results: Path,
                                                                             capsys) -> None:
    (results / "found").write_text("")
    search = write(tmp_path / "search.yaml", SEARCH)
    before = completed_rows(results / "attnbench.db")
    status = main(["--search", str(search), "--results", str(results), "--quiet"])
    assert_one_line_refusal(capsys, status, "search.study=", "a folder (this path is a file)")
    assert completed_rows(results / "attnbench.db") == before


def test_an_unwritable_report_folder_is_one_line(tmp_path: Path, results: Path, capsys) -> None:
    shutil.rmtree(results / "earlier")
    (results / "earlier").write_text("in the way")
    before = completed_rows(results / "attnbench.db")
    status = main(["--report", "--results", str(results)])
    assert_one_line_refusal(capsys, status, "report=", "a folder (this path is a file)")
    assert completed_rows(results / "attnbench.db") == before


# --- the ablation file itself -------------------------------------------------------------------------------------


def test_a_non_utf8_ablation_file_is_one_line_naming_it(tmp_path: Path, results: Path, capsys) -> None:
    grid = tmp_path / "latin1.yaml"
    grid.write_bytes("name: café\nbackbones: [cifar_resnet20]\nvariants: [se]\n".encode("latin-1"))
    before = completed_rows(results / "attnbench.db")
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "ablation file=", str(grid), "a UTF-8 text file", "byte 9")
    assert completed_rows(results / "attnbench.db") == before


def test_a_report_of_rows_missing_columns_is_written_or_one_line(tmp_path: Path, capsys) -> None:
    import optuna

    from attnbench.config.ablation import parse_ablation

    storage = f"sqlite:///{tmp_path / 'foreign.db'}"
    study = optuna.create_study(study_name="foreign", storage=storage)
    point = parse_ablation({"name": "foreign", "backbones": BACKBONES, "variants": ["se"]}).points[0]
    trial = study.ask()
    for key, value in {"point": point.to_dict(), "point_key": point.key, "label": point.variant_label(),
                       "result": {"params": 1000, "macs": 5000}}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 5000.0)
    status = main(["--report", "--storage", storage, "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and status in (0, 2), err
