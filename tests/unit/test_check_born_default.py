"""The default Born model's acceptance checks (scripts/check_born_default.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ase_born import defaults
from ase_born.dft.sampler import pnma_catio3
from ase_born.io.extxyz import read_frames, set_born_charges, write_frames
from ase_born.train.dataset import correct_asr
from ase_born.train.evaluation import equilibrium_check

ROOT = Path(__file__).resolve().parents[2]




def _reference(n=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 0.05, (n, 3, 3))
    z[:, [0, 1, 2], [0, 1, 2]] = rng.choice([2.5, 7.2, -5.6, -2.0], size=(n, 1)) * (1 + 0.1 * rng.random((n, 3)))
    return z


def test_equilibrium_check_tolerances():
    ref = _reference()
    numbers = [20, 22, 8, 8]
    z = ref.copy()
    z[:, [0, 1, 2], [0, 1, 2]] *= 1.049
    z[:, 0, 1] += 0.099
    r = equilibrium_check(z, ref, numbers)
    assert r["passed"] and r["n_atoms_failing"] == 0
    assert r["max_rel_diag"] == pytest.approx(0.049)
    assert r["max_abs_offdiag"] == pytest.approx(0.099)
    # one diagonal element of atom 2 off by 6 %: that atom fails, and is named
    z2 = ref.copy()
    z2[2, 1, 1] *= 0.94
    r = equilibrium_check(z2, ref, numbers)
    assert not r["passed"] and r["n_atoms_failing"] == 1 and r["max_rel_diag_atom"] == 2
    assert r["atoms"][2]["symbol"] == "O" and r["atoms"][2]["max_rel_diag"] == pytest.approx(0.06)
    # one off-diagonal element of atom 3 off by 0.11 e
    z3 = ref.copy()
    z3[3, 2, 0] -= 0.11
    r = equilibrium_check(z3, ref, numbers)
    assert not r["passed"] and r["max_abs_offdiag_atom"] == 3 and r["max_abs_offdiag"] == pytest.approx(0.11)
    z4 = ref.copy()
    z4[0, 0, 0] = np.nan
    r = equilibrium_check(z4, ref, numbers)
    assert not r["passed"] and r["n_atoms_failing"] == 1
    assert r["n_elements_checked"] == 36
    # a partial reference (field direction 1 only): the rows not computed are not checked
    part = ref.copy()
    part[:, 1:, :] = np.nan
    r = equilibrium_check(z2, part, numbers)  # z2 is off in row 1 only
    assert r["passed"] and r["n_elements_checked"] == 12
    z5 = z2.copy()
    z5[1, 0, 2] += 0.2
    r = equilibrium_check(z5, part, numbers)
    assert not r["passed"] and r["max_abs_offdiag_atom"] == 1
    with pytest.raises(ValueError, match="no known element"):
        equilibrium_check(z, np.full_like(ref, np.nan), numbers)
    with pytest.raises(ValueError, match="must both be"):
        equilibrium_check(z[:3], ref, numbers)
    with pytest.raises(ValueError, match="numbers"):
        equilibrium_check(z, ref, numbers[:3])


@pytest.mark.skipif(not defaults.available(), reason="no default models shipped")
def test_script_on_a_pnma_eq_frame(tmp_path, monkeypatch, capsys, load_script):
    """TEST metrics and the pnma_eq check run the shipped model; --set-epsilon writes the card."""
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    card = defaults.model_card()
    shutil.copy(defaults.models_dir() / "defaults.json", models / "defaults.json")
    shutil.copy(defaults.models_dir() / card["born_model"]["file"], models / card["born_model"]["file"])
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path / "data"))
    mod = load_script("check_born_default")
    from ase_born.calculators.equivar import EquivarCalculator

    atoms = pnma_catio3()
    calc = EquivarCalculator(str(models / card["born_model"]["file"]), dtype="float64")
    pred = correct_asr(mod.raw_prediction(calc, atoms))
    frames = []
    for sid, scale in (("pnma_eq", 1.03), ("other", 1.2)):
        f = atoms.copy()
        dft = pred.copy()
        dft[:, [0, 1, 2], [0, 1, 2]] *= scale
        if sid == "other":
            dft += 0.005  # a raw sum-rule violation: the TEST metrics remove it (below)
        else:
            dft[:, ~np.eye(3, dtype=bool)] += 0.004  # the raw off-diagonals violate the sum rule
        set_born_charges(f, dft)
        f.info.update(structure_id=sid, split="test", kind="pnma20",
                      epsilon_inf=np.array([[6.0, 0.01, 0], [0.0, 6.2, 0], [0, 0, 5.9]]))
        frames.append(f)
    data = tmp_path / "dfpt.extxyz"
    write_frames(data, frames)
    out = tmp_path / "check.json"
    assert mod.main(["--data", str(data), "--out", str(out), "--set-epsilon", "--card", str(models / "defaults.json")]) == 0
    text = capsys.readouterr().out
    assert "pnma_eq: PASS" in text and "TEST (2 structures" in text
    report = json.loads(out.read_text())
    assert report["pnma_eq"]["max_rel_diag"] == pytest.approx(0.03 / 1.03, rel=1e-4)
    assert report["test"]["n_structures"] == 2 and report["test"]["kinds"] == {"pnma20": 2}
    per = report["test"]["mae_per_structure"]  # equal atom counts: the overall MAE is their mean
    assert per["other"] > 5 * per["pnma_eq"] and np.mean(list(per.values())) == pytest.approx(report["test"]["mae"])
    symbols = np.array(atoms.get_chemical_symbols())
    for el, mean in report["pnma_experimental_mean_diag"].items():  # the shipped model on experimental Pnma
        assert mean == pytest.approx(np.mean(np.diagonal(pred[symbols == el], axis1=1, axis2=2)), abs=1e-9)
    assert "experimental Pnma, mean diagonal Z*" in text
    # TEST errors with the sum rule applied to both: the uniform +0.005 of "other" drops out
    other = correct_asr(read_frames(data)[1].arrays["born_effective_charges"].reshape(-1, 3, 3))
    assert per["other"] == pytest.approx(np.abs(pred - other).mean(), rel=1e-6)
    # the pnma_eq check compares with the raw DFPT values (documented choice): the raw
    # off-diagonal offset is seen in full
    assert report["pnma_eq"]["max_abs_offdiag"] == pytest.approx(0.004, abs=1e-9)
    eps = json.loads((models / "defaults.json").read_text())["epsilon_inf"]
    np.testing.assert_allclose(eps["value"], (6.0 + 6.2 + 5.9) / 3 * np.eye(3), atol=1e-4)  # trace/3
    np.testing.assert_allclose(eps["tensor"], [[6.0, 0.005, 0], [0.005, 6.2, 0], [0, 0, 5.9]])
    assert "pnma_eq" in eps["source"]
    # the same model against Z* 8 % larger fails
    frames[0].arrays["born_effective_charges"][:, [0, 1, 2], [0, 1, 2]] *= 1.08 / 1.03
    write_frames(data, frames)
    assert mod.main(["--data", str(data)]) == 1
    assert "pnma_eq: FAIL" in capsys.readouterr().out
    assert len(read_frames(data)) == 2


def test_deviation_detail_tells_a_bias_from_a_missed_variation(load_script):
    """A model that shifts every species' tensor and varies from atom to atom at 0.9 of DFPT's
    amplitude: the species means show the shift, the deviations correlation 1 and slope 0.9."""
    mod = load_script("check_born_default")
    rng = np.random.default_rng(4)
    symbols = np.array(["Ca"] * 4 + ["Ti"] * 4 + ["O"] * 12)
    ref = rng.normal(size=(20, 3, 3))
    mean = {el: ref[symbols == el].mean(axis=0) for el in ("Ca", "Ti", "O")}
    bias = {"Ca": 0.1, "Ti": -0.2, "O": 0.0}
    pred = np.stack([mean[el] + bias[el] * np.eye(3) + 0.9 * (z - mean[el]) for el, z in zip(symbols, ref)])
    d = mod.deviation_detail(pred, ref, symbols)
    for el in ("Ca", "Ti", "O"):
        m = d["mean_diag"][el]
        assert m["pred"] - m["dft"] == pytest.approx(bias[el], abs=1e-12)
        assert m["dft"] == pytest.approx(np.trace(mean[el]) / 3, abs=1e-12)
    assert d["corr"] == pytest.approx(1.0, abs=1e-12) and d["slope"] == pytest.approx(0.9, abs=1e-12)
    assert d["std_pred"] == pytest.approx(0.9 * d["std_dft"], rel=1e-12)
    # an unrelated variation: no correlation to speak of, the slope near 0
    noise = np.stack([mean[el] for el in symbols]) + rng.normal(size=(20, 3, 3))
    d = mod.deviation_detail(noise, ref, symbols)
    assert abs(d["corr"]) < 0.3 and abs(d["slope"]) < 0.3
    # no atom-to-atom variation in DFPT (one atom per species): no slope, no correlation
    d = mod.deviation_detail(pred[[0, 4, 8]], ref[[0, 4, 8]], symbols[[0, 4, 8]])
    assert np.isnan(d["slope"]) and np.isnan(d["corr"]) and d["std_dft"] == 0.0


@pytest.mark.skipif(not defaults.available(), reason="no default models shipped")
def test_unseen_reports_only_training_frames_the_shipped_fit_never_saw(
        tmp_path, capsys, load_script, frames_off_the_shipped_born_model):
    """``unseen``: training-split frames missing from the card's training_structures."""
    mod = load_script("check_born_default")
    entry = defaults.model_card()["born_model"]
    frames = frames_off_the_shipped_born_model(
        (("FITTED", "train", "pnma20", 0.3), ("new_a", "train", "pnma20", 0.01),
         ("new_b", "train", "tilt10", 0.04), ("held", "test", "pnma20", 0.5)))
    data = tmp_path / "dfpt.extxyz"
    write_frames(data, frames)
    out = tmp_path / "check.json"
    mod.main(["--data", str(data), "--out", str(out)])
    u = json.loads(out.read_text())["unseen"]
    assert u["structure_ids"] == ["new_a", "new_b"] and u["kinds"] == {"pnma20": 1, "tilt10": 1}
    # the corrected DFPT Z*(0,1) is off by ±shift/2 on every atom: MAE over 9 elements = shift/18
    assert u["mae_per_structure"]["new_a"] == pytest.approx(0.01 / 18, rel=1e-6)
    assert u["mae_per_kind"]["tilt10"] == pytest.approx(0.04 / 18, rel=1e-6)
    assert u["mae"] == pytest.approx(0.05 / 36, rel=1e-6)
    assert "unseen training-split structures (2" in capsys.readouterr().out
    # --detail: the model against frames made from its own prediction, Z*(0,1) moved by
    # ±shift/2 alternately (the sum rule applied): no bias on the diagonal, and the
    # deviations are the model's plus that alternation
    mod.main(["--data", str(data), "--out", str(out), "--detail", "new_b"])
    d = json.loads(out.read_text())["detail"]["new_b"]
    for m in d["mean_diag"].values():
        assert m["pred"] == pytest.approx(m["dft"], abs=1e-9)
    assert 0.99 < d["corr"] < 1.0 and d["slope"] == pytest.approx(1.0, abs=0.01)
    assert "detail new_b: mean diagonal Z* pred / DFPT" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no DFPT frame for nope"):
        mod.main(["--data", str(data), "--detail", "nope"])
    # a model passed by file has no card, so no training set to compare with: no unseen block
    report = mod.check(defaults.checked_file(entry), frames)
    assert "unseen" not in report and report["test"]["structure_ids"] == ["held"]


