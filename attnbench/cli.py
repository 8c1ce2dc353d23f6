"""Command line: `python bench.py --grid [FILE]`, `--search FILE`, `--list`, `--report [STUDY ...]`, `--reproduce`.

Bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    action.add_argument("--list", action="store_true",
                        help="list modules with hyperparameters, defaults and ranges, and backbones")
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
    from attnbench.modules import describe_modules, get_module_entry, module_names

    modules = [{"module": name, "kind": (e := get_module_entry(name)).kind, "paper": e.paper, "official code": e.code,
                "placement": e.placement.describe() or "the backbone's default stages, every block"}
               for name in module_names() if name != "none"]
    print(f"{len(modules)} modules, and `none` (the baseline):\n")
    print(pd.DataFrame(modules).to_markdown(index=False))
    print("\nHyperparameters (defaults are the papers'):\n")
    rows = [r for r in describe_modules() if r["hyperparameter"]]
    print(pd.DataFrame(rows)[["module", "hyperparameter", "default", "allowed"]].to_markdown(index=False))
    print("\nBackbones (any listed stage may take a module; the defaults apply when a file names none):\n")
    backbones = []
    for name in backbone_names():
        entry = get_backbone_entry(name)
        backbones.append({"backbone": name, "stages": list(entry.stages), "default stages (gates)": list(entry.default_stages),
                          "default stages (conv modules)": list(entry.conv_stages) if "conv" in entry.accepts else "-",
                          "positions": ", ".join(entry.positions), "min input": entry.min_input, "paper": entry.paper})
    print(pd.DataFrame(backbones).to_markdown(index=False))


def _grid(args: argparse.Namespace) -> int:
    from attnbench.config.ablation import load_ablation
    from attnbench.core.paths import check_writable, study_dir
    from attnbench.report.tables import export_grid
    from attnbench.report.tracking import StudyTracker, default_mode
    from attnbench.run.runner import options_for
    from attnbench.store.grid import run_grid
    from attnbench.store.study import default_storage, open_study, trial_rows

    ablation = load_ablation(args.grid)
    # every output place is checked before the first point runs, so nothing measured is lost to a bad path
    out = check_writable(study_dir(check_writable(args.results), ablation.name, "name"), "name")
    profiles = check_writable(out / "profiles", "profile") if args.profile else None
    options = options_for(ablation, args.device, profiles)
    storage = args.storage or default_storage(args.results)
    open_study(ablation.name, storage, for_writing=True)
    tracker = StudyTracker(ablation.name, args.wandb or default_mode(), args.results,
                           {"storage": storage, "ablation": str(args.grid), "device": options.resolved_device()})
    try:
        summary = run_grid(ablation, storage, options, progress=not args.quiet, on_point=tracker.on_point,
                           workers=args.workers)
    finally:  # interrupted or not, what is done is exported
        frame, table = export_grid(trial_rows(open_study(ablation.name, storage)), out)
        where = tracker.finish(frame)
    if not args.quiet:
        print(table.to_markdown(index=False))
    print(f"{ablation.name}: {summary.completed} measured, {summary.skipped} already done, {summary.failed} failed "
          f"in {summary.seconds:.1f} s; exports in {out}/points.csv and {out}/table.md", file=sys.stderr)
    if where and not args.quiet:
        print(where, file=sys.stderr)
    uncounted = frame.get("uncounted_ops")
    if uncounted is not None and uncounted.fillna("").astype(bool).any():
        print("warning: some ops were not counted; see the 'uncounted ops' column", file=sys.stderr)
    if summary.failed:
        shown = "; ".join(summary.failed_labels[:5]) + (f"; and {summary.failed - 5} more" if summary.failed > 5 else "")
        print(f"bench.py: {summary.failed} of {summary.completed + summary.failed} points failed in this run "
              f"(errors in the 'error' column of {out}/points.csv): {shown}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> None:
    from attnbench.report.tables import report_studies
    from attnbench.store.study import default_storage

    for path in report_studies(args.storage or default_storage(args.results), args.report, args.results):
        print(path)


def _reproduce(args: argparse.Namespace) -> None:
    from attnbench.core.paths import check_writable
    from attnbench.report.published import write_reproduction

    check_writable(args.results)
    path, text = write_reproduction(args.results)
    print(text)
    print(f"written to {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 done, 1 some points failed, 2 bad input, 130/143 interrupted."""
    args = _parser().parse_args(argv)
    from attnbench.core.errors import ConfigError
    from attnbench.store.processes import Terminated, terminate_as_interrupt
    from attnbench.store.storage import redact

    try:
        with terminate_as_interrupt():
            if args.list:
                _list()
            elif args.report is not None:
                _report(args)
            elif args.reproduce:
                _reproduce(args)
            elif args.search:
                from attnbench.search.command import search_command

                search_command(args.search, results=args.results, storage=args.storage, device=args.device,
                               trials=args.trials, workers=args.workers, quiet=args.quiet)
            else:
                return _grid(args)
    except ConfigError as error:
        print(f"bench.py: error: {redact(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        signal_name = "SIGTERM" if isinstance(interruption, Terminated) else "Ctrl-C"
        print(f"bench.py: stopped by {signal_name}; everything measured so far is in the store and the exports, "
              "re-run to resume", file=sys.stderr)
        return 143 if isinstance(interruption, Terminated) else 130
    return 0
