"""Data and the short training loop: datasets on the device, batch augmentation, seeds, statistics over seeds."""
from attnbench.train.augment import AugmentSpec, BatchAugment, random_crop, random_hflip
from attnbench.train.data import (
    DATASETS,
    DataInfo,
    DataSpec,
    LoadedData,
    StreamSplit,
    TensorSplit,
    check_dataset,
    load_dataset,
)
from attnbench.train.loop import EpochRecord, TrainConfig, TrainResult, lr_factor, param_groups, train_model
from attnbench.train.seeds import DeterminismReport, deterministic, seed_everything
from attnbench.train.stats import SeedSummary, summarize, t_critical

__all__ = [
    "DATASETS", "AugmentSpec", "BatchAugment", "DataInfo", "DataSpec", "DeterminismReport", "EpochRecord",
    "LoadedData", "StreamSplit", "SeedSummary", "TensorSplit", "TrainConfig", "TrainResult", "check_dataset",
    "deterministic", "load_dataset", "lr_factor", "param_groups", "random_crop", "random_hflip",
    "seed_everything", "summarize", "t_critical", "train_model",
]
