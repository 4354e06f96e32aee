"""Training of the Equivar Born-charge network.

Public API
----------
TrainConfig
    Frozen dataclass of a run (YAML round-trip), paper recipe by default.
train
    Run a training job (single process, k-fold, or DDP under ``torchrun``).
Trainer, TrainingResult
    One run and its outcome.
BornDataset, load_splits, DatasetError
    Validated frames -> graphs + sum-rule-corrected targets; TEST / train / val splits.
evaluate, predict_born_charges
    Metrics of a trained model on a dataset; Z* of structures.
MetricAccumulator, compute_metrics
    MAE, RMSE, RMSPE (diagonal), diagonal / off-diagonal / per-species MAE, sum-rule violation.
load_checkpoint, CheckpointMismatchError
    ``weights_only`` checkpoint reading; refusal of foreign checkpoints.

Modules are imported lazily (torch and e3nn load only when needed).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "ase_born.train.config",
    "train": "ase_born.train.trainer",
    "Trainer": "ase_born.train.trainer",
    "TrainingResult": "ase_born.train.trainer",
    "BornDataset": "ase_born.train.dataset",
    "DatasetError": "ase_born.train.dataset",
    "load_splits": "ase_born.train.dataset",
    "evaluate": "ase_born.train.evaluation",
    "predict_born_charges": "ase_born.train.evaluation",
    "MetricAccumulator": "ase_born.train.metrics",
    "compute_metrics": "ase_born.train.metrics",
    "load_checkpoint": "ase_born.train.checkpoint",
    "CheckpointMismatchError": "ase_born.train.checkpoint",
}

__all__ = [
    "BornDataset",
    "CheckpointMismatchError",
    "DatasetError",
    "MetricAccumulator",
    "TrainConfig",
    "Trainer",
    "TrainingResult",
    "compute_metrics",
    "evaluate",
    "load_checkpoint",
    "load_splits",
    "predict_born_charges",
    "train",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ase_born.train' has no attribute {name!r}")
