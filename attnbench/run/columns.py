"""Result columns, each declared once: its key in a point's row, label, unit, which way is better, how deltas read.

The measurement that writes a column declares it (attnbench/run/measurements/); the runner,
the reports, W&B and the search objectives all name it through the declaration, so grep finds
where `latency_median_ms` is written. Per-slot and per-op columns are families whose keys are
made by `Family.key(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Better = Literal["lower", "higher"] | None
DeltaKind = Literal["count", "pct", "pp"] | None  # a raw difference (SI prefix), percent of the baseline, or points


@dataclass(frozen=True)
class Column:
    """One column of a result row."""

    key: str
    label: str  # plain-text header with its unit, e.g. "Params (M)"
    unit: str  # what one stored unit is: "parameters", "MACs", "ms", "bytes", "%", "images/s", ...
    better: Better = None
    delta: DeltaKind = None
    latex: str = ""  # LaTeX header where it differs from `label`
    scale: float = 1.0  # stored value x scale = the value under `label`
    spread: str | None = None  # key of the column holding this one's spread, where measured

    @property
    def short(self) -> str:
        """The label without its unit, e.g. "Params"."""
        return self.label.split(" (")[0]


@dataclass(frozen=True)
class Family:
    """Columns made per slot, per op or per environment field: `prefix{name}/{field}` or `prefix{name}`."""

    prefix: str
    fields: tuple[str, ...] = ()

    def key(self, name: str, field: str | None = None) -> str:
        """The column key for `name` (and `field`)."""
        if field is not None and field not in self.fields:
            raise KeyError(f"{self.prefix}: no field {field!r} (declared: {', '.join(self.fields)})")
        return f"{self.prefix}{name}" + (f"/{field}" if field is not None else "")

    def owns(self, key: str) -> bool:
        """Whether `key` belongs to this family."""
        return key.startswith(self.prefix)


_DECLARED: dict[str, Column] = {}
_FAMILIES: dict[str, Family] = {}


def column(key: str, label: str, unit: str, better: Better = None, delta: DeltaKind = None, **extra: object) -> Column:
    """Declare a column; declaring a key twice is a programming error."""
    if key in _DECLARED:
        raise RuntimeError(f"result column {key!r} declared twice")
    declared = Column(key, label, unit, better, delta, **extra)  # type: ignore[arg-type]
    _DECLARED[key] = declared
    return declared


def family(prefix: str, fields: tuple[str, ...] = ()) -> Family:
    """Declare a family of columns sharing `prefix`."""
    if prefix in _FAMILIES:
        raise RuntimeError(f"column family {prefix!r} declared twice")
    declared = Family(prefix, fields)
    _FAMILIES[prefix] = declared
    return declared


def declared() -> dict[str, Column]:
    """Every declared column by key (import attnbench.run.measurements first: they declare theirs)."""
    return dict(_DECLARED)


def families() -> dict[str, Family]:
    """Every declared family by prefix."""
    return dict(_FAMILIES)
