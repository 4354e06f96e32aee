"""Exactly solvable stand-in models for the workflows: harmonic force field and Born models.

Nothing here is "the" physics of CaTiO3.  These models make the workflows testable and
runnable in seconds, with answers known in closed form:

:class:`HarmonicCrystal`
    ASE calculator ``E = ½ uᵀ Φ u + E_cell(h)``: springs to lattice sites with an arbitrary
    positive-definite 3N×3N force-constant matrix Φ (eV/Å²) plus an isotropic elastic energy
    of the cell, so that NpT has a stable volume.  ``u_k = minimum-image(R_k − s0_k·h)``
    with the sites ``s0`` in fractional coordinates (they follow the cell).  No acoustic
    modes: Φ is invertible, and with fixed Born charges the ionic dielectric tensor of a
    cell held at the reference cell is exactly (CONVENTIONS.md, "Dielectric tensor")::

        ε_ion = Zᵀ Φ⁻¹ Z / (Ω ε0),   Z[(k,a), b] = Z*[k, b, a]

    (:func:`exact_epsilon_ion`).  Under NpT at the reference cell the elastic energy does
    not couple to ``u``, so the same value holds to first order.
:class:`QuadraticBornModel`
    Position-dependent, differentiable Born charges ``Z*_k = Z0_k (1 + α |u_k|²)``, for
    energy-conservation tests of the calculator's conservative mode.
:func:`nominal_born_charges`
    Literature cubic-CaTiO3 Z* (Ca 2.58, Ti 7.08, O∥ −5.65, O⊥ −2.00; REFERENCE.md) put on
    any CaTiO3 structure, O∥ along that oxygen's Ti–O–Ti axis.
:func:`standin_catio3_models`
    Factories of a CaTiO3 stand-in (springs to the given sites + nominal Z*) used by the
    examples and by ``--force-field standin`` / ``--born-model standin`` on the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ase_born import physics
from ase_born.calculators.base import BornChargeModel
from ase_born.calculators.born import FixedBornCharges
from ase_born.conventions import EPSILON0
from ase_born.testing import spring_constants_per_atom

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: 1 eV/Å³ in GPa
EV_PER_A3_IN_GPA = 160.21766208

#: spring constants (eV/Å²) of the CaTiO3 stand-in, chosen so that ε_ion (≈ 118 with the
#: nominal Z* on the Pnma cell) is of the order of the measured ε of CaTiO3 (~170 at 300 K)
STANDIN_SPRINGS = {"Ca": 1.5, "Ti": 3.5, "O": 2.25}
#: elastic moduli (GPa) of the CaTiO3 stand-in (order of magnitude of CaTiO3)
STANDIN_BULK_MODULUS_GPA = 170.0
STANDIN_SHEAR_MODULUS_GPA = 100.0


class HarmonicCrystal(Calculator):
    """Harmonic crystal pinned to lattice sites: ``E = ½ uᵀ Φ u + E_cell``.

    Parameters
    ----------
    reference : ase.Atoms
        Sites (non-singular 3D cell).  The sites are kept in fractional coordinates.
    force_constants : array_like, shape=(3N, 3N), optional
        Symmetric positive-definite Φ in eV/Å², rows/columns ordered ``(k, a)``.
    spring_constants : float, array_like shape=(N,), or dict symbol -> float, optional
        Isotropic springs κ_k (eV/Å²): ``Φ = diag(κ) ⊗ 1₃``.  Exactly one of
        ``force_constants`` and ``spring_constants`` must be given.
    bulk_modulus_GPa, shear_modulus_GPa : float, optional
        Isotropic elastic energy of the cell, ``E_cell = Ω0 (½ λ (tr η)² + μ η:η)`` with the
        Green–Lagrange strain ``η = ½(F Fᵀ − 1)``, ``F = h0⁻¹ h`` (rows are lattice
        vectors), ``μ = G``, ``λ = B − 2G/3``.  Without them the cell has no stiffness
        (fine at fixed cell, unstable under NpT).

    Notes
    -----
    Stress (ASE sign, ``σ = (1/Ω) ∂E/∂ε`` with atoms and sites strained together)::

        σ = (1/Ω) sym Σ_k u_k ⊗ (Φu)_k + (Ω0/Ω) Fᵀ S F,   S = λ tr(η) 1 + 2μ η

    At equilibrium in a field the spring stress ``(1/Ω) Σ f_k ⊗ (Φ⁻¹f)_k`` is cancelled
    exactly by the field stress ``−(1/Ω) Σ f_k ⊗ u_k`` of the field calculator, so the cell
    does not respond to a field (no electrostriction): a barostat that misses the field
    stress would strain the cell.  Not translation invariant (the plain inverse of Φ is
    the right ``Φ⁺``).
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        reference: Atoms,
        force_constants: Any = None,
        spring_constants: Any = None,
        bulk_modulus_GPa: float | None = None,
        shear_modulus_GPa: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        cell = np.asarray(reference.cell.array, dtype=float)
        if reference.cell.rank < 3 or abs(np.linalg.det(cell)) < 1e-10:
            raise ValueError("HarmonicCrystal needs a reference with a non-singular 3D cell")
        n = len(reference)
        self.numbers = reference.numbers.copy()
        self.scaled = reference.get_scaled_positions(wrap=False)
        self.cell0 = cell.copy()
        self.volume0 = abs(float(np.linalg.det(cell)))
        if (force_constants is None) == (spring_constants is None):
            raise ValueError("give exactly one of force_constants and spring_constants")
        if spring_constants is not None:
            kappa = spring_constants_per_atom(reference, spring_constants)
            phi = np.kron(np.diag(kappa), np.eye(3))
        else:
            phi = physics.force_constants_to_matrix(force_constants).copy()
            if phi.shape != (3 * n, 3 * n):
                raise ValueError(
                    f"force_constants must have shape ({3 * n}, {3 * n}), got {phi.shape}"
                )
        if not np.allclose(phi, phi.T, rtol=0, atol=1e-10 * max(1.0, np.abs(phi).max())):
            raise ValueError("force_constants must be symmetric")
        lam = np.linalg.eigvalsh(phi)
        if lam.min() <= 0:
            raise ValueError(
                f"force_constants must be positive definite (smallest eigenvalue {lam.min():.4g} eV/Å²)"
            )
        self.phi = 0.5 * (phi + phi.T)
        if (bulk_modulus_GPa is None) != (shear_modulus_GPa is None):
            raise ValueError("give both bulk_modulus_GPa and shear_modulus_GPa, or neither")
        if bulk_modulus_GPa is not None:
            b = float(bulk_modulus_GPa) / EV_PER_A3_IN_GPA
            g = float(shear_modulus_GPa) / EV_PER_A3_IN_GPA
            if b <= 0 or g <= 0:
                raise ValueError("elastic moduli must be positive")
            self.mu = g
            self.lam = b - 2.0 * g / 3.0
        else:
            self.mu = self.lam = 0.0
        self.ncalls = 0

    def force_constants(self) -> np.ndarray:
        """Φ, ``shape=(3N, 3N)``, eV/Å², ordered ``(k, a)``."""
        return self.phi.copy()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.ncalls += 1
        atoms = self.atoms
        if len(atoms) != len(self.numbers) or not np.array_equal(atoms.numbers, self.numbers):
            raise ValueError(
                "HarmonicCrystal: atoms do not match the reference (count or species order)"
            )
        h = np.asarray(atoms.cell.array, dtype=float)
        u, _ = physics.minimum_image_displacements(atoms.positions, h, self.scaled, atoms.pbc)
        phiu = (self.phi @ u.reshape(-1)).reshape(-1, 3)
        e = 0.5 * float(np.sum(u * phiu))
        vol = abs(float(np.linalg.det(h)))
        sig = 0.5 * (u.T @ phiu + phiu.T @ u) / vol
        if self.mu > 0:
            f_def = np.linalg.solve(self.cell0, h)  # h = h0 F
            eta = 0.5 * (f_def @ f_def.T - np.eye(3))
            tr = float(np.trace(eta))
            e += self.volume0 * (0.5 * self.lam * tr**2 + self.mu * float(np.sum(eta * eta)))
            s_pk = self.lam * tr * np.eye(3) + 2.0 * self.mu * eta
            sig = sig + (self.volume0 / vol) * f_def.T @ s_pk @ f_def
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = -phiu
        self.results["stress"] = physics.stress_full_to_voigt(0.5 * (sig + sig.T))


