"""MD driver: NpT in a field (reference follows the cell, field stress in the barostat), exact restarts."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase import Atoms, units

from ase_born import BornFieldCalculator, FixedBornCharges
from ase_born.conventions import EPSILON0
from ase_born.dft.sampler import pnma_catio3
from ase_born.workflows import md
from ase_born.workflows.harmonic import harmonic_dielectric
from ase_born.workflows.standins import nominal_born_charges, standin_force_field


@pytest.fixture(scope="module")
def system():
    ref = pnma_catio3()
    return ref, nominal_born_charges(ref)


class NoFieldStress(BornFieldCalculator):
    """Negative control: a calculator whose stress misses the field term."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        kw = {} if system_changes is None else {"system_changes": system_changes}
        super().calculate(atoms, properties, **kw)
        if "stress" in self.results:
            self.results["stress"] = self.results["stress_contributions"][0]


def _npt_in_field(ref, z, cls, field, steps=1000, seed=3):
    atoms = ref.copy()
    calc = cls(standin_force_field(ref), FixedBornCharges(z, ref), field=field, reference=ref)
    atoms.calc = calc
    md.thermalize(atoms, 10.0, np.random.default_rng(seed))
    dyn = md.make_integrator(
        atoms,
        timestep_fs=2.0,
        temperature_K=10.0,
        ensemble="npt",
        thermostat_time_fs=50.0,
        barostat_time_fs=200.0,
        rng=np.random.default_rng(seed),
    )
    vols, pols = [], []
    for s in range(steps):
        md.step(dyn, fix_com=False)
        if s >= steps // 3:
            vols.append(atoms.get_volume())
            pols.append(calc.get_property("ionic_polarization", atoms))
    return np.mean(vols) / ref.get_volume() - 1.0, np.mean(pols, axis=0)


def test_reference_follows_the_cell(system):
    """Straining the cell with the atoms on their sites gives no displacement and no P."""
    ref, z = system
    calc = BornFieldCalculator(
        standin_force_field(ref), FixedBornCharges(z, ref), field=(0, 0, 0.01), reference=ref
    )
    a = ref.copy()
    a.calc = calc
    strain = np.eye(3) + np.array([[0.03, 0.01, 0.0], [0.01, -0.02, 0.005], [0.0, 0.005, 0.04]])
    a.set_cell(ref.cell.array @ strain, scale_atoms=True)
    np.testing.assert_allclose(calc.get_property("ionic_polarization", a), 0.0, atol=1e-14)
    np.testing.assert_allclose(calc.get_property("displacements", a), 0.0, atol=1e-12)


def test_npt_in_field_field_stress_enters_the_barostat(system):
    """Springs to sites have no electrostriction: the field stress cancels the spring stress at
    equilibrium, so NpT in a field keeps the volume and gives P = ε0 ε_ion E.  A barostat fed a
    stress without the field term sees only the spring stress Σ κ u⊗u/Ω (tensile, positive in
    ASE's sign) and contracts the cell by ~ (1/B)·Σ f·Φ⁻¹f/(3Ω) (measured: −0.0086 against a
    predicted −0.0082, seed 3)."""
    ref, z = system
    field = np.array([0.0, 0.0, 0.2])  # V/Å, large to make the stress visible
    a = ref.copy()
    a.calc = standin_force_field(ref)
    eps = harmonic_dielectric(a, z)
    strain, p = _npt_in_field(ref, z, BornFieldCalculator, field)
    strain_bad, _ = _npt_in_field(ref, z, NoFieldStress, field)
    # prediction of the spurious volume strain without the field stress
    kappa = np.array([{"Ca": 1.5, "Ti": 3.5, "O": 2.25}[s] for s in ref.get_chemical_symbols()])
    f = np.einsum("b,kba->ka", field, z)
    sigma = np.sum(f * f / kappa[:, None]) / ref.get_volume()  # trace of Σ f⊗u / Ω
    # volume strain = −P_spurious/B with P = −tr(σ)/3 (ASE sign: positive stress is tensile,
    # so the barostat shrinks the cell); B ≈ 170 GPa, in eV/Å³
    predicted = -sigma / 3.0 / (170.0 / 160.21766208)
    assert predicted < 0  # a contraction
    assert abs(strain) < 0.1 * abs(predicted)
    assert strain_bad == pytest.approx(predicted, rel=0.3)  # same sign: a contraction
    assert abs(strain_bad) > 5 * abs(strain)
    # no spurious polarization from the cell: ⟨P⟩ = ε0 ε_ion E
    # (10 K thermal noise of ⟨P⟩ over this run: ~4e-4 e/Å², 0.3 % of P_z)
    np.testing.assert_allclose(p, EPSILON0 * eps @ field, rtol=0.01, atol=1e-3)


