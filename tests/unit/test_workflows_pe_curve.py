"""Static P(E): linear for a harmonic crystal (slope = harmonic ε), onset of nonlinearity found
for an anharmonic one; cell relaxation under the field stress; input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ase_born import physics
from ase_born.workflows.pe_curve import PECurveConfig, run_pe_curve
from ase_born.workflows.standins import QuarticCrystal, standin_born_model, standin_force_field


def quartic_sites(reference):
    """The anharmonic stand-in with a stronger quartic term than the example's."""
    return QuarticCrystal(reference, beta=300.0)


def test_quartic_stand_in_forces_and_stress_are_exact_derivatives():
    from ase_born.dft.sampler import pnma_catio3
    from ase_born.testing import assert_forces_match_fd, assert_stress_matches_fd

    ref = pnma_catio3()
    atoms = ref.copy()
    atoms.rattle(0.08, seed=3)  # |u| ~ 0.1 Å: the quartic term is ~10 % of the springs' force
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.01 * np.array([[1, 2, 0], [2, -1, 1], [0, 1, 0.5]])),
                   scale_atoms=True)
    atoms.calc = quartic_sites(ref)
    f4 = atoms.get_forces() - atoms.calc.springs.get_forces(atoms)
    assert np.abs(f4).max() > 0.02  # the quartic forces are there (eV/Å)
    assert_forces_match_fd(atoms, eps=1e-4, rtol=1e-6, atol=1e-7)
    assert_stress_matches_fd(atoms, eps=1e-6, rtol=1e-5, atol=1e-8)


def _run(tmp_path, ff, **kw):
    cfg = PECurveConfig(
        **{"fields_V_per_m": (0.0, 1e7, 3e7, 6e7, 1e8), "directions": ("x", "z"), **kw}
    )
    return run_pe_curve(
        cfg, ff, standin_born_model, str(tmp_path / "pe"), progress=False, log=lambda m: None
    )


def test_harmonic_crystal_is_linear_with_the_harmonic_slope(tmp_path):
    res = _run(tmp_path, standin_force_field)
    h = np.asarray(res["epsilon_ion_harmonic"])
    s = np.asarray(res["epsilon_ion_static"])
    for c in (0, 2):
        np.testing.assert_allclose(s[:, c], h[:, c], rtol=2e-3, atol=1e-3)
    for d in res["directions"]:
        assert d["nonlinearity_onset_V_per_m"] is None
        assert max(d["relative_deviation_from_linear"]) < 5e-3
    assert (tmp_path / "pe" / "pe_curve.png").exists()


def test_anharmonic_crystal_has_an_onset_of_nonlinearity(tmp_path):
    res = _run(tmp_path, quartic_sites)
    onsets = [d["nonlinearity_onset_V_per_m"] for d in res["directions"]]
    assert all(o is not None and 1e7 < o <= 1e8 for o in onsets)
    for d in res["directions"]:  # stiffening: P falls below the linear extrapolation
        p, e = np.asarray(d["P_parallel_C_per_m2"]), np.asarray(d["field_V_per_m"])
        assert p[-1] < d["slope_C_per_m2_per_V_per_m"] * e[-1]


def test_harmonic_reference_step_is_configurable_and_resumes_old_runs(tmp_path):
    """The quartic term has no curvature at u = 0: the 0 K harmonic tensor of quartic_sites is
    the springs' one, which a 0.01 Å step misses by 4βδ² in the force constants and a 1e-3 Å
    step reaches; a run directory written before the option existed resumes at its default."""
    springs = np.asarray(_run(tmp_path / "s", standin_force_field, fields_V_per_m=(0.0, 1e7),
                              harmonic_delta_A=1e-3)["epsilon_ion_harmonic"])
    coarse = np.asarray(_run(tmp_path / "c", quartic_sites, fields_V_per_m=(0.0, 1e7))["epsilon_ion_harmonic"])
    fine = np.asarray(_run(tmp_path / "f", quartic_sites, fields_V_per_m=(0.0, 1e7),
                           harmonic_delta_A=1e-3)["epsilon_ion_harmonic"])
    np.testing.assert_allclose(np.diag(fine), np.diag(springs), rtol=2e-3)
    assert np.all(np.diag(coarse) < 0.98 * np.diag(springs))
    with pytest.raises(ValueError, match="harmonic_delta_A"):
        PECurveConfig(harmonic_delta_A=0.0)
    # an older run directory: its settings.json has no harmonic_delta_A
    sfile = tmp_path / "c" / "pe" / "settings.json"
    saved = json.loads(sfile.read_text())
    del saved["settings"]["config"]["harmonic_delta_A"]
    sfile.write_text(json.dumps(saved))
    _run(tmp_path / "c", quartic_sites, fields_V_per_m=(0.0, 1e7))  # the default: resumes
    from ase_born.workflows.rundir import IncompatibleSettingsError

    with pytest.raises(IncompatibleSettingsError, match="harmonic_delta_A"):
        _run(tmp_path / "c", quartic_sites, fields_V_per_m=(0.0, 1e7), harmonic_delta_A=1e-3)


