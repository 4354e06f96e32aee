"""phonopy ``BORN`` files <-> frames.

Format (phonopy's reader ``phonopy.file_IO.get_born_parameters`` / writer
``phonopy.file_IO.get_BORN_lines``)
------------------------------------------------------------------------------------------
1. first line: optional numbers (unit-conversion ``factor``, then ``G_cutoff``, ``Lambda``)
   or a comment; phonopy writes ``# epsilon and Z* of atoms 1 3 ...`` (1-based indices of
   the symmetry-independent atoms);
2. ε∞: 9 numbers ``xx xy xz yx yy yz zx zy zz``;
3. one line of 9 numbers (row-major 3x3, same order) per **symmetry-independent** atom of
   the cell, in increasing atom order (``Symmetry.get_independent_atoms()``); no more lines.
   phonopy expands them to all atoms with ``borns[i] = R_cart^T Z R_cart`` (site-symmetry
   rotations, ``phonopy.file_IO._expand_borns``), which is why a structure is needed.

phonopy's index order and the conversion
----------------------------------------
The 9 numbers of an atom are ``Z[0,0] Z[0,1] ... Z[2,2]`` of phonopy's ``born[k]`` array
(``np.reshape(..., (3, 3))`` in ``get_born_parameters``), whose **first** index is the
electric-field direction: phonopy's non-analytical term contracts the wave vector q (the
direction of the longitudinal macroscopic field) with it (``DynamicalMatrixWang.
_get_charge_sum``: ``A = np.dot(q, born)``, giving ``(q·Z_k)_a`` per displacement
direction ``a``; ``phonopy/harmonic/dynamical_matrix.py``).  The phonopy VASP and QE
interfaces fill ``born[k]`` from the printed rows unchanged (VASP: rows = field; QE
``Ex``/``Ey``/``Ez`` rows = field, see :mod:`ase_born.io.vasp` and :mod:`ase_born.io.qe`).  Hence a BORN line is ``Z*[k, b, a]`` in row-major
order (b = field, a = displacement): the CONVENTIONS order, no transpose.
``tests/unit/test_io_phonopy_born.py`` verifies the contraction numerically with phonopy
on a non-symmetric Z*.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from ase_born.io import build_frame, calculator_results, load_structure, read_text

_HEADER_ATOMS_RE = re.compile(r"^\s*(?:\S+\s+)*?#\s*epsilon and Z\* of atoms\s+([\d\s]+)$")


def _phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.array(atoms.cell.array, dtype=float),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
    )


def independent_atoms(
    atoms: Atoms, *, symprec: float = 1e-5, is_symmetry: bool = True
) -> np.ndarray:
    """0-based indices of the symmetry-independent atoms, as phonopy orders BORN lines.

    Parameters
    ----------
    atoms : ase.Atoms
        The cell the BORN file refers to (phonopy's primitive cell).
    symprec : float
        Symmetry tolerance in Å (phonopy's ``symprec``).
    is_symmetry : bool
        ``False``: every atom is independent (phonopy's ``--nosym``).

    Returns
    -------
    numpy.ndarray, shape=(n_independent,), dtype=int
    """
    from phonopy.structure.symmetry import Symmetry

    _check_symprec(symprec)
    try:
        sym = Symmetry(_phonopy_atoms(atoms), symprec=symprec, is_symmetry=is_symmetry)
    except Exception as exc:
        if not _from_spglib(exc):
            raise
        raise ValueError(f"symmetry search failed at symprec={symprec} Å: {exc}") from exc
    return np.asarray(sym.get_independent_atoms(), dtype=int)


def _from_spglib(exc: BaseException) -> bool:
    """Whether ``exc`` is one of spglib's own errors (its symmetry search failed)."""
    return type(exc).__module__.split(".")[0] == "spglib"


def _check_symprec(symprec: float) -> None:
    """spglib crashes the interpreter on a negative tolerance and fails on zero."""
    if not (isinstance(symprec, (int, float)) and np.isfinite(symprec) and symprec > 0):
        raise ValueError(f"symprec must be a positive tolerance in Å, got {symprec!r}")


def _bad_number(text: str) -> tuple[int, str] | None:
    """``(line number, token)`` of the first token that is not a number on the lines phonopy
    reads as numbers (2 onwards; line 1 is a free comment/factor line), or ``None``."""
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        for tok in line.split():
            try:
                float(tok)
            except ValueError:
                return lineno, tok
    return None


def _parse_born_text(
    text: str, atoms: Atoms, symprec: float, is_symmetry: bool, source: str = "BORN text"
) -> tuple[np.ndarray, np.ndarray]:
    from phonopy.file_IO import parse_BORN_from_strings

    _check_symprec(symprec)
    try:
        nac = parse_BORN_from_strings(
            text, _phonopy_atoms(atoms), symprec=symprec, is_symmetry=is_symmetry
        )
    except ValueError as exc:  # float() of a token that is not a number
        bad = _bad_number(text)
        where = f"{source}:{bad[0]}: {bad[1]!r} is not a number" if bad else f"{source}: {exc}"
        raise ValueError(f"{where} (phonopy BORN file)") from exc
    except Exception as exc:  # phonopy's BORNFileParseError (RuntimeError), spglib's errors
        if not (isinstance(exc, RuntimeError) or _from_spglib(exc)):
            raise
        raise ValueError(
            f"{source}: phonopy could not parse the BORN data for this {len(atoms)}-atom cell "
            f"(symprec={symprec}, is_symmetry={is_symmetry}): {exc}"
        ) from exc
    return np.array(nac["born"], dtype=float), np.array(nac["dielectric"], dtype=float)


def read_born_file(
    path: str | os.PathLike,
    structure: Atoms | str | os.PathLike,
    *,
    symprec: float = 1e-5,
    is_symmetry: bool = True,
) -> Atoms:
    """Read a phonopy ``BORN`` file and its structure into a frame.

    Parsing and the expansion from symmetry-independent atoms to all atoms are phonopy's
    (:func:`phonopy.file_IO.parse_BORN_from_strings`).  Index order (module docstring):
    each line is phonopy's ``born[k]`` row-major with the first index = field direction,
    i.e. ``Z*[k, b, a]`` already; no transpose.

    Parameters
    ----------
    path : path-like
        BORN file.
    structure : ase.Atoms or path-like
        The cell the BORN file was written for (phonopy's primitive cell, e.g. the POSCAR
        given to ``phonopy-vasp-born``); any ASE-readable file.  Energies/forces/stress
        it carries (e.g. a vasprun.xml) are attached to the frame.
    symprec : float
        Symmetry tolerance in Å; must match the one used to write the file, or the lines
        are assigned to the wrong atoms.
    is_symmetry : bool
        ``False`` if the file lists every atom (written with symmetry off).

    Returns
    -------
    ase.Atoms
        Frame with ``arrays["born_effective_charges"]`` ``shape=(n_atoms, 3, 3)`` (e) and
        ``info["epsilon_inf"]`` ``shape=(3, 3)``.

    Raises
    ------
    ValueError
        A file phonopy cannot parse for this cell; the message names the file (and, for a
        token that is not a number, the line).

    Warns
    -----
    UserWarning
        When the header ``# epsilon and Z* of atoms ...`` lists other atoms than the
        independent atoms found here (different ``symprec``, or a file written for another
        cell, e.g. with ``phonopy-vasp-born --pa``, whose header numbers unit-cell atoms).
    """
    atoms = load_structure(structure)
    text = read_text(path)
    first = text.splitlines()[0] if text else ""
    m = _HEADER_ATOMS_RE.match(first)
    if m:
        listed = [int(x) - 1 for x in m.group(1).split()]
        found = independent_atoms(atoms, symprec=symprec, is_symmetry=is_symmetry).tolist()
        if listed != found:
            warnings.warn(
                f"{path}: header lists independent atoms {[i + 1 for i in listed]} but the given "
                f"structure at symprec={symprec} has {[i + 1 for i in found]}; the lines are "
                "assigned in the latter order. Check symprec and that the structure is the cell "
                "the file was written for.",
                stacklevel=2,
            )
    z, epsilon = _parse_born_text(text, atoms, symprec, is_symmetry, str(path))
    return build_frame(atoms, z, epsilon, **calculator_results(atoms))


def born_file_text(
    atoms: Atoms,
    born_charges: np.ndarray,
    epsilon_inf: np.ndarray,
    *,
    symprec: float = 1e-5,
    is_symmetry: bool = True,
    factor: float | None = None,
) -> str:
    """Text of a phonopy BORN file; see :func:`write_born_file` (no symmetry check here)."""
    z = np.asarray(born_charges, dtype=float)
    eps = np.asarray(epsilon_inf, dtype=float)
    if z.shape != (len(atoms), 3, 3):
        raise ValueError(f"born_charges must have shape ({len(atoms)}, 3, 3), got {z.shape}")
    if eps.shape != (3, 3):
        raise ValueError(f"epsilon_inf must have shape (3, 3), got {eps.shape}")
    indep = independent_atoms(atoms, symprec=symprec, is_symmetry=is_symmetry)
    comment = "# epsilon and Z* of atoms " + " ".join(str(i + 1) for i in indep)
    head = comment if factor is None else f"{float(factor)!r} {comment}"

    def row(x: np.ndarray) -> str:
        return " ".join(f"{float(v)!r:>24}" for v in x.reshape(9))

    lines = [head, row(eps)] + [row(z[i]) for i in indep]
    return "\n".join(lines) + "\n"


def write_born_file(
    path: str | os.PathLike,
    atoms: Atoms,
    z: np.ndarray,
    epsilon: np.ndarray,
    *,
    symprec: float = 1e-5,
    is_symmetry: bool = True,
    factor: float | None = None,
    atol: float = 1e-6,
) -> None:
    """Write a phonopy ``BORN`` file for ``atoms`` (symmetry-independent atoms only).

    Lines are ``Z*[k, b, a]`` row-major (b = field, a = displacement), phonopy's order
    (module docstring), with ``repr`` precision, after phonopy's comment header
    ``# epsilon and Z* of atoms i j ...``.  Because only independent atoms are stored, the
    file is read back with phonopy's parser before writing and must reproduce ``z`` for
    every atom within ``atol``; otherwise information would be lost silently.

    Parameters
    ----------
    path : path-like
        Output file.
    atoms : ase.Atoms
        The cell (it becomes phonopy's primitive cell when the file is used).
    z : array_like, shape=(n_atoms, 3, 3)
        Z* in e, CONVENTIONS order.
    epsilon : array_like, shape=(3, 3)
        ε∞ (dimensionless).
    symprec : float
        Symmetry tolerance in Å (give the same one to the reader).
    is_symmetry : bool
        ``False``: write every atom (read back with ``is_symmetry=False``).
    factor : float, optional
        phonopy's NAC unit-conversion factor, written first on line 1 when given
        (only needed by old phonopy versions).
    atol : float
        Largest tolerated deviation (e) of the symmetry expansion from ``z``.

    Raises
    ------
    ValueError
        If ``z`` is not invariant under the structure's symmetry at ``symprec`` (symmetrize
        first, e.g. ``phonopy.structure.symmetry.symmetrize_borns_and_epsilon``, or pass
        ``is_symmetry=False``).
    """
    z = np.asarray(z, dtype=float)
    text = born_file_text(
        atoms, z, epsilon, symprec=symprec, is_symmetry=is_symmetry, factor=factor
    )
    z_back, _ = _parse_born_text(text, atoms, symprec, is_symmetry)
    dev = float(np.max(np.abs(z_back - z))) if z.size else 0.0
    if dev > atol:
        raise ValueError(
            f"Born charges are not invariant under the structure's symmetry (symprec={symprec}): "
            f"expanding the independent atoms deviates by up to {dev:.3g} e. A BORN file keeps only "
            "independent atoms, so this would lose information; symmetrize Z* first or pass "
            "is_symmetry=False."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


__all__ = ["born_file_text", "independent_atoms", "read_born_file", "write_born_file"]
