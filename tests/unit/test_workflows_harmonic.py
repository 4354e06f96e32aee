"""Stand-in models and the 0 K harmonic dielectric tensor (ase_born.workflows.harmonic)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from ase_born import BornFieldCalculator, FixedBornCharges, physics
from ase_born.dft.sampler import cubic_catio3, pnma_catio3
from ase_born.testing import assert_forces_match_fd, assert_stress_matches_fd
from ase_born.workflows import harmonic_dielectric
from ase_born.workflows.harmonic import (
    force_constants_gamma,
    is_translation_invariant,
    relax,
    static_displacements,
)
from ase_born.workflows.standins import (
    HarmonicCrystal,
    QuadraticBornModel,
    exact_epsilon_ion,
    nominal_born_charges,
    random_born_charges,
    random_force_constants,
    standin_force_field,
)


@pytest.fixture(scope="module")
def pnma():
    return pnma_catio3()


def test_harmonic_crystal_forces_and_stress_are_gradients(pnma):
    ff = HarmonicCrystal(
        pnma,
        force_constants=random_force_constants(20, 1),
        bulk_modulus_GPa=120,
        shear_modulus_GPa=60,
    )
    a = pnma.copy()
    a.rattle(0.05, seed=2)
    a.set_cell(
        a.cell.array @ (np.eye(3) + 0.01 * np.random.default_rng(3).normal(size=(3, 3))),
        scale_atoms=True,
    )
    a.calc = ff
    assert_forces_match_fd(a, rtol=1e-6, atol=1e-9)
    assert_stress_matches_fd(a, rtol=1e-6, atol=1e-10)


def test_harmonic_crystal_input_checks(pnma):
    with pytest.raises(ValueError, match="exactly one"):
        HarmonicCrystal(pnma)
    bad = -np.eye(60)
    with pytest.raises(ValueError, match="positive definite"):
        HarmonicCrystal(pnma, force_constants=bad)
    with pytest.raises(ValueError, match="both"):
        HarmonicCrystal(pnma, spring_constants=1.0, bulk_modulus_GPa=100)


def test_quadratic_born_model_torch_matches_numpy(pnma):
    z0 = random_born_charges(20, 5)
    m = QuadraticBornModel(z0, pnma, alpha=2.0)
    a = pnma.copy()
    a.rattle(0.1, seed=4)
    zt = m.get_born_charges_torch(a, torch.tensor(a.positions), torch.tensor(a.cell.array))
    np.testing.assert_allclose(zt.numpy(), m.get_born_charges(a), atol=1e-12)
    assert not np.allclose(m.get_born_charges(a), z0)


def test_nominal_born_charges_orientation(pnma):
    z = nominal_born_charges(pnma)
    np.testing.assert_allclose(z.sum(0), 0.0, atol=1e-12)  # ASR
    o = [i for i, s in enumerate(pnma.get_chemical_symbols()) if s == "O"]
    for k in o:
        w = np.sort(np.linalg.eigvalsh(0.5 * (z[k] + z[k].T)))
        assert w[0] == pytest.approx(-5.65, abs=0.1)  # O∥ along the Ti–O–Ti line
        assert w[2] == pytest.approx(-2.0, abs=0.1)


def test_harmonic_dielectric_equals_exact_for_springs(pnma):
    """Springs to sites: ZᵀΦ⁻¹Z/(Ωε0) exactly (plain inverse, no translations to project)."""
    phi = random_force_constants(20, 7)
    z = random_born_charges(20, 8)
    a = pnma.copy()
    a.calc = HarmonicCrystal(pnma, force_constants=phi)
    eps = harmonic_dielectric(a, z)
    np.testing.assert_allclose(eps, exact_epsilon_ion(phi, z, a.get_volume()), rtol=1e-7, atol=1e-8)
    det = harmonic_dielectric(a, z, return_details=True)
    assert det["method"] == "central" and not det["project_translations"]
    np.testing.assert_allclose(det["force_constants"], phi, atol=1e-7)


def test_phonopy_and_central_agree_on_symmetric_standin(pnma):
    a = pnma.copy()
    a.calc = standin_force_field(pnma)
    z = nominal_born_charges(pnma)
    central = harmonic_dielectric(a, z, method="central")
    det = harmonic_dielectric(a, z, method="phonopy", return_details=True)
    np.testing.assert_allclose(det["epsilon_ion"], central, rtol=1e-6, atol=1e-6)
    assert det["n_force_calls"] < 6 * len(a)  # symmetry saves force calls


def test_translation_invariant_force_field_projects_translations():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.calc = EMT()
    z = np.zeros((4, 3, 3))
    z[0], z[1], z[2], z[3] = np.eye(3), -np.eye(3), 0.5 * np.eye(3), -0.5 * np.eye(3)
    assert is_translation_invariant(cu)
    det = harmonic_dielectric(cu, z, return_details=True)
    assert det["project_translations"]
    phi_c, _ = force_constants_gamma(cu, method="central")
    ref = physics.harmonic_dielectric_from_fc(phi_c, z, cu.get_volume(), project_translations=True)
    np.testing.assert_allclose(det["epsilon_ion"], ref, rtol=1e-5, atol=1e-8)
    # the three zero modes are the translations
    assert np.sum(np.abs(det["frequencies_THz"]) < 1e-3) == 3


def test_field_calculator_is_replaced_by_its_force_field(pnma):
    z = nominal_born_charges(pnma)
    a = pnma.copy()
    a.calc = BornFieldCalculator(
        standin_force_field(pnma), FixedBornCharges(z), field=(0, 0, 0.05), reference=pnma
    )
    b = pnma.copy()
    b.calc = standin_force_field(pnma)
    np.testing.assert_allclose(harmonic_dielectric(a, z), harmonic_dielectric(b, z), rtol=1e-10)
    # a Born model is accepted in place of the array
    np.testing.assert_allclose(
        harmonic_dielectric(b, FixedBornCharges(z)), harmonic_dielectric(b, z)
    )


def test_unstable_structure_names_the_mode():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    cu.set_cell(cu.cell * 1.25, scale_atoms=True)  # stretched: not a minimum
    cu.calc = EMT()
    with pytest.raises(ValueError, match=r"negative eigenvalue[\s\S]*unstable Γ modes[\s\S]*i THz"):
        harmonic_dielectric(cu, np.zeros((8, 3, 3)))


def test_unrelaxed_structure_warns(pnma):
    a = pnma.copy()
    a.calc = standin_force_field(pnma)
    a.positions[0] += 0.1
    with pytest.warns(UserWarning, match="not relaxed"):
        harmonic_dielectric(a, nominal_born_charges(pnma), method="central")


def test_bad_shapes(pnma):
    a = pnma.copy()
    a.calc = standin_force_field(pnma)
    with pytest.raises(ValueError, match="shape"):
        harmonic_dielectric(a, np.zeros((3, 3, 3)))


def test_static_displacements_match_relaxation_in_field():
    ref = cubic_catio3()
    phi = random_force_constants(5, 11)
    z = random_born_charges(5, 12)
    field = np.array([0.01, -0.02, 0.015])
    u = static_displacements(phi, z, field, project_translations=False)
    a = ref.copy()
    calc = BornFieldCalculator(
        HarmonicCrystal(ref, force_constants=phi), FixedBornCharges(z), field=field, reference=ref
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = relax(a, calc, fmax=1e-7, steps=500)
    assert res["converged"]
    np.testing.assert_allclose(a.positions - ref.positions, u, atol=1e-7)
    # and the polarization is ε0 ε_ion E
    p = calc.get_property("ionic_polarization", a)
    from ase_born.conventions import EPSILON0

    np.testing.assert_allclose(
        p, EPSILON0 * exact_epsilon_ion(phi, z, ref.get_volume()) @ field, rtol=1e-6
    )