def _strained_energy_stress(atoms, calc, h=1e-5):
    """ASE stress ``(1/Ω) ∂E/∂ε`` (Voigt) by central differences of ``calc``'s energy under a
    homogeneous strain of atoms and cell (the sites follow the cell): independent of the
    analytic stresses, in particular of :func:`ase_born.physics.field_stress`."""
    cell0 = atoms.cell.array.copy()
    vol = atoms.get_volume()
    out = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            e = []
            for sgn in (1.0, -1.0):
                eps = np.eye(3)
                eps[a, b] += 0.5 * sgn * h
                eps[b, a] += 0.5 * sgn * h
                x = atoms.copy()
                x.set_cell(cell0 @ eps, scale_atoms=True)
                x.calc = calc
                e.append(x.get_potential_energy())
            out[a, b] = out[b, a] = (e[0] - e[1]) / (2 * h * vol)
    return physics.stress_full_to_voigt(out)


def test_cell_relaxation_in_field(tmp_path):
    """Springs to sites have no electrostriction: relaxing the cell under the field stress
    leaves the cell and the response unchanged.

    Checked against quantities computed here: at the relaxed in-field structure the total
    stress (force field + field) is zero both as the calculator reports it and as the strain
    derivative of the calculator's energy (a wrong sign or a missing field stress relaxes the
    cell to where the *reported* stress vanishes but the true one does not, ~2e-4 eV/Å³),
    the cell is the zero-field cell to well below that strain, and the static ε equals the
    0 K harmonic ε of the same stand-in (``harmonic_dielectric``)."""
    import ase.io

    from ase_born.conventions import field_from_V_per_m
    from ase_born.workflows.common import make_field_calculator
    from ase_born.workflows.harmonic import harmonic_dielectric

    res = _run(
        tmp_path,
        standin_force_field,
        relax_cell=True,
        harmonic=False,
        fmax_eV_per_A=1e-4,
        fields_V_per_m=(0.0, 1e8),
        directions=("z",),
    )
    ref = ase.io.read(tmp_path / "pe" / "reference.extxyz")
    frames = ase.io.read(tmp_path / "pe" / "structures.extxyz", index=":")
    assert [f.info["field_V_per_m"] for f in frames] == [0.0, 1e8]
    last = frames[-1]

    calc = make_field_calculator(standin_force_field, standin_born_model, ref)
    calc.set(field=(0.0, 0.0, float(field_from_V_per_m(1e8))))
    at = last.copy()
    at.calc = calc
    reported = at.get_stress()
    fd = _strained_energy_stress(last, calc)
    field_part = calc.get_property("field_stress", at)
    # the field stress is not small: it cancels the spring stress (ff part) at equilibrium
    assert np.max(np.abs(field_part)) > 2e-5  # ~6e-5 eV/Å³ (zz)
    tol = 1e-5  # eV/Å³: relaxation residual (measured ~1e-7; sign-flipped field stress: 1e-4)
    np.testing.assert_allclose(fd, reported, rtol=0, atol=tol)
    np.testing.assert_allclose(reported, 0.0, atol=tol)
    np.testing.assert_allclose(fd, 0.0, atol=tol)
    # no electrostriction: the cell is the zero-field cell (strain ≪ ~1e-4 of a wrong stress)
    np.testing.assert_allclose(last.cell.array, frames[0].cell.array, rtol=0, atol=1e-4)
    np.testing.assert_allclose(frames[0].cell.array, ref.cell.array, rtol=0, atol=1e-5)

    z = physics.asr_project(np.asarray(standin_born_model(ref).get_born_charges(ref)))
    eps_h = harmonic_dielectric(ref, z, calculator=standin_force_field(ref))
    s = np.asarray(res["epsilon_ion_static"])
    assert 100 < eps_h[2, 2] < 140  # the stand-in's ε_ion ≈ 118 (standins.STANDIN_SPRINGS)
    np.testing.assert_allclose(s[:, 2], eps_h[:, 2], rtol=2e-3, atol=0.05)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fields_V_per_m": (0.0,)}, "nonzero"),
        ({"fields_V_per_m": (0.0, 2e10)}, "exceeds"),
        ({"directions": ()}, "empty"),
        ({"directions": ("q",)}, "direction"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        PECurveConfig(**kw)


def test_numeric_directions_are_comma_free_csv_labels(tmp_path):
    """A direction given as "1,1,0" or as numbers (the forms parse_direction documents) is
    stored as a comma-free label: pe_curve.csv keeps its columns and the run finishes."""
    from ase_born.workflows.common import parse_direction

    cfg = PECurveConfig(fields_V_per_m=(0.0, 1e7), directions=("1,1,0", (0.0, 0.0, 1.0)))
    assert cfg.directions == ("1 1 0", "0.0 0.0 1.0")
    np.testing.assert_allclose(parse_direction(cfg.directions[0]), np.array([1, 1, 0]) / np.sqrt(2))
    res = run_pe_curve(cfg, standin_force_field, standin_born_model, str(tmp_path / "pe"), progress=False,
                       log=lambda m: None)
    assert [d["direction"] for d in res["directions"]] == ["1 1 0", "0.0 0.0 1.0"]


def _synthetic_rows(fields, polarization) -> dict[str, np.ndarray]:
    """pe_curve.csv columns for directions ``{label: P(E) in C/m² (3-vector)}`` at ``fields``."""
    rows: dict[str, list] = {k: [] for k in ("direction", "field_V_per_m", "Px_C_per_m2",
                                             "Py_C_per_m2", "Pz_C_per_m2")}
    for d, p_of in polarization.items():
        for e in fields:
            p = p_of(e)
            rows["direction"].append(d)
            rows["field_V_per_m"].append(e)
            for a, x in enumerate("xyz"):
                rows[f"P{x}_C_per_m2"].append(p[a])
    return {k: np.asarray(v) for k, v in rows.items()}


def test_analysis_subtracts_the_zero_field_polarization():
    """P(0) is not exactly zero (the reference is relaxed less tightly than the points): the
    slopes, the fit and the onset use P(E) - P(0). Exactly linear P with an offset gives the
    exact tensor and no onset; without the subtraction the offset (here 3 % of P(E1)) showed
    up as off-diagonal ε and a false onset of nonlinearity."""
    from ase_born.workflows.pe_curve import _analyze

    eps0_si = 8.8541878128e-12  # F/m
    eps = np.array([[118.6, 0.0, 1.5], [0.0, 118.1, 0.0], [1.5, 0.0, 117.7]])
    fields = np.array([0.0, 1e7, 2e7, 5e7, 1e8])
    p0 = np.array([3.1e-5, -2.2e-5, 1.7e-5])  # C/m²; P(E1) along x ~ 1.05e-3 C/m²
    rows = _synthetic_rows(fields, {"x": lambda e: p0 + eps0_si * eps[:, 0] * e,
                                    "z": lambda e: p0 + eps0_si * eps[:, 2] * e})
    cfg = PECurveConfig(fields_V_per_m=tuple(fields), directions=("x", "z"))
    res = _analyze(cfg, rows)
    s = np.asarray(res["epsilon_ion_static"])
    np.testing.assert_allclose(s[:, [0, 2]], eps[:, [0, 2]], rtol=1e-9, atol=1e-9)
    for d in res["directions"]:
        assert d["nonlinearity_onset_V_per_m"] is None
        np.testing.assert_allclose(d["P_at_zero_field_C_per_m2"], p0)
        np.testing.assert_allclose(d["epsilon_ion_column_small_field"],
                                   eps[:, "xyz".index(d["direction"])], rtol=1e-9)


def test_signed_axis_direction_fills_its_column_with_the_sign_undone(tmp_path):
    """A -y run fits ε·(-ŷ) = -(column y): epsilon_ion_static gets the column (it stayed NaN)."""
    res = _run(tmp_path, standin_force_field, directions=("-y",))
    h = np.asarray(res["epsilon_ion_harmonic"])
    s = np.asarray(res["epsilon_ion_static"], dtype=float)
    np.testing.assert_allclose(s[:, 1], h[:, 1], rtol=2e-3, atol=1e-3)
    assert h[1, 1] > 50 and np.isnan(s[:, 0]).all()
    (d,) = res["directions"]
    np.testing.assert_allclose(d["epsilon_ion_column_fit"], -h[:, 1], rtol=2e-3, atol=1e-3)


def test_fields_too_small_to_move_the_atoms_warn(tmp_path):
    """Fields in V/Å passed as V/m: no relaxation step at any nonzero field, ε = 0 (was silent)."""
    with pytest.warns(UserWarning, match="took no step"):
        _run(tmp_path, standin_force_field, fields_V_per_m=(0.0, 0.005, 0.01), directions=("x",))


def test_both_signs_of_an_axis_give_the_mean_column():
    """Directions x and -x: epsilon_ion_static's column is the mean of the two fits (the
    second overwrote the first before)."""
    from ase_born.workflows.pe_curve import _analyze

    eps0_si = 8.8541878128e-12  # F/m
    fields = np.array([0.0, 1e7, 2e7, 5e7, 1e8])
    col_plus, col_minus = np.array([118.0, 0.5, -1.0]), np.array([120.0, 1.5, 1.0])
    # field along ±x̂: P = ε·(±x̂) E
    rows = _synthetic_rows(fields, {"x": lambda e: eps0_si * col_plus * e,
                                    "-x": lambda e: -eps0_si * col_minus * e})
    cfg = PECurveConfig(fields_V_per_m=tuple(fields), directions=("x", "-x"))
    res = _analyze(cfg, rows)
    s = np.asarray(res["epsilon_ion_static"], dtype=float)
    np.testing.assert_allclose(s[:, 0], 0.5 * (col_plus + col_minus), rtol=1e-6)
    assert np.isnan(s[:, 1:]).all()
