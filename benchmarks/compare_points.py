"""Two points.csv exports, column by column, for the counts: which values differ, ignoring timings and the environment.

    .venv/bin/python benchmarks/compare_points.py BEFORE.csv AFTER.csv

Rows are matched by point key (`key`, else `point_key`); columns that time something, describe the
machine or the run, or hold per-trial bookkeeping are left out (IGNORED, the `env/` family).
Exit status 0 when every compared value is equal, 1 otherwise.
"""
from __future__ import annotations

import math
import sys

import pandas as pd

IGNORED_PREFIXES = ("env/", "slot/")
IGNORED = {"seconds", "number", "trial", "datetime_start", "datetime_complete", "duration", "state", "error",
           "latency_median_ms", "latency_iqr_ms", "latency_p10_ms", "latency_p90_ms", "latency_mean_ms",
           "latency_std_ms", "throughput_ips", "attention_latency_ms", "train_seconds", "train_images_per_s",
           "delta_latency_median_ms", "delta_latency_median_ms_pct", "delta_attention_latency_ms",
           "delta_attention_latency_ms_pct", "delta_throughput_ips", "delta_throughput_ips_pct", "profile_traces"}


def _key_column(frame: pd.DataFrame) -> str:
    for name in ("key", "point_key"):
        if name in frame:
            return name
    raise SystemExit("no key column (key, point_key) to match rows by")


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(before: pd.DataFrame, after: pd.DataFrame) -> list[str]:
    """One line per difference: missing rows, missing columns, differing values."""
    key_b, key_a = _key_column(before), _key_column(after)
    before, after = before.set_index(key_b), after.set_index(key_a)
    problems = [f"row {k}: only before" for k in before.index.difference(after.index)]
    problems += [f"row {k}: only after" for k in after.index.difference(before.index)]
    columns = [c for c in before.columns.union(after.columns)
               if c not in IGNORED and not c.startswith(IGNORED_PREFIXES) and "latency" not in c]
    rows = before.index.intersection(after.index)
    for column in columns:
        if column not in before or column not in after:
            problems.append(f"column {column}: only {'after' if column not in before else 'before'}")
            continue
        for key in rows:
            if not _same(before.at[key, column], after.at[key, column]):
                problems.append(f"{key} {column}: {before.at[key, column]!r} -> {after.at[key, column]!r}")
    return problems


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (pd.read_csv(path, low_memory=False) for path in sys.argv[1:])
    problems = compare(before, after)
    compared = [c for c in before.columns if c not in IGNORED and not c.startswith(IGNORED_PREFIXES)]
    print(f"{len(before)} rows before, {len(after)} after; {len(compared)} columns compared")
    for line in problems[:50]:
        print(line)
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more")
    print("identical" if not problems else f"{len(problems)} differences")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