def random_force_constants(
    n_atoms: int,
    rng: np.random.Generator | int | None = 0,
    *,
    site_springs: tuple[float, float] = (3.0, 9.0),
    coupling: float = 2.0,
) -> np.ndarray:
    """A random symmetric positive-definite Φ (3N×3N, eV/Å²) with couplings between atoms.

    ``Φ = diag(κ) ⊗ 1₃ + c G Gᵀ / (3N)`` with κ uniform in ``site_springs`` and ``G``
    standard normal: anisotropic, with off-diagonal blocks, and no zero modes.
    """
    rng = np.random.default_rng(rng)
    kappa = rng.uniform(*site_springs, size=n_atoms)
    g = rng.normal(size=(3 * n_atoms, 3 * n_atoms))
    phi = np.kron(np.diag(kappa), np.eye(3)) + coupling * g @ g.T / (3 * n_atoms)
    return 0.5 * (phi + phi.T)


def random_born_charges(
    n_atoms: int, rng: np.random.Generator | int | None = 0, scale: float = 2.0
) -> np.ndarray:
    """Random non-symmetric Z* (``shape=(n_atoms, 3, 3)``, e) obeying the acoustic sum rule."""
    rng = np.random.default_rng(rng)
    z = rng.normal(scale=scale, size=(n_atoms, 3, 3))
    z += np.eye(3) * rng.choice([-3.0, 3.0], size=n_atoms)[:, None, None]
    return physics.asr_project(z)


