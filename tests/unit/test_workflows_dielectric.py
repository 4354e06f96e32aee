"""Dielectric workflow on an exactly solvable system: finite field, fluctuation and harmonic routes
all agree with ε_ion = ZᵀΦ⁻¹Z/(Ω ε0) within their error bars; outputs, warnings and input errors."""

from __future__ import annotations

import json
import warnings

import ase.io
import numpy as np
import pytest

from ase_born import FixedBornCharges
from ase_born.dft.sampler import cubic_catio3
from ase_born.workflows.dielectric import DielectricConfig, format_report, run_dielectric
from ase_born.workflows.rundir import IncompatibleSettingsError, read_csv
from ase_born.workflows.standins import (
    HarmonicCrystal,
    exact_epsilon_ion,
    random_born_charges,
    random_force_constants,
)

PHI = random_force_constants(5, 21, site_springs=(4.0, 8.0), coupling=1.5)
Z = random_born_charges(5, 22, scale=1.0)
EPS_INF = (5.0, 5.5, 6.0)


def force_field(atoms):
    return HarmonicCrystal(
        atoms, force_constants=PHI, bulk_modulus_GPa=150.0, shear_modulus_GPa=80.0
    )


def born_model(atoms):
    return FixedBornCharges(Z, atoms)


@pytest.fixture(scope="module")
def structure_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("struct") / "cubic5.extxyz"
    ase.io.write(p, cubic_catio3(), format="extxyz")
    return str(p)


def _config(structure_file, **kw):
    base = {
        "structure": structure_file,
        "supercell": (1, 1, 1),
        "relax": False,
        "temperatures_K": (300.0,),
        "equilibration_steps": 200,
        "production_steps": 2500,
        "discard_steps": 50,
        "ensemble": "nvt",
        "thermostat_time_fs": 40.0,
        "timestep_fs": 2.0,
        "field_V_per_A": 0.01,
        "n_blocks": 10,
        "checkpoint_every": 500,
        "traj_every": 500,
        "epsilon_inf": EPS_INF,
    }
    base.update(kw)
    return DielectricConfig(**base)


