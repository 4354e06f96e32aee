"""Checkpoints: kill + resume == uninterrupted run, refusal of foreign checkpoints,
``weights_only`` loading, and the stop on a non-finite loss."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import (
    DATA,
    REPO,
    TINY,
    one_torch_thread,  # noqa: F401 - autouse fixture
    tiny_train_config,
)

from ase_born.models.equivar import Equivar
from ase_born.train.checkpoint import CheckpointMismatchError, eval_state, load_checkpoint
from ase_born.train.config import TrainConfig
from ase_born.train.trainer import Trainer, train


def _config(out: Path, **kw) -> TrainConfig:
    return tiny_train_config(out, **{"epochs": 3, "batch_size": 4, "seed": 3, **kw})


def _log_without_time(out: Path) -> list[dict]:
    rows = list(csv.DictReader((out / "log.csv").read_text().splitlines()))
    for r in rows:
        r.pop("time_s")
    return rows


def _state(path: Path) -> dict[str, torch.Tensor]:
    return Equivar.load(path).state_dict()


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    epochs = 12
    killed = tmp_path / "killed"
    cfg = _config(killed, epochs=epochs, ema_decay=0.9, lr_schedule="cosine")
    cfg.to_yaml(tmp_path / "cfg.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    code = "import sys; from ase_born.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "train", str(tmp_path / "cfg.yaml"), "--quiet", "--threads", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(last)["epoch"]
    assert 1 <= at_kill < epochs  # really killed mid-run
    assert not (killed / "model.pt").exists()

    resumed = train(cfg, resume=True)
    reference = train(cfg.replace(out=str(tmp_path / "reference")))

    assert resumed.status == reference.status == "completed"
    assert resumed.epochs_completed == reference.epochs_completed == epochs
    assert resumed.best_epoch == reference.best_epoch
    assert resumed.val == reference.val  # exact: same floats
    assert resumed.test == reference.test
    assert _log_without_time(killed) == _log_without_time(tmp_path / "reference")
    a, b = _state(killed / "model.pt"), _state(tmp_path / "reference" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((killed / "metrics.json").read_text())
    mb = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["val"] == mb["val"]


def test_resume_keeps_a_best_checkpoint_newer_than_last(tmp_path):
    """Killed after best.pt (written at each improvement) but before the next last.pt: the
    resumed run keeps that best (its weights are what gets exported) unless it beats it, and
    reports its epoch and metric, not the replay's."""
    from ase_born.train.checkpoint import atomic_torch_save

    out = tmp_path / "run"
    train(_config(out, epochs=2, checkpoint_every=2))
    best_path = out / "checkpoints" / "best.pt"
    best = dict(load_checkpoint(best_path))
    # as if epoch 3 had improved (to a value no replay reaches) before the kill
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in best["model_state"].items()}
    best.update(epoch=3, best_epoch=3, best_metric=1e-9, model_state=state)
    if best.get("ema_state") is not None:
        best["ema_state"] = None
    atomic_torch_save(best, best_path)
    res = train(_config(out, epochs=4, checkpoint_every=2), resume=True)
    assert res.status == "completed" and res.best_epoch == 3
    exported = _state(out / "model.pt")
    assert all(torch.equal(exported[k], v) for k, v in state.items())
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 3


def test_replayed_best_epoch_keeps_its_best_flag(tmp_path, monkeypatch):
    """Killed after epoch 3's best.pt but before its last.pt (checkpoint_every 2): the exact
    replay of epoch 3 is still logged as best (log.csv, hence the training curve's 'best
    epoch', equal to the uninterrupted run's)."""

    def rows(out):
        with open(out / "log.csv") as fh:
            return [(r["epoch"], r["val_mae"], r["best"]) for r in csv.DictReader(fh)]

    train(_config(tmp_path / "ref", epochs=4, checkpoint_every=2))
    assert rows(tmp_path / "ref")[3][2] == "True"  # epoch 3 improved: the case tested

    class Killed(Exception):
        pass

    save = Trainer._save

    def killing_save(self, path):
        if path == self.last_path and self.epoch == 3:
            raise Killed
        save(self, path)

    monkeypatch.setattr(Trainer, "_save", killing_save)
    with pytest.raises(Killed):  # epoch 4 would write last.pt; epoch 3 is the last with a best
        train(_config(tmp_path / "run", epochs=4, checkpoint_every=1))
    monkeypatch.setattr(Trainer, "_save", save)
    train(_config(tmp_path / "run", epochs=4, checkpoint_every=1), resume=True)
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")


def test_model_export_is_atomic(tmp_path, monkeypatch):
    """A failure while model.pt is written leaves the previous file intact."""
    out = tmp_path / "run"
    train(_config(out, epochs=1))
    before = (out / "model.pt").read_bytes()
    model = Equivar.load(out / "model.pt")

    def broken_save(obj, f, *a, **k):
        if isinstance(f, (str, os.PathLike)):
            f = open(f, "wb")  # noqa: SIM115 - a torch.save straight to the path
        f.write(b"partial")
        f.flush()
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save(out / "model.pt")
    assert (out / "model.pt").read_bytes() == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".model.pt")] == []


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    cfg = _config(tmp_path / "run", epochs=1, ema_decay=0.9, lr_schedule="plateau")
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    for key in (
        "model_state", "model_config", "train_config", "optimizer_state", "scheduler_state", "ema_state",
        "epoch", "best_metric", "best_epoch", "rng", "elements", "normalisation", "versions", "history",
    ):  # fmt: skip
        assert key in ckpt, key
    assert ckpt["epoch"] == 1 and ckpt["elements"] == ckpt["train_elements"] == [8, 20, 22]
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    assert all(isinstance(v, torch.Tensor) for v in ckpt["model_state"].values())
    assert ckpt["versions"]["torch"] == str(torch.__version__)
    assert TrainConfig.from_dict(ckpt["train_config"]) == cfg
    # the exported model is the best checkpoint's validated (EMA) weights
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    exported = _state(tmp_path / "run" / "model.pt")
    assert all(torch.equal(exported[k], v) for k, v in eval_state(best).items())

    # a file that needs arbitrary unpickling is refused
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ase_born.train.checkpoint", "x": Path("/")}, evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(CheckpointMismatchError, match="not an ase_born training checkpoint"):
        load_checkpoint(other)


