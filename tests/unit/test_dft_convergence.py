"""Convergence study bookkeeping: error analysis, resume, table, export of a point as a frame."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import units

from ase_born.dft import convergence as conv
from ase_born.io.abinit import read_abinit_output
from ase_born.io.extxyz import get_born_charges, read_frames

DATA = Path(__file__).resolve().parents[1] / "data" / "abinit"


def _point(axis, ecut, kmesh, zscale=1.0, eps=6.0):
    z = np.zeros((5, 3, 3))
    for k, d in enumerate([2.5, 7.0, -5.6, -2.0, -2.0]):
        z[k] = np.eye(3) * d * zscale
    return {"axis": axis, "settings": {"ecut_Ha": ecut}, "kmesh": kmesh,
            "born_effective_charges": z.tolist(), "epsilon_inf": (np.eye(3) * eps).tolist(),
            "acoustic_sum": (np.eye(3) * 0.1 * (50 - ecut) / 10).tolist(),
            "stress": [0.01 + 0.0025 * (50 - ecut)] * 3 + [0.0] * 3,  # eV/Å³, Pulay-like in the cutoff
            "wall_s": {"gs": 60.0, "ddk": 60.0, "efield": 120.0}}


def test_analyse_errors_against_most_converged_point():
    points = {
        "ecut30_k4": _point("ecut", 30.0, [4, 4, 4], zscale=1.02, eps=6.3),
        "ecut50_k4": _point("ecut", 50.0, [4, 4, 4]),
        "ecut30_k3": _point("kpts", 30.0, [3, 3, 3], zscale=0.99),
        "ecut30_k6": _point("kpts", 30.0, [6, 6, 6], zscale=1.0),
    }
    an = conv.analyse(points)
    assert an["ecut30_k4"]["reference"] == "ecut50_k4"
    assert an["ecut30_k4"]["max_rel_err_Z_diag"] == pytest.approx(0.02)
    assert an["ecut30_k4"]["max_abs_err_Z"] == pytest.approx(0.02 * 7.0)
    assert an["ecut30_k4"]["max_rel_err_eps_diag"] == pytest.approx(0.05)
    assert an["ecut50_k4"]["max_rel_err_Z_diag"] == 0.0
    # k axis at 30 Ha: reference is the densest mesh; ecut30_k4 is also on that axis
    assert an["ecut30_k3@k"]["reference"] == "ecut30_k6"
    assert an["ecut30_k3@k"]["max_rel_err_Z_diag"] == pytest.approx(0.01)
    assert an["ecut30_k4@k"]["max_rel_err_Z_diag"] == pytest.approx(0.02)
    assert an["ecut30_k4"]["max_abs_asr_violation_e"] == pytest.approx(0.2)
    assert an["ecut30_k4"]["wall_min"] == 4.0
    assert an["ecut30_k4"]["pressure_GPa"] == pytest.approx(-0.06 / units.GPa)
    table = conv.markdown_table({"points": points, "analysis": an})
    assert "| ecut30_k4 (vs ecut50_k4) | 30 | 4x4x4 | 2.00% |" in table
    assert "| ecut30_k3 (vs ecut30_k6) | 30 | 3x3x3 | 1.00% |" in table
    # the point on both axes has one row per comparison
    assert "| ecut30_k4 (vs ecut30_k6) | 30 | 4x4x4 | 2.00% |" in table


def test_run_resumes_and_exports_a_point_as_frame(tmp_path):
    structure = read_abinit_output(DATA / "gs.abo")  # the committed real output's own cell
    calls = []

    def fake_runner(atoms, settings, directory, ranks, timeout_s, nice):
        calls.append(settings.ecut_Ha)
        # every point runs at the study's tight tolerances, not the production defaults
        assert settings.tolwfr_ddk == conv.STUDY_TOLERANCES["tolwfr_ddk"] == 1e-20
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("gs.abo", "efield.abo"):
            shutil.copy(DATA / name, directory / name)
        return {"gs": 1.0, "ddk": 2.0, "efield": 3.0}

    grid = conv.DEFAULT_GRID[:2]
    out, work = tmp_path / "convergence.json", tmp_path / "conv"
    res = conv.run_convergence(work, out, grid=grid[:1], runner=fake_runner, structure=structure, log=lambda m: None)
    assert list(res["points"]) == [grid[0][1]] and len(calls) == 1
    res = conv.run_convergence(work, out, grid=grid, runner=fake_runner, structure=structure, log=lambda m: None)
    assert len(calls) == 2 and list(res["points"]) == [g[1] for g in grid]  # first point not rerun
    assert json.loads(out.read_text())["points"][grid[1][1]]["wall_s"]["efield"] == 3.0
    # an analysis stored by an older version (no pressure column) is refreshed on the next call
    stale = json.loads(out.read_text())
    for a in stale["analysis"].values():
        a.pop("pressure_GPa")
    out.write_text(json.dumps(stale))
    res = conv.run_convergence(work, out, grid=grid, runner=fake_runner, structure=structure, log=lambda m: None)
    assert len(calls) == 2  # nothing rerun
    stored = json.loads(out.read_text())["analysis"][grid[0][1]]
    assert stored["pressure_GPa"] == res["analysis"][grid[0][1]]["pressure_GPa"]
    assert np.isfinite(stored["pressure_GPa"])

    xyz = tmp_path / "frames.extxyz"
    frame = conv.export_frame(grid[0][1], xyz, work, out, structure=structure)
    (back,) = read_frames(xyz)
    ref = read_abinit_output(DATA / "gs.abo", DATA / "efield.abo")
    np.testing.assert_array_equal(get_born_charges(back), get_born_charges(ref))
    assert back.info["structure_id"] == "conv_cubic" and back.info["split"] == "train"
    assert back.info["convergence_point"] == grid[0][1]
    recorded = json.loads(back.info["dft_settings"])
    assert recorded["ecut_Ha"] == grid[0][2]["ecut_Ha"]
    assert recorded["tolwfr_ddk"] == 1e-20 and recorded["tolvrs_efield"] == 1e-8
    # a point stored before full settings were kept (overrides only) exports the same settings
    old = json.loads(out.read_text())
    del old["points"][grid[0][1]]["abinit_settings"]
    out.write_text(json.dumps(old))
    again = conv.export_frame(grid[0][1], tmp_path / "frames2.extxyz", work, out, structure=structure)
    assert json.loads(again.info["dft_settings"]) == recorded
    assert back.get_potential_energy() == pytest.approx(frame.get_potential_energy())
    with pytest.raises(ValueError, match="not finished"):
        conv.export_frame("ecut99_k9", xyz, work, out, structure=structure)
    # exported once: a second export (of any point) is refused, the file keeps one conv_cubic frame
    with pytest.raises(ValueError, match="already holds the convergence frame"):
        conv.export_frame(grid[0][1], xyz, work, out, structure=structure)
    assert [f.info["structure_id"] for f in read_frames(xyz)] == ["conv_cubic"]


def test_convergence_structure_is_ideal_cubic():
    import spglib

    a = conv.convergence_structure()
    cell = (a.cell[:], a.get_scaled_positions(), a.numbers)
    assert spglib.get_spacegroup(cell, symprec=1e-5) == "Pm-3m (221)"


def test_k_limit_extrapolates_a_geometric_sequence_and_tol_points_use_their_base():
    # Z*(k) = Z∞ (1 - 0.1 q^k) with q = 0.4: the Aitken limit of three meshes is exact
    def scale(k):
        return 1.0 - 0.1 * 0.4 ** k
    points = {f"ecut30_k{k}": _point("kpts", 30.0, [k, k, k], zscale=scale(k), eps=6.0 * scale(k)) for k in (4, 5, 6)}
    points["ecut30_k4"]["axis"] = "ecut"
    points["ecut50_k4"] = _point("ecut", 50.0, [4, 4, 4], zscale=scale(4))
    points["ecut30_k4_ddk1e-16"] = _point("tol", 30.0, [4, 4, 4], zscale=scale(4) * 1.001)
    limit = conv.k_limit(points)
    assert limit["from"] == ["ecut30_k4", "ecut30_k5", "ecut30_k6"]
    np.testing.assert_allclose(np.array(limit["born_effective_charges"])[1], np.eye(3) * 7.0, atol=1e-9)
    np.testing.assert_allclose(limit["epsilon_inf"], np.eye(3) * 6.0, atol=1e-9)
    an = conv.analyse(points)
    assert an["ecut30_k6@kinf"]["max_rel_err_Z_diag"] == pytest.approx(0.1 * 0.4 ** 6, rel=1e-6)
    # the tolerance point is compared with the same cutoff and mesh, not with the highest cutoff
    assert an["ecut30_k4_ddk1e-16"]["reference"] == "ecut30_k4"
    assert an["ecut30_k4_ddk1e-16"]["max_rel_err_Z_diag"] == pytest.approx(1e-3)
    table = conv.markdown_table({"points": points, "analysis": an})
    assert "| ecut30_k6 (vs k-limit (Aitken, ecut30_k4/ecut30_k5/ecut30_k6)) | 30 | 6x6x6 | 0.04% |" in table


def test_pulay_stress_from_the_cutoff_axis():
    points = {lbl: _point("ecut", e, [4, 4, 4]) for lbl, e in (("ecut30_k4", 30.0), ("ecut50_k4", 50.0))}
    points["ecut30_k6"] = _point("kpts", 30.0, [6, 6, 6])
    assert conv.pulay_stress(30.0, points) == pytest.approx(0.05)
    assert conv.pulay_stress(50.0, points) == conv.pulay_stress(60.0, points) == 0.0
    with pytest.raises(ValueError, match="no cutoff-axis point at 35"):
        conv.pulay_stress(35.0, points)
    # the committed study: 30 Ha leaves ~ -9 GPa of basis-set pressure (ASE stress +0.056 eV/Å³)
    study = json.loads((Path(__file__).resolve().parents[2] / "data" / "dft" / "convergence.json").read_text())
    sigma = conv.pulay_stress(30.0, study["points"])
    assert 8.0 < sigma / units.GPa < 10.0
    assert abs(conv.pulay_stress(40.0, study["points"]) / units.GPa) < 0.3
    # applied to the committed 30 Ha frames: diagonal only, by the frame's own cutoff
    frames = read_frames(Path(__file__).resolve().parents[2] / "data" / "dft" / "catio3_dfpt.extxyz")
    for a in frames[:2]:
        raw = a.calc.results["stress"]
        np.testing.assert_allclose(conv.basis_corrected_stress(a, study["points"]), raw - sigma * np.r_[1, 1, 1, 0, 0, 0])
    del frames[0].info["dft_settings"]
    with pytest.raises(ValueError, match="no dft_settings"):
        conv.basis_corrected_stress(frames[0], study["points"])


def test_a_results_file_that_is_not_one_is_named(tmp_path, capsys):
    """`dft converge --table --output junk.txt` said only "Expecting value: line 1 column 1"."""
    from ase_born.cli.main import main

    junk = tmp_path / "junk.txt"
    junk.write_text("no json here\n")
    assert main(["dft", "converge", "--table", "--output", str(junk)]) == 1
    err = capsys.readouterr().err
    assert "junk.txt is not a convergence results file" in err and err.count("\n") == 1