def _hand_made_state():
    """4 atoms with known masses and momenta in a triclinic cell: K and Ω computed by hand."""
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, -0.5, 3.0]])  # Ω = 4·5·3 = 60 Å³
    atoms = Atoms("HHeLiBe", positions=np.zeros((4, 3)), cell=cell, pbc=True)
    masses = np.array([2.0, 4.0, 8.0, 10.0])  # amu
    atoms.set_masses(masses)
    momenta = np.array(
        [[0.1, -0.2, 0.3], [0.4, 0.0, -0.1], [-0.2, 0.5, 0.2], [0.3, 0.3, -0.6]]
    ) * 1.6  # √(amu·eV); K ≈ 0.27 eV. Non-zero total momentum: it counts in K as it is
    atoms.set_momenta(momenta)
    kinetic = float(np.sum(momenta**2 / (2.0 * masses[:, None])))
    return atoms, kinetic, 60.0


def test_temperature_K_counts_the_com_degrees_of_freedom():
    """T = 2K/(n_dof k_B), n_dof = 3N − 3 with the centre of mass fixed (the workflows), 3N without."""
    atoms, kinetic, _ = _hand_made_state()
    assert atoms.get_kinetic_energy() == pytest.approx(kinetic, rel=1e-14)
    kb = 8.617333262e-5  # eV/K
    t_fixed = 2.0 * kinetic / (9 * kb)  # 3·4 − 3 = 9 degrees of freedom
    t_free = 2.0 * kinetic / (12 * kb)
    assert md.temperature_K(atoms) == pytest.approx(t_fixed, rel=1e-12)  # fix_com=True default
    assert md.temperature_K(atoms, fix_com=True) == pytest.approx(t_fixed, rel=1e-12)
    assert md.temperature_K(atoms, fix_com=False) == pytest.approx(t_free, rel=1e-12)
    assert t_fixed / t_free == pytest.approx(12 / 9)


def test_pressure_GPa_has_the_kinetic_term():
    """P = 2K/(3Ω) − tr(σ)/3 in GPa, σ in ASE's sign (tensile positive) without kinetic part."""
    atoms, kinetic, vol = _hand_made_state()
    assert atoms.get_volume() == pytest.approx(vol, rel=1e-14)
    assert md.EV_PER_A3_IN_GPA == pytest.approx(160.21766208, rel=1e-9)
    # Voigt xx yy zz yz xz xy in eV/Å³; shear parts must not count
    sigma_voigt = np.array([0.010, -0.004, 0.0025, 0.3, -0.2, 0.1])
    sigma_full = np.array(
        [[0.010, 0.1, -0.2], [0.1, -0.004, 0.3], [-0.2, 0.3, 0.0025]]
    )
    kin_term = 2.0 * kinetic / (3.0 * vol)  # eV/Å³
    expected = (kin_term - (0.010 - 0.004 + 0.0025) / 3.0) * 160.21766208
    assert kin_term * 160.21766208 > 0.4  # GPa: comparable to the virial part (0.45 GPa)
    assert md.pressure_GPa(atoms, sigma_voigt) == pytest.approx(expected, rel=1e-9)
    assert md.pressure_GPa(atoms, sigma_full) == pytest.approx(expected, rel=1e-9)
    # no stress: only the kinetic pressure, the ideal-gas 2K/(3Ω)
    assert md.pressure_GPa(atoms, np.zeros(6)) == pytest.approx(kin_term * 160.21766208, rel=1e-9)
    # at rest: only the virial part
    atoms.set_momenta(np.zeros((4, 3)))
    assert md.pressure_GPa(atoms, sigma_voigt) == pytest.approx(
        -(0.010 - 0.004 + 0.0025) / 3.0 * 160.21766208, rel=1e-9
    )


