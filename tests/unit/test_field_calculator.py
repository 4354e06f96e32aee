"""BornFieldCalculator: physics, invariances, caching, state and input validation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.calculators.lj import LennardJones
from ase.md.verlet import VelocityVerlet

from ase_born import BornFieldCalculator, FixedBornCharges, physics
from ase_born.calculators.base import BornChargeModel
from ase_born.conventions import EPSILON0, field_from_V_per_m
from ase_born.testing import (
    SpringsToSites,
    assert_born_equivariant,
    assert_born_permutation_equivariant,
    assert_born_translation_invariant,
    assert_forces_match_fd,
    assert_stress_matches_fd,
    random_rotation,
    rotate_atoms,
)

RNG = np.random.default_rng(42)
KAPPA = {"Ca": 3.0, "Ti": 6.0, "O": 8.0}


# ---------------------------------------------------------------------------
# stand-ins
# ---------------------------------------------------------------------------


class SmoothBorn(BornChargeModel):
    """Position-dependent, differentiable stand-in: Z*_k = Z0_k + Gaussian-weighted bond tensors.

    Z*_k = q(species_k) 1 + c_s Σ_{j,n} w (r ⊗ r)/σ² + c_a Σ_{j,n} w skew(r)/σ,
    w = exp(−|r|²/σ²), r = R_j + n·h − R_k over the nearest cell images n ∈ {−1, 0, 1}
    along the periodic directions only (27 for pbc=True, 1 for a cluster).  Translation
    invariant, rotation and permutation equivariant, non-symmetric, smooth in positions
    and cell.
    """

    supports_torch = True

    def __init__(self, charges=None, sigma=1.6, c_sym=0.4, c_anti=0.3):
        self.charges = {20: 2.6, 22: 7.0, 8: -3.2} if charges is None else charges
        self.sigma, self.c_sym, self.c_anti = sigma, c_sym, c_anti
        self.ncalls = 0

    def get_born_charges_torch(self, atoms, positions, cell):
        self.ncalls += 1
        n_img = [(-1, 0, 1) if p else (0,) for p in atoms.pbc]
        images = torch.tensor(list(itertools.product(*n_img)), dtype=positions.dtype)
        r = positions[None, :, None, :] - positions[:, None, None, :] + (images @ cell)[None, None]
        w = torch.exp(-(r**2).sum(-1) / self.sigma**2)
        sym = torch.einsum("kjn,kjna,kjnb->kab", w, r, r) / self.sigma**2
        levi = torch.zeros((3, 3, 3), dtype=positions.dtype)
        for a, b, c in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
            levi[a, b, c], levi[a, c, b] = 1.0, -1.0
        anti = torch.einsum("kjn,kjnc,cab->kab", w, r, levi) / self.sigma
        q = torch.tensor([self.charges[int(n)] for n in atoms.numbers], dtype=positions.dtype)
        return (
            q[:, None, None] * torch.eye(3, dtype=positions.dtype)
            + self.c_sym * sym
            + self.c_anti * anti
        )

    def get_born_charges(self, atoms):
        pos = torch.tensor(atoms.positions, dtype=torch.float64)
        cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
        return self.get_born_charges_torch(atoms, pos, cell).numpy()


class CountingCalculator(Calculator):
    """Wraps a calculator and counts its calculate() calls."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.ncalls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.ncalls += 1
        a = self.atoms.copy()
        a.calc = self.inner
        self.results = {
            "energy": a.get_potential_energy(),
            "forces": a.get_forces(),
            "free_energy": a.get_potential_energy(),
            "stress": a.get_stress(),
        }


class BadBorn(BornChargeModel):
    def __init__(self, z):
        self.z = z

    def get_born_charges(self, atoms):
        return self.z


def _cell() -> Atoms:
    """5-atom triclinic ABO3-like cell (no symmetry)."""
    cell = [[3.9, 0.1, 0.0], [0.3, 4.0, 0.1], [-0.2, 0.2, 3.8]]
    frac = [
        [0.02, 0.01, 0.03],
        [0.51, 0.48, 0.53],
        [0.49, 0.52, 0.02],
        [0.03, 0.47, 0.49],
        [0.52, 0.04, 0.51],
    ]
    return Atoms("CaTiO3", scaled_positions=frac, cell=cell, pbc=True)


def _z_nonsym(n=5):
    z = RNG.normal(size=(n, 3, 3))
    return z - z.mean(0)


def _calc(ref, z=None, model=None, **kw):
    model = model if model is not None else FixedBornCharges(_z_nonsym() if z is None else z)
    return BornFieldCalculator(SpringsToSites(ref, KAPPA), model, reference=ref, **kw)


def _displaced(ref, scale=0.08, seed=0):
    a = ref.copy()
    a.positions += np.random.default_rng(seed).normal(scale=scale, size=a.positions.shape)
    return a


FIELD = np.array([0.04, -0.07, 0.05])


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------


def test_conservative_mode_exact_gradients_position_dependent_born():
    ref = _cell()
    model = SmoothBorn()
    atoms = _displaced(ref, 0.1)
    atoms.calc = _calc(ref, model=model, field=FIELD, mode="conservative")
    # the stand-in really depends on positions
    moved = _displaced(ref, 0.1, seed=5)
    assert np.abs(model.get_born_charges(moved) - model.get_born_charges(atoms)).max() > 1e-2
    assert_forces_match_fd(atoms, rtol=1e-6)
    assert_stress_matches_fd(atoms, rtol=1e-6)
    corr = atoms.calc.get_property("field_force_correction", atoms)
    assert np.abs(corr).max() > 1e-4  # the (∂Z*/∂R)·u term is there and is reported
    f_direct = atoms.calc.results["forces_contributions"][0] + physics.field_forces(
        atoms.calc.results["born_effective_charges"], FIELD
    )
    assert np.allclose(atoms.get_forces() - corr, f_direct, atol=1e-12)


