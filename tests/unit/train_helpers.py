"""Shared by the training tests: the synthetic data set, a tiny model, one torch thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ase_born.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "train" / "synthetic_catio3.extxyz"
TINY = {"embedding_dim": 8, "num_radial": 8, "int_num_feat": 8, "num_interactions": 2}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the test with one torch thread (the test box has 2 cores shared with other jobs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_train_config(out: Path, **kw: Any) -> TrainConfig:
    """A CPU training config of the tiny model on :data:`DATA`, writing to ``out``.

    Parameters
    ----------
    out : Path
        Output directory of the run.
    **kw
        Settings added to or replacing the base ones (``epochs``, ``batch_size``, ...).
    """
    base = {
        "model": TINY,
        "train_files": [str(DATA)],
        "lr": 1e-2,
        "device": "cpu",
        "out": str(out),
        "progress": False,
        "plots": False,
    }
    base.update(kw)
    return TrainConfig(**base)