@pytest.mark.parametrize("ensemble", ["npt", "nvt"])
def test_restart_continues_exactly(system, ensemble):
    ref, z = system

    def fresh():
        atoms = ref.copy()
        calc = BornFieldCalculator(
            standin_force_field(ref), FixedBornCharges(z, ref), field=(0.01, 0, 0), reference=ref
        )
        atoms.calc = calc
        return atoms, calc

    kw = {"timestep_fs": 2.0, "temperature_K": 300.0, "ensemble": ensemble}
    a1, c1 = fresh()
    md.thermalize(a1, 300.0, np.random.default_rng(1))
    d1 = md.make_integrator(a1, rng=np.random.default_rng(2), **kw)
    for _ in range(40):
        md.step(d1)
    saved = json.loads(
        json.dumps(
            {"atoms": md.atoms_state(a1), "integ": md.integrator_state(d1), "calc": c1.get_state()}
        )
    )
    for _ in range(40):
        md.step(d1)
    a2, c2 = fresh()
    c2.set_reference(None)  # must come back from the state, not be re-picked
    md.restore_atoms(a2, saved["atoms"])
    c2.set_state(saved["calc"])
    d2 = md.make_integrator(a2, rng=np.random.default_rng(999), **kw)
    md.restore_integrator_state(d2, saved["integ"])
    for _ in range(40):
        md.step(d2)
    assert np.array_equal(a1.positions, a2.positions)
    assert np.array_equal(a1.get_momenta(), a2.get_momenta())
    assert np.array_equal(a1.cell.array, a2.cell.array)
    np.testing.assert_allclose(
        c2.reference.get_scaled_positions(), ref.get_scaled_positions(), rtol=0, atol=1e-14
    )


@pytest.mark.parametrize(("hydrostatic", "pressure_GPa"), [(False, 0.0), (True, 2.0), (False, -1.5)])
def test_integrator_matches_ase_langevin_baoab(system, hydrostatic, pressure_GPa):
    """The subclass swaps SciPy's expm for an exact symmetric one and puts the trace term of
    the anisotropic drag on the diagonal: same trajectory as ASE's class with that one fix,
    also for the hydrostatic barostat (heating runs) and at a nonzero pressure (ASE's
    externalstress is a stress: −P)."""
    from ase.md.langevinbaoab import LangevinBAOAB as AseLangevinBAOAB

    class LangevinBAOAB(AseLangevinBAOAB):
        def _barostat_BAOAB_OU_gamma_mod(self):
            if self.hydrostatic:  # ASE's own (right) hydrostatic drag
                return super()._barostat_BAOAB_OU_gamma_mod()
            return (self.p_eps + np.trace(self.p_eps) / self.Ndof * np.identity(3)) / self.barostat_mass

    ref, _ = system
    out = []
    for use_ase in (False, True):
        atoms = ref.copy()
        atoms.calc = standin_force_field(ref)
        md.thermalize(atoms, 300.0, np.random.default_rng(1))
        if use_ase:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p_tau = 1000.0 * units.fs
                dyn = LangevinBAOAB(
                    atoms,
                    2.0 * units.fs,
                    temperature_K=300.0,
                    externalstress=-pressure_GPa * units.GPa,
                    hydrostatic=hydrostatic,
                    T_tau=100 * units.fs,
                    P_tau=p_tau,
                    P_mass=(((p_tau / 4) / (1.66 * units.fs)) * len(atoms) ** (1 / 6)) ** 2,
                    rng=np.random.default_rng(5),
                )
        else:
            dyn = md.make_integrator(
                atoms, timestep_fs=2.0, temperature_K=300.0, rng=np.random.default_rng(5),
                hydrostatic=hydrostatic, pressure_GPa=pressure_GPa,
            )
        for _ in range(20):
            dyn.step()
        out.append((atoms.positions.copy(), atoms.cell.array.copy()))
    assert np.abs(out[0][1] - ref.cell.array).max() > 1e-4  # the cell moved
    np.testing.assert_allclose(out[0][0], out[1][0], atol=1e-10)
    np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-10)


def test_anisotropic_barostat_drag_is_mtk(system):
    """Velocity drag of the cell momentum (Martyna-Tobias-Klein): p_eps/W + Tr(p_eps)/(N_dof W)
    on the diagonal only (ASE 3.29 adds the trace term to all nine elements)."""
    ref, _ = system
    atoms = ref.copy()
    atoms.calc = standin_force_field(ref)
    dyn = md.make_integrator(atoms, timestep_fs=2.0, temperature_K=300.0, rng=np.random.default_rng(5))
    dyn.p_eps = np.diag([1.0, 2.0, 3.0])
    drag = dyn._barostat_BAOAB_OU_gamma_mod() * dyn.barostat_mass
    np.testing.assert_allclose(drag, np.diag([1.0, 2.0, 3.0]) + 6.0 / dyn.Ndof * np.identity(3), atol=1e-15)
    assert np.count_nonzero(drag - np.diag(np.diagonal(drag))) == 0