def test_direct_mode_not_conservative_for_position_dependent_born():
    ref = _cell()
    model = SmoothBorn()
    atoms = _displaced(ref, 0.1)
    atoms.calc = _calc(ref, model=model, field=FIELD, mode="direct")
    with pytest.raises(AssertionError, match="forces differ"):
        assert_forces_match_fd(atoms, rtol=1e-6)


@pytest.mark.parametrize("mode", ["direct", "conservative"])
def test_fixed_born_gradients_both_modes(mode):
    ref = _cell()
    atoms = _displaced(ref, 0.1, seed=1)
    atoms.calc = _calc(ref, field=FIELD, mode=mode)
    assert_forces_match_fd(atoms, rtol=1e-6)
    assert_stress_matches_fd(atoms, rtol=1e-6)


def test_direct_and_conservative_agree_for_fixed_born():
    ref = _cell()
    atoms = _displaced(ref, 0.1, seed=2)
    z = _z_nonsym()
    c1, c2 = _calc(ref, z=z, field=FIELD), _calc(ref, z=z, field=FIELD, mode="conservative")
    for key in ("energy", "forces", "stress", "polarization"):
        assert np.allclose(
            c1.get_property(key, atoms), c2.get_property(key, atoms), rtol=1e-12, atol=1e-14
        )


# ---------------------------------------------------------------------------
# basic physics and index order
# ---------------------------------------------------------------------------


def test_single_ion_feels_qE():
    ion = Atoms("Na", positions=[[1.0, 2.0, 3.0]], cell=10 * np.eye(3), pbc=True)
    q = 1.7
    e = field_from_V_per_m(np.array([5e7, -2e7, 1e7]))
    assert e[0] == 0.005
    calc = BornFieldCalculator(
        SpringsToSites(ion, 0.0), FixedBornCharges([q * np.eye(3)]), field=e, asr=False
    )
    ion.calc = calc
    assert np.array_equal(ion.get_forces(), q * e[None])
    assert np.array_equal(calc.get_property("field_forces", ion), q * e[None])


def test_index_order_force_and_polarization():
    ref = _cell()
    z = _z_nonsym()
    atoms = _displaced(ref, 0.1, seed=3)
    calc = _calc(ref, z=z, field=FIELD)
    f0 = SpringsToSites(ref, KAPPA).get_forces(atoms)
    f = calc.get_property("forces", atoms)
    u = calc.get_property("displacements", atoms)
    vol = atoms.get_volume()
    for k in range(5):
        assert np.allclose(f[k] - f0[k], z[k].T @ FIELD, rtol=1e-13, atol=1e-15)
    p = calc.get_property("polarization", atoms)
    assert np.allclose(p, sum(z[k] @ u[k] for k in range(5)) / vol, rtol=1e-13)
    assert calc.get_property("energy", atoms) == pytest.approx(
        SpringsToSites(ref, KAPPA).get_potential_energy(atoms) - FIELD @ (p * vol), rel=1e-13
    )
    assert np.allclose(calc.get_property("dipole", atoms), p * vol, rtol=1e-13)
    calc_t = _calc(ref, z=z.transpose(0, 2, 1), field=FIELD)
    assert not np.allclose(calc_t.get_property("forces", atoms), f)
    assert not np.allclose(calc_t.get_property("polarization", atoms), p)


def test_epsilon_inf_adds_electronic_polarization_only():
    ref = _cell()
    atoms = _displaced(ref, 0.05)
    z = _z_nonsym()
    eps_inf = np.diag([5.0, 6.0, 7.0])
    a = _calc(ref, z=z, field=FIELD)
    b = _calc(ref, z=z, field=FIELD, epsilon_inf=eps_inf)
    assert np.array_equal(a.get_property("forces", atoms), b.get_property("forces", atoms))
    assert a.get_property("energy", atoms) == b.get_property("energy", atoms)
    dp = b.get_property("polarization", atoms) - a.get_property("polarization", atoms)
    assert np.allclose(dp, EPSILON0 * (eps_inf - np.eye(3)) @ FIELD, rtol=1e-12)
    assert np.allclose(
        b.get_property("ionic_polarization", atoms), a.get_property("polarization", atoms)
    )
    # dipole = Ω P includes the electronic term; the ionic dipole does not
    omega = atoms.get_volume()
    dd = b.get_property("dipole", atoms) - a.get_property("dipole", atoms)
    assert np.allclose(dd, omega * EPSILON0 * (eps_inf - np.eye(3)) @ FIELD, rtol=1e-12)
    assert np.abs(dd).max() > 1e-6
    assert np.array_equal(b.get_property("ionic_dipole", atoms), a.get_property("dipole", atoms))


# ---------------------------------------------------------------------------
# invariances
# ---------------------------------------------------------------------------


def test_rigid_translation_invariance():
    ref = _cell()
    atoms = _displaced(ref, 0.08)
    z = RNG.normal(size=(5, 3, 3))  # raw charges violate the sum rule; asr=True fixes it
    calc = _calc(ref, z=z, field=FIELD, asr=True)
    e, f, p = (calc.get_property(k, atoms) for k in ("energy", "forces", "polarization"))
    moved = atoms.copy()
    moved.positions += [0.21, -0.13, 0.34]
    # the springs are not translation invariant: compare the field parts and P
    assert calc.get_property("field_energy", moved) == pytest.approx(
        e - SpringsToSites(ref, KAPPA).get_potential_energy(atoms), abs=1e-13
    )
    assert np.allclose(
        calc.get_property("field_forces", moved),
        f - SpringsToSites(ref, KAPPA).get_forces(atoms),
        atol=1e-13,
    )
    assert np.allclose(calc.get_property("polarization", moved), p, atol=1e-14)


def test_rigid_translation_invariance_lj_force_field():
    ref = _cell()
    atoms = _displaced(ref, 0.05)
    calc = BornFieldCalculator(
        LennardJones(sigma=1.6, epsilon=0.01, rc=3.5),
        FixedBornCharges(RNG.normal(size=(5, 3, 3))),
        field=FIELD,
        reference=ref,
        asr=True,
    )
    e, f, p = (calc.get_property(k, atoms) for k in ("energy", "forces", "polarization"))
    moved = atoms.copy()
    moved.positions += [0.21, -0.13, 0.34]
    assert calc.get_property("energy", moved) == pytest.approx(e, abs=1e-12)
    assert np.allclose(calc.get_property("forces", moved), f, atol=1e-12)
    assert np.allclose(calc.get_property("polarization", moved), p, atol=1e-14)


