"""0 K harmonic dielectric tensor and structure relaxation.

:func:`harmonic_dielectric` is the interface other modules call::

    from ase_born.workflows import harmonic_dielectric
    eps_ion = harmonic_dielectric(atoms, born_charges)   # atoms.calc = any ASE force field

It computes the Γ-point force-constant matrix Φ of ``atoms``' cell (3N×3N, eV/Å²) by finite
displacements with the same force field, and evaluates CONVENTIONS.md's formula::

    ε_ion = (1/(Ω ε0)) Zᵀ Φ⁺ Z,    Z[(k,a), b] = Z*[k, b, a]

through :func:`ase_born.physics.harmonic_dielectric_from_fc`.  The forces on the atoms of a
periodic cell include all periodic images of a displaced atom, so Φ of a cell *is* its
Γ-point force-constant matrix.  Φ⁺ projects out the three uniform translations when the force
field is translation invariant (checked by translating the structure rigidly) and is the plain
inverse otherwise (springs to lattice sites).  A structure that is not a minimum raises
``ValueError`` naming the unstable mode (eigenvalue, imaginary frequency, dominant atoms).

Finite displacements: ``method="central"`` displaces every Cartesian coordinate by ±δ (6N force
calls); ``method="phonopy"`` lets phonopy pick the symmetry-independent displacements
(``Phonopy(..., supercell_matrix=1)``, ±δ) and rebuild Φ from them — far fewer force calls for
symmetric structures (e.g. 20 instead of 120 for the 20-atom Pnma cell), but only valid when the
force field has the crystal's symmetry; ``"auto"`` uses phonopy for translation-invariant force
fields (physical ones) and central differences otherwise.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from ase import Atoms

from ase_born import physics

#: ν [THz] = THZ_PER_SQRT_EV_A2_AMU * sqrt(λ [eV/(Å² amu)])
THZ_PER_SQRT_EV_A2_AMU = float(
    np.sqrt(1.602176634e-19 / 1.66053906660e-27) / 1e-10 / (2 * np.pi) / 1e12
)


def _force_field_of(atoms: Atoms, calculator: Any) -> Any:
    calc = calculator if calculator is not None else atoms.calc
    if calc is None:
        raise ValueError("no calculator: attach a force field to atoms or pass calculator=")
    # a field calculator: use its zero-field force field (Z*ᵀE is a constant shift of the forces)
    inner = getattr(calc, "force_field", None)
    if inner is not None and hasattr(calc, "born_model"):
        calc = inner
    return calc


def _forces(atoms: Atoms, calc: Any) -> np.ndarray:
    a = atoms.copy()
    a.calc = calc
    return np.asarray(a.get_forces(), dtype=float)


def is_translation_invariant(
    atoms: Atoms, calculator: Any = None, *, shift_A: float = 0.0173, atol: float = 1e-4
) -> bool:
    """True when a rigid translation of the structure leaves the forces unchanged (eV/Å, ``atol``)."""
    calc = _force_field_of(atoms, calculator)
    f0 = _forces(atoms, calc)
    moved = atoms.copy()
    moved.positions += shift_A * np.array([1.0, 1.37, 0.61])
    f1 = _forces(moved, calc)
    return bool(np.max(np.abs(f1 - f0)) <= atol)


def force_constants_gamma(
    atoms: Atoms,
    calculator: Any = None,
    *,
    delta: float = 0.01,
    method: str = "auto",
    symprec: float = 1e-5,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Γ-point force constants of ``atoms``' cell by finite displacements.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure (its cell is the periodic cell of the force constants).
    calculator : ASE calculator, optional
        Default ``atoms.calc`` (for a field calculator, its force field).
    delta : float
        Displacement in Å.
    method : {"auto", "central", "phonopy"}
        See module docstring.
    symprec : float
        phonopy's symmetry tolerance (Å).
    progress : bool
        tqdm progress bar over force calls.

    Returns
    -------
    phi : numpy.ndarray, shape=(3N, 3N)
        eV/Å², rows/columns ordered ``(k, a)``, symmetrised.
    info : dict
        ``method``, ``n_force_calls``, ``translation_invariant``.
    """
    from tqdm.auto import tqdm

    calc = _force_field_of(atoms, calculator)
    if method not in ("auto", "central", "phonopy"):
        raise ValueError(f"method must be 'auto', 'central' or 'phonopy', got {method!r}")
    if delta <= 0:
        raise ValueError(f"delta must be positive (Å), got {delta}")
    invariant = is_translation_invariant(atoms, calc)
    use = method
    if method == "auto":
        use = "phonopy" if invariant else "central"
    n = len(atoms)
    base = atoms.copy()
    base.calc = None
    if use == "central":
        phi = np.zeros((3 * n, 3 * n))
        it = tqdm(range(3 * n), desc="force constants", disable=not progress, leave=False)
        for i in it:
            k, a = divmod(i, 3)
            fp = base.copy()
            fp.positions[k, a] += delta
            fm = base.copy()
            fm.positions[k, a] -= delta
            phi[i] = -(_forces(fp, calc) - _forces(fm, calc)).reshape(-1) / (2 * delta)
        calls = 6 * n
    else:
        from phonopy import Phonopy
        from phonopy.structure.atoms import PhonopyAtoms

        unit = PhonopyAtoms(
            symbols=base.get_chemical_symbols(),
            cell=np.asarray(base.cell.array, dtype=float),
            scaled_positions=base.get_scaled_positions(wrap=False),
        )
        ph = Phonopy(
            unit, supercell_matrix=np.eye(3, dtype=int), primitive_matrix="P", symprec=symprec
        )
        ph.generate_displacements(distance=delta, is_plusminus=True)
        cells = ph.supercells_with_displacements
        forces = []
        for sc in tqdm(cells, desc="force constants (phonopy)", disable=not progress, leave=False):
            a = Atoms(
                symbols=sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True
            )
            if not np.array_equal(a.numbers, base.numbers):
                raise RuntimeError(
                    "phonopy changed the atom order of the cell; use method='central'"
                )
            forces.append(_forces(a, calc))
        ph.forces = np.array(forces)
        ph.produce_force_constants()
        phi = physics.force_constants_to_matrix(ph.force_constants)
        calls = len(cells)
    phi = 0.5 * (phi + phi.T)
    return phi, {"method": use, "n_force_calls": int(calls), "translation_invariant": invariant}


