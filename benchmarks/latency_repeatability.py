"""How repeatable are latency changes? Paired interleaved timing against today's sequential timing, three fresh runs each.

    .venv/bin/python benchmarks/latency_repeatability.py [--runs 3] [--repeats 100] [--rounds 100] [--threads 1]

ResNet-50 at 224, batch 1, fp32, on the CPU at `--threads` intra-op threads (default 1: on a shared
2-core machine two threads oversubscribe the cores whenever another process runs, and a forward
then takes many times longer; 0 keeps torch's count): the baseline, an A/A copy
of it (same weights, its own memory), SE and CBAM at their paper defaults. Each run is a fresh
process that builds the models and times them by one method, with the same number of timed
forwards per model (`--repeats`):

- paired: attnbench.measure.paired.measure_paired as a grid runs it by default, `--rounds` rounds
  (default: one per timed forward) of repeats/rounds forwards per model, the models in a fresh
  random order each round; change = median per-round ratio, 95 % bootstrap interval over rounds.
- sequential: as the runner timed points before: one whole measurement of the configuration
  thrown away, then the baseline, its copy, SE and CBAM one after another, `warmup` forwards and
  `repeats` timed forwards each; change = ratio of medians, 95 % bootstrap interval resampling
  each model's forwards on its own.

The methods' runs alternate (paired, sequential, paired, ...) so that both meet the same
machine. Printed: each run's A/A, SE and CBAM changes with intervals, and the goals (A/A within
+-1 % with an interval covering zero in every run; SE's intervals overlapping across runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("se", "cbam")

CHILD = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from attnbench.config.point import make_point
from attnbench.measure.latency import LatencyOptions, measure_latency
from attnbench.measure.paired import AA, measure_paired, rounds_for, sequential_change
from attnbench.run.measurements.base import build_point_model

method, repeats, rounds, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
models = {name: build_point_model(make_point("resnet50", name, input_size=size)) for name in ("none", "se", "cbam")}
options = LatencyOptions(device="cpu", batch_size=1, dtype="fp32", warmup=10, repeats=repeats, threads=threads or None)
shape = (3, size, size)
out = {"threads": threads or torch.get_num_threads()}
if method == "paired":
    result = measure_paired(models, "none", shape, options, rounds_for(options, rounds or None))
    for name, change in result.changes.items():
        out["aa" if name == AA else name] = [change.pct, change.ci_low_pct, change.ci_high_pct]
    out["baseline_ms"] = result.members["none"].median_ms
else:
    import copy
    measure_latency(models["none"], shape, options)  # the runner threw the first measurement of a configuration away
    order = [("none", models["none"]), ("aa", copy.deepcopy(models["none"])), ("se", models["se"]), ("cbam", models["cbam"])]
    times = {name: list(measure_latency(model, shape, options).times_ms) for name, model in order}
    for name in ("aa", "se", "cbam"):
        change = sequential_change(times[name], times["none"])
        out[name] = [change.pct, change.ci_low_pct, change.ci_high_pct]
    out["baseline_ms"] = sorted(times["none"])[len(times["none"]) // 2]
print(json.dumps(out))
"""


def one_run(method: str, repeats: int, rounds: int, size: int, threads: int) -> dict:
    """One fresh process timing the four models by `method`."""
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(repeats), str(rounds), str(size), str(threads)], cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def interval(figure: list[float]) -> str:
    pct, low, high = figure
    return f"{pct:+6.2f} % [{low:+6.2f}, {high:+6.2f}]"


def overlap(intervals: list[list[float]]) -> bool:
    """Whether all intervals share a point."""
    return max(i[1] for i in intervals) <= min(i[2] for i in intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=100, help="timed forwards per model (both methods)")
    parser.add_argument("--rounds", type=int, default=0, help="paired rounds (0: one per timed forward, the default)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: torch's default)")
    args = parser.parse_args()
    print(f"ResNet-50, batch 1, fp32, CPU ({args.threads or 'default'} threads), input {args.size}; "
          f"{args.repeats} timed forwards per model "
          f"(paired: {args.rounds or args.repeats} rounds x {max(1, args.repeats // (args.rounds or args.repeats))}); "
          f"{os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    results: dict[str, list[dict]] = {"paired": [], "sequential": []}
    for _ in range(args.runs):
        for method in ("paired", "sequential"):
            results[method].append(one_run(method, args.repeats, args.rounds, args.size, args.threads))
    print(f"\n{'run':>3}  {'method':<10}  {'baseline':>9}  {'A/A change [95 % CI]':<28}  {'SE change [95 % CI]':<28}  "
          f"{'CBAM change [95 % CI]':<28}")
    for run in range(args.runs):
        for method in ("paired", "sequential"):
            r = results[method][run]
            print(f"{run + 1:>3}  {method:<10}  {r['baseline_ms']:7.2f}ms  {interval(r['aa']):<28}  "
                  f"{interval(r['se']):<28}  {interval(r['cbam']):<28}")
    print()
    for method in ("paired", "sequential"):
        runs = results[method]
        aa_ok = all(abs(r["aa"][0]) <= 1.0 and r["aa"][1] <= 0.0 <= r["aa"][2] for r in runs)
        se_ok = overlap([r["se"] for r in runs])
        cbam_ok = overlap([r["cbam"] for r in runs])
        widths = [r["aa"][2] - r["aa"][1] for r in runs]
        print(f"{method:<10}  A/A within +-1 % with its interval covering 0 in every run: {'yes' if aa_ok else 'NO'}; "
              f"SE intervals overlap: {'yes' if se_ok else 'NO'}; CBAM intervals overlap: {'yes' if cbam_ok else 'NO'}; "
              f"A/A interval widths {', '.join(f'{w:.2f}' for w in widths)} pp")
    print(f"(load average {os.getloadavg()[0]:.2f} at the end; times are this machine's: quote the changes, not the ms)")


if __name__ == "__main__":
    main()