def test_rotation_covariance():
    ref = _cell()
    atoms = _displaced(ref, 0.08)
    z = _z_nonsym()
    calc = _calc(ref, z=z, field=FIELD)
    e, f, p = (calc.get_property(k, atoms) for k in ("energy", "forces", "polarization"))
    rot = random_rotation(3)
    ref_r, atoms_r = rotate_atoms(ref, rot), rotate_atoms(atoms, rot)
    calc_r = _calc(ref_r, z=physics.rotate_born_charges(z, rot), field=rot @ FIELD)
    assert calc_r.get_property("energy", atoms_r) == pytest.approx(e, rel=1e-12)
    assert np.allclose(calc_r.get_property("forces", atoms_r), f @ rot.T, atol=1e-12)
    assert np.allclose(calc_r.get_property("polarization", atoms_r), rot @ p, atol=1e-14)


def test_wrapping_does_not_change_u_or_p():
    ref = _cell()
    atoms = _displaced(ref, 0.08)
    atoms.positions[0] -= [0.3, 0.3, 0.3]  # first atom leaves the cell
    calc = _calc(ref, field=FIELD)
    u, p, f = (calc.get_property(k, atoms) for k in ("displacements", "polarization", "forces"))
    wrapped = atoms.copy()
    wrapped.wrap()
    assert not np.allclose(wrapped.positions, atoms.positions)
    assert np.allclose(calc.get_property("displacements", wrapped), u, atol=1e-13)
    assert np.allclose(calc.get_property("polarization", wrapped), p, atol=1e-14)
    assert np.allclose(calc.get_property("forces", wrapped), f, atol=1e-13)


def test_supercell_dipole_scales_polarization_does_not():
    ref = _cell()
    z = _z_nonsym()
    model = FixedBornCharges(z, ref)  # maps onto the supercell by position matching
    atoms = _displaced(ref, 0.07)
    calc1 = BornFieldCalculator(SpringsToSites(ref, KAPPA), model, field=FIELD, reference=ref)
    d1, p1 = calc1.get_property("dipole", atoms), calc1.get_property("polarization", atoms)
    ref8, atoms8 = ref.repeat(2), atoms.repeat(2)
    calc8 = BornFieldCalculator(SpringsToSites(ref8, KAPPA), model, field=FIELD, reference=ref8)
    assert np.allclose(calc8.get_property("dipole", atoms8), 8 * d1, rtol=1e-12)
    assert np.allclose(calc8.get_property("polarization", atoms8), p1, rtol=1e-12)
    assert calc8.get_property("energy", atoms8) == pytest.approx(
        8 * calc1.get_property("energy", atoms), rel=1e-12
    )


# ---------------------------------------------------------------------------
# NpT
# ---------------------------------------------------------------------------


def test_cell_scaling_gives_zero_displacement_and_field_stress_is_numeric():
    ref = _cell()
    calc = _calc(ref, field=FIELD)
    strained = ref.copy()
    strained.set_cell(
        ref.cell.array @ (np.eye(3) + [[0.02, 0.01, 0], [0.01, -0.03, 0.005], [0, 0.005, 0.04]]),
        scale_atoms=True,
    )
    assert np.allclose(calc.get_property("displacements", strained), 0.0, atol=1e-13)
    assert np.allclose(calc.get_property("polarization", strained), 0.0, atol=1e-15)
    assert calc.get_property("field_energy", strained) == pytest.approx(0.0, abs=1e-14)
    # field stress alone (zero springs) against ASE's numerical stress
    atoms = _displaced(ref, 0.1)
    atoms.calc = BornFieldCalculator(
        SpringsToSites(ref, 0.0), FixedBornCharges(_z_nonsym()), field=FIELD, reference=ref
    )
    s = atoms.get_stress()
    assert np.abs(s).max() > 1e-5
    assert_stress_matches_fd(atoms, rtol=1e-6)
    f = atoms.calc.get_property("field_forces", atoms)
    u = atoms.calc.get_property("displacements", atoms)
    assert np.allclose(s, physics.field_stress(f, u, atoms.get_volume()), rtol=1e-12)


# ---------------------------------------------------------------------------
# ASR, cache, born_update_every
# ---------------------------------------------------------------------------


def test_asr_enforced_and_violation_reported():
    ref = _cell()
    z = RNG.normal(size=(5, 3, 3))
    calc = _calc(ref, z=z, field=FIELD, asr=True)
    zc = calc.get_property("born_effective_charges", _displaced(ref))
    assert np.abs(zc.sum(0)).max() < 1e-12
    assert calc.get_property("asr_violation") == pytest.approx(physics.asr_violation(z))
    assert np.allclose(calc.get_property("acoustic_sum"), z.sum(0))
    calc.set(asr=False)
    assert np.array_equal(calc.get_property("born_effective_charges", _displaced(ref)), z)


def test_cache_and_set_field_invalidation():
    ref = _cell()
    ff = CountingCalculator(SpringsToSites(ref, KAPPA))
    calc = BornFieldCalculator(ff, FixedBornCharges(_z_nonsym()), field=FIELD, reference=ref)
    atoms = _displaced(ref)
    atoms.calc = calc
    f1 = atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_forces()
    calc.get_property("polarization", atoms)
    assert ff.ncalls == 1
    calc.set(field=2 * FIELD)
    f2 = atoms.get_forces()
    assert not np.allclose(f1, f2)
    assert np.allclose(f2 - f1, calc.get_property("field_forces", atoms) / 2, atol=1e-14)
    assert ff.ncalls == 1  # the force field's own cache still holds (atoms unchanged)
    calc.set(field=2 * FIELD)  # unchanged value: results kept
    assert "forces" in calc.results
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert ff.ncalls == 2


