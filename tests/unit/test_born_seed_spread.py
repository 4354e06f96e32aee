"""scripts/born_seed_spread.py: the seed-ensemble study of the default Born recipe."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from ase.build import bulk

from ase_born import defaults
from ase_born.io.extxyz import read_frames, write_frames


def _frame(sid: str, split: str):
    a = bulk("Cu", "fcc", a=3.6)
    a.info.update(structure_id=sid, split=split)
    return a


def test_fit_frames_and_unseen_partition_the_training_split(load_script):
    """The fit set is exactly the card's IDs outside TEST; unseen is the rest of the
    training split; TEST frames are in neither."""
    mod = load_script("born_seed_spread")
    check = load_script("check_born_default")
    frames = [_frame(s, sp) for s, sp in (("a", "train"), ("b", "train"), ("c", "train"),
                                          ("t", "test"), ("u", "TEST"))]
    fitted = {"a", "c", "t"}  # a TEST ID in the card must not pull a TEST frame into the fit
    assert [f.info["structure_id"] for f in mod.fit_frames(frames, fitted)] == ["a", "c"]
    assert [f.info["structure_id"] for f in check.unseen_frames(frames, fitted)] == ["b"]


def test_spread_ensemble_is_the_mean_of_the_members(load_script):
    """Two members off by +d and -d on every element: each has MAE d, their mean is exact."""
    mod = load_script("born_seed_spread")
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(5, 3, 3)), rng.normal(size=(10, 3, 3))]
    d = [0.02, 0.05]
    preds = {"a": [r + x for r, x in zip(ref, d)], "b": [r - x for r, x in zip(ref, d)]}
    out = mod.spread(preds, ref, ["s5", "s10"])
    assert set(out) == {"a", "b", "ensemble"}
    assert out["a"]["mae_per_structure"] == pytest.approx({"s5": 0.02, "s10": 0.05})
    # all elements weigh the same: (45 * 0.02 + 90 * 0.05) / 135
    assert out["b"]["mae"] == pytest.approx((45 * 0.02 + 90 * 0.05) / 135)
    assert out["ensemble"]["mae"] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.skipif(not defaults.available(), reason="no default models shipped")
def test_script_with_no_new_seed_matches_the_check_scripts_unseen_block(
        tmp_path, capsys, load_script, frames_off_the_shipped_born_model):
    """With the shipped fit as the only member (no training), the member and the ensemble
    reproduce check_born_default's "unseen" MAE on the same frames."""
    mod = load_script("born_seed_spread")
    check = load_script("check_born_default")
    entry = defaults.model_card()["born_model"]
    fitted = entry["training_structures"][0]
    frames = frames_off_the_shipped_born_model(
        (("FITTED", "train", "pnma20", 0.3), ("new_a", "train", "pnma20", 0.01),
         ("new_b", "train", "pnma20", 0.04), ("held", "test", "pnma20", 0.5)))
    data = tmp_path / "dfpt.extxyz"
    write_frames(data, frames)
    assert mod.main(["--seeds", "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "spread.json").read_text())
    assert set(report) == {"seed 0 (shipped)", "ensemble"}
    for r in report.values():
        assert r["mae_per_structure"] == pytest.approx({"new_a": 0.01 / 18, "new_b": 0.04 / 18},
                                                       rel=1e-6)
    assert report["ensemble"]["mae"] == pytest.approx(check.check(
        defaults.checked_file(entry), frames, fitted={fitted})["unseen"]["mae"], rel=1e-12)
    fit = read_frames(tmp_path / "out" / "fit.extxyz")
    assert [f.info["structure_id"] for f in fit] == [fitted]
    assert "ensemble of 1" in capsys.readouterr().out


def test_a_finished_run_on_other_structures_or_recipe_is_refused_not_reused(tmp_path, load_script):
    """After a retrain the card's fit changes: an old seed run must not join the new
    ensemble silently, nor one of another recipe (an explicit --out shared by two --set
    studies); one on the same structures and recipe is reused without training."""
    mod = load_script("born_seed_spread")
    run = tmp_path / "seed1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "completed"}))
    (run / "fit_structures.json").write_text(json.dumps(["a", "b"]))
    recipe = yaml.safe_load(mod.CONFIG.read_text())
    # what the trainer records: the script's paths, the device it ran on
    recipe.update(seed=1, train_files=["/elsewhere/fit.extxyz"], out="/elsewhere", device="cpu")
    (run / "config.yaml").write_text(yaml.safe_dump(recipe))
    args = (mod.CONFIG, 1, tmp_path / "fit.extxyz", run, 1)
    assert mod.train_seed(*args, ["a", "b"]) == run / "model.pt"  # reused: no training
    # model=BM1 replaces the whole model entry: the shipped recipe's other model keys
    # (cutoff_envelope, r_max) differ too, listed in sorted order around int_num_feat
    model = recipe["model"] if isinstance(recipe["model"], dict) else {}
    other = sorted(f"model.{k}" for k in model if k != "preset")
    listed = ", ".join(sorted([*other, "model.int_num_feat"]))
    with pytest.raises(SystemExit, match=re.escape(f"another recipe ({listed}, seed differ)")):
        mod.train_seed(mod.CONFIG, 2, tmp_path / "fit.extxyz", run, 1, ["a", "b"], {"model": "BM1"})
    with pytest.raises(SystemExit, match="other structures"):
        mod.train_seed(*args, ["a", "b", "c"])
    (run / "fit_structures.json").unlink()
    with pytest.raises(SystemExit, match="missing"):
        mod.train_seed(*args, ["a", "b"])


def test_recipe_changes_are_read_as_yaml_and_checked_before_training(load_script):
    mod = load_script("born_seed_spread")
    base = yaml.safe_load(mod.CONFIG.read_text())
    changes = mod.recipe_changes(["model=BM1", "epochs=500", "lr=1e-3"], base)
    assert changes == {"model": "BM1", "epochs": 500, "lr": 1e-3}
    assert mod.variant_tag(changes) == "model-BM1_epochs-500_lr-0.001"
    assert mod.variant_tag({}) == ""
    for bad, why in (("modle=BM1", "unknown TrainConfig keys"), ("model=BM9", "BM9"),
                     ("epochs=0", "epochs must be"), ("seed=3", "set by this script"),
                     ("BM1", "KEY=VALUE")):
        with pytest.raises(SystemExit, match=why):
            mod.recipe_changes([bad], base)


def test_reference_rows_stay_out_of_the_ensemble(load_script):
    mod = load_script("born_seed_spread")
    ref = [np.zeros((2, 3, 3))]
    out = mod.spread({"a": [np.full((2, 3, 3), 0.2)], "b": [np.full((2, 3, 3), 0.4)]}, ref, ["s"],
                     reference={"shipped": [np.full((2, 3, 3), 5.0)]})
    assert list(out) == ["shipped", "a", "b", "ensemble"]
    assert out["shipped"]["mae"] == pytest.approx(5.0)
    assert out["ensemble"]["mae"] == pytest.approx(0.3)


@pytest.mark.skipif(not defaults.available(), reason="no default models shipped")
def test_a_changed_recipe_trains_seed_zero_too_and_shows_the_shipped_fit_apart(
        tmp_path, capsys, load_script, frames_off_the_shipped_born_model):
    """--set: every member is trained with the changed recipe (here 2 epochs, so the test is
    quick); the shipped fit is a reference row, not an ensemble member."""
    mod = load_script("born_seed_spread")
    entry = defaults.model_card()["born_model"]
    frames = frames_off_the_shipped_born_model(
        ((entry["training_structures"][0], "train", "pnma20", 0.3),
         ("new_a", "train", "pnma20", 0.01), ("held", "test", "pnma20", 0.5)))
    data, out = tmp_path / "dfpt.extxyz", tmp_path / "out"
    write_frames(data, frames)
    argv = ["--set", "epochs=2", "--seeds", "0", "--data", str(data), "--out", str(out),
            "--threads", "1"]
    assert mod.main(argv) == 0
    cfg = yaml.safe_load((out / "seed0.yaml").read_text())
    recipe = yaml.safe_load(mod.CONFIG.read_text())
    assert (cfg["epochs"], cfg["seed"], cfg["model"]) == (2, 0, recipe["model"])
    report = json.loads((out / "spread.json").read_text())
    assert list(report) == ["seed 0 (shipped)", "epochs-2 seed 0", "ensemble"]
    assert report["ensemble"] == report["epochs-2 seed 0"]
    assert report["seed 0 (shipped)"]["mae"] == pytest.approx(0.01 / 18, rel=1e-6)
    assert report["epochs-2 seed 0"]["mae"] > 10 * report["seed 0 (shipped)"]["mae"]
    assert "recipe changed: {'epochs': 2}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="at least one seed"):
        mod.main(["--set", "epochs=2", "--seeds", "--data", str(data), "--out", str(out)])
