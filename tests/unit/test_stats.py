"""Error bars of the fluctuation (covariance) estimator on series with a known answer."""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from ase_born.conventions import EPSILON0, KB_EV_PER_K
from ase_born.workflows.stats import covariance_error, fluctuation_epsilon

L = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, -0.3, 1.0]])
SIGMA = L @ L.T  # stationary covariance of the series below


def ar1(rng: np.random.Generator, phi: float, n: int) -> np.ndarray:
    """x_t = φ x_{t-1} + sqrt(1-φ²) L e_t, started in the stationary state: covariance SIGMA,
    correlation time (1+φ)/(2(1-φ)) samples."""
    e = rng.normal(size=(n, 3)) @ L.T * np.sqrt(1.0 - phi**2)
    e[0] = rng.normal(size=3) @ L.T
    return lfilter([1.0], [1.0, -phi], e, axis=0)


def test_white_noise_matches_the_exact_variance_of_the_sample_covariance():
    """Independent Gaussian samples: Var(Ĉ_bc) = (Σ_bb Σ_cc + Σ_bc²)/N."""
    n = 200_000
    x = ar1(np.random.default_rng(3), 0.0, n)
    exact = np.sqrt((np.outer(np.diag(SIGMA), np.diag(SIGMA)) + SIGMA**2) / n)
    np.testing.assert_allclose(covariance_error(x), exact, rtol=0.08)


def test_correlated_series_give_unit_z_scores():
    """φ = 0.95 (correlation time ~20 samples): over many realisations the z-scores of the
    covariance against the exact one have standard deviation ~1 (the errors are honest)."""
    rng = np.random.default_rng(4)
    z = np.array([
        (np.cov(x.T, ddof=0) - SIGMA) / covariance_error(x)
        for x in (ar1(rng, 0.95, 4000) for _ in range(150))
    ])
    assert 0.85 < z.std() < 1.2
    assert abs(z.mean()) < 0.35  # the ddof-0 covariance of a correlated series is biased low


def test_fluctuation_error_does_not_collapse_with_short_blocks():
    """Blocks of ~3 correlation times (φ = 0.99: ~100 samples; 10 blocks of 300) make the
    jackknife alone too small (z-score spread 1.36 here); the reported error keeps Bartlett's
    estimate (1.12). (With N/τ < 10 the ddof-0 covariance itself is biased low by ~2τ/N and
    no error bar fixes that: longer runs do.)"""
    rng = np.random.default_rng(5)
    n, vol, temp = 3000, 1000.0, 300.0
    scale = vol * EPSILON0 * KB_EV_PER_K * temp
    z_all, ratio = [], []
    for _ in range(60):
        d = ar1(rng, 0.99, n)
        value, err = fluctuation_epsilon(d, np.full(n, vol), temp, n_blocks=10)
        np.testing.assert_allclose(value, np.cov(d.T, ddof=0) / scale, rtol=1e-12)
        z_all.append((value - SIGMA / scale) / err)
        ratio.append(err / (covariance_error(d) / scale))
    assert np.min(ratio) >= 1.0 - 1e-12  # never below Bartlett's
    assert np.std(z_all) < 1.25


def test_constant_components():
    """A component that never moves (e.g. a symmetry-fixed dipole direction) has zero
    covariance error; the others are unaffected; an all-constant series gives zeros."""
    x = ar1(np.random.default_rng(6), 0.5, 5000)
    x[:, 2] = 0.7
    err = covariance_error(x)
    assert err[2].max() < 1e-12 * err.max() and err[:, 2].max() < 1e-12 * err.max()
    np.testing.assert_allclose(err[:2, :2], covariance_error(x[:, :2]), rtol=1e-9)
    np.testing.assert_array_equal(covariance_error(np.ones((100, 3))), np.zeros((3, 3)))


