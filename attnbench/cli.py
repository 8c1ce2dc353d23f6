"""Command line: `python bench.py --grid [FILE]`, `--search FILE`, `--list`, `--report [STUDY ...]`, `--reproduce`. Bad input is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_GRID = Path("ablations/default.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="Compare attention modules in fixed backbones: params, MACs/FLOPs, and more, stored in an Optuna study.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--grid", nargs="?", const=str(DEFAULT_GRID), metavar="FILE",
                        help=f"run every point of an ablation file (default: {DEFAULT_GRID})")
    action.add_argument("--search", metavar="FILE",
                        help="Optuna search over the hyperparameters in FILE's search: section (see docs/search.md)")
    action.add_argument("--list", action="store_true", help="list modules with hyperparameters, defaults and ranges, and backbones")
    action.add_argument("--report", nargs="*", metavar="STUDY",
                        help="write report.md, table.tex, plots (PNG, PDF) and points.csv under RESULTS/STUDY/ from the store "
                             "(default: every study in the storage)")
    action.add_argument("--reproduce", action="store_true",
                        help="measure the backbones' params and MACs beside published figures; writes RESULTS/reproduction.md")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (CUDA when present; default)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///RESULTS/attnbench.db)")
    parser.add_argument("--results", default="results", type=Path, help="directory for the store and exports (default: results)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    parser.add_argument("--profile", action="store_true",
                        help="--grid: write torch.profiler traces per point under RESULTS/GRID/profiles/ "
                             "(open with `tensorboard --logdir`, needs the `profile` extra, or in Perfetto)")
    parser.add_argument("--trials", type=int, default=None,
                        help="--search: finished trials the study should have, over all workers (default: the file's)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the grid or search on this machine (default: 1); for several machines "
                             "run the same command on each with one --storage")
    parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default=None,
                        help="W&B table of the grid's points: offline run under RESULTS/wandb (default; `wandb sync` uploads "
                             "it), online (after `wandb login`), or disabled; default from WANDB_MODE when set")
    return parser


def _list() -> None:
    import pandas as pd

    from attnbench.backbones import backbone_names, get_backbone_entry
    from attnbench.modules import describe_modules

    print(pd.DataFrame(describe_modules()).drop(columns="paper").to_markdown(index=False))
    print()
    rows = []
    for name in backbone_names():
        entry = get_backbone_entry(name)
        rows.append({"backbone": name, "stages": list(entry.stages), "default stages": list(entry.default_stages),
                     "dcn stages": list(entry.conv_stages), "positions": ", ".join(entry.positions),
                     "min input": entry.min_input})
    print(pd.DataFrame(rows).to_markdown(index=False))


def _grid(args: argparse.Namespace) -> None:
    from attnbench.config.ablation import load_ablation
    from attnbench.store.grid import run_grid
    from attnbench.report.tables import export_grid
    from attnbench.run.runner import options_for
    from attnbench.store.study import check_writable, default_storage, open_study, trial_rows
    from attnbench.report.tracking import StudyTracker, default_mode

    ablation = load_ablation(args.grid)
    check_writable(args.results)
    options = options_for(ablation, args.device, args.results / ablation.name / "profiles" if args.profile else None)
    storage = args.storage or default_storage(args.results)
    tracker = StudyTracker(ablation.name, args.wandb or default_mode(), args.results,
                           {"storage": storage, "ablation": str(args.grid), "device": options.resolved_device()})
    summary = run_grid(ablation, storage, options, progress=not args.quiet, on_point=tracker.on_point,
                       workers=args.workers)
    frame, table = export_grid(trial_rows(open_study(ablation.name, storage)), args.results / ablation.name)
    where = tracker.finish(frame)
    if not args.quiet:
        print(table.to_markdown(index=False))
    out = args.results / ablation.name
    print(f"{ablation.name}: {summary.completed} measured, {summary.skipped} already done, {summary.failed} failed "
          f"in {summary.seconds:.1f} s; exports in {out}/points.csv and {out}/table.md", file=sys.stderr)
    if where and not args.quiet:
        print(where, file=sys.stderr)
    uncounted = frame.get("uncounted_ops")
    if uncounted is not None and uncounted.fillna("").astype(bool).any():
        print("warning: some ops were not counted; see the 'uncounted ops' column", file=sys.stderr)


def _report(args: argparse.Namespace) -> None:
    from attnbench.report.tables import report_studies
    from attnbench.store.study import default_storage

    for path in report_studies(args.storage or default_storage(args.results), args.report, args.results):
        print(path)


def _reproduce(args: argparse.Namespace) -> None:
    from attnbench.report.published import write_reproduction
    from attnbench.store.study import check_writable

    check_writable(args.results)
    path, text = write_reproduction(args.results)
    print(text)
    print(f"written to {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    from attnbench.errors import ConfigError

    try:
        if args.list:
            _list()
        elif args.report is not None:
            _report(args)
        elif args.reproduce:
            _reproduce(args)
        elif args.search:
            from attnbench.search.command import search_command

            search_command(args)
        else:
            _grid(args)
    except ConfigError as error:
        print(f"bench.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench.py: interrupted; everything measured so far is in the store, re-run to resume", file=sys.stderr)
        return 130
    return 0