def test_integrator_input_checks(system):
    ref, _ = system
    a = ref.copy()
    a.calc = standin_force_field(ref)
    with pytest.raises(ValueError, match="positive"):
        md.make_integrator(a, timestep_fs=2.0, temperature_K=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="ensemble"):
        md.make_integrator(
            a, timestep_fs=2.0, temperature_K=300.0, ensemble="nph", rng=np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match="rng"):
        md.make_integrator(a, timestep_fs=2.0, temperature_K=300.0)


def test_reference_cell_relaxed_at_the_run_pressure(tmp_path):
    """prepare_reference relaxes the cell at the workflow's pressure: stress = -P, smaller volume."""
    import argparse

    import ase.io
    from ase.build import bulk
    from ase.calculators.lj import LennardJones

    from ase_born.cli.workflows import _pressure
    from ase_born.workflows.common import prepare_reference

    path = tmp_path / "ar.extxyz"
    ase.io.write(path, bulk("Ar", "fcc", a=5.26, cubic=True))
    lj = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.0, smooth=True)

    def zeros(atoms):
        return FixedBornCharges(np.zeros((len(atoms), 3, 3)))

    vols = {}
    for p in (0.0, 0.5):
        d = tmp_path / f"p{p}"
        d.mkdir()
        rd = argparse.Namespace(file=lambda name, d=d: d / name)  # prepare_reference only needs file()
        unit, _ = prepare_reference(rd, structure=str(path), supercell=(1, 1, 1), force_field=lj,
                                    born_model=zeros, relax=True, relax_cell=True, fmax=1e-4,
                                    steps=300, pressure_GPa=p, log=lambda m: None)
        assert unit.info["relax_pressure_GPa"] == p
        unit.calc = lj
        stress = unit.get_stress(voigt=False)
        np.testing.assert_allclose(stress, -p * units.GPa * np.eye(3), atol=2e-5)
        vols[p] = unit.get_volume()
    assert vols[0.5] < vols[0.0]
    # CLI: the default force field brings its volume correction, explicit values win
    ns = argparse.Namespace
    assert _pressure(ns(pressure_GPa=1.5, force_field=None)) == 1.5
    assert _pressure(ns(pressure_GPa=None, force_field="my.model")) is None
    from ase_born.defaults import default_pressure_GPa

    assert _pressure(ns(pressure_GPa=None, force_field=None)) == (default_pressure_GPa() or None)


def test_npt_holds_the_requested_pressure_and_compresses_under_it():
    """Physics of the sign, independent of ASE's convention: EMT copper (32 atoms, 300 K) at
    −2 and +5 GPa: the mean pressure (kinetic part included) is the requested one and the
    volume is smaller at the higher pressure (a sign slip in externalstress reverses both)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    result = {}
    for p in (-2.0, 5.0):
        atoms = bulk("Cu", cubic=True).repeat(2)
        atoms.calc = EMT()
        md.thermalize(atoms, 300.0, np.random.default_rng(0))
        dyn = md.make_integrator(atoms, timestep_fs=2.0, temperature_K=300.0, pressure_GPa=p,
                                 hydrostatic=True, thermostat_time_fs=50.0, barostat_time_fs=200.0,
                                 rng=np.random.default_rng(1))
        dyn.run(150)
        ps, vs = [], []
        for _ in range(150):
            dyn.run(1)
            ps.append(md.pressure_GPa(atoms, atoms.get_stress(include_ideal_gas=False)))
            vs.append(atoms.get_volume() / len(atoms))
        result[p] = (np.mean(ps), np.mean(vs))
    for p, (mean_p, _) in result.items():
        assert mean_p == pytest.approx(p, abs=1.5)
    assert result[5.0][1] < result[-2.0][1] - 0.3  # Å³/atom: ~11.33 against ~11.96


def test_remove_com_momentum_shifts_every_velocity_equally():
    """Zero total momentum by a Galilean shift (the same velocity for every atom, the
    centre-of-mass velocity): relative velocities and internal kinetic energy are kept
    (an equal momentum per atom also zeroes the total but heats the light atoms)."""
    from ase import Atoms

    atoms = Atoms("CaTiO3", positions=np.random.default_rng(0).normal(size=(5, 3)))
    v = np.random.default_rng(1).normal(size=(5, 3)) * 0.01
    atoms.set_velocities(v)
    m = atoms.get_masses()
    md.remove_com_momentum(atoms)
    np.testing.assert_allclose(atoms.get_momenta().sum(0), 0.0, atol=1e-14)
    v_com = (m[:, None] * v).sum(0) / m.sum()
    np.testing.assert_allclose(atoms.get_velocities(), v - v_com, atol=1e-14)