def _blocks_sem(x, n_blocks):
    """Independent block standard error: the mean of each of n_blocks equal pieces."""
    pieces = np.array_split(np.asarray(x)[: len(x) // n_blocks * n_blocks], n_blocks)
    means = np.array([p.mean(0) for p in pieces])
    return means.std(0, ddof=1) / np.sqrt(n_blocks)


def test_finite_field_columns_and_their_errors():
    """Paired route: ε column = ⟨P_E − P_0⟩/(ε0 E) with the block error of the difference;
    independent route: (⟨P_E⟩ − ⟨P_0⟩)/(ε0 E) with the two block errors in quadrature. Both
    against direct formulas, on series with a known response and noise (a zero or shrunken
    error bar, a flipped sign or linearly added errors would all show)."""
    from ase_born.workflows.stats import independent_epsilon_column, paired_epsilon_column

    rng = np.random.default_rng(3)
    n, e = 400, 0.01
    p0 = rng.normal(scale=2e-3, size=(n, 3))
    response = np.array([3.0, -0.5, 0.2]) * EPSILON0 * e  # ε column (3, −0.5, 0.2)
    pf = p0 + response + rng.normal(scale=2e-4, size=(n, 3))
    v, err = paired_epsilon_column(pf, p0, e, 10)
    np.testing.assert_allclose(v, (pf - p0).mean(0) / (EPSILON0 * e), rtol=1e-12)
    np.testing.assert_allclose(err, _blocks_sem(pf - p0, 10) / (EPSILON0 * e), rtol=1e-12)
    np.testing.assert_allclose(v, [3.0, -0.5, 0.2], atol=5 * err.max())
    # white noise: the block error is the plain standard error (10 blocks: ±24 % scatter)
    plain = (pf - p0).std(0, ddof=1) / np.sqrt(n) / (EPSILON0 * e)
    assert np.all((err > 0.5 * plain) & (err < 2.0 * plain))
    p1 = rng.normal(scale=2e-3, size=(n, 3)) + response  # an independent run in the field
    v, err = independent_epsilon_column(p1, p0, e, 10)
    np.testing.assert_allclose(v, (p1.mean(0) - p0.mean(0)) / (EPSILON0 * e), rtol=1e-12)
    want = np.hypot(_blocks_sem(p1, 10), _blocks_sem(p0, 10)) / (EPSILON0 * e)
    np.testing.assert_allclose(err, want, rtol=1e-12)
    # the field's sign: −E gives the same ε from the reversed difference
    v_neg, _ = paired_epsilon_column(p0 - response, p0, -e, 10)
    np.testing.assert_allclose(v_neg, [3.0, -0.5, 0.2], rtol=1e-9)


def test_fluctuation_jackknife_error_when_it_dominates():
    """Blocks of unequal variance (a drifting amplitude, which Bartlett's stationary formula
    does not see): the reported error is the delete-one-block jackknife, checked against a
    direct implementation with ε = cov(d)/(⟨Ω⟩ ε0 k_B T); too short a series gives NaN."""
    from ase_born.physics import fluctuation_scale

    rng = np.random.default_rng(7)
    n, nb, temp = 2000, 10, 500.0
    amp = np.repeat(np.linspace(0.5, 3.0, nb), n // nb)[:, None]
    d = rng.normal(size=(n, 3)) @ L.T * amp
    vol = 1000.0 + 20.0 * rng.normal(size=n)
    value, err = fluctuation_epsilon(d, vol, temp, n_blocks=nb)

    def eps(k):
        return np.cov(d[k].T, ddof=0) / fluctuation_scale(vol[k].mean(), temp)

    np.testing.assert_allclose(value, eps(np.arange(n)), rtol=1e-10)
    blocks = np.arange(n).reshape(nb, -1)
    jk = np.array([eps(np.delete(blocks, b, axis=0).ravel()) for b in range(nb)])
    jack = np.sqrt((nb - 1) / nb * ((jk - jk.mean(0)) ** 2).sum(0))
    bartlett = covariance_error(d) / fluctuation_scale(vol.mean(), temp)
    assert np.all(np.diag(jack) > 1.5 * np.diag(bartlett))  # the jackknife is the larger here
    np.testing.assert_allclose(np.diag(err), np.diag(jack), rtol=1e-10)
    np.testing.assert_allclose(err, np.maximum(jack, bartlett), rtol=1e-10)
    assert np.isnan(fluctuation_epsilon(d[:15], vol[:15], temp, n_blocks=nb)[1]).all()


def test_integrated_time_of_ar1_series_and_the_variance_bias_it_predicts():
    """AR(1) x_t = φ x_{t-1} + noise: τ = (1 + φ)/(2(1 − φ)) samples (9.5 for φ = 0.9, 0.5 for
    white noise); the sample variance of N samples is low by ≈ 2τ/N on average."""
    from ase_born.workflows.stats import integrated_time

    rng = np.random.default_rng(3)
    for phi, rtol in ((0.0, 0.05), (0.9, 0.08)):
        x = lfilter([1.0], [1.0, -phi], rng.standard_normal((200_000, 2)), axis=0)
        assert abs(integrated_time(x) - (1 + phi) / (2 * (1 - phi))) <= rtol * (1 + phi) / (2 * (1 - phi))
    phi, n = 0.9, 200
    tau = (1 + phi) / (2 * (1 - phi))
    x = lfilter([1.0], [1.0, -phi], rng.standard_normal((4000, n + 500)), axis=1)[:, 500:]
    ratio = np.mean(np.var(x, axis=1)) / (1.0 / (1 - phi**2))  # stationary variance
    assert abs((1 - ratio) - 2 * tau / n) < 0.03  # 0.095 predicted
    assert np.isnan(integrated_time(np.ones(3))) and integrated_time(np.ones(10)) == 0.5
