"""``ase-born train | evaluate | predict`` through ``ase_born.cli.main.main`` on a tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import one_torch_thread  # noqa: F401 - autouse fixture

from ase_born.cli.main import main
from ase_born.io.extxyz import read_frames
from ase_born.models.equivar import Equivar
from ase_born.train.config import TrainConfig
from ase_born.train.dataset import BornDataset
from ase_born.train.evaluation import evaluate

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "train" / "synthetic_catio3.extxyz"
TINY_YAML = REPO / "examples" / "configs" / "equivar_tiny_cpu.yaml"


def test_train_evaluate_predict(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the example config uses repository-relative paths
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(TINY_YAML),
                "--epochs",
                "3",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    for name in ("model.pt", "metrics.json", "log.csv", "config.yaml", "splits.json",
                 "parity_val.png", "parity_test.png", "training_curve.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert TrainConfig.from_yaml(out / "config.yaml").epochs == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 6 and metrics["test"]["n_structures"] == 6

    # evaluate on the TEST frames: the same numbers as the run's own TEST evaluation
    plots = tmp_path / "plots"
    assert (
        main(
            ["evaluate", str(out / "model.pt"), str(DATA), "--split", "test", "--plots", str(plots)]
        )
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    assert ev["n_structures"] == 6
    for key in ("mae", "rmse", "mae_diag", "mae_offdiag", "rmspe_diag", "asr_violation_mae"):
        assert ev[key] == pytest.approx(metrics["test"][key], rel=1e-6), key
    assert (plots / "parity_test.png").is_file()

    # predict: frames with Z* from the model (sum rule enforced), structures unchanged
    pred_file = tmp_path / "pred.extxyz"
    assert main(["predict", str(out / "model.pt"), str(DATA), "-o", str(pred_file)]) == 0
    frames, predicted = read_frames(DATA), read_frames(pred_file)
    assert len(predicted) == len(frames)
    model = Equivar.load(out / "model.pt")
    assert model.elements == tuple(sorted({int(z) for a in frames for z in a.numbers}))  # the training elements
    ds = BornDataset.from_frames(frames[:3], r_max=model.r_max)
    _, preds = evaluate(model, ds, return_predictions=True)
    z_pred = np.concatenate([a.arrays["born_effective_charges"] for a in predicted[:3]])
    np.testing.assert_allclose(z_pred, preds.pred, atol=1e-6)
    for a, b in zip(frames, predicted):
        np.testing.assert_allclose(a.positions, b.positions)
        assert a.info["structure_id"] == b.info["structure_id"]
        np.testing.assert_allclose(b.arrays["born_effective_charges"].sum(axis=0), 0.0, atol=1e-4)
        assert not np.allclose(
            a.arrays["born_effective_charges"], b.arrays["born_effective_charges"]
        )

    # nothing to evaluate/predict: exit status 1 (as every other error) and a one-line reason
    from ase_born.io.extxyz import write_frames

    only_test = tmp_path / "only_test.extxyz"
    write_frames(only_test, [a for a in frames if a.info["split"] == "test"])
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.pt"), str(only_test), "--split", "train"]) == 1
    assert "no frames with split 'train'" in capsys.readouterr().err
    (tmp_path / "empty.extxyz").write_text("")
    empty_out = str(tmp_path / "empty_pred.extxyz")
    assert main(["predict", str(out / "model.pt"), str(tmp_path / "empty.extxyz"), "-o", empty_out]) == 1
    assert "no structures in" in capsys.readouterr().err

    # outputs never replace an input (predict data -o data replaced its DFT Born charges;
    # evaluate -o data wrote the metrics JSON over the dataset); predict needs --overwrite
    copy = tmp_path / "data.extxyz"
    copy.write_bytes(DATA.read_bytes())
    before = copy.read_bytes()
    for cmd in (["predict", str(out / "model.pt"), str(copy), "-o", str(copy), "--overwrite"],
                ["evaluate", str(out / "model.pt"), str(copy), "-o", str(copy)]):
        assert main(cmd) == 1
        assert f"OUTPUT {copy} is also an input" in capsys.readouterr().err and copy.read_bytes() == before
    assert main(["predict", str(out / "model.pt"), str(DATA), "-o", str(pred_file)]) == 1
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["predict", str(out / "model.pt"), str(DATA), "-o", str(pred_file), "--overwrite"]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1
    assert "ase-born train: error:" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: BM2\nepochs: 0\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 1
    assert "epochs must be >= 1" in capsys.readouterr().err
    (tmp_path / "nodata.yaml").write_text(
        f"model: BM2\ntrain_files: [{tmp_path / 'none.extxyz'}]\n"
    )
    assert main(["train", str(tmp_path / "nodata.yaml"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "m.pt"), str(DATA)]) == 1
    with pytest.raises(SystemExit):
        main(["evaluate", "--split", "nonsense", "m.pt", "d.extxyz"])
    capsys.readouterr()
    # --threads 0 is a usage error, CUDA on a machine without it a one-line error (tracebacks)
    with pytest.raises(SystemExit) as exc:
        main(["train", str(TINY_YAML), "--threads", "0"])
    assert exc.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", str(TINY_YAML), "--device", "cuda", "--out", str(tmp_path / "c")]) == 1
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "Traceback" not in err


def test_final_fit_without_held_out_validation(tmp_path):
    """val_fraction 0: every non-TEST structure trains; metrics/splits say val = train."""
    from train_helpers import tiny_train_config

    from ase_born.train import train

    train(tiny_train_config(tmp_path / "ff", val_fraction=0.0, epochs=2))
    splits = json.loads((tmp_path / "ff" / "splits.json").read_text())
    assert splits["val_is_train"] and splits["val"] == splits["train"]
    frames = read_frames(DATA)
    n_non_test = len({a.info["structure_id"] for a in frames if a.info["split"] != "test"})
    metrics = json.loads((tmp_path / "ff" / "metrics.json").read_text())
    assert metrics["val_is_train"] and metrics["n_train"] == metrics["n_val"] == n_non_test