def exact_epsilon_ion(force_constants: Any, born_charges: Any, volume: float) -> np.ndarray:
    """``Zᵀ Φ⁻¹ Z / (Ω ε0)`` with the plain inverse (no translations projected), ``shape=(3, 3)``."""
    phi = physics.force_constants_to_matrix(force_constants)
    z = np.asarray(born_charges, dtype=float)
    zmat = z.transpose(0, 2, 1).reshape(-1, 3)
    return zmat.T @ np.linalg.solve(phi, zmat) / (float(volume) * EPSILON0)


class QuadraticBornModel(BornChargeModel):
    """Position-dependent Z*: ``Z*_k = Z0_k (1 + α |u_k|²)``, numpy and torch levels.

    ``u_k`` is the minimum-image displacement from the model's own sites (fractional, they
    follow the cell).  Smooth and differentiable, so ``BornFieldCalculator(mode=
    "conservative")`` has a nonzero ``(∂Z*/∂R)·u`` term; a stand-in for conservation tests.

    Parameters
    ----------
    born_charges : array_like, shape=(N, 3, 3)
        ``Z0`` in e (``Z*[k, b, a]``).
    reference : ase.Atoms
        Sites (non-singular 3D cell).
    alpha : float
        Strength in 1/Å².
    """

    supports_torch = True

    def __init__(self, born_charges: Any, reference: Atoms, alpha: float = 2.0) -> None:
        self.z0 = np.asarray(born_charges, dtype=float)
        if self.z0.shape != (len(reference), 3, 3):
            raise ValueError(
                f"born_charges must have shape ({len(reference)}, 3, 3), got {self.z0.shape}"
            )
        self.scaled = reference.get_scaled_positions(wrap=False)
        self.alpha = float(alpha)

    def get_born_charges(self, atoms: Atoms) -> np.ndarray:
        u, _ = physics.minimum_image_displacements(
            atoms.positions, atoms.cell.array, self.scaled, atoms.pbc
        )
        return self.z0 * (1.0 + self.alpha * np.sum(u * u, axis=1))[:, None, None]

    def get_born_charges_torch(self, atoms: Atoms, positions: torch.Tensor, cell: torch.Tensor):
        import torch

        _, shifts = physics.minimum_image_displacements(
            atoms.positions, atoms.cell.array, self.scaled, atoms.pbc
        )
        u = physics.displacements_with_shifts(positions, cell, self.scaled, shifts)
        z0 = torch.as_tensor(self.z0, dtype=positions.dtype, device=positions.device)
        return z0 * (1.0 + self.alpha * (u * u).sum(-1))[:, None, None]

    def todict(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "alpha": self.alpha}


