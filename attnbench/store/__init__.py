"""The store: Optuna studies as the record, grids through it, workers sharing it."""
