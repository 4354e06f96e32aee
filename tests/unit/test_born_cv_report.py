"""scripts/born_cv_report.py reports only finished cross-validations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "born_cv_report.py"


def _module():
    spec = importlib.util.spec_from_file_location("born_cv_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_an_interrupted_cross_validation_is_refused(tmp_path):
    """Two of four folds done: reporting them as the recipe's CV error would compare recipes
    on different structures (it printed 'CV MAE' over half the training set)."""
    mod = _module()
    run = tmp_path / "cv"
    for k in (0, 1):
        (run / f"fold_{k}").mkdir(parents=True)
        (run / f"fold_{k}" / "metrics.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(SystemExit, match="cross-validation not finished"):
        mod.cv_errors(run, {})
    (run / "metrics.json").write_text(json.dumps({"cross_validation": {"folds": 4}}))
    with pytest.raises(SystemExit, match=r"2 fold directories, 4 folds"):
        mod.cv_errors(run, {})
    (run / "metrics.json").write_text(json.dumps({"cross_validation": {"folds": 2}}))
    (run / "fold_1" / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(SystemExit, match="fold_1: fold not completed"):
        mod.cv_errors(run, {})


def test_last_epoch_reports_each_folds_final_weights(tmp_path):
    """--last-epoch: each fold's weights after its last epoch (what a fixed-epoch final fit
    ships), not its best-validation epoch; the fold-mean validation curve is log.csv's."""
    import csv
    import sys

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from train_helpers import DATA, tiny_train_config

    from ase_born.io.extxyz import get_born_charges, read_frames
    from ase_born.models.equivar import Equivar
    from ase_born.train.dataset import correct_asr
    from ase_born.train.trainer import train

    torch.set_num_threads(1)
    mod = _module()
    run = tmp_path / "cv"
    train(tiny_train_config(run, folds=2, epochs=4, checkpoint_every=2, batch_size=8, lr=0.1))
    frames = {str(f.info["structure_id"]): f for f in read_frames(DATA)}
    last = mod.last_epoch_model(run / "fold_0")
    best = Equivar.load(run / "fold_0" / "model.pt")
    sid = json.loads((run / "fold_0" / "splits.json").read_text())["val"][0]
    err_last = mod.cv_errors(run, frames, last_epoch=True)[sid]
    err_best = mod.cv_errors(run, frames)[sid]
    ref = correct_asr(get_born_charges(frames[sid]))
    from ase_born.calculators.equivar import EquivarCalculator

    z_last = EquivarCalculator(last, dtype="float64").get_born_charges(frames[sid])
    np.testing.assert_allclose(err_last, np.abs(z_last - ref), atol=1e-12)
    rows = list(csv.DictReader((run / "fold_0" / "log.csv").open()))
    best_epoch = min(range(1, 5), key=lambda e: float(rows[e]["val_mae"]))
    assert best_epoch != 4  # (lr 0.1: fold 0 is best at epoch 3) so the reports differ
    assert not np.allclose(err_last, err_best)
    assert set(best.elements) == set(last.elements)
    epochs, curve = mod.val_curve(run)
    folds = [[float(r["val_mae"]) for r in csv.DictReader((run / f"fold_{k}" / "log.csv").open())]
             for k in (0, 1)]
    assert list(epochs) == list(range(5))
    np.testing.assert_allclose(curve, np.mean(folds, axis=0))
    # a checkpoint that is not the last epoch's is refused, not reported as the final fit
    ck = torch.load(run / "fold_1" / "checkpoints" / "last.pt", weights_only=True)
    ck["epoch"] = 2
    torch.save(ck, run / "fold_1" / "checkpoints" / "last.pt")
    with pytest.raises(SystemExit, match="from epoch 2, not the last"):
        mod.cv_errors(run, frames, last_epoch=True)
