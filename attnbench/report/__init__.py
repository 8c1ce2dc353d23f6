"""Reporting: tables with deltas, LaTeX, plots, published figures, the W&B mirror."""