def test_born_update_every():
    ref = _cell()
    model = SmoothBorn()
    calc = _calc(ref, model=model, field=FIELD, born_update_every=3)
    z_first = None
    for i in range(7):
        a = _displaced(ref, 0.05, seed=i)
        z = calc.get_property("born_effective_charges", a)
        calc.get_property("forces", a)  # same configuration: no new Z*
        if i == 0:
            z_first = z
        if i in (1, 2):
            assert np.array_equal(z, z_first)  # reused between refreshes
    assert model.ncalls == 3  # configurations 0, 3, 6
    with pytest.raises(ValueError, match="born_update_every=1"):
        _calc(ref, model=model, mode="conservative", born_update_every=2)


def test_direct_mode_after_conservative_uses_the_current_configuration():
    """Conservative mode computes Z* itself; back in direct mode at the configuration the
    conservative step moved to, Z* (and forces) belong to that configuration, not to the
    last direct-mode one."""
    ref = _cell()
    model = SmoothBorn()
    calc = _calc(ref, model=model, field=FIELD)
    a, b = _displaced(ref, 0.05, seed=1), _displaced(ref, 0.15, seed=2)
    calc.get_property("forces", a)
    calc.set(mode="conservative")
    calc.get_property("forces", b)
    calc.set(mode="direct")
    z = calc.get_property("born_effective_charges", b)
    expected = physics.asr_project(model.get_born_charges(b))
    np.testing.assert_allclose(z, expected, atol=1e-12)
    assert np.abs(expected - physics.asr_project(model.get_born_charges(a))).max() > 1e-2
    f0 = SpringsToSites(ref, KAPPA).get_forces(b)
    np.testing.assert_allclose(calc.get_property("forces", b), f0 + physics.field_forces(expected, FIELD),
                               atol=1e-12)


class _PbcBorn(BornChargeModel):
    """Z* that depends on the periodic directions (as a graph model's neighbours do)."""

    def get_born_charges(self, atoms):
        q = np.where(atoms.numbers == 8, -2.0, 3.0) * (1.0 + atoms.pbc.sum())
        return q[:, None, None] * np.eye(3)


def test_pbc_change_refreshes_born_charges():
    """A change of ``pbc`` alone (same positions and cell) gives the model's new Z*, even
    between ``born_update_every`` refreshes."""
    ref = _cell()
    calc = _calc(ref, model=_PbcBorn(), field=FIELD, asr=False, born_update_every=5)
    atoms = _displaced(ref)
    atoms.calc = calc
    assert calc.get_property("born_effective_charges", atoms)[0, 0, 0] == pytest.approx(12.0)
    atoms.pbc = [True, True, False]
    assert calc.get_property("born_effective_charges", atoms)[0, 0, 0] == pytest.approx(9.0)


# ---------------------------------------------------------------------------
# harmonic consistency: static response of springs in a field equals the harmonic ε
# ---------------------------------------------------------------------------


def test_static_response_equals_harmonic_dielectric():
    ref = _cell()
    z = _z_nonsym()
    ff = SpringsToSites(ref, KAPPA)
    calc = BornFieldCalculator(ff, FixedBornCharges(z), field=FIELD, reference=ref)
    atoms = ref.copy()
    atoms.positions += (
        physics.field_forces(z, FIELD) / ff.kappa[:, None]
    )  # equilibrium in the field
    atoms.calc = calc
    assert np.abs(atoms.get_forces()).max() < 1e-13
    eps = physics.harmonic_dielectric_from_fc(ff.force_constants(), z, ref.get_volume())
    assert np.allclose(calc.get_property("polarization", atoms), EPSILON0 * eps @ FIELD, rtol=1e-12)


# ---------------------------------------------------------------------------
# time-dependent field, field work, state
# ---------------------------------------------------------------------------


def test_time_dependent_field_clock_and_conserved_quantity():
    ref = _cell()
    e_amp = np.array([0.0, 0.0, 0.2])
    omega = 2 * np.pi / (40 * units.fs)

    def field(t):
        return e_amp * np.sin(omega * t)

    atoms = ref.copy()  # at rest in the reference, E(0) = 0: only the clock can start the motion
    calc = _calc(ref, field=field)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    calc.attach_dynamics(dyn)
    ff = SpringsToSites(ref, KAPPA)
    records = []

    def observe():
        assert calc.time == pytest.approx(dyn.get_time())
        assert np.allclose(calc.results["field"], field(dyn.get_time()))
        e0 = ff.get_potential_energy(atoms)
        records.append((atoms.get_kinetic_energy(), e0, calc.field_work))

    dyn.attach(observe, interval=1)
    dyn.run(160)
    k, e0, w = np.array(records).T
    conserved = k + e0 - w
    swing = np.ptp(k + e0)
    assert swing > 1e-3  # the field really pumps energy in and out
    assert np.ptp(conserved) < 2e-3 * swing


def test_field_work_equals_minus_field_energy_change_for_constant_field():
    ref = _cell()
    atoms = _displaced(ref, 0.05)
    calc = _calc(ref, field=FIELD)
    atoms.calc = calc
    e_field0 = calc.get_property("field_energy", atoms)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.run(30)
    assert calc.field_work == pytest.approx(
        -(calc.get_property("field_energy", atoms) - e_field0), rel=1e-10
    )


def test_field_work_is_continuous_when_a_displacement_wraps_across_half_a_cell():
    """u is the minimum-image displacement: past half a lattice vector it jumps by one. The
    work of the (constant) field force along the path must not: W = F_field · Δr of the
    continuous path (it was off by F_field · a, a lattice vector, without the rounding)."""
    ref = _cell()
    z = _z_nonsym()
    calc = _calc(ref, z=z, field=FIELD, asr=False)
    a1 = ref.cell.array[0]
    atoms = ref.copy()
    atoms.calc = calc
    shifts = np.linspace(0.40, 0.60, 11)  # atom 0 moves along a1 across u = a1/2
    for t in shifts:
        atoms.positions = ref.positions.copy()
        atoms.positions[0] += t * a1
        atoms.get_forces()
    f0 = physics.field_forces(z, FIELD)[0]
    assert calc.field_work == pytest.approx(float(f0 @ ((shifts[-1] - shifts[0]) * a1)), rel=1e-10)
    assert abs(float(f0 @ a1)) > 1e-3  # a lattice-vector slip would show


