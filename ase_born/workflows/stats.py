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
        Dimensionless.  The error is the jackknife standard error over blocks, which
        accounts for time correlations longer than a sample but shorter than a block.
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
    return value, err


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
