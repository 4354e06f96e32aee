"""Pure, vectorised field-MD physics: forces, energy, stress, polarization, ASR, ε.

Every function here is free of state and side effects.  The conventions are those of
:mod:`ase_born.conventions` (ASE units, field in V/Å, polarization in e/Å², Born
charges in e with ``Z*[k, b, a]``: ``b`` = field/polarization direction, ``a`` =
displacement/force direction)::

    f_{k,a}  = Σ_b E_b Z*_{k,b a}                    field force          (eV/Å)
    d_b      = Σ_{k,a} Z*_{k,b a} u_{k,a}            ionic dipole         (e·Å)
    E_field  = − E·d                                 field energy         (eV)
    P_b      = d_b / Ω                               ionic polarization   (e/Å²)
    σ_field  = − (1/Ω) Σ_k sym(f_k ⊗ u_k)            field stress, Z* fixed (eV/Å³)

Framework-agnostic functions (marked "numpy or torch") accept either NumPy arrays or
torch tensors and return the same kind, so the calculator's conservative mode can
differentiate them with autograd; everything else is NumPy.  Nothing here changes a
global (no default dtype or device is set): torch results follow the dtype and device
of their inputs.

Function index
--------------
Field terms
    :func:`field_forces`, :func:`ionic_dipole`, :func:`ionic_polarization`,
    :func:`field_energy`, :func:`field_stress`, :func:`electronic_polarization`
Displacements
    :func:`minimum_image_displacements`, :func:`displacements_with_shifts`
Acoustic sum rule
    :func:`acoustic_sum`, :func:`asr_project`, :func:`asr_violation`,
    :func:`asr_violation_mae`
Tensors
    :func:`rotate_born_charges`, :func:`stress_full_to_voigt`
Dielectric tensor (ionic part; total ε = ε∞ + ε_ion)
    :func:`epsilon_ion_finite_field`, :func:`epsilon_ion_finite_field_error`,
    :func:`epsilon_ion_fluctuation`, :func:`epsilon_ion_fluctuation_npt`,
    :func:`harmonic_dielectric_from_fc`, :func:`force_constants_to_matrix`,
    :func:`block_average`
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ase_born.conventions import (
    BORN_DIPOLE_EINSUM,
    BORN_FORCE_EINSUM,
    EPSILON0,
    KB_EV_PER_K,
)

ArrayLike = Any  # numpy.ndarray | torch.Tensor | array_like

# ---------------------------------------------------------------------------
# numpy/torch dispatch (torch is never imported here unless the caller already did)
# ---------------------------------------------------------------------------


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _like(x: Any, ref: Any) -> Any:
    """Return ``x`` as the array type of ``ref`` (torch tensor with ref's dtype/device)."""
    if _is_torch(ref):
        import torch

        if _is_torch(x):
            return x.to(dtype=ref.dtype, device=ref.device)
        return torch.as_tensor(np.asarray(x, dtype=float), dtype=ref.dtype, device=ref.device)
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _einsum(subscripts: str, *operands: Any) -> Any:
    if any(_is_torch(o) for o in operands):
        import torch

        ref = next(o for o in operands if _is_torch(o))
        return torch.einsum(subscripts, *[_like(o, ref) for o in operands])
    return np.einsum(subscripts, *[np.asarray(o, dtype=float) for o in operands])


# ---------------------------------------------------------------------------
# Field terms
# ---------------------------------------------------------------------------


def field_forces(born_charges: ArrayLike, field: ArrayLike) -> ArrayLike:
    """Field force on every ion, ``f_{k,a} = Σ_b E_b Z*_{k,b a}`` (numpy or torch).

    Parameters
    ----------
    born_charges : array, shape=(n_atoms, 3, 3)
        Born effective charges in e, ``Z*[k, b, a]`` (b = field, a = displacement).
    field : array, shape=(3,)
        Electric field in V/Å.

    Returns
    -------
    array, shape=(n_atoms, 3)
        Forces in eV/Å (e · V/Å = eV/Å), i.e. ``Z*_kᵀ E`` for every atom.
    """
    return _einsum(BORN_FORCE_EINSUM, field, born_charges)


def ionic_dipole(born_charges: ArrayLike, displacements: ArrayLike) -> ArrayLike:
    """Ionic dipole ``d_b = Σ_{k,a} Z*_{k,b a} u_{k,a}`` (numpy or torch).

    Parameters
    ----------
    born_charges : array, shape=(n_atoms, 3, 3)
        ``Z*[k, b, a]`` in e.
    displacements : array, shape=(n_atoms, 3)
        Displacements ``u`` from the reference structure in Å.

    Returns
    -------
    array, shape=(3,)
        Dipole in e·Å.
    """
    return _einsum(BORN_DIPOLE_EINSUM, born_charges, displacements)


def ionic_polarization(
    born_charges: ArrayLike, displacements: ArrayLike, volume: float
) -> ArrayLike:
    """Ionic polarization ``P_b = (1/Ω) Σ_{k,a} Z*_{k,b a} u_{k,a}`` (numpy or torch).

    Parameters
    ----------
    born_charges : array, shape=(n_atoms, 3, 3)
        ``Z*[k, b, a]`` in e.
    displacements : array, shape=(n_atoms, 3)
        Displacements from the reference in Å.
    volume : float
        Cell volume Ω in Å³ (must be > 0).

    Returns
    -------
    array, shape=(3,)
        Polarization in e/Å² (multiply by
        :data:`~ase_born.conventions.C_PER_M2_PER_E_PER_A2` for C/m²).
    """
    _check_volume(volume)
    return ionic_dipole(born_charges, displacements) / volume


def field_energy(field: ArrayLike, dipole: ArrayLike) -> ArrayLike:
    """Field energy ``−E·d`` in eV (numpy or torch; scalar).

    Parameters
    ----------
    field : array, shape=(3,)
        Field in V/Å.
    dipole : array, shape=(3,)
        Ionic dipole in e·Å (see :func:`ionic_dipole`).
    """
    return -_einsum("b,b->", field, dipole)


def field_stress(
    forces_field: ArrayLike, displacements: ArrayLike, volume: float, voigt: bool = True
) -> ArrayLike:
    """Field stress with Z* held fixed, ``σ = −(1/Ω) Σ_k sym(f_k ⊗ u_k)`` (numpy or torch).

    This is ``(1/Ω) ∂E_field/∂ε`` for a homogeneous strain ε that moves the atoms
    and the fractional reference together (``u → (1 + ε) u``) at fixed ``f_k = Z*_kᵀE``.

    Parameters
    ----------
    forces_field : array, shape=(n_atoms, 3)
        Field forces ``f_k`` in eV/Å (:func:`field_forces`).
    displacements : array, shape=(n_atoms, 3)
        ``u_k`` in Å.
    volume : float
        Ω in Å³.
    voigt : bool
        Return ASE's Voigt order ``(xx, yy, zz, yz, xz, xy)``, ``shape=(6,)``;
        otherwise the full symmetric ``shape=(3, 3)`` tensor.

    Returns
    -------
    array, shape=(6,) or (3, 3)
        Stress in eV/Å³ with ASE's sign convention (``σ = (1/Ω) ∂E/∂ε``).
    """
    _check_volume(volume)
    fu = _einsum("ka,kc->ac", forces_field, displacements)
    sigma = -0.5 * (fu + fu.T) / volume
    return stress_full_to_voigt(sigma) if voigt else sigma


def electronic_polarization(field: ArrayLike, epsilon_inf: ArrayLike) -> np.ndarray:
    """Clamped-ion electronic polarization ``ε0 (ε∞ − 1) E`` in e/Å².

    Parameters
    ----------
    field : array, shape=(3,)
        Field in V/Å.
    epsilon_inf : array, shape=(3, 3)
        High-frequency (electronic) dielectric tensor, dimensionless.

    Returns
    -------
    numpy.ndarray, shape=(3,)
        Polarization in e/Å².
    """
    eps = np.asarray(epsilon_inf, dtype=float)
    if eps.shape != (3, 3):
        raise ValueError(f"epsilon_inf must have shape (3, 3), got {eps.shape}")
    return EPSILON0 * (eps - np.eye(3)) @ np.asarray(field, dtype=float)


def stress_full_to_voigt(sigma: ArrayLike) -> ArrayLike:
    """Full 3x3 stress to ASE Voigt order ``(xx, yy, zz, yz, xz, xy)`` (numpy or torch)."""
    idx = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])
    return sigma[idx]