def nominal_born_charges(atoms: Atoms, values: dict[str, float] | None = None) -> np.ndarray:
    """Cubic-CaTiO3 literature Z* placed on any CaTiO3 structure, ``shape=(N, 3, 3)``, e.

    Ca and Ti isotropic; O ``O∥ n⊗n + O⊥ (1 − n⊗n)`` with ``n`` along the line through its
    two nearest Ti (minimum image).  The result is ASR-projected (the literature values sum
    to +0.01 e per formula unit).

    Parameters
    ----------
    atoms : ase.Atoms
        CaTiO3 structure with a 3D cell (any supercell, any tilt).
    values : dict, optional
        ``{"Ca": 2.58, "Ti": 7.08, "O_par": -5.65, "O_perp": -2.00}`` (REFERENCE.md).
    """
    v = {"Ca": 2.58, "Ti": 7.08, "O_par": -5.65, "O_perp": -2.00}
    if values:
        v.update(values)
    syms = np.array(atoms.get_chemical_symbols())
    unknown = sorted(set(syms) - {"Ca", "Ti", "O"})
    if unknown:
        raise ValueError(f"nominal_born_charges is for CaTiO3; found species {unknown}")
    z = np.zeros((len(atoms), 3, 3))
    z[syms == "Ca"] = v["Ca"] * np.eye(3)
    z[syms == "Ti"] = v["Ti"] * np.eye(3)
    ti = np.nonzero(syms == "Ti")[0]
    ox = np.nonzero(syms == "O")[0]
    if len(ti) == 0 and len(ox):
        raise ValueError("no Ti atoms to orient the O Born charges")
    cell = atoms.cell.array
    inv = np.linalg.inv(cell)
    images = (
        np.array(np.meshgrid(*[(-1, 0, 1) if p else (0,) for p in atoms.pbc], indexing="ij"))
        .reshape(3, -1)
        .T
    )
    for k in ox:
        d = (atoms.positions[ti] - atoms.positions[k]) @ inv
        d -= np.rint(d) * atoms.pbc
        vec = ((d[:, None, :] + images[None]) @ cell).reshape(-1, 3)  # all images (small cells)
        two = vec[np.argsort(np.linalg.norm(vec, axis=1))[:2]]
        axis = two[0] - two[1]
        axis /= np.linalg.norm(axis)
        z[k] = v["O_perp"] * np.eye(3) + (v["O_par"] - v["O_perp"]) * np.outer(axis, axis)
    return physics.asr_project(z)


def standin_force_field(reference: Atoms) -> HarmonicCrystal:
    """The CaTiO3 stand-in force field on ``reference``: springs + isotropic elasticity."""
    springs = {s: STANDIN_SPRINGS.get(s, 8.0) for s in set(reference.get_chemical_symbols())}
    return HarmonicCrystal(
        reference,
        spring_constants=springs,
        bulk_modulus_GPa=STANDIN_BULK_MODULUS_GPA,
        shear_modulus_GPa=STANDIN_SHEAR_MODULUS_GPA,
    )


class QuarticCrystal(Calculator):
    """The CaTiO3 stand-in force field (:func:`standin_force_field`) plus an on-site quartic
    term ``β Σ_k |u_k|⁴`` (β in eV/Å⁴; ``u_k`` from the reference site, minimum image, in the
    current cell): a stiffening, anharmonic crystal whose static P(E) bends over
    (``examples/05_pe_curve.py``).  The term has no curvature at ``u = 0``, so the 0 K
    harmonic tensor is the stand-in's.  Energy, forces and stress are exact derivatives.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, reference: Atoms, beta: float = 200.0) -> None:
        super().__init__()
        self.springs = standin_force_field(reference)
        self.scaled = reference.get_scaled_positions(wrap=False)
        self.beta = float(beta)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.springs
        u, _ = physics.minimum_image_displacements(a.positions, a.cell.array, self.scaled, a.pbc)
        r2 = np.sum(u * u, axis=1)
        e = a.get_potential_energy() + self.beta * float(np.sum(r2**2))
        f4 = -4.0 * self.beta * r2[:, None] * u
        # fractional sites follow a strain: dE/dε_ab = Σ_k ∂E/∂u_ka u_kb
        s4 = np.einsum("ka,kb->ab", -f4, u) / a.get_volume()
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": a.get_forces() + f4,
            "stress": a.get_stress() + physics.stress_full_to_voigt(0.5 * (s4 + s4.T)),
        }


def standin_born_model(reference: Atoms) -> FixedBornCharges:
    """Nominal CaTiO3 Z* on ``reference`` (maps onto its supercells by position matching)."""
    return FixedBornCharges(nominal_born_charges(reference), reference)


def standin_catio3_models(reference: Atoms) -> tuple[HarmonicCrystal, FixedBornCharges]:
    """``(force field, Born model)`` of the CaTiO3 stand-in tied to ``reference``'s sites."""
    return standin_force_field(reference), standin_born_model(reference)


__all__ = [
    "HarmonicCrystal",
    "QuadraticBornModel",
    "QuarticCrystal",
    "exact_epsilon_ion",
    "nominal_born_charges",
    "random_born_charges",
    "random_force_constants",
    "standin_born_model",
    "standin_catio3_models",
    "standin_force_field",
]