def test_foreign_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    train(_config(out, epochs=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(out, epochs=2))
    with pytest.raises(CheckpointMismatchError, match="int_num_feat"):
        train(_config(out, epochs=2, model={**TINY, "int_num_feat": 16}), resume=True)
    with pytest.raises(CheckpointMismatchError, match="lr: 0.01 -> 0.02"):
        train(_config(out, epochs=2, lr=2e-2), resume=True)
    with pytest.raises(CheckpointMismatchError, match="float32"):
        train(_config(out, epochs=2, dtype="float64"), resume=True)
    # different data (a subset of the frames)
    from ase_born.io.extxyz import read_frames, write_frames

    subset = tmp_path / "subset.extxyz"
    write_frames(subset, read_frames(DATA)[:30])
    cfg = _config(out, epochs=2)
    with pytest.raises(CheckpointMismatchError, match="train_files"):
        train(cfg.replace(train_files=(str(subset),)), resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_config(tmp_path / "empty"), resume=True)
    # allowed changes: more epochs, another device string
    result = train(cfg.replace(epochs=2, device="cpu"), resume=True)
    assert result.epochs_completed == 2
    # fewer epochs than trained: refused (model.pt would be a longer run's under a shorter config)
    with pytest.raises(CheckpointMismatchError, match="from epoch 2, beyond the 1 epochs"):
        train(cfg.replace(epochs=1), resume=True)
    # a checkpoint written before bool fields were checked, with a quoted YAML "false": the
    # fields that may change on resume are not read from it (it was "unreadable train_config")
    last = out / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["train_config"]["plots"] = "false"
    torch.save(ckpt, last)
    assert train(cfg.replace(epochs=3), resume=True).epochs_completed == 3


def test_checkpoint_model_knows_the_training_elements_only(tmp_path):
    """A species only in TEST is in the checkpoint's data elements, not in what a model rebuilt
    from the checkpoint knows (it was, so the calculator gave no extrapolation warning)."""
    from ase_born.io.extxyz import read_frames, write_frames
    from ase_born.train.checkpoint import model_from_checkpoint

    frames = read_frames(DATA)
    sr = frames[-1].copy()
    sr.arrays["born_effective_charges"] = frames[-1].arrays["born_effective_charges"].copy()
    sr.symbols[[i for i, s in enumerate(sr.get_chemical_symbols()) if s == "Ca"]] = "Sr"
    sr.info.update(structure_id="sr_only_in_test", split="test")
    data = tmp_path / "data.extxyz"
    write_frames(data, [*frames, sr])
    train(_config(tmp_path / "run", epochs=1, train_files=[str(data)]))
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert 38 in best["elements"] and best["train_elements"] == [8, 20, 22]
    assert model_from_checkpoint(best).elements == (8, 20, 22)
    assert Equivar.load(tmp_path / "run" / "model.pt").elements == (8, 20, 22)


def test_data_change_is_refused(tmp_path):
    from ase_born.io.extxyz import read_frames, write_frames

    data = tmp_path / "data.extxyz"
    frames = read_frames(DATA)
    write_frames(data, frames)
    out = tmp_path / "run"
    train(_config(out, epochs=1, train_files=[str(data)]))
    frames[0].arrays["born_effective_charges"][0, 0, 0] += 0.5
    write_frames(data, frames)
    with pytest.raises(CheckpointMismatchError, match="different data"):
        train(_config(out, epochs=2, train_files=[str(data)]), resume=True)


def test_nan_loss_stops_and_keeps_best(tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_config(out, epochs=6))
    real_loss = trainer.loss_fn
    steps_per_epoch = 7  # 27 training structures, batch 4
    calls = {"n": 0}

    def poisoned(pred, target):
        calls["n"] += 1
        loss = real_loss(pred, target)
        return loss * float("nan") if calls["n"] > 3 * steps_per_epoch + 2 else loss

    trainer.loss_fn = poisoned
    result = trainer.fit()
    assert result.status == "non_finite_loss"
    assert "non-finite loss at epoch 4" in result.stopped_reason
    assert result.epochs_completed == 3
    assert 1 <= result.best_epoch <= 3
    # the last checkpoint is the last good epoch; the exported model is the best one, finite
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["epoch"] == result.best_epoch
    model = _state(out / "model.pt")
    assert all(torch.isfinite(v).all() for v in model.values())
    assert all(torch.equal(model[k], v) for k, v in eval_state(best).items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "non_finite_loss" and metrics["best_epoch"] == result.best_epoch
    assert metrics["val"]["mae"] == pytest.approx(result.best_val_mae, rel=1e-5)
