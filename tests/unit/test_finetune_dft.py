"""scripts/distill_mace/finetune_dft.py: the guards around mace_run_train (which is faked)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from ase_born import defaults
from ase_born.io.extxyz import read_frames, write_frames

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "distill_mace" / "finetune_dft.py"
DFT = REPO / "data" / "dft" / "catio3_dfpt.extxyz"


@pytest.fixture
def script(monkeypatch):
    if not DFT.is_file() or not defaults.available():
        pytest.skip("needs the DFT dataset and the shipped models")
    monkeypatch.chdir(REPO)  # the script changes into the repository; come back afterwards
    spec = importlib.util.spec_from_file_location("finetune_dft", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _frames(tmp_path, ids=("cubic5_0001", "cubic5_0002", "cubic5_0003", "cubic5_0000")):
    frames = [f for f in read_frames(DFT) if f.info["structure_id"] in ids]
    path = tmp_path / "dft.extxyz"
    write_frames(path, frames)
    return path, frames


def _fake_trainer(mod, monkeypatch, calls, writes=("mace_catio3_dft.model",)):
    def fake_call(cmd, env=None):
        calls.append(cmd)
        work = Path(cmd[cmd.index("--work_dir") + 1])
        (work / "checkpoints").mkdir(exist_ok=True)
        (work / "checkpoints" / "mace_catio3_dft_run-1_epoch-1.pt").write_text("x")
        foundation = cmd[cmd.index("--foundation_model") + 1]
        for name in writes:
            shutil.copy(foundation, work / name)
        return 0

    monkeypatch.setattr(mod.subprocess, "call", fake_call)


def test_guards_around_the_trainer(script, tmp_path, monkeypatch):
    mod = script
    dft, frames = _frames(tmp_path)
    work = tmp_path / "work"
    args = ["--dft", str(dft), "--work", str(work), "--force"]
    calls = []
    _fake_trainer(mod, monkeypatch, calls)
    # a stage-two model left by an earlier run in the folder is not taken for this run's
    (work).mkdir()
    (work / "mace_catio3_dft_stagetwo.model").write_text("stale")
    assert mod.main(args) == 0
    assert "--restart_latest" not in calls[-1]
    result = json.loads((work / "finetune_eval.json").read_text())
    assert result["finetuned_model"].endswith("mace_catio3_dft.model")
    assert not (work / "mace_catio3_dft_stagetwo.model").exists()
    assert result["counts"]["test"] == 1  # cubic5_0000 is TEST: never in train/valid
    train_ids = {a.info["structure_id"] for n in ("train", "valid") if (work / f"{n}.xyz").is_file()
                 for a in read_frames(work / f"{n}.xyz")}
    assert "cubic5_0000" not in train_ids
    # the folder holds a run now: refused without --resume, resumed with it (same data) ...
    assert mod.main(args) == 1
    assert mod.main([*args, "--resume"]) == 0 and "--restart_latest" in calls[-1]
    # ... nor with another recipe (learning rate, epochs) than the one it started with
    n_calls = len(calls)
    assert mod.main([*args, "--resume", "--lr", "5e-4"]) == 1 and len(calls) == n_calls
    assert mod.main([*args, "--resume", "--epochs", "80"]) == 1 and len(calls) == n_calls
    # the same convergence study spelled another way is the same recipe (its content counts)
    study = Path(mod.__file__).resolve().parents[2] / "data" / "dft" / "convergence.json"
    assert mod.main([*args, "--resume", "--study", str(study)]) == 0 and len(calls) == n_calls + 1
    # a run recorded before the content hash (its study by path) resumes too
    record = json.loads((work / "finetune_settings.json").read_text())
    record["study"] = str(study)
    del record["study_sha256"]
    (work / "finetune_settings.json").write_text(json.dumps(record))
    n_calls = len(calls)
    assert mod.main([*args, "--resume"]) == 0 and len(calls) == n_calls + 1
    n_calls = len(calls)
    # ... but not on other data (a frame added since the run started)
    more = [f for f in read_frames(DFT) if f.info["structure_id"] == "cubic5_0004"]
    write_frames(dft, [*frames, *more])
    n_calls = len(calls)
    assert mod.main([*args, "--resume"]) == 1 and len(calls) == n_calls


def test_frames_of_different_dft_settings_are_refused(script, tmp_path, monkeypatch):
    mod = script
    dft, _ = _frames(tmp_path)
    other = read_frames(dft)[0]  # with its energy, forces and stress (a copy() drops them)
    settings = json.loads(other.info["dft_settings"])
    other.info["dft_settings"] = json.dumps({**settings, "ecut_Ha": 40.0})
    write_frames(tmp_path / "ecut40.extxyz", [other])
    calls = []
    _fake_trainer(mod, monkeypatch, calls)
    rc = mod.main(["--dft", str(dft), str(tmp_path / "ecut40.extxyz"), "--work", str(tmp_path / "w"),
                   "--force"])
    assert rc == 1 and calls == []
    assert os.getcwd() == str(REPO)
    # another functional (or pseudopotential) as well: only ecut/k-points were compared before
    other.info["dft_settings"] = json.dumps({**settings, "ixc": 11})
    write_frames(tmp_path / "pbe.extxyz", [other])
    assert mod.main(["--dft", str(dft), str(tmp_path / "pbe.extxyz"), "--work", str(tmp_path / "w2"),
                     "--force"]) == 1 and calls == []
    # other tolerances are the same physics
    other.info["dft_settings"] = json.dumps({**settings, "nstep": 120})
    write_frames(tmp_path / "nstep.extxyz", [other])
    assert mod.main(["--dft", str(dft), str(tmp_path / "nstep.extxyz"), "--work", str(tmp_path / "w3"),
                     "--force"]) == 0 and len(calls) == 1