@pytest.fixture(scope="module")
def solved(structure_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("diel") / "run"
    res = run_dielectric(
        _config(structure_file),
        force_field,
        born_model,
        str(out),
        progress=False,
        log=lambda m: None,
    )
    volume = cubic_catio3().get_volume()
    return res, exact_epsilon_ion(PHI, Z, volume), out


def test_harmonic_and_static_routes_are_exact(solved):
    res, exact, _ = solved
    h = np.asarray(res["zero_kelvin"]["harmonic"]["epsilon_ion"])
    np.testing.assert_allclose(h, exact, rtol=1e-6, atol=1e-6)
    s = np.asarray(res["zero_kelvin"]["static"]["epsilon_ion"])
    np.testing.assert_allclose(s, exact, rtol=2e-3, atol=2e-3 * np.abs(exact).max())


def test_static_check_subtracts_the_zero_field_polarization(tmp_path):
    """A unit cell relaxed only to a loose tolerance (here: displaced so that ~1e-3 eV/Å of
    force is left, as a relax to fmax 1e-3 may leave) gives the exact static tensor: the
    zero-field relaxation takes out what the residual forces would add to every column
    (0.2 here, up to ~5 % of ε at E = 0.01 V/Å, without it)."""
    from ase_born.workflows.dielectric import _harmonic_stage
    from ase_born.workflows.rundir import RunDirectory

    minimum = cubic_catio3()
    f_res = np.random.default_rng(0).normal(size=(5, 3))
    f_res *= 1e-3 / np.linalg.norm(f_res, axis=1).max()
    unit = minimum.copy()
    unit.positions -= np.linalg.solve(PHI, f_res.ravel()).reshape(5, 3)
    cfg = DielectricConfig(field_V_per_A=0.01)
    res = _harmonic_stage(
        RunDirectory(str(tmp_path / "run"), "dielectric", cfg.to_dict()), cfg, unit,
        lambda atoms: HarmonicCrystal(minimum, force_constants=PHI), born_model, "cpu", False,
        lambda m: None,
    )
    exact = exact_epsilon_ion(PHI, Z, minimum.get_volume())
    s = np.asarray(res["static"]["epsilon_ion"])
    np.testing.assert_allclose(s, exact, rtol=0, atol=2e-3 * np.abs(exact).max())
    assert np.abs(res["static"]["ionic_polarization_zero_field"]).max() > 1e-5  # the offset removed
    assert len(res["static"]["relaxations"]) == 4 and all(r["converged"] for r in res["static"]["relaxations"])


def test_finite_field_route_agrees_within_error_bars(solved):
    res, exact, _ = solved
    ff = res["temperatures"][0]["epsilon_ion"]["finite_field"]
    val, err = np.asarray(ff["value"]), np.asarray(ff["error"])
    # harmonic + correlated sampling: the paired difference is nearly noise free
    assert np.all(np.abs(val - exact) <= 4 * err + 0.01 * np.abs(exact).max())
    assert np.all(np.diag(err) > 0) and np.all(np.diag(err) < 0.05 * np.diag(exact))


def test_fluctuation_route_agrees_within_error_bars(solved):
    res, exact, _ = solved
    fl = res["temperatures"][0]["epsilon_ion"]["fluctuation"]
    val, err = np.asarray(fl["value"]), np.asarray(fl["error"])
    assert np.all(np.isfinite(err)) and np.all(np.diag(err) > 0)
    assert np.all(np.abs(np.diag(val) - np.diag(exact)) <= 4 * np.diag(err))
    # the error bar is honest but not absurdly large for this length
    assert np.all(np.diag(err) < 0.5 * np.diag(exact))


def test_total_epsilon_and_outputs(solved):
    res, _, out = solved
    tot = np.asarray(res["temperatures"][0]["epsilon_total"]["finite_field"]["value"])
    ion = np.asarray(res["temperatures"][0]["epsilon_ion"]["finite_field"]["value"])
    np.testing.assert_allclose(tot - ion, np.diag(EPS_INF), atol=1e-12)
    for name in (
        "dielectric.json",
        "dielectric.csv",
        "dielectric.png",
        "harmonic.json",
        "reference.extxyz",
        "md_300K_E0.csv",
        "md_300K_Ez+.csv",
        "traj_300K_Ex+.extxyz",
        "state_300K_equilibrated.json",
    ):
        assert (out / name).exists(), name
    data = read_csv(out / "md_300K_Ez+.csv")
    assert len(data["step"]) == 2500 and data["step"][-1] == 2500
    saved = json.loads((out / "dielectric.json").read_text())
    assert saved["temperatures"][0]["temperature_K"] == 300.0
    report = format_report(res)
    assert "0 K harmonic" in report and "±" in report and "finite field" in report
    # each estimator's line counts its own samples: the fluctuation uses the whole E0 run,
    # the finite-field slopes skip discard_steps of every run
    t0 = res["temperatures"][0]
    n_fl = t0["epsilon_ion"]["fluctuation"]["n_samples"]
    assert n_fl > t0["n_samples_per_run"]
    assert f"finite field ({t0['n_samples_per_run']} samples/run;" in report
    assert f"fluctuation (zero field) ({n_fl} samples/run;" in report
    # the dipole's correlation time: a note on the fluctuation value's bias when N < 20τ
    tau = t0["epsilon_ion"]["fluctuation"]["integrated_time_samples"]
    assert tau >= 0.5
    assert ("integrated correlation time" in report) == (n_fl < 20 * tau)
    shorter = json.loads(json.dumps(res))
    shorter["temperatures"][0]["epsilon_ion"]["fluctuation"]["integrated_time_samples"] = n_fl / 10
    assert "biased low by ~20%" in format_report(shorter)
    assert len(ase.io.read(out / "traj_300K_Ex+.extxyz", index=":")) == 5
    # dielectric.csv holds plain numbers (NumPy 2 wrote "np.float64(118.5...)")
    rows = [line.split(",") for line in (out / "dielectric.csv").read_text().splitlines()[1:]]
    assert rows and all(len(r) == 6 for r in rows)
    values = [float(x) for r in rows for x in (r[0], r[4], r[5])]
    assert np.all(np.isfinite(values))
    (ff_xx,) = [r for r in rows if r[1:4] == ["epsilon_ion", "finite_field", "xx"]]
    assert float(ff_xx[4]) == pytest.approx(ion[0, 0], rel=1e-12)


def test_missing_epsilon_inf_warns_and_reports_ionic_only(structure_file, tmp_path):
    cfg = _config(
        structure_file,
        epsilon_inf=None,
        equilibration_steps=10,
        production_steps=40,
        discard_steps=0,
        n_blocks=2,
        static_check=False,
    )
    with pytest.warns(UserWarning, match="ε∞ is not known"):
        res = run_dielectric(
            cfg, force_field, born_model, str(tmp_path / "r"), progress=False, log=lambda m: None
        )
    assert "epsilon_total" not in res["temperatures"][0]
    assert res["epsilon_inf"] is None
    assert any("ε_ion only" in n for n in res["notes"])
    assert "ionic ε_ion" in format_report(res)
    # ionic only although ε∞ is given: none is added (total_epsilon=False only muted the warning)
    res = run_dielectric(cfg.replace(epsilon_inf=(6.0,), total_epsilon=False), force_field, born_model,
                         str(tmp_path / "r2"), progress=False, log=lambda m: None)
    assert "epsilon_total" not in res["temperatures"][0] and res["epsilon_inf"] is None
    # temperatures that differ beyond their run names' 6 digits would share the run files
    with pytest.raises(ValueError, match="give the same run names"):
        cfg.replace(temperatures_K=(1000.123, 1000.124))


def test_resume_refuses_different_settings(structure_file, tmp_path, monkeypatch):
    from ase_born.workflows import md

    cfg = _config(
        structure_file,
        equilibration_steps=10,
        production_steps=40,
        discard_steps=0,
        n_blocks=2,
        static_check=False,
        harmonic=False,
    )
    out = str(tmp_path / "r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dielectric(cfg, force_field, born_model, out, progress=False, log=lambda m: None)
        with pytest.raises(IncompatibleSettingsError, match="field_V_per_A"):
            run_dielectric(
                cfg.replace(field_V_per_A=0.02),
                force_field,
                born_model,
                out,
                progress=False,
                log=lambda m: None,
            )
        # same settings: a finished run is reloaded, not recomputed (no MD step is made)
        def no_md(*args, **kwargs):
            raise AssertionError("a finished run was recomputed")

        monkeypatch.setattr(md, "step", no_md)
        again = run_dielectric(
            cfg, force_field, born_model, out, progress=False, log=lambda m: None
        )
    assert again["temperatures"][0]["n_samples_per_run"] == 40


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temperatures_K": (300.0, 0.0)}, "positive temperatures"),
        ({"temperatures_K": (-5.0,)}, "positive temperatures"),
        ({"temperatures_K": ()}, "empty"),
        ({"field_V_per_A": 0.0}, "positive magnitude"),
        ({"field_V_per_A": 5e7}, "V/m passed as V/Å"),
        ({"supercell": (0, 1, 1)}, "supercell"),
        ({"production_steps": 10, "discard_steps": 0}, "n_blocks"),
        ({"epsilon_inf": (1.0, 2.0)}, "epsilon_inf"),
    ],
)
def test_bad_settings_raise_clear_errors(structure_file, kw, match):
    with pytest.raises(ValueError, match=match):
        _config(structure_file, **kw)


