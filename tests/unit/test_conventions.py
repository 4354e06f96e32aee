"""Pin the unit and index conventions of ase_born.conventions (CONVENTIONS.md)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units

from ase_born import conventions as cv


def test_epsilon0_in_e_per_V_per_A():
    assert cv.EPSILON0 == pytest.approx(5.526349e-3, rel=1e-6)
    # independent route through ASE's CODATA-2018 constants (ASE's default set is 2014)
    u18 = units.create_units("2018")
    assert cv.EPSILON0 == pytest.approx(u18["_eps0"] / u18["_e"] * 1e-10, rel=1e-9)
    # and within 1e-7 of ASE's default (2014) set
    assert cv.EPSILON0 == pytest.approx(units._eps0 / units._e * 1e-10, rel=1e-7)


def test_field_energy_density_against_si():
    # ½ ε0 E² Ω for E = 1 V/Å = 1e10 V/m in Ω = 1 Å³ = 1e-30 m³, computed in SI then converted
    si_joule = 0.5 * 8.8541878128e-12 * (1e10) ** 2 * 1e-30
    assert 0.5 * cv.EPSILON0 * 1.0**2 * 1.0 == pytest.approx(si_joule / 1.602176634e-19, rel=1e-12)


def test_polarization_units():
    assert cv.C_PER_M2_PER_E_PER_A2 == pytest.approx(16.02177, rel=1e-6)
    assert cv.polarization_to_C_per_m2(1.0) == pytest.approx(16.02177, rel=1e-6)
    assert cv.polarization_to_uC_per_cm2(1.0) == pytest.approx(1602.177, rel=1e-6)
    p = np.array([0.1, -0.2, 0.3])
    assert np.allclose(cv.polarization_from_C_per_m2(cv.polarization_to_C_per_m2(p)), p, rtol=1e-15)


def test_field_units():
    assert cv.field_from_V_per_m(5e7) == pytest.approx(0.005, rel=1e-15)
    assert cv.field_to_V_per_m(0.005) == pytest.approx(5e7, rel=1e-15)
    assert cv.field_to_MV_per_cm(1.0) == pytest.approx(100.0)
    assert cv.field_from_MV_per_cm(0.5) == pytest.approx(0.005)
    # 1 V/Å = 1e8 V/cm
    assert cv.V_PER_CM_PER_V_PER_A == 1e8


def test_other_constants():
    u18 = units.create_units("2018")
    assert cv.KB_EV_PER_K == pytest.approx(u18["kB"], rel=1e-9)
    assert cv.ELEMENTARY_CHARGE_C == u18["_e"]
    # atomic units agree with ASE's readers (its default CODATA set) and with CODATA 2018 to 1e-7
    assert cv.HARTREE_EV == pytest.approx(units.Hartree, rel=1e-12)
    assert cv.BOHR_A == pytest.approx(units.Bohr, rel=1e-12)
    assert cv.HARTREE_EV == pytest.approx(u18["Hartree"], rel=1e-7)
    assert cv.BOHR_A == pytest.approx(u18["Bohr"], rel=1e-7)


def test_validate_field():
    out = cv.validate_field([0.0, 0.005, 0])
    assert out.dtype == np.float64 and out.shape == (3,)
    with pytest.raises(ValueError, match="shape"):
        cv.validate_field([0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        cv.validate_field([np.nan, 0, 0])
    with pytest.raises(ValueError, match="V/m"):
        cv.validate_field([5e7, 0, 0])
    assert cv.validate_field([2.0, 0, 0], allow_large_field=True)[0] == 2.0
    with pytest.raises(TypeError):
        cv.validate_field(["a", "b", "c"])


def test_born_index_order_einsums_on_nonsymmetric_tensor():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 3, 3))
    assert not np.allclose(z, z.transpose(0, 2, 1))
    e = np.array([0.3, -0.1, 0.7])
    u = rng.normal(size=(3, 3))
    f = np.einsum(cv.BORN_FORCE_EINSUM, e, z)
    d = np.einsum(cv.BORN_DIPOLE_EINSUM, z, u)
    for k in range(3):
        # F_{k,a} = Σ_b E_b Z*_{k,b a}: the field contracts the FIRST Cartesian index
        assert np.allclose(f[k], z[k].T @ e)
        assert not np.allclose(f[k], z[k] @ e)
    assert np.allclose(d, sum(z[k] @ u[k] for k in range(3)))


def test_property_keys_are_ase_names():
    from ase.outputs import all_outputs

    for key in (
        cv.KEY_ENERGY,
        cv.KEY_FREE_ENERGY,
        cv.KEY_FORCES,
        cv.KEY_STRESS,
        cv.KEY_BORN,
        cv.KEY_POLARIZATION,
        cv.KEY_DIPOLE,
        cv.KEY_DIELECTRIC,
    ):
        assert key in all_outputs
