"""Statistics of MD time series: block averages and jackknife errors of the ε estimators.

All formulas are those of CONVENTIONS.md ("Dielectric tensor"), evaluated by
:mod:`ase_born.physics`; this module adds error bars.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ase_born import physics
from ase_born.conventions import EPSILON0


def block_mean(samples: Any, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and block standard error (see :func:`ase_born.physics.block_average`)."""
    return physics.block_average(samples, n_blocks=n_blocks)


def fluctuation_epsilon(
    dipoles: Any, volumes: Any, temperature_K: float, n_blocks: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """NpT fluctuation estimate ``⟨δd_b δd_c⟩/(⟨Ω⟩ ε0 k_B T)`` and its jackknife error.

    Parameters
    ----------
    dipoles : array, shape=(n_samples, 3)
        Ionic dipole ``d = Ω P`` in e·Å (zero-field run).
    volumes : array, shape=(n_samples,)
        Å³.
    temperature_K : float
        Thermostat temperature.
    n_blocks : int
        Contiguous blocks for the delete-one-block jackknife.

    Returns
    -------
    value, error : numpy.ndarray, shape=(3, 3)
        Dimensionless.  The error is the larger of the jackknife standard error over blocks
        (time correlations longer than a sample but shorter than a block) and Bartlett's
        formula (:func:`covariance_error`, no blocks; volume fluctuations neglected).
    """
    d = np.asarray(dipoles, dtype=float)
    v = np.asarray(volumes, dtype=float)
    value = physics.epsilon_ion_fluctuation_npt(d, v, temperature_K)
    n = len(d)
    if n_blocks < 2 or n < 2 * n_blocks:
        return value, np.full((3, 3), np.nan)
    size = n // n_blocks
    idx = np.arange(size * n_blocks).reshape(n_blocks, size)
    jk = []
    for b in range(n_blocks):
        keep = np.delete(idx, b, axis=0).reshape(-1)
        jk.append(physics.epsilon_ion_fluctuation_npt(d[keep], v[keep], temperature_K))
    jk = np.array(jk)
    err = np.sqrt((n_blocks - 1) / n_blocks * np.sum((jk - jk.mean(0)) ** 2, axis=0))
    # blocks shorter than the dipole's correlation time make the jackknife too small (slow
    # polar modes; measured: z-scores with standard deviation 1.6 instead of 1 on a harmonic
    # stand-in, 10 blocks of 0.3 ps). Bartlett's formula does not depend on blocks: the
    # larger of the two is reported.
    err = np.maximum(err, covariance_error(d) / physics.fluctuation_scale(np.mean(v), temperature_K))
    return value, err


def covariance_error(samples: Any, c: float = 5.0) -> np.ndarray:
    """Standard error of the sample covariance matrix of a correlated, stationary series.

    Bartlett's formula for (approximately) Gaussian series,
    ``Var(Ĉ_bc) ≈ (1/N) Σ_{|k|≤W} [γ_bb(k) γ_cc(k) + γ_bc(k) γ_cb(k)]``, with the
    autocovariances ``γ_bc(k) = ⟨δx_b(t) δx_c(t+k)⟩`` and Sokal's automatic window: the
    smallest ``W ≥ c·τ(W)``, ``τ(W) = 1/2 + Σ_{k=1..W} ρ(k)²``, with ``ρ`` the mean normalised
    autocorrelation of the diagonal components (the squared correlation governs the error
    of second moments).

    Parameters
    ----------
    samples : array, shape=(n_samples, n_components)
        The time series, equally spaced.
    c : float
        Window factor (Sokal: 4-10).

    Returns
    -------
    numpy.ndarray, shape=(n_components, n_components)
        Same units as the covariance; NaN with fewer than 4 samples.
    """
    x = np.asarray(samples, dtype=float)
    n, m = x.shape
    if n < 4:
        return np.full((m, m), np.nan)
    x = x - x.mean(axis=0)
    nfft = 1 << (2 * n - 1).bit_length()
    fx = np.fft.rfft(x, n=nfft, axis=0)
    # g[k, b, c] = (1/N) Σ_t x_b(t) x_c(t+k), k = 0..N-1 (biased estimator, positive definite)
    g = np.fft.irfft(np.conj(fx)[:, :, None] * fx[:, None, :], n=nfft, axis=0)[:n] / n
    rho = _mean_autocorrelation(np.einsum("kbb->kb", g))
    if rho is None:  # constant series: the covariance is zero
        return np.zeros((m, m))
    _, window = _sokal_window(rho**2, c)
    gk = g[: window + 1]
    terms = np.einsum("kbb,kcc->kbc", gk, gk) + np.einsum("kbc,kcb->kbc", gk, gk)
    # lags -k mirror +k: γ_bb(-k)γ_cc(-k) = γ_bb(k)γ_cc(k), γ_bc(-k)γ_cb(-k) = γ_cb(k)γ_bc(k)
    var = (terms[0] + 2.0 * terms[1:].sum(axis=0)) / n
    return np.sqrt(np.clip(var, 0.0, None))


def integrated_time(samples: Any, c: float = 5.0) -> float:
    """Integrated autocorrelation time ``τ = 1/2 + Σ_{k≥1} ρ(k)`` of a series, in samples.

    ``ρ`` is the mean normalised autocorrelation of the components that move, summed with
    Sokal's automatic window (smallest ``W ≥ c·τ(W)``), as in :func:`covariance_error`.
    A series of ``N`` samples holds about ``N/(2τ)`` independent ones, and its sample
    covariance is biased low by a relative ``≈ 2τ/N`` (the mean is estimated from the same
    samples).  NaN with fewer than 4 samples; 0.5 for a constant series.

    Parameters
    ----------
    samples : array, shape=(n_samples,) or (n_samples, n_components)
    c : float
        Window factor (Sokal: 4-10).
    """
    x = np.asarray(samples, dtype=float)
    x = x.reshape(len(x), -1)
    n = len(x)
    if n < 4:
        return float("nan")
    x = x - x.mean(axis=0)
    nfft = 1 << (2 * n - 1).bit_length()
    # the autocovariances γ_bb(k) alone (covariance_error needs every γ_bc)
    g = np.fft.irfft(np.abs(np.fft.rfft(x, n=nfft, axis=0)) ** 2, n=nfft, axis=0)[:n] / n
    rho = _mean_autocorrelation(g)
    if rho is None:
        return 0.5
    tau, _ = _sokal_window(rho, c)
    return float(tau)


def _mean_autocorrelation(autocov: np.ndarray) -> np.ndarray | None:
    """``ρ(k)``, the mean over components of ``γ_bb(k)/γ_bb(0)`` for an ``(n_lags, n_components)``
    array of autocovariances; components that never move (up to rounding) carry no
    correlation information and are left out; None when none moves."""
    live = autocov[0] > 1e-20 * max(float(autocov[0].max()), np.finfo(float).tiny)
    if not live.any():
        return None
    return np.mean(autocov[:, live] / autocov[0, live], axis=1)


def _sokal_window(terms: np.ndarray, c: float) -> tuple[float, int]:
    """``(τ, W)``: ``τ(W) = 1/2 + Σ_{k=1..W} terms[k]`` at Sokal's window, the smallest
    ``W ≥ c·τ(W)`` (the last lag when none is)."""
    tau, window = 0.5, len(terms) - 1
    for k in range(1, len(terms)):
        tau += terms[k]
        if k >= c * tau:
            window = k
            break
    return tau, window


def paired_epsilon_column(
    p_field: Any, p_zero: Any, field_V_per_A: float, n_blocks: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One column of the finite-field ε from runs with the same noise (correlated sampling).

    ``ε[:, c] = ⟨P_E(t) − P_0(t)⟩ / (ε0 E)``; the error is the block standard error of the
    paired difference series, which is far smaller than that of two independent means when
    both runs share the initial state and the random numbers.

    Parameters
    ----------
    p_field, p_zero : array, shape=(n_samples, 3)
        Polarization (e/Å²) of the field run and of the zero-field run at the same steps.
    field_V_per_A : float
        Signed field component along the column's axis (V/Å).

    Returns
    -------
    value, error : numpy.ndarray, shape=(3,)
    """
    pf = np.asarray(p_field, dtype=float)
    p0 = np.asarray(p_zero, dtype=float)
    if pf.shape != p0.shape:
        raise ValueError(f"paired series must have the same shape, got {pf.shape} and {p0.shape}")
    mean, sem = physics.block_average(pf - p0, n_blocks=n_blocks)
    e = float(field_V_per_A)
    return mean / (EPSILON0 * e), sem / (EPSILON0 * abs(e))


def independent_epsilon_column(
    p_field: Any, p_zero: Any, field_V_per_A: float, n_blocks: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One column of the finite-field ε from independent runs: ``(⟨P⟩_E − ⟨P⟩_0)/(ε0 E)``."""
    mf, ef = physics.block_average(np.asarray(p_field, dtype=float), n_blocks=n_blocks)
    m0, e0 = physics.block_average(np.asarray(p_zero, dtype=float), n_blocks=n_blocks)
    e = float(field_V_per_A)
    return (mf - m0) / (EPSILON0 * e), np.sqrt(ef**2 + e0**2) / (EPSILON0 * abs(e))


__all__ = [
    "block_mean",
    "fluctuation_epsilon",
    "independent_epsilon_column",
    "paired_epsilon_column",
]
