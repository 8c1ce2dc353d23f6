"""`python bench.py --search FILE`: run (or join) the file's search, then export and print its front."""
from __future__ import annotations

import sys
from pathlib import Path

from attnbench.config.ablation import load_ablation
from attnbench.core.paths import check_writable, study_dir
from attnbench.run.runner import options_for
from attnbench.search.export import export_search, front_table
from attnbench.search.loop import open_search_study, run_search
from attnbench.search.setup import parse_search
from attnbench.store.study import default_storage


def search_command(path: str, *, results: Path, storage: str | None = None, device: str = "auto",
                   trials: int | None = None, workers: int = 1, quiet: bool = False) -> None:
    """Validate everything, run the trials this machine should run, export the study's front.

    `path` is the ablation file with a `search:` section; `storage` defaults to the SQLite store
    under `results`; `trials` overrides the file's budget.
    """
    ablation = load_ablation(path)
    setup = parse_search(ablation)
    options = options_for(ablation, device)
    out = check_writable(study_dir(check_writable(results), setup.study, "search.study"), "search.study")
    storage = storage or default_storage(results)
    open_search_study(setup, storage)
    summary = run_search(setup, storage, options, trials=trials, progress=not quiet, workers=workers)
    _, front = export_search(open_search_study(setup, storage), setup, out)
    if not quiet and not front.empty:
        print(front_table(front, setup).to_markdown(index=False))
    files = f"{out}/trials.csv, {out}/pareto.csv" + (f" and {out}/pareto.png" if len(setup.objectives) > 1 else "")
    print(f"{setup.study}: {summary.ran} trials here ({summary.completed} completed, {summary.pruned} pruned, "
          f"{summary.failed} failed, {summary.reused} reused, {summary.retried} retried) in {summary.seconds:.1f} s; "
          f"the study has {summary.finished} finished trials, {len(front)} on the front; exports in {files}",
          file=sys.stderr)
