"""Dataset readers and writers: DFPT outputs -> training frames.

Every reader returns frames in the project's in-memory convention
(``CONVENTIONS.md`` "Datasets"; see :mod:`ase_born.io.extxyz`):

* ``atoms.arrays["born_effective_charges"]``: ``shape=(n_atoms, 3, 3)``, float64, units of e,
  index order ``Z*[k, b, a]`` with ``b`` the field / polarization direction and ``a`` the
  displacement / force direction (:data:`ase_born.conventions.BORN_INDEX_ORDER`);
* ``atoms.info["epsilon_inf"]``: ``shape=(3, 3)``, dimensionless (ion-clamped ε∞);
* ``energy`` / ``free_energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE sign, Voigt)
  in a :class:`~ase.calculators.singlepoint.SinglePointCalculator`, when the source has them;
* ``atoms.info["acoustic_sum"]``: ``shape=(3, 3)``, ``Σ_k Z*[k]`` of the raw tensors (e);
* ``atoms.info["source"]``: the file the frame came from (provenance, kept if already set).

Z* is stored raw, exactly as the code printed it (no acoustic-sum-rule correction); the raw
violation is kept alongside (CONVENTIONS "Datasets").

Formats (:data:`FORMATS`) and their readers
-------------------------------------------
================  ==========================================  ==============================================
name              files                                       reader
================  ==========================================  ==============================================
``extxyz``        ``*.xyz``, ``*.extxyz``                     :func:`ase_born.io.extxyz.read_frames`
``vasprun``       ``vasprun*.xml``                            :func:`ase_born.io.vasp.read_vasprun_frames`
``outcar``        ``OUTCAR*``                                 :func:`ase_born.io.vasp.read_outcar_frames`
``phonopy-born``  ``BORN*`` (+ ``structure=``)                :func:`ase_born.io.phonopy_born.read_born_file`
``qe-ph``         ph.x output (``Program PHONON``)            :func:`ase_born.io.qe.read_ph_output`
``abinit``        ABINIT output (``.Version ... of ABINIT``)  ``ase_born.io.abinit.read_abinit_output``
================  ==========================================  ==============================================

An ABINIT output file is read on its own (response tables searched in the same file); for
split ground-state / electric-field outputs pass the ground state as ``structure=``
(``read_abinit_output(gs, response)``).

The submodules are imported lazily, so ``import ase_born.io`` stays cheap.
"""

from __future__ import annotations

import lzma
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ase_born.conventions import KEY_ACOUSTIC_SUM, KEY_BORN, KEY_EPSILON_INF

#: dataset formats understood by :func:`read_dataset` (and ``ase-born convert --format``)
FORMATS: tuple[str, ...] = ("extxyz", "vasprun", "outcar", "phonopy-born", "qe-ph", "abinit")

#: ``atoms.info`` key holding the file a frame was read from
KEY_SOURCE = "source"

_RESULT_KEYS = ("energy", "free_energy", "forces", "stress")


class FormatUnavailableError(ImportError):
    """A dataset format whose reader module is not installed / not written yet."""


