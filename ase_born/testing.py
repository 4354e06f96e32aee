"""Reusable physics checks and stand-in models, shipped to users.

Checks (raise ``AssertionError`` with a message saying what broke)
------------------------------------------------------------------
:func:`assert_forces_match_fd`
    forces == −dE/dR by central differences (:func:`ase.calculators.fd.calculate_numerical_forces`).
:func:`assert_stress_matches_fd`
    stress == (1/Ω) dE/dε by central differences (:func:`ase.calculators.fd.calculate_numerical_stress`,
    which differentiates ``free_energy``).
:func:`assert_born_equivariant`
    a Born-charge model obeys ``Z*(R·x) = R Z*(x) Rᵀ`` for proper rotations R
    (and, optionally, its torch level agrees with its numpy level).
:func:`assert_born_translation_invariant`, :func:`assert_born_permutation_equivariant`
    Z* unchanged by a rigid translation; permuting atoms permutes Z*.

Stand-ins
---------
:class:`SpringsToSites`
    ASE calculator: every atom tied by an isotropic spring to its site of a
    reference structure (fractional, so the sites follow the cell).  Energy, forces,
    stress and the analytic force-constant matrix; a cheap, exactly known force field
    for examples and for checking dielectric formulas.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ase_born import physics

# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------


def _max_rel_err(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return err, scale


def assert_forces_match_fd(
    atoms: Atoms,
    *,
    eps: float = 1e-4,
    rtol: float = 1e-6,
    atol: float = 1e-10,
    indices: list[int] | None = None,
) -> float:
    """Check ``atoms.get_forces()`` against central differences of ``get_potential_energy``.

    Parameters
    ----------
    atoms : ase.Atoms
        With a calculator attached (left attached, positions restored).
    eps : float
        Displacement in Å.
    rtol, atol : float
        Pass when ``max|F − F_fd| <= rtol · max|F_fd| + atol`` (eV/Å).
    indices : list of int, optional
        Atoms to check (default all).

    Returns
    -------
    float
        The maximum absolute deviation in eV/Å.
    """
    from ase.calculators.fd import calculate_numerical_forces

    idx = list(range(len(atoms))) if indices is None else list(indices)
    f_num = calculate_numerical_forces(atoms, eps=eps, iatoms=idx)
    f = atoms.get_forces()[idx]
    err, scale = _max_rel_err(f, f_num)
    if not err <= rtol * scale + atol:
        k = int(np.unravel_index(np.argmax(np.abs(f - f_num)), f.shape)[0])
        raise AssertionError(
            f"forces differ from −dE/dR (finite differences, eps={eps} Å): max |ΔF| = {err:.3e} eV/Å "
            f"(allowed {rtol:.1e}·{scale:.3e} + {atol:.1e}); worst atom {idx[k]}: "
            f"analytic {f[k].tolist()}, numeric {f_num[k].tolist()}"
        )
    return err


def assert_stress_matches_fd(
    atoms: Atoms, *, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-10
) -> float:
    """Check ``atoms.get_stress()`` (Voigt, eV/Å³) against numerical strain derivatives.

    Uses :func:`ase.calculators.fd.calculate_numerical_stress`, which scales atoms
    with the cell and differentiates ``free_energy``.  Returns the max deviation.
    """
    from ase.calculators.fd import calculate_numerical_stress

    s_num = calculate_numerical_stress(atoms, eps=eps)
    s = atoms.get_stress()
    err, scale = _max_rel_err(s, s_num)
    if not err <= rtol * scale + atol:
        raise AssertionError(
            f"stress differs from the numerical strain derivative (eps={eps}): max |Δσ| = {err:.3e} eV/Å³ "
            f"(allowed {rtol:.1e}·{scale:.3e} + {atol:.1e}); analytic {s.tolist()}, numeric {s_num.tolist()}"
        )
    return err


# ---------------------------------------------------------------------------
# Born-charge model checks
# ---------------------------------------------------------------------------


def random_rotation(seed: int | None = 0) -> np.ndarray:
    """A random proper rotation matrix, ``shape=(3, 3)``, ``det = +1``."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotate_atoms(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    """Copy of ``atoms`` with positions and cell rotated, ``x → R x`` (calculator dropped)."""
    out = atoms.copy()
    out.calc = None
    rot = np.asarray(rotation, dtype=float)
    out.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    out.positions = atoms.positions @ rot.T
    return out


def _check_torch_level(
    model: Any, atoms: Atoms, z: np.ndarray, rtol: float, atol: float, what: str
) -> None:
    if not getattr(model, "supports_torch", False):
        return
    import torch

    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    zt = model.get_born_charges_torch(atoms, pos, cell).detach().cpu().numpy()
    if not np.allclose(zt, z, rtol=rtol, atol=atol):
        raise AssertionError(
            f"{type(model).__name__}: torch level differs from numpy level ({what}) by "
            f"{np.max(np.abs(zt - z)):.3e} e"
        )


def assert_born_equivariant(
    model: Any,
    atoms: Atoms,
    rotation: np.ndarray | None = None,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    seed: int = 0,
    check_torch: bool = True,
) -> float:
    """Check ``Z*(R·x) = R Z*(x) Rᵀ`` for a Born-charge model.

    Parameters
    ----------
    model : BornChargeModel
        Anything with ``get_born_charges(atoms)``.
    atoms : ase.Atoms
        Test structure (a generic, low-symmetry one is best).
    rotation : array_like, shape=(3, 3), optional
        Proper rotation; default :func:`random_rotation` ``(seed)``.
    rtol, atol : float
        Tolerances (e) of :func:`numpy.allclose`.
    check_torch : bool
        Also require the torch level (if ``model.supports_torch``) to equal the
        numpy level on both structures.

    Returns
    -------
    float
        Max deviation in e.
    """
    rot = random_rotation(seed) if rotation is None else np.asarray(rotation, dtype=float)
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-10) or np.linalg.det(rot) < 0:
        raise ValueError("rotation must be a proper rotation matrix (R Rᵀ = 1, det R = +1)")
    z = np.asarray(model.get_born_charges(atoms), dtype=float)
    rotated = rotate_atoms(atoms, rot)
    z_rot = np.asarray(model.get_born_charges(rotated), dtype=float)
    expected = physics.rotate_born_charges(z, rot)
    err = float(np.max(np.abs(z_rot - expected)))
    if not np.allclose(z_rot, expected, rtol=rtol, atol=atol):
        k = int(np.argmax(np.abs(z_rot - expected).reshape(len(atoms), -1).max(1)))
        raise AssertionError(
            f"{type(model).__name__} is not rotation-equivariant: Z*(R·x) − R Z*(x) Rᵀ up to {err:.3e} e "
            f"(worst atom {k}); expected\n{expected[k]}\ngot\n{z_rot[k]}"
        )
    if check_torch:
        _check_torch_level(model, atoms, z, rtol, atol, "original structure")
        _check_torch_level(model, rotated, z_rot, rtol, atol, "rotated structure")
    return err


def assert_born_translation_invariant(
    model: Any,
    atoms: Atoms,
    shift: np.ndarray | None = None,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> float:
    """Check that a rigid translation leaves Z* unchanged; returns the max deviation (e)."""
    t = np.array([0.3127, -0.2211, 0.4719]) if shift is None else np.asarray(shift, dtype=float)
    z = np.asarray(model.get_born_charges(atoms), dtype=float)
    moved = atoms.copy()
    moved.calc = None
    moved.positions = atoms.positions + t
    z2 = np.asarray(model.get_born_charges(moved), dtype=float)
    err = float(np.max(np.abs(z2 - z)))
    if not np.allclose(z2, z, rtol=rtol, atol=atol):
        raise AssertionError(
            f"{type(model).__name__}: Z* changed by {err:.3e} e under a rigid translation {t}"
        )
    return err


def assert_born_permutation_equivariant(
    model: Any, atoms: Atoms, *, seed: int = 0, rtol: float = 1e-6, atol: float = 1e-8
) -> float:
    """Check that permuting the atoms permutes Z* the same way; returns the max deviation (e)."""
    perm = np.random.default_rng(seed).permutation(len(atoms))
    z = np.asarray(model.get_born_charges(atoms), dtype=float)
    permuted = atoms[perm]
    permuted.calc = None
    z2 = np.asarray(model.get_born_charges(permuted), dtype=float)
    err = float(np.max(np.abs(z2 - z[perm])))
    if not np.allclose(z2, z[perm], rtol=rtol, atol=atol):
        raise AssertionError(
            f"{type(model).__name__}: Z* is not permutation-equivariant (max dev {err:.3e} e)"
        )
    return err


# ---------------------------------------------------------------------------
# Stand-in force field
# ---------------------------------------------------------------------------


def spring_constants_per_atom(reference: Atoms, spring_constants: Any) -> np.ndarray:
    """κ per atom, ``shape=(n_atoms,)`` (eV/Å²), from a float, a per-atom array or a dict symbol -> κ."""
    if isinstance(spring_constants, dict):
        syms = reference.get_chemical_symbols()
        missing = sorted(set(syms) - set(spring_constants))
        if missing:
            raise ValueError(f"no spring constant for species {missing}")
        return np.array([spring_constants[s] for s in syms], dtype=float)
    return np.broadcast_to(np.asarray(spring_constants, dtype=float), (len(reference),)).copy()


class SpringsToSites(Calculator):
    """Isotropic springs tying each atom to its reference site (an Einstein crystal).

    ``E = ½ Σ_k κ_k |u_k|²`` with ``u_k = minimum-image(R_k − s0_k·h)`` and the sites
    ``s0`` kept in fractional coordinates (they follow the cell).  Forces
    ``−κ_k u_k``; stress ``(1/Ω) Σ_k κ_k u_k ⊗ u_k``; Γ-point force constants
    ``Φ = diag(κ_k) ⊗ 1₃`` (:meth:`force_constants`).  Not translation invariant: the
    plain inverse of Φ is the right ``Φ⁺`` for it.

    Parameters
    ----------
    reference : ase.Atoms
        Sites (needs a non-singular 3D cell).
    spring_constants : float, array_like shape=(n_atoms,), or dict symbol -> float
        κ in eV/Å².
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, reference: Atoms, spring_constants: Any = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if abs(np.linalg.det(reference.cell.array)) < 1e-10:
            raise ValueError("SpringsToSites needs a reference with a non-singular 3D cell")
        self.numbers = reference.numbers.copy()
        self.scaled = reference.get_scaled_positions(wrap=False)
        self.kappa = spring_constants_per_atom(reference, spring_constants)
        self.ncalls = 0

    def force_constants(self) -> np.ndarray:
        """Analytic Φ, ``shape=(3N, 3N)``, eV/Å², ordered ``(k, a)``."""
        return np.kron(np.diag(self.kappa), np.eye(3))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.ncalls += 1
        atoms = self.atoms
        if len(atoms) != len(self.numbers) or not np.array_equal(atoms.numbers, self.numbers):
            raise ValueError(
                "SpringsToSites: atoms do not match the reference (count or species order)"
            )
        u, _ = physics.minimum_image_displacements(
            atoms.positions, atoms.cell.array, self.scaled, atoms.pbc
        )
        k = self.kappa[:, None]
        e = 0.5 * float(np.sum(k * u * u))
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = -k * u
        vol = abs(float(np.linalg.det(atoms.cell.array)))
        sigma = np.einsum("k,ka,kb->ab", self.kappa, u, u) / vol
        self.results["stress"] = physics.stress_full_to_voigt(sigma)


__all__ = [
    "SpringsToSites",
    "assert_born_equivariant",
    "assert_born_permutation_equivariant",
    "assert_born_translation_invariant",
    "assert_forces_match_fd",
    "assert_stress_matches_fd",
    "random_rotation",
    "rotate_atoms",
]