def test_unknown_structure_file_and_broken_supercell(structure_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="structure file not found"):
        run_dielectric(
            _config(str(tmp_path / "nope.cif")),
            force_field,
            born_model,
            str(tmp_path / "a"),
            progress=False,
        )
    assert not (tmp_path / "a").exists()  # nothing written before the check
    # fixed charges of the 5-atom cell without a primitive cell cannot follow a supercell
    with pytest.raises(ValueError, match="breaks the Born model's reference"):
        run_dielectric(
            _config(structure_file, supercell=(2, 1, 1)),
            force_field,
            lambda a: FixedBornCharges(Z),
            str(tmp_path / "b"),
            progress=False,
            log=lambda m: None,
        )


def test_plus_minus_runs_agree_with_the_exact_tensor(structure_file, tmp_path):
    """±E (correlated): the slope over 2E gives the exact harmonic ε (a slope over E doubled
    it); the even-order difference (P+ + P- − 2P0)/E vanishes within its error for a
    harmonic crystal; the reported zero-field P is the E0 run's mean in C/m² (16.02 × e/Å²)."""
    from ase_born.conventions import C_PER_M2_PER_E_PER_A2

    out = tmp_path / "pm"
    cfg = _config(structure_file, plus_minus=True, production_steps=1000)
    res = run_dielectric(cfg, force_field, born_model, str(out), progress=False, log=lambda m: None)
    exact = exact_epsilon_ion(PHI, Z, cubic_catio3().get_volume())
    t = res["temperatures"][0]
    ff = t["epsilon_ion"]["finite_field"]
    val, err = np.asarray(ff["value"]), np.asarray(ff["error"])
    assert np.all(np.diag(err) > 0)
    np.testing.assert_allclose(val, exact, atol=4 * err.max() + 1e-3 * np.abs(exact).max())
    assert np.all(np.diag(err) < 0.05 * np.diag(exact))  # correlated: nearly noise free
    diff, derr = np.diag(t["linearity"]["difference"]), np.diag(t["linearity"]["difference_error"])
    assert np.all(np.abs(diff) <= 4 * derr + 1e-6)
    d0 = read_csv(next(out.glob("md_*_E0.csv")))
    p = np.stack([d0[f"P{x}_e_per_A2"][d0["step"] > cfg.discard_steps] for x in "xyz"], axis=1)
    np.testing.assert_allclose(t["zero_field_polarization_C_per_m2"], p.mean(0) * C_PER_M2_PER_E_PER_A2,
                               rtol=1e-9, atol=1e-15)


def test_supercell_order_is_whole_cell_images_as_prepolarization_tiles_it():
    """_prepolarization tiles the unit-cell displacements with np.tile: that is right only if
    the workflow's supercell (make_supercell) lists whole copies of the unit cell, image by
    image, each atom k of image j a lattice translate of unit atom k (the CPU default
    supercell is (1, 1, 2); the tests run (1, 1, 1))."""
    from ase_born.dft.sampler import pnma_catio3
    from ase_born.workflows.structures import make_supercell

    unit = pnma_catio3()
    n = len(unit)
    for rep in ((1, 1, 2), (2, 1, 2)):
        sc = make_supercell(unit, rep)
        images = len(sc) // n
        np.testing.assert_array_equal(sc.numbers, np.tile(unit.numbers, images))
        shift = sc.positions.reshape(images, n, 3) - unit.positions[None]
        frac = shift @ np.linalg.inv(unit.cell.array)
        np.testing.assert_allclose(frac, np.rint(frac), atol=1e-9)  # lattice translations
        assert np.allclose(frac, frac[:, :1])  # one translation per image: whole-cell copies