def _unstable_modes_message(phi: np.ndarray, atoms: Atoms, project: bool) -> str:
    """Human-readable list of the unstable Γ modes (mass-weighted), or ''."""
    n = len(atoms)
    m = np.repeat(atoms.get_masses(), 3)
    dyn = phi / np.sqrt(np.outer(m, m))
    if project:
        t = np.zeros((3 * n, 3))
        for c in range(3):
            t[c::3, c] = np.sqrt(m[c::3])
        q, _ = np.linalg.qr(t)
        p = np.eye(3 * n) - q @ q.T
        dyn = p @ dyn @ p
    lam, vec = np.linalg.eigh(0.5 * (dyn + dyn.T))
    scale = max(float(np.abs(lam).max()), 1e-300)
    bad = [i for i, v in enumerate(lam) if v < -1e-6 * scale]
    if not bad:
        return ""
    syms = atoms.get_chemical_symbols()
    lines = []
    for i in bad[:5]:
        w = vec[:, i].reshape(n, 3)
        weight = np.sum(w * w, axis=1)
        by_species: dict[str, float] = {}
        for s, x in zip(syms, weight):
            by_species[s] = by_species.get(s, 0.0) + float(x)
        top = int(np.argmax(weight))
        comp = ", ".join(
            f"{s} {100 * v:.0f}%" for s, v in sorted(by_species.items(), key=lambda x: -x[1])
        )
        lines.append(
            f"  mode {i}: {THZ_PER_SQRT_EV_A2_AMU * np.sqrt(-lam[i]):.3f}i THz "
            f"(weight {comp}; largest on atom {top} {syms[top]})"
        )
    more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
    return f"unstable Γ modes (imaginary frequencies){more}:\n" + "\n".join(lines)