def _check_volume(volume: Any) -> None:
    v = float(volume)
    if not np.isfinite(v) or v <= 0.0:
        raise ValueError(
            f"cell volume must be positive and finite to define a polarization, got {v!r} Å³ "
            "(atoms without a 3D cell only have a dipole)"
        )


# ---------------------------------------------------------------------------
# Displacements from a fractional reference (minimum image, any triclinic cell)
# ---------------------------------------------------------------------------


def minimum_image_displacements(
    positions: np.ndarray,
    cell: np.ndarray,
    reference_scaled: np.ndarray,
    pbc: Any = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Displacements ``u_k = minimum-image(R_k − s0_k·h)`` in the current cell.

    The reference is given in FRACTIONAL coordinates so that it follows the cell
    under NpT; the minimum image is taken along periodic directions with
    :func:`ase.geometry.find_mic` (exact for any triclinic cell).

    Parameters
    ----------
    positions : numpy.ndarray, shape=(n_atoms, 3)
        Current Cartesian positions in Å.
    cell : numpy.ndarray, shape=(3, 3)
        Current cell, rows are lattice vectors, Å (must be non-singular).
    reference_scaled : numpy.ndarray, shape=(n_atoms, 3)
        Fractional coordinates ``s0`` of the reference structure.
    pbc : bool or array_like of 3 bool
        Periodic directions; no image is taken along the others.

    Returns
    -------
    u : numpy.ndarray, shape=(n_atoms, 3)
        Displacements in Å.
    shifts : numpy.ndarray, shape=(n_atoms, 3), dtype=int64
        Integer lattice shifts ``n_k`` with ``u_k = R_k − s0_k·h + n_k·h``; pass them to
        :func:`displacements_with_shifts` to rebuild ``u`` differentiably.
    """
    from ase.geometry import find_mic

    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    s0 = np.asarray(reference_scaled, dtype=float)
    if positions.shape != s0.shape:
        raise ValueError(f"positions {positions.shape} and reference {s0.shape} differ in shape")
    raw = positions - s0 @ cell
    pbc_arr = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if not pbc_arr.any() or len(raw) == 0:
        return raw, np.zeros(raw.shape, dtype=np.int64)
    u, _ = find_mic(raw, cell, pbc_arr)
    shifts = np.rint(np.linalg.solve(cell.T, (u - raw).T).T).astype(np.int64)
    # rebuild from integer shifts so u is exactly (raw + n h), no rounding drift
    return raw + shifts @ cell, shifts


def displacements_with_shifts(
    positions: ArrayLike, cell: ArrayLike, reference_scaled: ArrayLike, shifts: ArrayLike
) -> ArrayLike:
    """``u_k = R_k − s0_k·h + n_k·h`` with given integer shifts (numpy or torch).

    Differentiable with respect to ``positions`` and ``cell`` when they are torch
    tensors (the shifts are piecewise constant, so fixing them is exact).

    Parameters
    ----------
    positions : array, shape=(n_atoms, 3)
        Å.
    cell : array, shape=(3, 3)
        Rows are lattice vectors, Å.
    reference_scaled : array, shape=(n_atoms, 3)
        Fractional reference ``s0``.
    shifts : array, shape=(n_atoms, 3)
        Integer shifts from :func:`minimum_image_displacements`.
    """
    s0 = _like(reference_scaled, positions)
    n = _like(shifts, positions)
    cell = _like(cell, positions) if _is_torch(positions) else np.asarray(cell, dtype=float)
    return positions + (n - s0) @ cell


# ---------------------------------------------------------------------------
# Acoustic sum rule
# ---------------------------------------------------------------------------


def acoustic_sum(born_charges: ArrayLike) -> ArrayLike:
    """``Σ_k Z*_k`` (numpy or torch), shape=(3, 3) in e; zero when the ASR holds."""
    return born_charges.sum(-3)


def asr_project(born_charges: ArrayLike) -> ArrayLike:
    """Enforce the acoustic sum rule by subtracting the mean over atoms (numpy or torch).

    ``Z*_k ← Z*_k − (1/N) Σ_j Z*_j`` (the seed's "subsequent correction"); the result
    sums to zero over atoms to rounding.

    Parameters
    ----------
    born_charges : array, shape=(n_atoms, 3, 3)
        Raw Z* in e.

    Returns
    -------
    array, shape=(n_atoms, 3, 3)
    """
    if _is_torch(born_charges):
        return born_charges - born_charges.mean(dim=-3, keepdim=True)
    z = np.asarray(born_charges, dtype=float)
    return z - z.mean(-3, keepdims=True)


def asr_violation(born_charges: ArrayLike) -> float:
    """Per-structure ASR violation ``(1/9) Σ_{b,a} |Σ_k Z*_{k,b a}|`` in e.

    Summed over structures and divided by their number this is the seed SI's
    "ASR violation MAE" (see :func:`asr_violation_mae`).
    """
    z = _like(born_charges, np.zeros(0))
    if z.ndim != 3 or z.shape[1:] != (3, 3):
        raise ValueError(f"born_charges must have shape (n_atoms, 3, 3), got {z.shape}")
    return float(np.abs(z.sum(0)).mean())


def asr_violation_mae(born_charges_list: list[ArrayLike]) -> float:
    """ASR violation MAE over structures, ``(1/(9 N_s)) Σ_s Σ_{b,a} |Σ_{k∈s} Z*_{k,b a}|``.

    Parameters
    ----------
    born_charges_list : sequence of arrays, each shape=(n_atoms_s, 3, 3)
        Raw (uncorrected) Z* of each structure, in e.
    """
    if len(born_charges_list) == 0:
        raise ValueError("asr_violation_mae needs at least one structure")
    return float(np.mean([asr_violation(z) for z in born_charges_list]))


# ---------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------


def rotate_born_charges(born_charges: ArrayLike, rotation: ArrayLike) -> ArrayLike:
    """Rotate Born charges as rank-2 Cartesian tensors, ``Z'_k = R Z*_k Rᵀ`` (numpy or torch).

    Both indices (field and displacement) are Cartesian vectors, so positions
    ``x → R x`` and fields ``E → R E`` give forces ``F → R F`` and ``P → R P``.
    """
    return _einsum("bc,kcd,ad->kba", rotation, born_charges, rotation)


# ---------------------------------------------------------------------------
# Dielectric tensor (ionic part) — formulas of CONVENTIONS.md "Dielectric tensor"
# ---------------------------------------------------------------------------


def epsilon_ion_finite_field(
    mean_polarization_field: ArrayLike,
    mean_polarization_zero: ArrayLike,
    field_V_per_A: float,
) -> np.ndarray:
    """Finite-field ionic dielectric tensor ``ε_ion[b, c] = (⟨P_b⟩_{E ê_c} − ⟨P_b⟩_0)/(ε0 E)``.

    One run per field direction ``c`` (field ``E ê_c``), as in the seed (E = 0.005 V/Å).

    Parameters
    ----------
    mean_polarization_field : array, shape=(3, 3)
        Row ``c`` = mean polarization vector ``⟨P⟩`` (e/Å²) of the run with the
        field along Cartesian axis ``c``.
    mean_polarization_zero : array, shape=(3,)
        Mean polarization of the zero-field run (e/Å²).
    field_V_per_A : float
        Field magnitude E in V/Å (nonzero; a negative value means the field
        was along ``−ê_c``).

    Returns
    -------
    numpy.ndarray, shape=(3, 3)
        ``ε_ion[b, c]``, dimensionless.  If the polarizations include the
        electronic term ``ε0(ε∞ − 1)E`` (``BornFieldCalculator(epsilon_inf=...)``)
        this returns ``ε_ion + ε∞ − 1`` instead.
    """
    pf = np.asarray(mean_polarization_field, dtype=float)
    p0 = np.asarray(mean_polarization_zero, dtype=float)
    if pf.shape != (3, 3) or p0.shape != (3,):
        raise ValueError(
            f"expected mean_polarization_field (3, 3) [run c, component b] and "
            f"mean_polarization_zero (3,), got {pf.shape} and {p0.shape}"
        )
    e = float(field_V_per_A)
    if e == 0.0 or not np.isfinite(e):
        raise ValueError(f"field_V_per_A must be finite and nonzero, got {field_V_per_A!r}")
    return (pf - p0[None, :]).T / (EPSILON0 * e)


def epsilon_ion_finite_field_error(
    polarization_field_err: ArrayLike, polarization_zero_err: ArrayLike, field_V_per_A: float
) -> np.ndarray:
    """Standard error of :func:`epsilon_ion_finite_field` from independent runs.

    Parameters
    ----------
    polarization_field_err : array, shape=(3, 3)
        Standard errors of ``⟨P⟩`` (e/Å²), row ``c`` = field run along ``c``
        (e.g. from :func:`block_average`).
    polarization_zero_err : array, shape=(3,)
        Standard error of the zero-field ``⟨P⟩``.
    field_V_per_A : float
        Field magnitude in V/Å.

    Returns
    -------
    numpy.ndarray, shape=(3, 3)
        ``δε[b, c] = sqrt(δP_f[c,b]² + δP_0[b]²) / (ε0 |E|)``.
    """
    ef = np.asarray(polarization_field_err, dtype=float)
    e0 = np.asarray(polarization_zero_err, dtype=float)
    return np.sqrt(ef**2 + e0[None, :] ** 2).T / (EPSILON0 * abs(float(field_V_per_A)))


def fluctuation_scale(volume: float, temperature_K: float) -> float:
    """Normalisation ``Ω ε0 k_B T`` (e²·Å²) of the zero-field fluctuation formulas.

    ``ε_ion = Ω ⟨δP δP⟩ / (ε0 k_B T) = ⟨δd δd⟩ / (Ω ε0 k_B T)``; for NpT pass ``⟨Ω⟩``.
    Errors of the dipole covariance (e²Å²) become errors of ε by dividing by this value.

    Parameters
    ----------
    volume : float
        Cell volume (or its mean) in Å³.
    temperature_K : float
        Temperature in K.
    """
    _check_volume(volume)
    _check_temperature(temperature_K)
    return float(volume) * EPSILON0 * KB_EV_PER_K * float(temperature_K)


def epsilon_ion_fluctuation(
    polarizations: ArrayLike, volume: float, temperature_K: float
) -> np.ndarray:
    """Zero-field fluctuation formula (NVT), ``ε_ion[b, c] = Ω ⟨δP_b δP_c⟩ / (ε0 k_B T)``.

    Parameters
    ----------
    polarizations : array, shape=(n_samples, 3)
        Polarization time series in e/Å² (decorrelated or not; the mean is
        unbiased either way, but error bars need :func:`block_average`).
    volume : float
        Cell volume Ω in Å³.
    temperature_K : float
        Temperature in K.

    Returns
    -------
    numpy.ndarray, shape=(3, 3)
        Dimensionless; covariance normalised by ``n_samples`` (ddof = 0).
    """
    p = np.asarray(polarizations, dtype=float)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 2:
        raise ValueError(f"polarizations must have shape (n_samples >= 2, 3), got {p.shape}")
    scale = fluctuation_scale(volume, temperature_K)
    dp = p - p.mean(0)
    cov = dp.T @ dp / len(p)
    return float(volume) ** 2 * cov / scale  # ⟨δd δd⟩ = Ω² ⟨δP δP⟩


def epsilon_ion_fluctuation_npt(
    dipoles: ArrayLike, volumes: ArrayLike, temperature_K: float
) -> np.ndarray:
    """Zero-field fluctuation formula under NpT, ``ε_ion = ⟨δd_b δd_c⟩ / (⟨Ω⟩ ε0 k_B T)``.

    Parameters
    ----------
    dipoles : array, shape=(n_samples, 3)
        Dipole time series ``d = Ω P`` in e·Å.
    volumes : array, shape=(n_samples,)
        Cell volumes in Å³.
    temperature_K : float
        Temperature in K.

    Returns
    -------
    numpy.ndarray, shape=(3, 3)
        Dimensionless; covariance normalised by ``n_samples`` (ddof = 0).
    """
    d = np.asarray(dipoles, dtype=float)
    v = np.asarray(volumes, dtype=float)
    if d.ndim != 2 or d.shape[1] != 3 or len(d) < 2:
        raise ValueError(f"dipoles must have shape (n_samples >= 2, 3), got {d.shape}")
    if v.shape != (len(d),):
        raise ValueError(f"volumes must have shape ({len(d)},), got {v.shape}")
    scale = fluctuation_scale(v.mean(), temperature_K)
    dd = d - d.mean(0)
    cov = dd.T @ dd / len(d)
    return cov / scale


def _check_temperature(temperature_K: float) -> None:
    t = float(temperature_K)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature_K must be positive, got {temperature_K!r}")


def block_average(samples: ArrayLike, n_blocks: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean and block-averaged standard error along axis 0.

    The series is cut into ``n_blocks`` contiguous blocks (the tail that does not
    fill a block is dropped); the error is ``std(block means, ddof=1)/sqrt(n_blocks)``.

    Parameters
    ----------
    samples : array, shape=(n_samples, ...)
        Time series.
    n_blocks : int
        Number of blocks (>= 2, <= n_samples).

    Returns
    -------
    mean : numpy.ndarray, shape=samples.shape[1:]
        Mean over all samples.
    sem : numpy.ndarray, shape=samples.shape[1:]
        Standard error of the mean from the block means.
    """
    x = np.asarray(samples, dtype=float)
    if n_blocks < 2 or len(x) < n_blocks:
        raise ValueError(
            f"need 2 <= n_blocks <= n_samples, got n_blocks={n_blocks}, n_samples={len(x)}"
        )
    size = len(x) // n_blocks
    blocks = x[: size * n_blocks].reshape(n_blocks, size, *x.shape[1:]).mean(1)
    return x.mean(0), blocks.std(0, ddof=1) / np.sqrt(n_blocks)


def force_constants_to_matrix(force_constants: ArrayLike) -> np.ndarray:
    """Return force constants as a ``(3N, 3N)`` matrix with rows/cols ordered ``(k, a)``.

    Parameters
    ----------
    force_constants : array, shape=(3N, 3N) or (N, N, 3, 3)
        eV/Å².  The 4-index form is phonopy's full format
        ``Φ[i, j, α, β] = ∂²V/∂r_α(i)∂r_β(j)``.
    """
    fc = np.asarray(force_constants, dtype=float)
    if fc.ndim == 4 and fc.shape[0] == fc.shape[1] and fc.shape[2:] == (3, 3):
        n = fc.shape[0]
        return fc.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    if fc.ndim == 2 and fc.shape[0] == fc.shape[1] and fc.shape[0] % 3 == 0:
        return fc
    raise ValueError(
        f"force constants must have shape (3N, 3N) or (N, N, 3, 3) (phonopy full format), "
        f"got {fc.shape}"
    )


def harmonic_dielectric_from_fc(
    force_constants: ArrayLike,
    born_charges: ArrayLike,
    volume: float,
    *,
    project_translations: bool | None = None,
    rtol: float = 1e-8,
) -> np.ndarray:
    """Harmonic (0 K) ionic dielectric tensor ``ε_ion = (1/(Ω ε0)) Zᵀ Φ⁺ Z``.

    ``Z`` is the ``3N×3`` stack ``Z[(k,a), b] = Z*[k, b, a]`` and ``Φ`` the Γ-point
    force-constant matrix of the same cell (at a relaxed structure, computed with the
    same force field).  ``Φ⁺``: when ``Φ`` has the three uniform translations as zero
    modes (any translation-invariant force field), they are projected out and ``Φ`` is
    inverted on the orthogonal complement; for a model without translational
    invariance (springs to lattice sites) it is the plain inverse.  ``Φ`` is
    symmetrised first.

    Parameters
    ----------
    force_constants : array, shape=(3N, 3N) or (N, N, 3, 3)
        Φ in eV/Å² (see :func:`force_constants_to_matrix`).
    born_charges : array, shape=(N, 3, 3)
        ``Z*[k, b, a]`` in e.  (With the translations projected out, the part of Z*
        violating the acoustic sum rule does not contribute.)
    volume : float
        Cell volume Ω in Å³.
    project_translations : bool or None
        ``True``/``False`` force the choice; ``None`` (default) projects when
        ``‖Φ T‖ ≤ 1e-6 ‖Φ‖`` for the uniform translations ``T``.
    rtol : float
        Eigenvalues with ``|λ| ≤ rtol · max|λ|`` count as zero modes.

    Returns
    -------
    numpy.ndarray, shape=(3, 3)
        ``ε_ion[b, c]``, dimensionless.

    Raises
    ------
    ValueError
        If an eigenvalue of (projected) Φ is negative (the structure is not a
        minimum, e.g. cubic CaTiO3) or zero beyond the translations; the message
        names the mode (index, eigenvalue in eV/Å², dominant atom and direction).
    """
    phi = force_constants_to_matrix(force_constants)
    phi = 0.5 * (phi + phi.T)
    z = np.asarray(born_charges, dtype=float)
    n = phi.shape[0] // 3
    if z.shape != (n, 3, 3):
        raise ValueError(f"born_charges must have shape ({n}, 3, 3) to match Φ, got {z.shape}")
    _check_volume(volume)
    zmat = z.transpose(0, 2, 1).reshape(3 * n, 3)  # Z[(k,a), b] = Z*[k, b, a]

    trans = np.zeros((3 * n, 3))
    for c in range(3):
        trans[c::3, c] = 1.0 / np.sqrt(n)
    scale = float(np.abs(phi).max()) if phi.size else 0.0
    if project_translations is None:
        project_translations = bool(
            np.linalg.norm(phi @ trans) <= 1e-6 * max(scale, 1e-300) * np.sqrt(3 * n)
        )

    if project_translations:
        # orthonormal basis of the complement of the translations
        q_full, _ = np.linalg.qr(np.hstack([trans, np.eye(3 * n)]))
        basis = q_full[:, 3 : 3 * n]
    else:
        basis = np.eye(3 * n)
    phi_r = basis.T @ phi @ basis
    lam, vec = np.linalg.eigh(phi_r)
    lam_scale = max(float(np.abs(lam).max()) if lam.size else 0.0, 1e-300)
    modes = basis @ vec  # Cartesian eigenvectors, shape (3N, n_modes)
    for i, val in enumerate(lam):
        if val < -rtol * lam_scale or abs(val) <= rtol * lam_scale:
            kind = "negative" if val < 0 else "zero"
            mode = modes[:, i]
            j = int(np.argmax(np.abs(mode)))
            raise ValueError(
                f"force-constant matrix has a {kind} eigenvalue {val:.6g} eV/Å² "
                f"(mode {i} in ascending order{' after projecting out translations' if project_translations else ''}; "
                f"largest component on atom {j // 3} along {'xyz'[j % 3]}): "
                + (
                    "the structure is not a minimum (unstable mode); relax it or pick a stable phase"
                    if val < 0
                    else "Φ is singular beyond the uniform translations"
                )
            )
    phi_pinv = (modes / lam) @ modes.T
    return zmat.T @ phi_pinv @ zmat / (float(volume) * EPSILON0)


__all__ = [
    "acoustic_sum",
    "asr_project",
    "asr_violation",
    "asr_violation_mae",
    "block_average",
    "displacements_with_shifts",
    "electronic_polarization",
    "epsilon_ion_finite_field",
    "epsilon_ion_finite_field_error",
    "epsilon_ion_fluctuation",
    "epsilon_ion_fluctuation_npt",
    "field_energy",
    "field_forces",
    "field_stress",
    "fluctuation_scale",
    "force_constants_to_matrix",
    "harmonic_dielectric_from_fc",
    "ionic_dipole",
    "ionic_polarization",
    "minimum_image_displacements",
    "rotate_born_charges",
    "stress_full_to_voigt",
]
