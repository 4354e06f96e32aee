"""Retraining the default Born model when the DFPT data have grown (scripts/retrain_born_default.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ase_born import defaults
from ase_born.dft.sampler import pnma_catio3
from ase_born.io.extxyz import read_frames


@pytest.fixture
def _script(load_script):
    return lambda: load_script("retrain_born_default")


def test_retrain_is_due_at_fifty_percent_growth(_script):
    mod = _script()
    fitted = {f"s{i}" for i in range(6)}
    due, msg = mod.retrain_due(fitted | {"n0"}, fitted)
    assert not due and "retrain at >= 9" in msg
    assert mod.retrain_due(fitted | {"n0", "n1", "n2"}, fitted)[0]
    # a structure that left the training set counts against the growth
    assert not mod.retrain_due((fitted - {"s0"}) | {"n0", "n1", "n2"}, fitted)[0]
    assert mod.retrain_due({"a"}, set())[0]  # nothing fitted yet: any data is due


def test_training_structures_leave_out_test(_script):
    mod = _script()
    frames = []
    for sid, kind, split in (("cubic5_0000", "cubic5", "test"), ("cubic5_0001", "cubic5", "train"),
                             ("conv_cubic", None, None)):
        a = pnma_catio3()
        a.info["structure_id"] = sid
        if kind:
            a.info["kind"] = kind
        if split:
            a.info["split"] = split
        frames.append(a)
    assert mod.training_structures(frames) == {"cubic5_0001": "cubic5", "conv_cubic": "conv_cubic"}


def test_install_refreshes_the_card(_script, tmp_path, monkeypatch):
    """Installing a finished run (here: the shipped model itself) copies it over the shipped
    file and rewrites hash, reference numbers, TEST MAE, training IDs and summary."""
    mod = _script()
    card = defaults.model_card()
    born = card["born_model"]
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(defaults.models_dir() / defaults.CARD_NAME, models / defaults.CARD_NAME)
    shutil.copy(defaults.models_dir() / born["file"], models / born["file"])
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(defaults.models_dir() / born["file"], run / "model.pt")
    metrics = json.loads((defaults.models_dir() / (Path(born["file"]).stem + "_metrics.json")).read_text())
    metrics["test"]["mae"] = 0.0123
    (run / "metrics.json").write_text(json.dumps(metrics))
    # stale card entries that install must replace
    stale = json.loads((models / defaults.CARD_NAME).read_text())
    stale["born_model"]["sha256"] = "0" * 64
    stale["born_model"]["reference_check"]["born_charges_first3"] = [[[0.0] * 3] * 3] * 3
    (models / defaults.CARD_NAME).write_text(json.dumps(stale))
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    shutil.copy(mod.CONFIG, run / "config.yaml")
    fitted = ["conv_cubic", "cubic5_0001", "cubic5_0002", "tilt10_0000"]
    (run / "splits.json").write_text(json.dumps({"train": fitted, "val": fitted, "test": ["cubic5_0000"]}))
    # the dataset has grown since the run: the card records what the run was fitted to
    kinds = {"conv_cubic": "conv_cubic", "cubic5_0001": "cubic5", "cubic5_0002": "cubic5",
             "tilt10_0000": "tilt10", "tilt10_0009": "tilt10"}
    mod.install(run, kinds, mod.CONFIG)
    new = json.loads((models / defaults.CARD_NAME).read_text())["born_model"]
    assert new["sha256"] == born["sha256"] == defaults.sha256(models / born["file"])
    np.testing.assert_allclose(new["reference_check"]["born_charges_first3"],
                               born["reference_check"]["born_charges_first3"], atol=1e-10)
    assert new["test_mae_e"] == 0.0123 and new["training_structures"] == fitted
    assert "139,905 params" in new["summary"] and "(conv_cubic 1, cubic5 2, tilt10 1;" in new["summary"]
    assert "TEST MAE 0.012 e" in new["summary"] and new["summary"].startswith("PROVISIONAL Equivar BM2")
    assert "recipe examples/configs/equivar_bm2_catio3_provisional.yaml" in new["summary"]
    assert json.loads((models / (Path(born["file"]).stem + "_metrics.json")).read_text())["test"]["mae"] == 0.0123
    # a split recipe (validation held out): the summary says how many trained
    (run / "metrics.json").write_text(json.dumps({**metrics, "val_is_train": False, "n_val": 1}))
    mod.install(run, kinds, mod.CONFIG)
    summary = json.loads((models / defaults.CARD_NAME).read_text())["born_model"]["summary"]
    assert "trained on 3 of the 4 DFPT training structures (1 held out for validation)" in summary
    (run / "metrics.json").write_text(json.dumps(metrics))
    # refused runs change nothing in data/: unfinished, without TEST metrics, a cross-validation
    # fold (fitted to part of the structures), unreadable model
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    for change, match in (({"status": "interrupted"}, "interrupted"), ({"test": None}, "no TEST metrics"),
                          ({"fold": 0}, "cross-validation"), ({"cross_validation": {"folds": 4}}, "cross-validation")):
        (run / "metrics.json").write_text(json.dumps({**metrics, **change}))
        with pytest.raises(SystemExit, match=match):
            mod.install(run, kinds, mod.CONFIG)
    (run / "metrics.json").write_text(json.dumps(metrics))
    # config.yaml rewritten by a later resume (more epochs) that has not finished: model.pt
    # is not what it describes
    import re

    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(re.sub(r"(?m)^epochs: *\d+", "epochs: 99999", text))
    assert (run / "config.yaml").read_text() != text
    with pytest.raises(SystemExit, match="config.yaml differs"):
        mod.install(run, kinds, mod.CONFIG)
    (run / "config.yaml").write_text(text)
    # the second staging copy fails (a full disk): no stray staged file is left in data/models
    real_copy = shutil.copyfile

    def copy_fails_on_metrics(src, dst, *args, **kw):
        if str(dst).endswith("_metrics.json.tmp"):
            Path(dst).write_bytes(b"{part")
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *args, **kw)

    monkeypatch.setattr(mod.shutil, "copyfile", copy_fails_on_metrics)
    with pytest.raises(OSError, match="No space left"):
        mod.install(run, kinds, mod.CONFIG)
    monkeypatch.setattr(mod.shutil, "copyfile", real_copy)
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before
    (run / "model.pt").write_bytes(b"not a model")
    with pytest.raises(Exception):  # noqa: B017 - any load error, before anything is copied
        mod.install(run, kinds, mod.CONFIG)
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before


@pytest.mark.parametrize("fitted_part", ["card", "half"])
def test_check_says_whether_due(_script, capsys, monkeypatch, fitted_part):
    """On the repository's own data and card (no training, nothing written): the printed line
    is exactly retrain_due's answer on the training structures of the DFPT data set and the
    structures the card says were fitted; "half" pretends the shipped fit saw only half of
    today's training structures (then a retrain is due, whatever the data set's size)."""
    import copy

    mod = _script()
    frames = read_frames(defaults.data_dir() / "dft" / "catio3_dfpt.extxyz")
    now = set(mod.training_structures(frames))
    assert now and all(
        a.info.get("split") != "test" for a in frames if a.info["structure_id"] in now
    )
    card = defaults.model_card()
    if fitted_part == "half":
        card = copy.deepcopy(card)
        card["born_model"]["training_structures"] = sorted(now)[: len(now) // 2]
        monkeypatch.setattr(defaults, "model_card", lambda *a, **k: card)
    fitted = set(card["born_model"].get("training_structures", []))
    due, msg = mod.retrain_due(now, fitted, 0.5)
    if fitted_part == "half":
        assert due
    assert msg.startswith(f"{len(now)} training structures now, {len(fitted)} at the shipped fit")
    assert mod.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert out == ("retrain due: " if due else "not due: ") + msg + "\n"


@pytest.mark.parametrize("resume", [False, True])
def test_resume_reaches_the_trainer(_script, monkeypatch, tmp_path, resume):
    """--resume continues a killed retrain (ase-born train --resume) instead of failing on
    the existing run directory."""
    mod = _script()
    n = len(mod.training_structures(read_frames(defaults.data_dir() / "dft" / "catio3_dfpt.extxyz")))
    monkeypatch.setattr(mod, "REPO", tmp_path)
    (tmp_path / "runs" / f"born_default_{n}" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / f"born_default_{n}" / "checkpoints" / "last.pt").write_text("x")
    seen = []

    class Stop(Exception):
        pass

    def fake_run(cmd, **kw):
        seen.append(cmd)
        raise Stop

    monkeypatch.setattr(mod.subprocess, "run", fake_run)
    with pytest.raises(Stop):
        mod.main(["--force", *(["--resume"] if resume else [])])
    assert seen[0][3] == "train" and ("--resume" in seen[0]) == resume


def test_resume_without_a_run_for_todays_data_says_so(_script, monkeypatch, tmp_path, capsys):
    """The dataset grew after a kill: the run folder for today's count does not exist; --resume
    says which runs exist instead of the trainer's traceback ("nothing to resume")."""
    mod = _script()
    monkeypatch.setattr(mod, "REPO", tmp_path)
    (tmp_path / "runs" / "born_default_3" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(mod.subprocess, "run", lambda *a, **k: pytest.fail("trainer started"))
    assert mod.main(["--force", "--resume"]) == 1
    out = capsys.readouterr().out
    assert "nothing to resume" in out and "born_default_3" in out


def test_check_with_a_card_without_born_model(_script, capsys, monkeypatch):
    """A card whose born_model is null (a state the loader handles) was an AttributeError."""
    mod = _script()
    card = {**defaults.model_card(), "born_model": None}
    monkeypatch.setattr(defaults, "model_card", lambda *a, **k: card)
    assert mod.main(["--check"]) == 0
    assert ", 0 at the shipped fit" in capsys.readouterr().out