def harmonic_dielectric(
    atoms: Atoms,
    born_charges: Any,
    *,
    calculator: Any = None,
    delta: float = 0.01,
    method: str = "auto",
    project_translations: bool | None = None,
    max_residual_force: float = 0.05,
    return_details: bool = False,
    progress: bool = False,
) -> np.ndarray | dict[str, Any]:
    """0 K harmonic ionic dielectric tensor ``ε_ion = Zᵀ Φ⁺ Z / (Ω ε0)`` of ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
        A relaxed structure (3D cell) carrying an ASE force-field calculator (or pass
        ``calculator=``; a :class:`~ase_born.calculators.field.BornFieldCalculator` is
        replaced by its force field).
    born_charges : array_like, shape=(N, 3, 3), or a Born-charge model
        ``Z*[k, b, a]`` in e at this structure, used as given (apply the acoustic sum rule
        first if wanted; with the translations projected out it does not matter).  A model
        (anything with ``get_born_charges(atoms)``) is evaluated at ``atoms``.
    calculator : ASE calculator, optional
        Force field to use instead of ``atoms.calc``.
    delta : float
        Finite-displacement step in Å.
    method : {"auto", "central", "phonopy"}
        See :func:`force_constants_gamma`.
    project_translations : bool or None
        ``None``: project the three uniform translations out of Φ exactly when the force
        field is translation invariant; ``True``/``False`` force the choice.
    max_residual_force : float
        Warn (``UserWarning``) when the largest force on ``atoms`` exceeds this (eV/Å): the
        formula assumes a minimum.
    return_details : bool
        Return a dict instead of the tensor.
    progress : bool
        Progress bar over force calls.

    Returns
    -------
    numpy.ndarray, shape=(3, 3)
        ``ε_ion[b, c]`` (dimensionless); or, with ``return_details``, a dict with
        ``epsilon_ion``, ``force_constants`` (3N×3N, eV/Å²), ``frequencies_THz`` (Γ modes,
        negative = imaginary), ``max_residual_force`` (eV/Å), ``project_translations``,
        ``method``, ``n_force_calls``, ``volume`` (Å³).

    Raises
    ------
    ValueError
        Wrong shapes, no 3D cell, or Φ not positive definite on the non-translational
        subspace (the structure is not a minimum): the message names the unstable mode(s).
    """
    if atoms.cell.rank < 3:
        raise ValueError("harmonic_dielectric needs a structure with a 3D cell")
    calc = _force_field_of(atoms, calculator)
    if hasattr(born_charges, "get_born_charges"):
        z = np.asarray(born_charges.get_born_charges(atoms), dtype=float)
    else:
        z = np.asarray(born_charges, dtype=float)
    n = len(atoms)
    if z.shape != (n, 3, 3):
        raise ValueError(f"born_charges must have shape ({n}, 3, 3), got {z.shape}")
    f0 = _forces(atoms, calc)
    fmax = float(np.max(np.linalg.norm(f0, axis=1))) if n else 0.0
    if fmax > max_residual_force:
        warnings.warn(
            f"harmonic_dielectric: the structure is not relaxed (max force {fmax:.3g} eV/Å > "
            f"{max_residual_force} eV/Å); the harmonic formula assumes a minimum",
            stacklevel=2,
        )
    phi, info = force_constants_gamma(atoms, calc, delta=delta, method=method, progress=progress)
    project = (
        info["translation_invariant"]
        if project_translations is None
        else bool(project_translations)
    )
    volume = float(atoms.get_volume())
    try:
        eps = physics.harmonic_dielectric_from_fc(phi, z, volume, project_translations=project)
    except ValueError as exc:
        extra = _unstable_modes_message(phi, atoms, project)
        raise ValueError(f"{exc}\n{extra}" if extra else str(exc)) from exc
    if not return_details:
        return eps
    m = np.repeat(atoms.get_masses(), 3)
    lam = np.linalg.eigvalsh(phi / np.sqrt(np.outer(m, m)))
    freqs = np.sign(lam) * THZ_PER_SQRT_EV_A2_AMU * np.sqrt(np.abs(lam))
    return {
        "epsilon_ion": eps,
        "force_constants": phi,
        "frequencies_THz": freqs,
        "max_residual_force": fmax,
        "project_translations": project,
        "volume": volume,
        **info,
    }


def static_displacements(
    force_constants: Any, born_charges: Any, field_V_per_A: Any, *, project_translations: bool
) -> np.ndarray:
    """Harmonic static displacements in a field, ``u = Φ⁺ Z E`` (Å), ``shape=(N, 3)``.

    Parameters
    ----------
    force_constants : array, shape=(3N, 3N)
        Φ in eV/Å².
    born_charges : array, shape=(N, 3, 3)
        ``Z*[k, b, a]`` in e.
    field_V_per_A : array, shape=(3,)
        Field in V/Å.
    project_translations : bool
        Use the pseudo-inverse on the complement of the uniform translations (translation-
        invariant force fields), else the plain inverse.
    """
    phi = physics.force_constants_to_matrix(force_constants)
    z = np.asarray(born_charges, dtype=float)
    n = z.shape[0]
    f = physics.field_forces(z, np.asarray(field_V_per_A, dtype=float)).reshape(-1)
    if project_translations:
        t = np.zeros((3 * n, 3))
        for c in range(3):
            t[c::3, c] = 1.0 / np.sqrt(n)
        p = np.eye(3 * n) - t @ t.T
        u = p @ np.linalg.solve(p @ phi @ p + t @ t.T, p @ f)
    else:
        u = np.linalg.solve(phi, f)
    return u.reshape(n, 3)


def relax(
    atoms: Atoms,
    calculator: Any = None,
    *,
    fmax: float = 1e-3,
    steps: int = 500,
    relax_cell: bool = False,
    pressure_GPa: float = 0.0,
    logfile: str | None = None,
) -> dict[str, Any]:
    """Relax ``atoms`` in place (positions, optionally the cell) with BFGS.

    Uses only forces (and stress), so it also works in direct field mode where the forces
    are not exactly an energy gradient.  The cell is relaxed through
    :class:`ase.filters.FrechetCellFilter` at ``pressure_GPa``.

    Returns
    -------
    dict
        ``converged`` (bool), ``steps`` (int), ``fmax`` (final max force, eV/Å).
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if calculator is not None:
        atoms.calc = calculator
    if atoms.calc is None:
        raise ValueError("relax needs a calculator")
    target: Any = atoms
    if relax_cell:
        target = FrechetCellFilter(
            atoms, scalar_pressure=float(pressure_GPa) * 1e9 / 160.21766208e9
        )
    opt = BFGS(target, logfile=logfile)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    f = target.get_forces()
    return {
        "converged": converged,
        "steps": int(opt.nsteps),
        "fmax": float(np.max(np.linalg.norm(f, axis=1))) if len(f) else 0.0,
    }


__all__ = [
    "THZ_PER_SQRT_EV_A2_AMU",
    "force_constants_gamma",
    "harmonic_dielectric",
    "is_translation_invariant",
    "relax",
    "static_displacements",
]
