"""Measurements: pure functions of (model, input)."""
from attnbench.measure.complexity import ComplexityResult, measure_complexity

__all__ = ["ComplexityResult", "measure_complexity"]
