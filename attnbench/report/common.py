"""What the reports share: the metrics they show, the backbone groups deltas are taken in, display names.

Optional measurements (latency, memory, accuracy) appear only when a study has them. Each
metric names candidate store columns; the first one present is used, so the runner's stages
should write the first name of each tuple.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Metric:
    """One reported quantity: header, store columns, display scale and precision, and how deltas read."""

    name: str  # plain-text header, e.g. "Params (M)"
    latex: str  # LaTeX header
    columns: tuple[str, ...]  # candidate store columns; the first present wins
    scale: float  # stored value x scale = displayed value
    digits: int  # decimals at least; more where the column's smallest value would show fewer than 3 significant figures
    higher_is_better: bool = False
    spread: tuple[str, ...] = ()  # candidate columns of the spread shown as +-, same unit as the value
    spread_scale: float = 1.0  # e.g. 0.5 to show half the interquartile range
    delta: str = "count"  # count: the raw difference with an SI prefix (+2.53M); pct: percent of the baseline; pp: points

    @property
    def short(self) -> str:
        """The name without its unit, e.g. "Params"."""
        return self.name.split(" (")[0]

    def column(self, frame: pd.DataFrame) -> str | None:
        """The store column holding this metric in `frame`, if any has a value."""
        return next((c for c in self.columns if c in frame and pd.to_numeric(frame[c], errors="coerce").notna().any()), None)

    def spread_column(self, frame: pd.DataFrame) -> str | None:
        """The store column holding this metric's spread in `frame`, if any has a value."""
        return next((c for c in self.spread if c in frame and pd.to_numeric(frame[c], errors="coerce").notna().any()), None)


PARAMS = Metric("Params (M)", "Params (M)", ("params",), 1e-6, 2)
MACS = Metric("MACs (G)", "MACs (G)", ("macs",), 1e-9, 3)
LATENCY = Metric("Latency (ms)", "Latency (ms)", ("latency_median_ms", "median_ms"), 1.0, 2,
                 spread=("latency_iqr_ms", "iqr_ms"), spread_scale=0.5, delta="pct")
MEMORY = Metric("Memory (MB)", "Memory (MB)", ("memory_inference_peak_bytes", "inference_peak_bytes"), 2.0**-20, 1, delta="pct")
TOP1 = Metric("Top-1 (%)", r"Top-1 (\%)", ("top1_mean", "val_top1_mean", "top1", "val_top1"), 1.0, 2,
              higher_is_better=True, spread=("top1_std", "val_top1_std"), delta="pp")

METRICS = (PARAMS, MACS, LATENCY, MEMORY, TOP1)


def present(frame: pd.DataFrame, metrics: tuple[Metric, ...] = METRICS) -> list[tuple[Metric, str]]:
    """(metric, column) for every metric `frame` has values for, in table order."""
    return [(m, c) for m in metrics if (c := m.column(frame)) is not None]


# Rows compare against the `none` baseline of the same backbone and input.
GROUP = ["backbone", "input_size", "batch_size", "num_classes", "dtype", "channels_last"]
GROUP_DEFAULTS = {"dtype": "fp32", "channels_last": False}  # rows stored before these axes existed

_FAMILIES = {"resnet": "ResNet-{}", "van_b": "VAN-B{}", "mscan_": "MSCAN-{}"}


def pretty_backbone(name: str) -> str:
    """Paper spelling of a backbone: resnet50 -> ResNet-50, cifar_resnet18 -> ResNet-18 (CIFAR), van_b0 -> VAN-B0."""
    cifar = name.startswith("cifar_")
    base = name.removeprefix("cifar_")
    for prefix, pattern in _FAMILIES.items():
        if base.startswith(prefix) and base[len(prefix):].isalnum():
            pretty = pattern.format(base[len(prefix):].upper())
            return f"{pretty} (CIFAR)" if cifar else pretty
    return name


def group_titles(frame: pd.DataFrame) -> dict[tuple, str]:
    """A title per backbone group; input size, batch, classes, dtype and layout are added only where they tell groups apart."""
    keys = list(dict.fromkeys(map(tuple, frame[GROUP].itertuples(index=False, name=None))))
    titles = {}
    for key in keys:
        backbone, size, batch, classes, dtype, channels_last = key
        title = pretty_backbone(backbone)
        same = [k for k in keys if k[0] == backbone]
        extras = []
        if len({k[1] for k in same}) > 1:
            extras.append(f"{size}x{size}")
        if len({k[2] for k in same}) > 1:
            extras.append(f"batch {batch}")
        if len({k[3] for k in same}) > 1:
            extras.append(f"{classes} classes")
        if len({k[4] for k in same}) > 1:
            extras.append(str(dtype))
        if len({k[5] for k in same}) > 1:
            extras.append("channels-last" if channels_last else "NCHW")
        titles[key] = title + (f", {', '.join(extras)}" if extras else "")
    return titles


def variant_name(row: pd.Series) -> str:
    """The row's variant label, the baseline spelt out."""
    label = str(row.get("label") or row.get("attention", ""))
    return "none (baseline)" if label == "none" else label


def si(value: float) -> str:
    """A signed count with an SI prefix and 3 significant figures: +2.53M, +86, -1.2K."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= 0.9995 * factor:  # what rounds to 1000 of the next prefix down takes this one
            return f"{value / factor:+.3g}{prefix}"
    return f"{value:+.0f}"
