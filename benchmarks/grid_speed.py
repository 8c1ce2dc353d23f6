"""The default grid against bare fvcore, side by side in one process tree: both times and their ratio.

    .venv/bin/python benchmarks/grid_speed.py [--grid FILE] [--rounds N] [--keep DIR]

The grid: `python bench.py --grid FILE --results TMP --quiet --wandb disabled` from a fresh store in
a temporary folder, timed as the whole command (start-up, both counters, per-slot breakdown, the
store and the exports). The reference: a child process that builds every point's model the way
the runner did before shape-only counting (seeded, fully initialised) and times only
`fvcore.nn.FlopCountAnalysis(model, x).total()` on each, in eval mode under no_grad with its
warnings off (the building and the imports are not timed: the reference is as cheap as fvcore
gets). The two alternate `--rounds` times (reference first), and the ratio is grid time over
reference time of each round. Absolute times depend on the machine and its load; quote the ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BARE = r"""
import sys, time, warnings
import torch
warnings.filterwarnings("ignore")
from fvcore.nn import FlopCountAnalysis
from attnbench.config.ablation import load_ablation
from attnbench.run.measurements.base import build_point_model

points = load_ablation(sys.argv[1]).points
seconds, counted, skipped = 0.0, 0, 0
for point in points:
    try:
        model = build_point_model(point).eval()  # prebuilt: not timed
    except Exception:
        skipped += 1
        continue
    x = torch.randn((1, *point.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        started = time.perf_counter()
        try:
            FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
        except Exception:
            skipped += 1
            continue
        seconds += time.perf_counter() - started
    counted += 1
print(f"{seconds} {counted} {skipped}")
"""


def bare_fvcore(grid: Path) -> tuple[float, int, int]:
    """Seconds bare fvcore takes to count the grid's models (building excluded), models counted, models skipped."""
    out = subprocess.run([sys.executable, "-c", BARE, str(grid)], cwd=ROOT, check=True, capture_output=True, text=True)
    seconds, counted, skipped = out.stdout.split()[-3:]
    return float(seconds), int(counted), int(skipped)


def grid_command(grid: Path, results: Path, workers: int = 1) -> tuple[float, str]:
    """Wall seconds of the whole `bench.py --grid` command from a fresh store, and its summary line."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "bench.py", "--grid", str(grid), "--results", str(results), "--quiet",
                          "--wandb", "disabled", "--workers", str(workers)], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    seconds = time.perf_counter() - started
    if out.returncode not in (0, 1):  # 1: some points failed, which the summary names
        raise SystemExit(f"bench.py --grid exited {out.returncode}:\n{out.stderr[-2000:]}")
    summary = next((line for line in out.stderr.splitlines() if " measured, " in line), out.stderr.strip()[-300:])
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "ablations" / "default.yaml")
    parser.add_argument("--rounds", type=int, default=1, help="reference/grid pairs, alternating (default 1)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the last grid's results here (points.csv...)")
    parser.add_argument("--workers", type=int, default=1, help="bench.py --workers (default 1, the default command)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; grid {args.grid}")
    if args.keep is not None and args.keep.exists():
        raise SystemExit(f"--keep {args.keep}: exists already (the grid must start from a fresh store)")
    ratios = []
    for round_ in range(1, args.rounds + 1):
        reference, counted, skipped = bare_fvcore(args.grid)
        with tempfile.TemporaryDirectory(prefix="grid_speed_") as folder:
            last = round_ == args.rounds
            results = args.keep if args.keep is not None and last else Path(folder) / "results"
            seconds, summary = grid_command(args.grid, results, args.workers)
        ratios.append(seconds / reference)
        print(f"round {round_}: bare fvcore over {counted} prebuilt models ({skipped} could not be counted): "
              f"{reference:.1f} s; bench.py --grid (--workers {args.workers}), whole command: {seconds:.1f} s; "
              f"ratio grid / bare fvcore = {seconds / reference:.3f}")
        print(f"  grid: {summary}")
    if len(ratios) > 1:
        print(f"ratios: {', '.join(f'{r:.3f}' for r in ratios)}; median {sorted(ratios)[len(ratios) // 2]:.3f}")


if __name__ == "__main__":
    main()
