"""Optuna searches over the attention modules' hyperparameters, on one machine or many."""
from attnbench.search.export import export_search, pareto_frame, trials_frame
from attnbench.search.loop import SearchSummary, open_search_study, run_search, tally
from attnbench.search.objectives import METRICS, Metric, pruning_callback
from attnbench.search.setup import SearchSetup, parse_search
from attnbench.search.space import Base, Dimension, SearchSpace, parse_space

__all__ = [
    "METRICS", "Base", "Dimension", "Metric", "SearchSetup", "SearchSpace", "SearchSummary", "export_search",
    "open_search_study", "pareto_frame", "parse_search", "parse_space", "pruning_callback", "run_search",
    "tally", "trials_frame",
]