# ---------------------------------------------------------------------------
# Frame assembly shared by all readers
# ---------------------------------------------------------------------------
def build_frame(
    atoms: Atoms,
    born_charges: np.ndarray,
    epsilon_inf: np.ndarray | None = None,
    *,
    energy: float | None = None,
    free_energy: float | None = None,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    info: dict[str, Any] | None = None,
) -> Atoms:
    """Assemble one training frame in the project's in-memory convention.

    Only the structure of ``atoms`` is used (numbers, positions, cell, pbc); its
    calculator, arrays and info are not copied.  Callers convert Z* to the
    project's index order *before* calling this function.

    Parameters
    ----------
    atoms : ase.Atoms
        Structure, positions in Å.
    born_charges : array_like, shape=(n_atoms, 3, 3)
        Z* in units of e, order ``Z*[k, b, a]`` (b = field, a = displacement).
    epsilon_inf : array_like, shape=(3, 3), optional
        Ion-clamped dielectric tensor ε∞ (dimensionless).
    energy, free_energy : float, optional
        eV.
    forces : array_like, shape=(n_atoms, 3), optional
        eV/Å.
    stress : array_like, shape=(6,) or (3, 3), optional
        eV/Å³ with ASE's sign (positive = tensile); stored in Voigt order
        ``xx yy zz yz xz xy``.
    info : dict, optional
        Extra ``atoms.info`` entries (e.g. provenance).

    Returns
    -------
    ase.Atoms
        New frame; energy/forces/stress (those given) in a SinglePointCalculator;
        ``info["acoustic_sum"]`` = ``Σ_k Z*[k]`` ``shape=(3, 3)`` (e, raw tensors).

    Raises
    ------
    ValueError
        Wrong shapes or non-finite values.
    """
    n = len(atoms)
    frame = Atoms(
        numbers=atoms.get_atomic_numbers(),
        positions=np.array(atoms.positions, dtype=float),
        cell=np.array(atoms.cell.array, dtype=float),
        pbc=atoms.pbc.copy(),
    )
    z = _finite_array(born_charges, (n, 3, 3), "born_charges")
    from ase_born.io.extxyz import set_born_charges

    set_born_charges(frame, z)
    frame.info[KEY_ACOUSTIC_SUM] = z.sum(axis=0)
    if epsilon_inf is not None:
        frame.info[KEY_EPSILON_INF] = _finite_array(epsilon_inf, (3, 3), "epsilon_inf")
    results: dict[str, Any] = {}
    if energy is not None:
        results["energy"] = float(energy)
    if free_energy is not None:
        results["free_energy"] = float(free_energy)
    if forces is not None:
        results["forces"] = _finite_array(forces, (n, 3), "forces")
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.shape == (3, 3):
            from ase.stress import full_3x3_to_voigt_6_stress

            s = full_3x3_to_voigt_6_stress(s)
        results["stress"] = _finite_array(s, (6,), "stress")
    if results:
        frame.calc = SinglePointCalculator(frame, **results)
    if info:
        frame.info.update(info)
    return frame


def calculator_results(atoms: Atoms) -> dict[str, Any]:
    """Energy/free_energy/forces/stress held by ``atoms.calc`` (those present).

    Returns
    -------
    dict
        Keyword arguments for :func:`build_frame` (``energy``, ``free_energy``,
        ``forces``, ``stress``); empty when there is no calculator.
    """
    if atoms.calc is None:
        return {}
    res = getattr(atoms.calc, "results", {}) or {}
    return {k: res[k] for k in _RESULT_KEYS if res.get(k) is not None}


def open_text(path: str | os.PathLike):
    """``path`` opened for reading text (undecodable bytes replaced), decompressed when it
    ends in ``.gz``, ``.bz2``, ``.xz`` or ``.lzma`` (``OUTCAR.gz``, ``BORN.gz``: ASE and
    phonopy read them too), with phonopy's choice of module (as for ``vasprun.xml.gz``)."""
    from phonopy.file_IO import get_io_module_to_decompress

    p = Path(path)
    return get_io_module_to_decompress(p.with_suffix(p.suffix.lower())).open(p, "rt", errors="replace")


def read_text(path: str | os.PathLike) -> str:
    """The whole text of ``path`` (:func:`open_text`)."""
    with open_text(path) as fh:
        return fh.read()


def load_structure(structure: Atoms | str | os.PathLike, format: str | None = None) -> Atoms:
    """Return a copy of ``structure``, reading it with :func:`ase.io.read` if a path.

    The last image is used for multi-image files (e.g. a pw.x relaxation: the
    final structure is the one a following ph.x run used), except for a VASP
    OUTCAR / vasprun.xml of a phonon run (IBRION=5-8), whose first image is the
    undisplaced reference the Born charges belong to.  A calculator attached by
    the reader (e.g. pw.x output energies) is kept.

    Parameters
    ----------
    structure : ase.Atoms or path-like
        Any ASE-readable structure (POSCAR, pw.x input/output, CIF, extxyz, ...).
    format : str, optional
        ASE format name, guessed by ASE when ``None``.
    """
    if isinstance(structure, Atoms):
        out = structure.copy()
        out.calc = structure.calc
        return out
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    path = Path(structure)
    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path}")
    index = -1
    if format is None and _format_from_name(path.name) in ("outcar", "vasprun"):
        from ase_born.io.vasp import PHONON_IBRION, read_ibrion

        index = 0 if read_ibrion(path) in PHONON_IBRION else -1
    try:
        atoms = ase.io.read(str(path), index=index, format=format)
    except UnknownFileTypeError as exc:
        raise ValueError(f"{path}: not a structure file ASE recognises ({exc}); pass its format") from exc
    if not isinstance(atoms, Atoms):  # pragma: no cover - an int index returns one image
        atoms = atoms[index]
    return atoms


