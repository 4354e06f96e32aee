"""Training options run and do what they say: losses, schedules, EMA, bf16 autocast, k-fold."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_train_config,
)

from ase_born.models.equivar import Equivar
from ase_born.train.checkpoint import load_checkpoint
from ase_born.train.config import TrainConfig
from ase_born.train.trainer import EMA, make_loss, train


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    return tiny_train_config(tmp_path / "run", **{"epochs": 2, "batch_size": 8, **kw})


def _lrs(out: Path) -> list[float]:
    return [float(r["lr"]) for r in csv.DictReader((out / "log.csv").read_text().splitlines())]


@pytest.mark.filterwarnings("ignore:The TorchScript type system")
@pytest.mark.parametrize(
    "kw",
    [
        {"lr_schedule": "cosine", "lr_min": 1e-4, "ema_decay": 0.9, "epochs": 3},
        {
            "loss": "huber",
            "lr_schedule": "plateau",
            "plateau_patience": 0,
            "plateau_factor": 0.5,
            "epochs": 3,
        },
        {"loss": "mse", "optimizer": "adam", "grad_clip": 1.0, "loss_on": "corrected"},
        {"mixed_precision": "bf16", "num_workers": 1},
        {"dtype": "float64", "tp_impl": "e3nn", "epochs": 1, "batch_size": 16},
    ],
    ids=[
        "cosine-ema",
        "huber-plateau",
        "mse-adam-clip-corrected",
        "bf16-autocast-worker",
        "float64-e3nn",
    ],
)
def test_options_train(tmp_path, kw):
    cfg = _cfg(tmp_path, **kw)
    result = train(cfg)
    assert result.status == "completed"
    assert math.isfinite(result.val["mae"]) and result.test is not None
    out = Path(cfg.out)
    lrs = _lrs(out)
    if cfg.lr_schedule == "cosine":
        T = cfg.epochs
        expected = [
            cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * e / T))
            for e in range(T)
        ]
        assert lrs[1:] == pytest.approx(expected)
    if cfg.lr_schedule == "none":
        assert set(lrs) == {cfg.lr}
    model = Equivar.load(out / "model.pt")
    assert model.dtype == getattr(torch, cfg.dtype)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ckpt["ema_state"] is not None) == (cfg.ema_decay is not None)
    assert (ckpt["scheduler_state"] is not None) == (cfg.lr_schedule != "none")


def test_losses_and_ema():
    a, b = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    assert make_loss("l1")(a, b).item() == pytest.approx(1.5)
    assert make_loss("mse")(a, b).item() == pytest.approx(2.5)
    assert make_loss("huber", 0.5)(a, b).item() == pytest.approx(
        ((1 - 0.25) + (2 - 0.25)) / 2 * 0.5
    )
    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMA(lin, decay=0.9)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update(lin)
    assert ema.shadow["weight"].item() == pytest.approx(1.1)


def test_kfold_cross_validation(tmp_path):
    cfg = _cfg(tmp_path, folds=2, epochs=1)
    result = train(cfg)
    out = Path(cfg.out)
    assert len(result.folds) == 2
    summary = json.loads((out / "metrics.json").read_text())
    vals = [
        json.loads((out / f"fold_{k}" / "metrics.json").read_text())["val"]["mae"] for k in range(2)
    ]
    assert summary["val"]["mae"]["values"] == pytest.approx(vals)
    assert summary["val"]["mae"]["mean"] == pytest.approx(sum(vals) / 2)
    ids = [
        set(json.loads((out / f"fold_{k}" / "splits.json").read_text())["val"]) for k in range(2)
    ]
    assert ids[0].isdisjoint(ids[1])
    train_ids = set(json.loads((out / "fold_0" / "splits.json").read_text())["train"])
    assert ids[1] == train_ids  # 2 folds: one's validation set is the other's training set
    test_ids = set(json.loads((out / "fold_0" / "splits.json").read_text())["test"])
    assert test_ids.isdisjoint(ids[0] | ids[1])
