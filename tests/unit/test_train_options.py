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
from ase_born.train.evaluation import forward_batch
from ase_born.train.trainer import EMA, Trainer, make_loss, train


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


class _Stop(Exception):
    """Raised in place of the first optimizer step: the weights stay those of the loss."""


class _DtypeRecorder(torch.overrides.TorchFunctionMode):
    """Records the dtype of every tensor a torch function returns (forward pass ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


def _first_step(out: Path, **kw) -> tuple[Trainer, dict, object]:
    """Run the trainer's first training step up to the optimizer step and stop there.

    Returns the trainer, what was recorded (``loss``: the loss the trainer back-propagated,
    ``grad_norm``: total gradient norm handed to the optimizer, ``dtypes``: dtypes of the
    tensors made during the step) and the first batch (the loader's order is fixed by the seed).
    """
    tr = Trainer(tiny_train_config(out, **{"epochs": 1, "batch_size": 8, **kw}))
    tr._setup()
    rec: dict = {}
    loss_fn = tr.loss_fn

    def recording_loss(pred, target):
        loss = loss_fn(pred, target)
        rec["loss"] = loss.detach().clone()
        return loss

    def step(*args, **kwargs):
        grads = [p.grad.detach().double() for p in tr.model.parameters() if p.grad is not None]
        rec["grad_norm"] = float(torch.sqrt(sum((g * g).sum() for g in grads)))
        raise _Stop

    tr.loss_fn = recording_loss
    tr.optimizer.step = step
    mode = _DtypeRecorder()
    with mode, pytest.raises(_Stop):
        tr.train_epoch()
    rec["dtypes"] = mode.dtypes
    return tr, rec, next(iter(tr.loader))


def test_loss_on_grad_clip_optimizer_and_bf16_do_what_they_say(tmp_path):
    """One training step of the tiny model: the loss is taken on the raw or the sum-rule
    corrected Z* as ``loss_on`` says; ``grad_clip`` bounds the gradient norm the optimizer
    sees; ``optimizer`` picks the class; ``mixed_precision: bf16`` runs the forward in bf16."""
    raw, rec_raw, batch = _first_step(tmp_path / "raw", loss="l1")
    cor, rec_cor, batch_c = _first_step(
        tmp_path / "cor", loss="mse", loss_on="corrected", optimizer="adam", grad_clip=1e-3
    )
    assert torch.equal(batch.target, batch_c.target)  # same seed: same first batch, same weights
    with torch.no_grad():
        z, z_raw = forward_batch(raw.model, batch)
    assert float((z - z_raw).abs().max()) > 0.05  # the correction matters for this model
    for tr, rec, name in ((raw, rec_raw, "l1"), (cor, rec_cor, "mse")):
        fn = make_loss(name)
        want = fn(z_raw if tr.cfg.loss_on == "raw" else z, batch.target)
        other = fn(z if tr.cfg.loss_on == "raw" else z_raw, batch.target)
        assert float(rec["loss"]) == pytest.approx(float(want), rel=1e-5)
        assert abs(float(other) - float(want)) > 5e-4 * float(want)  # 2.5e-3 (mse), more (l1)
        assert rec["loss"].dtype == torch.float32
    # gradient clipping: unclipped the norm is far above the bound, clipped it is at it
    assert rec_raw["grad_norm"] > 100 * 1e-3
    assert rec_cor["grad_norm"] <= 1e-3 * (1 + 1e-5)
    assert rec_cor["grad_norm"] == pytest.approx(1e-3, rel=1e-4)
    # optimizer class and settings
    assert type(raw.optimizer) is torch.optim.AdamW
    assert raw.optimizer.param_groups[0]["weight_decay"] == raw.cfg.weight_decay
    assert type(cor.optimizer) is torch.optim.Adam
    assert all(g["lr"] == cor.cfg.lr for g in cor.optimizer.param_groups)
    # bf16 autocast: ops of the forward pass make bfloat16 tensors, the loss stays float32
    assert torch.bfloat16 not in rec_raw["dtypes"]
    _, rec_bf, _ = _first_step(tmp_path / "bf16", mixed_precision="bf16")
    assert torch.bfloat16 in rec_bf["dtypes"]
    assert rec_bf["loss"].dtype == torch.float32


def test_plateau_schedule_halves_the_lr_when_the_val_mae_stalls(tmp_path, monkeypatch):
    """With the training steps skipped the validation MAE stays where it is: with patience 0
    every epoch after the first is a stall, and log.csv shows lr, lr, lr, lr/2, lr/4 (the lr
    column is the lr an epoch trained with; row 0 is the initial weights)."""
    monkeypatch.setattr(Trainer, "train_epoch", lambda self: (0.0, None))
    cfg = _cfg(
        tmp_path, lr_schedule="plateau", plateau_patience=0, plateau_factor=0.5, epochs=4
    )
    result = train(cfg)
    assert result.status == "completed"
    rows = list(csv.DictReader((Path(cfg.out) / "log.csv").read_text().splitlines()))
    assert len({r["val_mae"] for r in rows}) == 1  # stalled
    assert _lrs(Path(cfg.out)) == pytest.approx([cfg.lr * f for f in (1, 1, 1, 0.5, 0.25)])


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


def test_predict_writes_the_born_charges_the_metrics_describe(tmp_path):
    """With model.asr off, training, validation, metrics.json and evaluate use the sum-rule
    corrected output: predict does too by default (it wrote the raw output); asr=False
    (CLI --raw) gives the raw output."""
    import numpy as np
    from train_helpers import DATA, TINY

    from ase_born.io.extxyz import read_frames
    from ase_born.train.dataset import BornDataset
    from ase_born.train.evaluation import evaluate, predict_born_charges

    out = tmp_path / "run"
    res = train(tiny_train_config(out, model={**TINY, "asr": False}, epochs=1, batch_size=8))
    model = Equivar.load(out / "model.pt")
    assert not model.asr
    frames = [a for a in read_frames(DATA) if a.info["split"] == "test"]
    metrics, preds = evaluate(model, BornDataset.from_frames(frames, r_max=model.r_max),
                              return_predictions=True)
    assert metrics["mae"] == pytest.approx(res.test["mae"], rel=1e-6)
    z = predict_born_charges(model, frames)
    np.testing.assert_allclose(np.concatenate(z), preds.pred, atol=1e-6)
    assert max(np.abs(zs.sum(axis=0)).max() for zs in z) < 1e-10
    raw = predict_born_charges(model, frames, asr=False)
    assert max(np.abs(zs.sum(axis=0)).max() for zs in raw) > 1e-3


def test_ema_weights_are_the_validated_and_exported_ones(tmp_path):
    """With EMA on, validation (log.csv, best-epoch choice) and model.pt use the averaged
    weights, not the raw ones: the logged val MAE of the best epoch is the EMA weights' MAE,
    and model.pt holds best.pt's EMA state (checking only that ema_state exists passed with
    validation and export on the raw weights)."""
    import numpy as np

    from ase_born.train.dataset import load_splits
    from ase_born.train.evaluation import evaluate

    cfg = _cfg(tmp_path, ema_decay=0.5, epochs=3, lr=5e-2)
    result = train(cfg)
    out = Path(cfg.out)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    ema, raw = best["ema_state"], best["model_state"]
    assert max(float((ema[k] - raw[k]).abs().max()) for k in ema) > 1e-4  # they differ
    splits = load_splits(cfg.train_files, val_fraction=cfg.val_fraction, seed=cfg.seed,
                         r_max=Equivar.load(out / "model.pt").r_max)

    def mae(state):
        m = Equivar.from_config(best["model_config"], dtype=best["model_dtype"])
        m.load_state_dict(state)
        return evaluate(m, splits.val, batch_size=16)["mae"]

    rows = list(csv.DictReader((out / "log.csv").read_text().splitlines()))
    logged = float(rows[best["epoch"]]["val_mae"])
    assert logged == pytest.approx(mae(ema), rel=1e-5)
    assert abs(mae(raw) - logged) > 1e-6 * logged
    exported = Equivar.load(out / "model.pt").state_dict()
    for k, v in ema.items():
        np.testing.assert_array_equal(exported[k].cpu().numpy(), v.cpu().numpy())
    assert result.val["mae"] == pytest.approx(logged, rel=1e-5)


def test_huber_delta_reaches_the_loss(tmp_path):
    """huber_delta is passed to the loss (config and make_loss defaults are both 0.01, so a
    trainer that dropped it looked the same at the default)."""
    tr, rec, batch = _first_step(tmp_path / "huber", loss="huber", huber_delta=0.5)
    with torch.no_grad():
        z, z_raw = forward_batch(tr.model, batch)
    zz = z_raw if tr.cfg.loss_on == "raw" else z
    want = torch.nn.HuberLoss(delta=0.5)(zz, batch.target)
    default = torch.nn.HuberLoss(delta=0.01)(zz, batch.target)
    assert float(rec["loss"]) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(default) - float(want)) > 1e-2 * float(want)
