"""Structures for the CaTiO3 DFPT dataset, with stable IDs and a fixed TEST split.

Kinds (``info["kind"]``)
------------------------
``cubic5``
    5-atom cubic CaTiO3 (a0 = 3.85 Å) with a random symmetric strain (each
    component uniform in ±2 %) and Gaussian displacements whose σ is drawn
    uniformly in 0.03–0.15 Å per structure.
``tilt10``
    10-atom cells with octahedral tilts, Glazer ``a0a0c+`` (in-phase about z,
    √2×√2×1 cell) or ``a-a-a-`` (out-of-phase about all axes, fcc-type 2-f.u.
    cell), tilt angle uniform in 3–12°, plus ±1 % strain and σ = 0.03–0.08 Å noise.
``pnma20``
    20-atom experimental Pnma cell with thermal displacements from an Einstein
    (independent harmonic oscillator) model at T uniform in 300–1800 K:
    σ_s² = k_B T / (m_s ω_s²) per Cartesian component, with ν = 4.5 (Ca), 6 (Ti),
    9 (O) THz, giving rms displacements of 0.09/0.06/0.07 Å at 300 K; plus ±1 %
    random strain.  MD snapshots with the project's MACE model can replace this
    sampling in later plans (new IDs; existing IDs never change).
``pnma_eq``
    The experimental Pnma structure itself (REFERENCE.md), ID ``pnma_eq``.

Stable IDs and split
--------------------
IDs are ``<kind>_<NNNN>`` with a per-kind counter; structure ``i`` of a kind is
generated from ``numpy.random.default_rng([seed, kind_code, i])`` so it never
depends on how many structures of other kinds exist.  The TEST split is a pure
function of the ID (:func:`is_test_id`: the first 8 hex digits of the ID's SHA-256 hex
digest, read as an integer, modulo 5 == 0, ~20 %), and ``pnma_eq`` is always TEST
whatever its hash: decided once, never used for model selection (CONVENTIONS.md).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.spacegroup import crystal

from ase_born.conventions import KB_EV_PER_K

A_CUBIC = 3.85  # Å, cubic CaTiO3 (PBEsol-like)
PNMA_CELL = (5.4423, 7.6401, 5.3796)  # Å, experimental (REFERENCE.md)
PNMA_WYCKOFF = {
    "Ca": (0.03442, 0.25, 0.99349),
    "Ti": (0.5, 0.0, 0.0),
    "O1": (0.48394, 0.25, 0.07113),
    "O2": (0.28887, 0.03716, 0.71056),
}
EINSTEIN_THZ = {"Ca": 4.5, "Ti": 6.0, "O": 9.0}
KINDS = ("cubic5", "tilt10", "pnma20")
_KIND_CODE = {"cubic5": 1, "tilt10": 2, "pnma20": 3}
# eV / (amu Å² THz²) factor: m ω² in eV/Å² = amu * (2π ν)^2 * AMU_THZ2
_AMU_A2_THZ2_IN_EV = 1.66053906660e-27 * 1e-20 * 1e24 / 1.602176634e-19


def pnma_catio3() -> Atoms:
    """The 20-atom experimental Pnma CaTiO3 cell (REFERENCE.md, spacegroup 62)."""
    w = PNMA_WYCKOFF
    atoms = crystal(
        ["Ca", "Ti", "O", "O"],
        basis=[w["Ca"], w["Ti"], w["O1"], w["O2"]],
        spacegroup=62,
        cellpar=[*PNMA_CELL, 90, 90, 90],
    )
    if len(atoms) != 20:
        raise RuntimeError(f"Pnma construction gave {len(atoms)} atoms, expected 20")
    return atoms


def cubic_catio3(a: float = A_CUBIC) -> Atoms:
    """5-atom cubic perovskite, Ca at the origin, Ti at the body centre."""
    return Atoms(
        "CaTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
        cell=np.eye(3) * a,
        pbc=True,
    )


def tilted_perovskite(pattern: str, angle_deg: float, a: float = A_CUBIC) -> Atoms:
    """10-atom CaTiO3 with rigid-octahedron tilts to first order in the angle.

    Each octahedron at Ti site ``n`` (integer vector) rotates about axis ``i`` by
    ``θ s_i(n)``; an O at ``Ti_n + (a/2) e_j`` moves by ``(a/2) Σ_i θ s_i(n) e_i × e_j``.
    In-phase (``+``) about ``i``: ``s_i(n) = (-1)^(n_j + n_k)``; out-of-phase (``-``):
    ``s_i(n) = (-1)^(n_x + n_y + n_z)``.  Both make the two octahedra sharing an O
    agree on its displacement.

    Parameters
    ----------
    pattern : {"a0a0c+", "a-a-a-"}
    angle_deg : float
        Tilt angle θ in degrees.
    """
    if pattern == "a0a0c+":
        lattice = np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 1]])  # right-handed (ABINIT requires det > 0)
        theta = np.array([0.0, 0.0, np.radians(angle_deg)])
        phases = ("0", "0", "+")
    elif pattern == "a-a-a-":
        lattice = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
        theta = np.full(3, np.radians(angle_deg))
        phases = ("-", "-", "-")
    else:
        raise ValueError(f"unknown tilt pattern {pattern!r}; use 'a0a0c+' or 'a-a-a-'")
    cell = lattice * a
    # Ti sites n inside the cell: the sublattice cosets of Z^3 / lattice (2 of them)
    n_sites = [np.zeros(3, int), np.array([1, 0, 0])]
    symbols, positions = [], []
    eye = np.eye(3)
    for n in n_sites:
        ti = n * a
        symbols += ["Ti", "Ca"]
        positions += [ti, ti + 0.5 * a * np.ones(3)]
        for j in range(3):
            disp = np.zeros(3)
            for i in range(3):
                if phases[i] == "0":
                    continue
                if phases[i] == "+":
                    s = (-1) ** int(sum(n[m] for m in range(3) if m != i))
                else:
                    s = (-1) ** int(n.sum())
                disp += theta[i] * s * np.cross(eye[i], eye[j]) * (a / 2)
            symbols.append("O")
            positions.append(ti + 0.5 * a * eye[j] + disp)
    atoms = Atoms(symbols, positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    order = np.argsort([{"Ca": 0, "Ti": 1, "O": 2}[s] for s in symbols], kind="stable")
    return atoms[order]


def apply_strain(atoms: Atoms, rng: np.random.Generator, max_strain: float) -> Atoms:
    """Return a copy with a random symmetric strain, components uniform in ±max_strain."""
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return out


def einstein_sigma(symbol: str, temperature_K: float) -> float:
    """Per-component rms displacement (Å) of an Einstein oscillator at ``temperature_K``."""
    m = atomic_masses[atomic_numbers[symbol]]
    k = m * (2 * np.pi * EINSTEIN_THZ[symbol]) ** 2 * _AMU_A2_THZ2_IN_EV  # eV/Å²
    return float(np.sqrt(KB_EV_PER_K * temperature_K / k))


def is_test_id(structure_id: str) -> bool:
    """Fixed TEST split: a pure function of the structure ID: ``int(sha256(id).hexdigest()[:8], 16)
    % 5 == 0`` (≈20 %), and ``pnma_eq`` always.  Never change it: IDs and splits stay stable."""
    if structure_id == "pnma_eq":
        return True
    return int(hashlib.sha256(structure_id.encode()).hexdigest()[:8], 16) % 5 == 0


def _tag(atoms: Atoms, sid: str, kind: str, desc: str) -> Atoms:
    atoms.info.update(structure_id=sid, kind=kind, split="test" if is_test_id(sid) else "train", sampling=desc)
    return atoms


def make_structure(kind: str, index: int, seed: int = 2026) -> Atoms:
    """Structure ``index`` of ``kind`` (deterministic; see module docstring)."""
    if kind not in _KIND_CODE:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    rng = np.random.default_rng([seed, _KIND_CODE[kind], index])
    sid = f"{kind}_{index:04d}"
    if kind == "cubic5":
        sigma = rng.uniform(0.03, 0.15)
        atoms = apply_strain(cubic_catio3(), rng, 0.02)
        atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
        return _tag(atoms, sid, kind, f"strain<=2%, sigma={sigma:.3f} A")
    if kind == "tilt10":
        pattern = ("a0a0c+", "a-a-a-")[index % 2]
        angle = rng.uniform(3.0, 12.0)
        sigma = rng.uniform(0.03, 0.08)
        atoms = apply_strain(tilted_perovskite(pattern, angle), rng, 0.01)
        atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
        return _tag(atoms, sid, kind, f"{pattern} {angle:.2f} deg, strain<=1%, sigma={sigma:.3f} A")
    temperature = rng.uniform(300.0, 1800.0)
    atoms = apply_strain(pnma_catio3(), rng, 0.01)
    sig = np.array([einstein_sigma(s, temperature) for s in atoms.get_chemical_symbols()])
    atoms.positions += rng.normal(size=atoms.positions.shape) * sig[:, None]
    atoms.info["temperature_K"] = temperature
    return _tag(atoms, sid, kind, f"Einstein thermal T={temperature:.0f} K, strain<=1%")


def plan_order(n_cubic: int = 90, n_tilt: int = 48, n_pnma: int = 11) -> Iterator[tuple[str, int]]:
    """Interleaved order so that every kind is represented early.

    ``pnma_eq`` comes third; after it, cycles of 4 cubic5 + 2 tilt10, with one
    pnma20 every second cycle, until the per-kind counts are reached.
    """
    counters = dict.fromkeys(KINDS, 0)
    limits = {"cubic5": n_cubic, "tilt10": n_tilt, "pnma20": n_pnma}
    yield ("cubic5", 0)
    yield ("tilt10", 0)
    yield ("pnma_eq", 0)
    counters["cubic5"] = counters["tilt10"] = 1
    for cycle in itertools.count():
        pattern = ["cubic5", "tilt10", "cubic5", "tilt10", "cubic5", "cubic5"]
        if cycle % 2 == 0:
            pattern.insert(3, "pnma20")
        progressed = False
        for kind in pattern:
            if counters[kind] < limits[kind]:
                yield (kind, counters[kind])
                counters[kind] += 1
                progressed = True
        if not progressed:
            return


def make_plan(n_cubic: int = 90, n_tilt: int = 48, n_pnma: int = 11, seed: int = 2026) -> list[Atoms]:
    """The full plan (default 150 structures: 90 + 48 + 11 + ``pnma_eq``)."""
    plan = []
    for kind, i in plan_order(n_cubic, n_tilt, n_pnma):
        if kind == "pnma_eq":
            plan.append(_tag(pnma_catio3(), "pnma_eq", "pnma_eq", "experimental Pnma (REFERENCE.md)"))
        else:
            plan.append(make_structure(kind, i, seed))
    return plan