def test_state_round_trip_keeps_reference(tmp_path):
    ref = _cell()
    z = _z_nonsym()
    calc = _calc(ref, z=z, field=FIELD, epsilon_inf=np.eye(3) * 5)
    atoms = _displaced(ref, 0.1)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0)
    calc.attach_dynamics(dyn)
    dyn.run(5)
    assert calc.time == pytest.approx(5.0)
    f, p = atoms.get_forces(), calc.get_property("polarization", atoms)
    path = tmp_path / "state.json"
    calc.save_state(path)
    json.loads(path.read_text())  # plain JSON
    # a fresh calculator WITHOUT reference would pick the displaced structure; the state restores it
    new = BornFieldCalculator.from_state(path, SpringsToSites(ref, KAPPA), FixedBornCharges(z))
    assert np.allclose(new.get_property("forces", atoms), f, atol=1e-14)
    assert np.allclose(new.get_property("polarization", atoms), p, atol=1e-15)
    assert new.time == pytest.approx(calc.time) and new.field_work == pytest.approx(calc.field_work)
    assert new.parameters["epsilon_inf"] == calc.parameters["epsilon_inf"]
    # callable fields must be passed again
    calc.set(field=lambda t: FIELD)
    state = calc.get_state()
    assert state["parameters"]["field_is_callable"] and state["parameters"]["field"] is None
    other = _calc(ref, z=z)
    with pytest.raises(ValueError, match="callable"):
        other.set_state(state)
    other.set_state(state, field=lambda t: 2 * FIELD)
    assert np.allclose(other.get_field(), 2 * FIELD)


def test_resume_from_state_is_exact_with_born_update_every(tmp_path):
    """A run restored from a state saved between two Z* refreshes (born_update_every=3, state
    after 4 steps) continues bit for bit: same Z* refresh steps, same forces, same reference
    arrays (not rebuilt through Cartesian coordinates)."""
    ref = _cell()
    ref.set_cell(ref.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, 0.02], [0.01, 0.0, 1.0]]),
                 scale_atoms=True)  # a skewed cell: scaled -> Cartesian -> scaled is not exact

    def run(calc, atoms, steps):
        dyn = VelocityVerlet(atoms, timestep=1.0)
        calc.attach_dynamics(dyn)
        out = []
        dyn.attach(lambda: out.append((atoms.get_forces().copy(), calc.results["born_effective_charges"].copy())))
        dyn.run(steps)
        return out

    atoms = _displaced(ref, 0.1)
    atoms.set_velocities(np.random.default_rng(4).normal(scale=0.01, size=(5, 3)))
    calc = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=3)
    atoms.calc = calc
    run(calc, atoms, 4)
    state = json.loads(json.dumps(calc.get_state()))
    assert state["born_cache"]["z_update"] != state["n_updates"]  # between two refreshes
    resumed_atoms = atoms.copy()
    resumed_atoms.set_velocities(atoms.get_velocities())
    reference_path = run(calc, atoms, 6)
    new = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=3)
    new.set_state(state)
    np.testing.assert_array_equal(new._ref_scaled, calc._ref_scaled)
    resumed_atoms.calc = new
    resumed_path = run(new, resumed_atoms, 6)
    for (fa, za), (fb, zb) in zip(reference_path, resumed_path):
        np.testing.assert_array_equal(za, zb)
        np.testing.assert_array_equal(fa, fb)


def _state_after_one_structure():
    """Reference, structures x and y, and the (JSON) state of a calculator that did x."""
    ref = _cell()
    x, y = _displaced(ref, 0.1, seed=1), _displaced(ref, 0.1, seed=2)
    calc = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=1)
    x.calc = calc
    x.get_forces()
    return ref, x, y, json.loads(json.dumps(calc.get_state()))


def test_restored_state_refreshes_born_charges_of_a_moved_structure():
    """born_update_every=1 after set_state: a structure displaced after the restore (the
    dielectric workflow's pre-polarization, a new P(E) direction) gets its own Z*, not the
    saved configuration's; the saved configuration itself (an exact resume) keeps the cache."""
    ref, x, y, state = _state_after_one_structure()
    for atoms, model_at in ((y, y), (x.copy(), x)):
        new = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=1)
        new.set_state(state)
        atoms.calc = new
        want = physics.asr_project(SmoothBorn().get_born_charges(model_at))
        np.testing.assert_allclose(new.get_property("born_effective_charges", atoms), want, atol=1e-12)
        fresh = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=1)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(atoms.copy()), atol=1e-12)


def test_state_saved_right_after_a_restore_keeps_the_last_configuration():
    """restore -> save (nothing calculated in between) -> restore keeps last_config (it was
    dropped, so a moved structure kept the old Z*); set_state on a calculator that already
    calculated another structure counts configurations from the state's (set_reference
    forgets the calculator's own last structure)."""
    ref, x, y, state = _state_after_one_structure()
    mid = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=1)
    mid.set_state(state)
    resaved = json.loads(json.dumps(mid.get_state()))
    assert resaved["last_config"] == state["last_config"]
    new = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=1)
    new.set_state(resaved)
    a = y.copy()
    a.calc = new
    want = physics.asr_project(SmoothBorn().get_born_charges(y))
    np.testing.assert_allclose(new.get_property("born_effective_charges", a), want, atol=1e-12)
    # a used calculator: the exact resume at the saved structure adds no configuration
    used = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=1)
    b = y.copy()
    b.calc = used
    b.get_forces()
    used.set_state(state)
    c = x.copy()
    c.calc = used
    c.get_forces()
    assert used.get_state()["n_updates"] == state["n_updates"]