@pytest.mark.skipif(not defaults.available(), reason="no default models shipped")
def test_script_checks_the_carried_directions_of_an_unfinished_pnma_eq(tmp_path, capsys, load_script):
    """Real DDBs (the tiny tilted cell standing in for pnma_eq): all three directions carried
    give the full check; one direction of this skewed cell determines no Cartesian element."""
    from ase_born.io.abinit import read_abinit_output, response_from_ddb

    tiny = ROOT / "tests" / "data" / "abinit" / "tilt10_tiny"
    structure = read_abinit_output(tiny / "gs.abo")
    structure.info.update(structure_id="pnma_eq", split="test", kind="pnma_eq")
    plan = tmp_path / "plan.extxyz"
    write_frames(plan, structure)
    data = tmp_path / "dfpt.extxyz"
    data.write_text("")
    carry = tmp_path / "partial" / "pnma_eq"
    carry.mkdir(parents=True)
    shutil.copy(tiny / "gs.abo", carry / "gs.abo")
    shutil.copy(tiny / "efield1.ddb", carry / "efield1.ddb")
    (carry / "efield1.done").write_text("1\n")
    mod = load_script("check_born_default")
    args = ["--data", str(data), "--partial", str(carry), "--plan", str(plan), "--out", str(tmp_path / "r.json")]
    assert mod.main(args) == 0
    assert "pnma_eq (unfinished, field directions [1] of 3): the finished directions determine no" in capsys.readouterr().out
    for d in (2, 3):
        shutil.copy(tiny / f"efield{d}.ddb", carry / f"efield{d}.ddb")
        (carry / f"efield{d}.done").write_text("1\n")
    mod.main(args)
    assert "field directions [1, 2, 3] of 3), 90 of 90 Z* elements" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())["pnma_eq_partial"]
    from ase_born.calculators.equivar import EquivarCalculator

    calc = EquivarCalculator(str(defaults.checked_file(defaults.model_card()["born_model"])), dtype="float64")
    pred = correct_asr(mod.raw_prediction(calc, structure))
    ref, _ = response_from_ddb([tiny / f"efield{d}.ddb" for d in (1, 2, 3)])
    expected = equilibrium_check(pred, ref, structure.numbers)
    assert report["max_rel_diag"] == pytest.approx(expected["max_rel_diag"])
    assert report["passed"] == expected["passed"] and report["directions"] == [1, 2, 3]