def _format_from_name(name: str) -> str | None:
    """The dataset format a file name alone tells (:func:`guess_format`), else None."""
    lower = name.lower()
    if lower.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if lower.startswith("vasprun") and ".xml" in lower:
        return "vasprun"
    if name.startswith("OUTCAR"):
        return "outcar"
    if name.startswith("BORN"):
        return "phonopy-born"
    return None


def _finite_array(x, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(x, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


# ---------------------------------------------------------------------------
# Format detection and dispatch
# ---------------------------------------------------------------------------
def guess_format(path: str | os.PathLike) -> str:
    """Guess the dataset format of ``path`` from its name, then its first lines.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    ValueError
        If the format cannot be recognised (pass ``format=`` explicitly).
    """
    p = Path(path)
    by_name = _format_from_name(p.name)
    if by_name is not None:
        return by_name
    try:
        with open_text(p) as fh:
            head = [line for _, line in zip(range(80), fh)]
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {p}: {exc}") from exc
    text = "".join(head)
    if "<modeling>" in text and "<generator>" in text:
        return "vasprun"
    if head and head[0].lstrip().startswith("vasp."):
        return "outcar"
    if "Program PHONON" in text:
        return "qe-ph"
    if ".Version" in text and "ABINIT" in text:
        return "abinit"
    if (
        len(head) >= 2
        and head[0].strip().isdigit()
        and ("Properties=" in head[1] or "Lattice=" in head[1])
    ):
        return "extxyz"
    raise ValueError(
        f"cannot guess the dataset format of {p}; pass format= (--format on the command line) one of {', '.join(FORMATS)}"
    )


def _read_abinit(path: str | os.PathLike, ground_state: Any = None) -> list[Atoms]:
    """Frames of ABINIT output ``path``; with ``ground_state`` the path of an ABINIT output (a
    separate ground state), ``path`` is the electric-field response of that run; any other
    ``structure=`` (for other inputs of a mixed call) is not used."""
    try:
        from ase_born.io.abinit import read_abinit_output
    except ImportError as exc:
        raise FormatUnavailableError(
            f"cannot read ABINIT output {path}: module ase_born.io.abinit "
            f"(read_abinit_output) is not available ({exc})"
        ) from exc
    try:
        split = ground_state is not None and not isinstance(ground_state, Atoms) and guess_format(ground_state) == "abinit"
    except ValueError:  # a format guess_format does not know (a POSCAR): not an ABINIT output
        split = False
    if not split:
        return [read_abinit_output(path)]  # structure= for the other inputs (a POSCAR for a BORN file)
    return [read_abinit_output(ground_state, path)]


def read_file(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    structure: Atoms | str | os.PathLike | None = None,
    born_rows: str | None = None,
    born_block: str = "dF/dE",
    symprec: float = 1e-5,
    is_symmetry: bool = True,
) -> list[Atoms]:
    """Read the frames of one file; see :func:`read_dataset` for the parameters."""
    fmt = format or guess_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    import xml.parsers.expat

    from ase.io import ParseError

    try:
        frames = _read_one(path, fmt, structure, born_rows, born_block, symprec, is_symmetry)
    except (ParseError, SyntaxError, xml.parsers.expat.ExpatError) as exc:
        # third-party parse errors (ASE, ElementTree, expat) -> ValueError naming the file
        raise ValueError(f"{path}: cannot be read as {fmt}: {exc}") from exc
    for frame in frames:
        frame.info.setdefault(KEY_SOURCE, str(path))
    return frames


def _read_one(path, fmt, structure, born_rows, born_block, symprec, is_symmetry) -> list[Atoms]:
    if fmt == "extxyz":
        from ase_born.io.extxyz import read_frames

        frames = read_frames(path)
    elif fmt == "vasprun":
        from ase_born.io.vasp import read_vasprun_frames

        frames = read_vasprun_frames(path, born_rows=born_rows)
    elif fmt == "outcar":
        from ase_born.io.vasp import OutcarGeometryError, read_outcar_frames

        try:  # the OUTCAR's own geometry (and energy/forces/stress) first
            frames = read_outcar_frames(path, born_rows=born_rows)
        except OutcarGeometryError:
            if structure is None:
                raise
            frames = read_outcar_frames(path, structure=structure, born_rows=born_rows)
    elif fmt == "phonopy-born":
        if structure is None:
            raise ValueError(
                f"{path}: a phonopy BORN file holds no structure; pass structure= (--structure on the command line) "
                "(the cell the BORN file was written for, e.g. its POSCAR)"
            )
        from ase_born.io.phonopy_born import read_born_file

        frames = [read_born_file(path, structure, symprec=symprec, is_symmetry=is_symmetry)]
    elif fmt == "qe-ph":
        from ase_born.io.qe import read_ph_output

        frames = [read_ph_output(path, structure=structure, born_block=born_block)]
    else:  # abinit
        frames = _read_abinit(path, structure)
        if any(KEY_BORN not in f.arrays for f in frames):
            import warnings

            warnings.warn(
                f"{path}: ABINIT output without Born charges (a ground-state run?); for split "
                "ground-state / electric-field outputs read the response output with the ground "
                "state as structure= (ase-born convert RESPONSE.abo --structure GS.abo)",
                stacklevel=4,
            )
    return frames


def read_dataset(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    format: str | None = None,
    *,
    structure: Atoms | str | os.PathLike | None = None,
    born_rows: str | None = None,
    born_block: str = "dF/dE",
    symprec: float = 1e-5,
    is_symmetry: bool = True,
    skip_unavailable: bool = False,
) -> list[Atoms]:
    """Read DFPT outputs / datasets into training frames (in-memory convention).

    Parameters
    ----------
    paths : path-like or iterable of path-like
        Input files, formats mixed freely.
    format : str, optional
        Force one of :data:`FORMATS` for all inputs; guessed per file by
        :func:`guess_format` when ``None``.
    structure : ase.Atoms or path-like, optional
        Structure for the inputs that lack a usable one of their own: ``phonopy-born``
        (required), ``qe-ph`` (optional: the ph.x header has ~5 decimals and no energies;
        a pw.x input/output, whose energies/forces/stress are then attached) and an
        ``outcar`` whose geometry ASE cannot read.  An OUTCAR with a readable geometry
        keeps its own structure, energy, forces and stress; for ``abinit`` inputs it is
        used only when it is an ABINIT output too: a separate ground-state output (energy,
        forces, stress; the inputs are then the electric-field responses of that structure:
        ``read_abinit_output(structure, input)``); ``extxyz`` and ``vasprun`` inputs never
        use it.  It is one structure for all inputs, so
        mixing several BORN / ph.x files of different structures needs separate calls.
    born_rows : {"field", "displacement"}, optional
        VASP only: what the rows of VASP's Born-charge block are; see
        :func:`ase_born.io.vasp.read_outcar`.  A VASP file whose every ionic step has its
        own Born block (MD, relaxation; not IBRION=5-8) gives one frame per step.
    born_block : {"dF/dE", "dF/dE-asr", "dP/du"}
        ph.x only: which printed Z* block to use; see :func:`ase_born.io.qe.read_ph_output`.
    symprec : float
        phonopy BORN only: symmetry tolerance (Å) used to expand independent atoms.
    is_symmetry : bool
        phonopy BORN only: ``False`` for a file that lists every atom (written with
        symmetry off, e.g. ``write_born_file(..., is_symmetry=False)``).
    skip_unavailable : bool
        Skip (with a warning) inputs whose reader module cannot be imported (a
        partial install) instead of raising
        :class:`FormatUnavailableError`.

    Returns
    -------
    list of ase.Atoms
        Frames in input order; ``info["source"]`` names the file of each.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames: list[Atoms] = []
    for path in paths:
        try:
            frames.extend(
                read_file(
                    path,
                    format,
                    structure=structure,
                    born_rows=born_rows,
                    born_block=born_block,
                    symprec=symprec,
                    is_symmetry=is_symmetry,
                )
            )
        except FormatUnavailableError as exc:
            if not skip_unavailable:
                raise
            import warnings

            warnings.warn(f"skipped {path}: {exc}", stacklevel=2)
    return frames


__all__: Sequence[str] = [
    "FORMATS",
    "KEY_SOURCE",
    "FormatUnavailableError",
    "build_frame",
    "calculator_results",
    "guess_format",
    "load_structure",
    "read_dataset",
    "read_file",
]
