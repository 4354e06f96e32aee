"""Pure physics functions of ase_born.physics (no calculator)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ase_born import physics
from ase_born.conventions import EPSILON0, KB_EV_PER_K, field_from_V_per_m

RNG = np.random.default_rng(1234)
TRICLINIC = np.array([[4.1, 0.0, 0.0], [1.7, 3.9, 0.0], [-1.2, 0.8, 4.4]])


def test_single_ion_isotropic_charge_feels_qE():
    q = 2.0
    z = q * np.eye(3)[None]
    e = field_from_V_per_m(np.array([5e7, 0.0, 0.0]))
    assert np.allclose(e, [0.005, 0, 0], rtol=0, atol=1e-18)
    f = physics.field_forces(z, e)
    assert np.array_equal(f, [[0.01, 0.0, 0.0]])
    e3 = np.array([0.001, -0.002, 0.003])
    assert np.allclose(physics.field_forces(z, e3), q * e3[None], rtol=1e-15)


def test_index_order_nonsymmetric():
    z = RNG.normal(size=(4, 3, 3))
    u = RNG.normal(size=(4, 3))
    e = np.array([0.02, -0.05, 0.01])
    vol = 71.3
    f = physics.field_forces(z, e)
    p = physics.ionic_polarization(z, u, vol)
    for k in range(4):
        assert np.allclose(f[k], z[k].T @ e, rtol=1e-14)
    assert np.allclose(p, sum(z[k] @ u[k] for k in range(4)) / vol, rtol=1e-14)
    zt = z.transpose(0, 2, 1)
    assert not np.allclose(physics.field_forces(zt, e), f)
    assert not np.allclose(physics.ionic_polarization(zt, u, vol), p)
    # energy = −E·d
    d = physics.ionic_dipole(z, u)
    assert physics.field_energy(e, d) == pytest.approx(-float(e @ d), rel=1e-14)


def test_numpy_and_torch_agree():
    z = RNG.normal(size=(5, 3, 3))
    u = RNG.normal(size=(5, 3))
    e = np.array([0.1, 0.2, -0.3])
    zt, ut = torch.tensor(z), torch.tensor(u)
    f_np = physics.field_forces(z, e)
    f_t = physics.field_forces(zt, e)
    assert isinstance(f_t, torch.Tensor) and f_t.dtype == torch.float64
    assert np.allclose(f_t.numpy(), f_np, rtol=1e-14)
    assert np.allclose(physics.ionic_dipole(zt, ut).numpy(), physics.ionic_dipole(z, u), rtol=1e-14)
    assert np.allclose(
        physics.field_stress(f_t, ut, 50.0).numpy(), physics.field_stress(f_np, u, 50.0)
    )
    assert np.allclose(physics.asr_project(zt).numpy(), physics.asr_project(z), atol=1e-15)
    rot = np.linalg.qr(RNG.normal(size=(3, 3)))[0]
    assert np.allclose(
        physics.rotate_born_charges(zt, rot).numpy(), physics.rotate_born_charges(z, rot)
    )
    # float32 inputs stay float32 (no global dtype)
    assert physics.field_forces(zt.float(), e).dtype == torch.float32


def test_rotation_of_born_charges_rotates_force_and_polarization():
    z = RNG.normal(size=(3, 3, 3))
    u = RNG.normal(size=(3, 3))
    e = RNG.normal(size=3) * 0.01
    rot = np.linalg.qr(RNG.normal(size=(3, 3)))[0]
    zr = physics.rotate_born_charges(z, rot)
    assert np.allclose(physics.field_forces(zr, rot @ e), physics.field_forces(z, e) @ rot.T)
    assert np.allclose(physics.ionic_dipole(zr, u @ rot.T), rot @ physics.ionic_dipole(z, u))


def _brute_force_min_image(raw, cell):
    best = raw.copy()
    for n in itertools.product(range(-3, 4), repeat=3):
        cand = raw + np.array(n) @ cell
        shorter = np.linalg.norm(cand, axis=1) < np.linalg.norm(best, axis=1) - 1e-12
        best[shorter] = cand[shorter]
    return best


def test_minimum_image_triclinic():
    s0 = RNG.random((20, 3))
    disp = RNG.normal(scale=1.2, size=(20, 3))  # some beyond half a cell
    pos = s0 @ TRICLINIC + disp + RNG.integers(-2, 3, size=(20, 3)) @ TRICLINIC
    u, shifts = physics.minimum_image_displacements(pos, TRICLINIC, s0)
    assert shifts.dtype == np.int64
    assert np.allclose(u, _brute_force_min_image(pos - s0 @ TRICLINIC, TRICLINIC), atol=1e-12)
    # wrapping atoms by lattice vectors does not change u
    moved = pos + RNG.integers(-3, 4, size=(20, 3)) @ TRICLINIC
    u2, _ = physics.minimum_image_displacements(moved, TRICLINIC, s0)
    assert np.allclose(u2, u, atol=1e-12)
    # the shifts rebuild u, also differentiably in torch
    assert np.allclose(physics.displacements_with_shifts(pos, TRICLINIC, s0, shifts), u, atol=1e-12)
    pt = torch.tensor(pos, requires_grad=True)
    ut = physics.displacements_with_shifts(pt, torch.tensor(TRICLINIC), s0, shifts)
    assert np.allclose(ut.detach().numpy(), u, atol=1e-12)
    ut.sum().backward()
    assert np.allclose(pt.grad.numpy(), 1.0)


def test_minimum_image_nonperiodic_direction_and_cell_scaling():
    s0 = RNG.random((6, 3))
    pos = s0 @ TRICLINIC + np.array([0.0, 0.0, 3.0])  # 3 Å along z, beyond half the cell
    u, _ = physics.minimum_image_displacements(pos, TRICLINIC, s0, pbc=[True, True, False])
    assert np.allclose(u, [[0, 0, 3.0]] * 6, atol=1e-12)
    # cell scaled with fractional positions fixed: zero displacement (NpT)
    h2 = TRICLINIC @ (np.eye(3) + np.array([[0.03, 0.01, 0], [0.01, -0.02, 0], [0, 0, 0.05]]))
    u0, _ = physics.minimum_image_displacements(s0 @ h2, h2, s0)
    assert np.allclose(u0, 0.0, atol=1e-13)


def test_field_stress_is_strain_derivative_of_field_energy():
    z = RNG.normal(size=(4, 3, 3))
    u = RNG.normal(scale=0.1, size=(4, 3))
    e = np.array([0.03, -0.02, 0.05])
    vol = 65.0
    f = physics.field_forces(z, e)
    sigma = physics.field_stress(f, u, vol, voigt=False)
    # E_field(ε) = −Σ f·(1+ε)u at fixed f (Z* fixed); σ = (1/Ω) ∂E/∂ε (symmetric strain)
    h = 1e-6
    num = np.zeros((3, 3))
    for a, b in itertools.product(range(3), repeat=2):
        eps = np.zeros((3, 3))
        eps[a, b] += 0.5 * h
        eps[b, a] += 0.5 * h
        ep = -np.sum(f * (u @ (np.eye(3) + eps).T))
        em = -np.sum(f * (u @ (np.eye(3) - eps).T))
        num[a, b] = (ep - em) / (2 * h * vol)
    assert np.allclose(sigma, num, rtol=1e-7, atol=1e-12)
    voigt = physics.field_stress(f, u, vol)
    assert np.allclose(
        voigt, [sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]]
    )


def test_asr_projection_and_violation():
    z = RNG.normal(size=(7, 3, 3))
    raw_sum = z.sum(0)
    assert physics.asr_violation(z) == pytest.approx(np.abs(raw_sum).sum() / 9)
    zc = physics.asr_project(z)
    assert np.abs(zc.sum(0)).max() < 1e-12
    assert physics.asr_violation(zc) < 1e-12
    # the correction is a uniform shift of every atom's tensor
    assert np.allclose(z - zc, raw_sum / 7)
    # the violation is linear in a uniform scale: [z, 3z, zc] has violations v, 3v, 0,
    # so the MAE over structures is (v + 3v + 0)/3 = 4v/3, distinct from any one entry
    v = physics.asr_violation(z)
    assert physics.asr_violation(3 * z) == pytest.approx(3 * v)
    assert physics.asr_violation_mae([z, 3 * z]) == pytest.approx(2 * v, rel=1e-14)
    assert physics.asr_violation_mae([z, 3 * z, zc]) == pytest.approx(4 * v / 3, rel=1e-14)
    # structures of different sizes: the mean is over structures, not atoms
    z2 = RNG.normal(size=(2, 3, 3))
    v2 = np.abs(z2.sum(0)).sum() / 9
    assert physics.asr_violation_mae([z2, z]) == pytest.approx((v2 + v) / 2, rel=1e-14)


def test_electronic_polarization():
    e = np.array([0.0, 0.0, 0.005])
    eps_inf = np.diag([6.0, 6.0, 5.0])
    assert np.allclose(physics.electronic_polarization(e, eps_inf), [0, 0, EPSILON0 * 4.0 * 0.005])


def test_finite_field_epsilon_recovers_tensor():
    eps = np.array(
        [[40.0, 2.0, 0.0], [1.0, 35.0, 0.5], [0.0, 0.3, 50.0]]
    )  # ε[b, c], not symmetric on purpose
    p0 = np.array([1e-3, -2e-3, 5e-4])
    e = 0.005
    # run c has field along c: ⟨P_b⟩ = P0_b + ε0 ε[b, c] E
    pf = np.array([p0 + EPSILON0 * eps[:, c] * e for c in range(3)])
    assert np.allclose(physics.epsilon_ion_finite_field(pf, p0, e), eps, rtol=1e-10)
    err = physics.epsilon_ion_finite_field_error(np.full((3, 3), 3e-6), np.full(3, 4e-6), e)
    assert np.allclose(err, 5e-6 / (EPSILON0 * e))
    # distinct errors: δε[b, c] = sqrt(δP_f[c, b]² + δP_0[b]²) / (ε0 |E|), row c of δP_f =
    # run with the field along c, so the field-run error enters transposed
    dpf = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]) * 1e-6  # [run c, comp b]
    dp0 = np.array([0.5, 1.5, 2.5]) * 1e-6  # [comp b]
    err = physics.epsilon_ion_finite_field_error(dpf, dp0, -e)  # sign of E does not matter
    assert err.shape == (3, 3)
    for b, c in itertools.product(range(3), repeat=2):
        expected = np.sqrt(dpf[c, b] ** 2 + dp0[b] ** 2) / (EPSILON0 * e)
        assert err[b, c] == pytest.approx(expected, rel=1e-12), (b, c)
    with pytest.raises(ValueError):
        physics.epsilon_ion_finite_field(pf, p0, 0.0)


def _exact_cov_samples(cov, mean):
    # six points ±√3 e_i have exactly identity covariance (ddof=0) and zero mean
    base = np.vstack([np.sqrt(3) * np.eye(3), -np.sqrt(3) * np.eye(3)])
    return mean + base @ np.linalg.cholesky(cov).T


def test_fluctuation_formulas():
    cov = np.array([[4.0, 1.0, 0.2], [1.0, 3.0, 0.0], [0.2, 0.0, 2.0]]) * 1e-6  # (e/Å²)²
    p = _exact_cov_samples(cov, np.array([0.01, 0.0, -0.02]))
    vol, t = 1000.0, 300.0
    expected = vol * cov / (EPSILON0 * KB_EV_PER_K * t)
    assert np.allclose(physics.epsilon_ion_fluctuation(p, vol, t), expected, rtol=1e-10)
    # NpT form with constant volume reduces to the NVT one
    eps_npt = physics.epsilon_ion_fluctuation_npt(p * vol, np.full(len(p), vol), t)
    assert np.allclose(eps_npt, expected, rtol=1e-10)
    # varying volumes: ε_ion[b, c] = ⟨δd_b δd_c⟩ / (⟨Ω⟩ ε0 k_B T), covariance with ddof = 0
    d = _exact_cov_samples(cov * vol**2, np.array([3.0, -1.0, 0.5]))  # dipoles in e·Å
    vols = np.array([950.0, 990.0, 1010.0, 1030.0, 1060.0, 1100.0])  # ⟨Ω⟩ = 1023.3 Å³
    dd = d - d.mean(0)
    cov_d = dd.T @ dd / len(d)
    assert np.allclose(cov_d, cov * vol**2, rtol=1e-12)
    expected_npt = cov_d / (vols.mean() * EPSILON0 * KB_EV_PER_K * t)
    eps_npt = physics.epsilon_ion_fluctuation_npt(d, vols, t)
    assert np.allclose(eps_npt, expected_npt, rtol=1e-10)
    # the data tell ⟨Ω⟩ from a single sample's Ω (here 7 % apart)
    assert not np.allclose(eps_npt, cov_d / (vols[0] * EPSILON0 * KB_EV_PER_K * t), rtol=1e-3)
    with pytest.raises(ValueError, match="volumes"):
        physics.epsilon_ion_fluctuation_npt(d, vols[:-1], t)
    with pytest.raises(ValueError, match="temperature"):
        physics.epsilon_ion_fluctuation(p, vol, 0.0)
    # the shared normalisation Ω ε0 k_B T (independent numbers: ε0 in e/(V Å), k_B in eV/K)
    scale = physics.fluctuation_scale(vol, t)
    assert scale == pytest.approx(1000.0 * 5.526349406e-3 * 8.617333262e-5 * 300.0, rel=1e-8)
    for bad in ((0.0, t), (vol, -1.0), (np.nan, t)):
        with pytest.raises(ValueError):
            physics.fluctuation_scale(*bad)


def test_block_average():
    x = np.repeat(np.arange(4.0), 5)  # 4 blocks of 5, block means 0,1,2,3
    mean, sem = physics.block_average(x, n_blocks=4)
    assert mean == pytest.approx(1.5)
    assert sem == pytest.approx(np.std([0, 1, 2, 3], ddof=1) / 2)


def test_harmonic_dielectric_springs_to_sites():
    kappa = np.array([5.0, 8.0, 3.0])
    phi = np.kron(np.diag(kappa), np.eye(3))
    z = RNG.normal(size=(3, 3, 3))
    vol = 60.0
    eps = physics.harmonic_dielectric_from_fc(phi, z, vol)
    analytic = sum(z[k] @ z[k].T / kappa[k] for k in range(3)) / (vol * EPSILON0)
    assert np.allclose(eps, analytic, rtol=1e-12)
    # phonopy's full (N, N, 3, 3) layout gives the same
    fc4 = np.zeros((3, 3, 3, 3))
    for k in range(3):
        fc4[k, k] = kappa[k] * np.eye(3)
    assert np.allclose(physics.harmonic_dielectric_from_fc(fc4, z, vol), analytic, rtol=1e-12)
    # and the static response it predicts: u = Φ⁻¹ Zᵀ E gives P = ε0 ε E
    e = np.array([0.001, 0.002, -0.003])
    u = physics.field_forces(z, e) / kappa[:, None]
    assert np.allclose(physics.ionic_polarization(z, u, vol), EPSILON0 * eps @ e, rtol=1e-12)


def test_harmonic_dielectric_translation_projection():
    # diatomic crystal, spring κ between the two atoms only (translation invariant)
    kappa, q, vol = 7.0, 1.5, 40.0
    phi = kappa * np.kron(np.array([[1.0, -1.0], [-1.0, 1.0]]), np.eye(3))
    z = np.array([q * np.eye(3), -q * np.eye(3)])
    eps = physics.harmonic_dielectric_from_fc(phi, z, vol)  # auto-detects the translations
    assert np.allclose(eps, q**2 / (kappa * vol * EPSILON0) * np.eye(3), rtol=1e-12)
    # forcing the plain inverse fails on the zero modes
    with pytest.raises(ValueError, match="zero eigenvalue"):
        physics.harmonic_dielectric_from_fc(phi, z, vol, project_translations=False)


def test_harmonic_dielectric_unstable_mode_named():
    phi = np.kron(np.diag([5.0, -2.0, 3.0]), np.eye(3))
    z = RNG.normal(size=(3, 3, 3))
    with pytest.raises(ValueError, match=r"negative eigenvalue -2.*mode 0.*atom 1"):
        physics.harmonic_dielectric_from_fc(phi, z, 50.0)


def test_polarization_needs_volume():
    with pytest.raises(ValueError, match="volume"):
        physics.ionic_polarization(np.zeros((1, 3, 3)), np.zeros((1, 3)), 0.0)