def test_lowering_born_update_every_refreshes_stale_born_charges():
    """After set(born_update_every=1) the current structure's Z* is used at once (it kept the
    Z* of up to k-1 configurations back until the next new configuration)."""
    ref = _cell()
    calc = _calc(ref, model=SmoothBorn(), field=FIELD, born_update_every=5)
    atoms = ref.copy()
    atoms.calc = calc
    for seed in range(4):
        atoms.positions = _displaced(ref, 0.1, seed=seed).positions
        atoms.get_forces()
    stale = calc.get_property("born_effective_charges", atoms)
    want = physics.asr_project(SmoothBorn().get_born_charges(atoms))
    assert np.abs(stale - want).max() > 1e-3  # born_update_every=5: Z* of the first configuration
    calc.set(born_update_every=1)
    np.testing.assert_allclose(calc.get_property("born_effective_charges", atoms), want, atol=1e-12)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_field():
    ref = _cell()
    with pytest.raises(ValueError, match="shape"):
        _calc(ref, field=[0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        _calc(ref, field=[np.nan, 0, 0])
    with pytest.raises(ValueError, match="V/m"):
        _calc(ref, field=[5e7, 0, 0])
    calc = _calc(ref, field=[2.0, 0, 0], allow_large_field=True)
    with pytest.raises(ValueError, match="exceeds"):
        calc.set(allow_large_field=False)
    calc = _calc(ref, field=lambda t: [np.nan, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        calc.get_property("forces", ref)
    with pytest.raises(TypeError, match="unknown"):
        calc.set(feild=[0, 0, 0])
    with pytest.raises(ValueError, match="mode"):
        calc.set(mode="exact")


def test_bad_born_model_output():
    ref = _cell()
    calc = _calc(ref, model=BadBorn(np.zeros((4, 3, 3))))
    with pytest.raises(ValueError, match=r"shape \(4, 3, 3\); expected \(5, 3, 3\)"):
        calc.get_property("forces", ref)
    z = np.zeros((5, 3, 3))
    z[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf Born charges for atoms \[1\]"):
        _calc(ref, model=BadBorn(z)).get_property("forces", ref)
    with pytest.raises(TypeError, match="get_born_charges"):
        BornFieldCalculator(SpringsToSites(ref), np.zeros((5, 3, 3)))
    with pytest.raises(TypeError, match="torch"):
        _calc(ref, model=BadBorn(np.zeros((5, 3, 3))), mode="conservative")


def test_bad_cells_and_references():
    mol = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])
    z = np.array([1.1 * np.eye(3), -1.1 * np.eye(3)])
    ff = LennardJones(sigma=2.0, epsilon=0.01, rc=6.0)
    calc = BornFieldCalculator(ff, FixedBornCharges(z), field=[0.01, 0, 0])
    moved = mol.copy()
    moved.positions[0, 0] -= 0.1  # no cell: dipole only, relative to the Cartesian reference
    calc.get_property("energy", mol)
    assert np.allclose(calc.get_property("dipole", moved), [-1.1 * 0.1, 0, 0])
    with pytest.raises(ValueError, match="polarization needs a non-singular 3D cell"):
        calc.get_property("polarization", moved)
    # ... and ASE's calculator contract: the property is not implemented for this structure
    with pytest.raises(PropertyNotImplementedError, match="polarization needs"):
        calc.get_property("polarization", moved)
    flat = _cell()
    flat.set_cell([[4, 0, 0], [0, 4, 0], [2, 2, 0]], scale_atoms=False)
    with pytest.raises(ValueError, match="polarization needs"):
        _calc(_cell()).get_property("polarization", flat)
    ref = _cell()
    with pytest.raises(ValueError, match="reference structure has 5 atoms"):
        _calc(ref).get_property("energy", ref.repeat((2, 1, 1)))
    swapped = ref.copy()
    swapped.numbers[[0, 1]] = swapped.numbers[[1, 0]]
    with pytest.raises(ValueError, match="species order"):
        _calc(ref).get_property("energy", swapped)


def test_force_field_without_forces():
    class EnergyOnly(Calculator):
        implemented_properties = ("energy",)

    with pytest.raises(TypeError, match="does not implement 'forces'"):
        BornFieldCalculator(EnergyOnly(), FixedBornCharges(np.zeros((5, 3, 3))))
    with pytest.raises(TypeError, match="ASE calculator"):
        BornFieldCalculator(object(), FixedBornCharges(np.zeros((5, 3, 3))))


# ---------------------------------------------------------------------------
# the shipped equivariance helpers on the position-dependent stand-in
# ---------------------------------------------------------------------------


def test_testing_helpers_on_smooth_model():
    model = SmoothBorn()
    atoms = _displaced(_cell(), 0.1)
    assert assert_born_equivariant(model, atoms) < 1e-10
    assert assert_born_translation_invariant(model, atoms) < 1e-10
    assert assert_born_permutation_equivariant(model, atoms) < 1e-10


# ---------------------------------------------------------------------------
# conservative mode beyond the periodic unit cell: clusters, invariances, supercells
# ---------------------------------------------------------------------------


def _cluster() -> Atoms:
    """5-atom CaTiO3 cluster without a cell (pbc False): only the dipole is defined."""
    pos = [[0.0, 0.0, 0.0], [1.9, 0.2, 0.1], [0.1, 1.8, -0.2], [-0.2, 0.1, 1.95], [2.0, 1.9, 0.3]]
    return Atoms("CaTiO3", positions=pos)


def _voigt_to_full(s):
    from ase.stress import voigt_6_to_full_3x3_stress

    return voigt_6_to_full_3x3_stress(s)


def test_conservative_mode_cluster_without_cell_exact_forces_and_dipole():
    """No cell: u = R − R_ref in Cartesian coordinates; forces are −dH/dR (finite
    differences) including the (∂Z*/∂R)·u term, and the dipole is Σ_k Z*_k u_k."""
    ref = _cluster()
    model = SmoothBorn()
    atoms = _displaced(ref, 0.1, seed=6)
    atoms.calc = BornFieldCalculator(
        LennardJones(sigma=1.6, epsilon=0.01, rc=5.0), model, field=FIELD, reference=ref,
        mode="conservative",
    )
    assert atoms.cell.rank == 0 and not atoms.pbc.any()
    assert_forces_match_fd(atoms, rtol=1e-6)
    corr = atoms.calc.get_property("field_force_correction", atoms)
    assert np.abs(corr).max() > 1e-3  # Z* depends on positions: the extra term matters
    u = atoms.positions - ref.positions
    np.testing.assert_allclose(atoms.calc.get_property("displacements", atoms), u, atol=1e-14)
    z = physics.asr_project(model.get_born_charges(atoms))
    np.testing.assert_allclose(atoms.calc.get_property("born_effective_charges", atoms), z,
                               atol=1e-12)
    d = np.einsum("kba,ka->b", z, u)
    assert np.abs(d).max() > 1e-2
    np.testing.assert_allclose(atoms.calc.get_property("dipole", atoms), d, rtol=1e-12, atol=1e-14)
    e0 = LennardJones(sigma=1.6, epsilon=0.01, rc=5.0).get_potential_energy(atoms)
    assert atoms.get_potential_energy() == pytest.approx(e0 - FIELD @ d, rel=1e-12, abs=1e-13)
    with pytest.raises(ValueError, match="stress needs a non-singular 3D cell"):
        atoms.get_stress()
    with pytest.raises(PropertyNotImplementedError, match="stress needs a non-singular 3D cell"):
        atoms.get_stress()


def _conservative(ref, model=None, field=FIELD):
    return _calc(ref, model=SmoothBorn() if model is None else model, field=field,
                 mode="conservative")


_KEYS = ("energy", "forces", "stress", "polarization", "born_effective_charges",
         "field_force_correction")


def _props(calc, atoms):
    return {k: np.asarray(calc.get_property(k, atoms)) for k in _KEYS}


def test_conservative_rotation_covariance_smooth_born():
    """Rotating structure, reference and field by R: energy invariant, forces, P and the
    (∂Z*/∂R)·u correction rotate as vectors, stress and Z* as rank-2 tensors."""
    ref = _cell()
    atoms = _displaced(ref, 0.08, seed=7)
    a = _props(_conservative(ref), atoms)
    assert np.abs(a["field_force_correction"]).max() > 1e-3
    rot = random_rotation(5)
    b = _props(_conservative(rotate_atoms(ref, rot), field=rot @ FIELD), rotate_atoms(atoms, rot))
    assert b["energy"] == pytest.approx(a["energy"], rel=1e-12)
    np.testing.assert_allclose(b["forces"], a["forces"] @ rot.T, atol=1e-12)
    np.testing.assert_allclose(b["field_force_correction"], a["field_force_correction"] @ rot.T,
                               atol=1e-12)
    np.testing.assert_allclose(b["polarization"], rot @ a["polarization"], atol=1e-14)
    np.testing.assert_allclose(_voigt_to_full(b["stress"]),
                               rot @ _voigt_to_full(a["stress"]) @ rot.T, atol=1e-13)
    np.testing.assert_allclose(b["born_effective_charges"],
                               physics.rotate_born_charges(a["born_effective_charges"], rot),
                               atol=1e-12)


def test_conservative_permutation_equivariance_smooth_born():
    """Permuting the atoms of structure and reference permutes forces and Z*; energy,
    stress and P are unchanged."""
    ref = _cell()
    atoms = _displaced(ref, 0.08, seed=8)
    perm = np.array([3, 0, 4, 1, 2])  # mixes the species
    a = _props(_conservative(ref), atoms)
    b = _props(_conservative(ref[perm]), atoms[perm])
    for key in ("energy", "stress", "polarization"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-14)
    for key in ("forces", "field_force_correction", "born_effective_charges"):
        np.testing.assert_allclose(b[key], a[key][perm], atol=1e-12)


def test_conservative_supercell_consistency_smooth_born():
    """A 2x1x1 supercell of structure and reference: per-atom forces, Z*, stress and P
    equal the unit cell's, energy and dipole double.  (σ = 1 Å: the images beyond the
    nearest one, which the unit cell leaves out and the supercell includes, weigh
    < 1e-12.)"""
    ref = _cell()
    atoms = _displaced(ref, 0.08, seed=9)
    model = SmoothBorn(sigma=1.0)
    calc1 = _conservative(ref, model)
    a = _props(calc1, atoms)
    d1 = calc1.get_property("dipole", atoms)
    assert np.abs(a["field_force_correction"]).max() > 1e-3
    ref2, atoms2 = ref.repeat((2, 1, 1)), atoms.repeat((2, 1, 1))
    calc2 = _conservative(ref2, model)
    b = _props(calc2, atoms2)
    for key in ("forces", "field_force_correction", "born_effective_charges"):
        np.testing.assert_allclose(b[key], np.concatenate([a[key], a[key]]), atol=1e-10)
    np.testing.assert_allclose(b["stress"], a["stress"], atol=1e-11)
    np.testing.assert_allclose(b["polarization"], a["polarization"], atol=1e-12)
    np.testing.assert_allclose(calc2.get_property("dipole", atoms2), 2 * d1, rtol=1e-10)
    assert b["energy"] == pytest.approx(2 * a["energy"], rel=1e-10)


# ---------------------------------------------------------------------------
# partial periodicity: a slab with vacuum
# ---------------------------------------------------------------------------


def _slab() -> Atoms:
    """The 5-atom cell as a slab: periodic along a and b, 12 Å of vacuum along c
    (pbc = [True, True, False]; the cell stays 3D so Ω, P and stress are defined)."""
    a = _cell()
    a.set_cell([[3.9, 0.1, 0.0], [0.3, 4.0, 0.1], [-0.2, 0.2, 16.0]], scale_atoms=False)
    a.positions += [0.0, 0.0, 2.0]
    a.pbc = [True, True, False]
    return a


def _slab_displaced(ref):
    """Displaced slab with atom 0 pushed across the periodic a-boundary and wrapped:
    its minimum-image shift is nonzero."""
    atoms = _displaced(ref, 0.1, seed=10)
    atoms.positions[0] -= [0.3, 0.1, 0.0]
    atoms.wrap()
    assert atoms.get_scaled_positions(wrap=False)[0, 0] > 0.9
    return atoms


@pytest.mark.parametrize("mode", ["direct", "conservative"])
def test_partial_pbc_slab_forces_and_stress_match_fd(mode):
    """pbc = [True, True, False] with a 3D cell: displacements take the minimum image along
    a and b only, the reference follows the cell along all three axes, and forces and
    stress are −dE/dR and (1/Ω) dE/dε in both modes (direct: fixed non-symmetric Z*;
    conservative: the position- and cell-dependent SmoothBorn)."""
    ref = _slab()
    atoms = _slab_displaced(ref)
    model = FixedBornCharges(_z_nonsym()) if mode == "direct" else SmoothBorn()
    atoms.calc = _calc(ref, model=model, field=FIELD, mode=mode)
    u = atoms.calc.get_property("displacements", atoms)
    assert np.abs(u).max() < 0.5  # the wrapped atom is measured through the a-boundary
    s_field = atoms.calc.get_property("field_stress", atoms)
    assert np.abs(s_field).max() > 2e-5  # Ω includes the vacuum: small but resolved
    assert_forces_match_fd(atoms, rtol=1e-6)
    assert_stress_matches_fd(atoms, rtol=1e-6)
    if mode == "direct":
        f = atoms.calc.get_property("field_forces", atoms)
        np.testing.assert_allclose(s_field, physics.field_stress(f, u, atoms.get_volume()),
                                   rtol=1e-12)


def test_periodic_directions_without_a_3d_cell_are_refused():
    """A slab with pbc [T, T, F] but c = 0 has no 3D cell, so no minimum image could be taken
    along a and b (a wrapped atom would jump by a lattice vector): a clear error, and with
    the vacuum c vector the same slab works and is wrap invariant."""
    cell2d = [[3.9, 0.1, 0.0], [0.3, 4.0, 0.0], [0.0, 0.0, 0.0]]
    ref = Atoms("CaTiO3", positions=_cell().positions, cell=cell2d, pbc=[True, True, False])
    calc = BornFieldCalculator(LennardJones(sigma=1.6, epsilon=0.01, rc=3.5),
                               FixedBornCharges(_z_nonsym()), field=FIELD, reference=ref)
    atoms = _displaced(ref, 0.08, seed=11)
    with pytest.raises(ValueError, match=r"periodic directions .* without a non-singular 3D cell"):
        calc.get_property("forces", atoms)
    ref3d = ref.copy()
    ref3d.cell = [cell2d[0], cell2d[1], [0.0, 0.0, 20.0]]
    calc = BornFieldCalculator(LennardJones(sigma=1.6, epsilon=0.01, rc=3.5),
                               FixedBornCharges(_z_nonsym()), field=FIELD, reference=ref3d)
    atoms = _displaced(ref3d, 0.08, seed=11)
    atoms.positions[0] -= [0.3, 0.1, 0.0]  # atom 0 leaves the cell through the a-boundary
    u, e = calc.get_property("displacements", atoms), calc.get_property("field_energy", atoms)
    wrapped = atoms.copy()
    wrapped.wrap()
    assert not np.allclose(wrapped.positions, atoms.positions)
    np.testing.assert_allclose(calc.get_property("displacements", wrapped), u, atol=1e-12)
    assert calc.get_property("field_energy", wrapped) == pytest.approx(e, abs=1e-12)

class _FailsOnce(BornChargeModel):
    """SmoothBorn that raises on its ``fail_at``-th call (0-based), as a model can on one
    bad structure, and answers again on the retry."""

    def __init__(self, fail_at):
        self.inner, self.calls, self.fail_at = SmoothBorn(), 0, fail_at

    def get_born_charges(self, atoms):
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise RuntimeError("model failed on this structure")
        return self.inner.get_born_charges(atoms)


def test_a_failed_calculation_counts_no_configuration_and_keeps_the_restored_one():
    """The Z* refresh count (n_updates) and the restored last configuration are committed only
    once the models have answered: a call that raised and its retry at the same structure count
    one configuration (they counted two), and a state saved after a failed first call following
    set_state still holds the saved configuration (it was dropped)."""
    ref, x, y, state = _state_after_one_structure()
    calc = _calc(ref, model=_FailsOnce(fail_at=1), field=FIELD, born_update_every=1)
    for atoms in (x.copy(), y.copy()):
        atoms.calc = calc
        try:
            atoms.get_forces()
        except RuntimeError:
            atoms.get_forces()  # the retry
    assert calc.get_state()["n_updates"] == 1
    new = _calc(ref, model=_FailsOnce(fail_at=0), field=FIELD, born_update_every=1)
    new.set_state(state)
    a = y.copy()
    a.calc = new
    with pytest.raises(RuntimeError, match="model failed"):
        a.get_forces()
    assert json.loads(json.dumps(new.get_state()))["last_config"] == state["last_config"]
    want = physics.asr_project(SmoothBorn().get_born_charges(y))
    np.testing.assert_allclose(new.get_property("born_effective_charges", a), want, atol=1e-12)
    assert new.get_state()["n_updates"] == state["n_updates"] + 1


def test_allow_large_field_takes_bools_only_and_the_clock_is_attached_once():
    """allow_large_field="false" is truthy: it turned the 1 V/Å guard off (now a TypeError);
    attach_dynamics twice on one dynamics advanced the clock twice per step."""
    ref = _cell()
    with pytest.raises(TypeError, match="allow_large_field must be a bool"):
        _calc(ref, field=(5e7, 0, 0), allow_large_field="false")
    with pytest.raises(ValueError, match="V/Å"):
        _calc(ref, field=(5e7, 0, 0), allow_large_field=False)
    calc = _calc(ref, field=lambda t: np.array([1e-3 * t, 0.0, 0.0]))
    atoms = _displaced(ref, 0.05)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    calc.attach_dynamics(dyn)
    calc.attach_dynamics(dyn)
    dyn.run(3)
    assert calc.time == pytest.approx(3.0 * units.fs)
