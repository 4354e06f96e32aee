"""Structures for the workflows: input loading, supercells, and a Glazer tilt builder.

Supercell axes (Pnma setting, REFERENCE.md)
-------------------------------------------
The 20-atom Pnma cell has ``a ≈ √2 a_p`` (x), ``b ≈ 2 a_p`` (y, the long axis, the axis of
the in-phase M3+ tilt) and ``c ≈ √2 a_p`` (z), with ``a_p ≈ 3.85 Å`` the pseudo-cubic
lattice parameter.  A repeat ``(n_a, n_b, n_c)`` multiplies them; the paper's 640- and
1280-atom cells are ``(4, 2, 4)`` and ``(4, 4, 4)``.  :data:`AXIS_NAMES` names the axes in
every output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

#: names of the supercell axes in the Pnma setting (used in output headers)
AXIS_NAMES = (
    "a (x; Pnma a = sqrt2 a_p)",
    "b (y; Pnma b = 2 a_p, long axis)",
    "c (z; Pnma c = sqrt2 a_p)",
)

#: supercells of the 20-atom Pnma cell used in the seed paper (atoms: 640, 1280)
PAPER_SUPERCELLS = {"640": (4, 2, 4), "1280": (4, 4, 4)}


def parse_supercell(spec: Any) -> tuple[int, int, int]:
    """Parse a supercell repeat: ``"2,1,2"``, ``"2x1x2"``, ``2`` (→ 2,2,2) or a 3-sequence.

    Raises
    ------
    ValueError
        Not three positive integers.
    """
    if isinstance(spec, str):
        parts = [
            p for p in spec.replace("x", ",").replace("X", ",").replace(" ", ",").split(",") if p
        ]
        try:
            vals = [int(p) for p in parts]
        except ValueError as exc:
            raise ValueError(
                f"supercell must be three positive integers like '2,1,2', got {spec!r}"
            ) from exc
    elif isinstance(spec, (int, np.integer)):
        vals = [int(spec)] * 3
    else:
        try:
            vals = [int(v) for v in spec]
            if any(float(v) != int(v) for v in spec):
                raise ValueError
        except (TypeError, ValueError) as exc:
            raise ValueError(f"supercell must be three positive integers, got {spec!r}") from exc
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or any(v < 1 for v in vals):
        raise ValueError(f"supercell must be three positive integers like '2,1,2', got {spec!r}")
    return (vals[0], vals[1], vals[2])


def load_structure(path: str | os.PathLike | None = None) -> Atoms:
    """The starting structure: a file readable by ASE, or (``None``) the 20-atom Pnma CaTiO3.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        ASE cannot read it, or it has no 3D periodic cell.
    """
    if path is None:
        from ase_born.dft.sampler import pnma_catio3

        return pnma_catio3()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"structure file not found: {p} (give a file ASE can read, e.g. CIF, POSCAR, extxyz)"
        )
    import ase.io

    try:
        atoms = ase.io.read(p)
    except Exception as exc:  # ASE raises many kinds of parse errors
        raise ValueError(f"could not read structure file {p} with ase.io.read: {exc}") from exc
    if isinstance(atoms, list):
        atoms = atoms[-1]
    if atoms.cell.rank < 3 or not np.all(atoms.pbc):
        raise ValueError(
            f"structure {p} must be 3D periodic with a full cell (pbc={atoms.pbc.tolist()})"
        )
    atoms.calc = None
    return atoms


def make_supercell(unit: Atoms, repeat: Sequence[int]) -> Atoms:
    """``unit.repeat(repeat)`` with ``info["supercell"]`` set (no calculator)."""
    rep = parse_supercell(repeat)
    atoms = unit.copy()
    atoms.calc = None
    sc = atoms.repeat(rep)
    sc.info["supercell"] = list(rep)
    return sc


def glazer_perovskite(
    tilts_deg: Sequence[float] = (0.0, 0.0, 0.0),
    phases: str = "000",
    repeat: Sequence[int] = (2, 2, 2),
    a: float = 3.85,
    symbols: tuple[str, str, str] = ("Ca", "Ti", "O"),
) -> Atoms:
    """ABO3 perovskite supercell with Glazer octahedral tilts (first order in the angles).

    Built on the pseudo-cubic lattice (axes = Cartesian axes): B at ``n a``, A at
    ``(n + ½) a``, O at ``n a + (a/2) e_j``.  The octahedron at B site ``n`` rotates about
    axis ``i`` by ``θ_i s_i(n)`` with ``s_i = (−1)^(n_j + n_k)`` for an in-phase (``+``, M3+)
    tilt and ``s_i = (−1)^(n_x + n_y + n_z)`` for an out-of-phase (``−``, R4+) tilt; the O at
    ``n a + (a/2) e_j`` moves by ``(a/2) Σ_i θ_i s_i(n) e_i × e_j`` (both octahedra that share
    it agree).

    Parameters
    ----------
    tilts_deg : 3 floats
        Tilt angles about x, y, z in degrees.
    phases : str of 3 characters from ``"0+-"``
        Per axis: no tilt, in-phase, out-of-phase; e.g. ``"-+-"`` is a−b+a− (Pnma),
        ``"00-"`` is a0a0c− (I4/mcm), ``"000"`` Pm-3m.
    repeat : 3 ints
        Pseudo-cubic repeats; each tilt needs even repeats along the axes it alternates on.
    a : float
        Pseudo-cubic lattice parameter in Å.
    symbols : (A, B, X)
        Species.

    Returns
    -------
    ase.Atoms
        ``5 n_x n_y n_z`` atoms ordered A, B, X.
    """
    rep = parse_supercell(repeat)
    if len(phases) != 3 or any(p not in "0+-" for p in phases):
        raise ValueError(f"phases must be 3 characters from '0+-', got {phases!r}")
    theta = np.radians(np.asarray(tilts_deg, dtype=float))
    if theta.shape != (3,):
        raise ValueError("tilts_deg must have 3 entries (about x, y, z)")
    for i, ph in enumerate(phases):
        if ph == "0" or theta[i] == 0:
            continue
        need = [0, 1, 2] if ph == "-" else [j for j in range(3) if j != i]
        odd = [j for j in need if rep[j] % 2]
        if odd:
            raise ValueError(
                f"tilt {ph} about axis {'xyz'[i]} needs even repeats along {['xyz'[j] for j in need]}, got {rep}"
            )
    eye = np.eye(3)
    a_s, b_s, x_s = symbols
    species: list[str] = []
    pos: list[np.ndarray] = []
    for n in np.ndindex(*rep):
        nv = np.array(n)
        origin = nv * a
        species.append(a_s)
        pos.append(origin + 0.5 * a)
        species.append(b_s)
        pos.append(origin.astype(float))
        for j in range(3):
            disp = np.zeros(3)
            for i, ph in enumerate(phases):
                if ph == "0":
                    continue
                if ph == "+":
                    s = (-1) ** int(sum(nv[m] for m in range(3) if m != i))
                else:
                    s = (-1) ** int(nv.sum())
                disp += theta[i] * s * np.cross(eye[i], eye[j]) * (a / 2)
            species.append(x_s)
            pos.append(origin + 0.5 * a * eye[j] + disp)
    atoms = Atoms(species, positions=pos, cell=np.diag(np.array(rep) * a), pbc=True)
    atoms.wrap()
    order = np.argsort([{a_s: 0, b_s: 1, x_s: 2}[s] for s in species], kind="stable")
    return atoms[order]


__all__ = [
    "AXIS_NAMES",
    "PAPER_SUPERCELLS",
    "glazer_perovskite",
    "load_structure",
    "make_supercell",
    "parse_supercell",
]
