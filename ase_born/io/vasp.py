"""VASP readers: ``vasprun.xml`` and ``OUTCAR`` of LEPSILON / LCALCEPS runs -> frames.

What is read
------------
* Born effective charges: ``vasprun.xml`` ``<array name="born_charges">`` (one ``<set>``
  of three ``<v>`` rows per ion) through phonopy's
  :class:`phonopy.interface.vasp.VasprunxmlExpat`; OUTCAR blocks whose header line starts
  with ``BORN EFFECTIVE CHARGES``, parsed here: ``(in e, cummulative output)``
  (LEPSILON), ``(including local field effects) (in |e|, cummulative output)`` (LEPSILON in
  VASP 6, as in the VASP wiki's MgO example next to ``MACROSCOPIC STATIC DIELECTRIC TENSOR
  (including local field effects in DFT)``; also LCALCEPS in VASP 6), ``(including local
  field effects)`` (LCALCEPS, VASP 5 manual) and spelling variants (``(in e, ...)``,
  ``cumulative``).  Blocks ``(excluding local field effects)`` (LRPA=.TRUE.) are skipped.
* ε∞ (ion-clamped): ``vasprun.xml`` ``<varray name="epsilon">`` / ``"epsilon_scf"``
  (phonopy's parser), else ``"dielectric_dft"`` (ASE's parser); OUTCAR ``MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field
  effects in DFT)`` (LEPSILON), ``... (including local field effects)`` (LCALCEPS) or a bare
  ``MACROSCOPIC STATIC DIELECTRIC TENSOR`` header, in that preference.  Never the
  ``IONIC CONTRIBUTION``, ``RPA`` or ``excluding local field effects`` blocks.
  (phonopy's own OUTCAR reader takes the *last* line containing
  ``MACROSCOPIC STATIC DIELECTRIC TENSOR``, which in IBRION=5-8 runs can be the
  ``IONIC CONTRIBUTION`` block; that is why OUTCAR is parsed here.)
* structure, energy (σ→0), free energy, forces, stress: ASE's ``vasp-xml`` /
  ``vasp-out`` readers, of the ionic step Z* belongs to (see "Which ionic step").

Which ionic step
----------------
Z* is a derivative at one configuration, so the frame pairs it with that configuration's
structure, energy, forces and stress:

* IBRION=5-8 (phonons by finite differences or DFPT): the **first** ionic step, the
  undisplaced reference structure at which Z* is computed; the later steps are displaced
  configurations.  With several Born blocks the first (the reference step's) is used.
* any other run: the **last** ionic step and the last Born block.  When the file holds as
  many Born blocks as ionic steps these are the same step, and every step is a labelled
  configuration: :func:`read_vasprun_frames` / :func:`read_outcar_frames` (used by
  :func:`ase_born.io.read_dataset`) return one frame per step, each with its own Born
  block (and its own ε∞ when ε is printed at every step; otherwise only the last frame
  gets the last ε∞).  When it does not (e.g. Z* printed once in a relaxation or MD run),
  which configuration Z* belongs to cannot be told from the file: a ``UserWarning`` says
  so and the last step is still used.

ε∞ follows the same step as Z*: for IBRION=5-8 the first printed block (the reference
step's), else the last (or the step's own, see above).

VASP's index order and the conversion
-------------------------------------
For LEPSILON and LCALCEPS each ion's block is printed as three rows ``i  Z_i1 Z_i2 Z_i3``
whose row index ``i`` is the **electric-field** (polarization) direction and whose
columns are the ion **displacement** (force) directions.  Evidence:

* phonopy (``phonopy/interface/vasp.py``, ``_read_born_and_epsilon_from_OUTCAR`` and
  ``VasprunxmlExpat.born``) stores the printed rows unchanged as ``born[k]``, and its
  non-analytical correction (``phonopy/harmonic/dynamical_matrix.py``,
  ``DynamicalMatrixWang._get_charge_sum``: ``A = np.dot(q, born)``) contracts the wave
  vector, i.e. the longitudinal field direction, with that first index;
  ``tests/unit/test_io_phonopy_born.py`` checks this numerically with phonopy;
* the VASP forum thread "Order of Born effective charge tensor output"
  (https://www.vasp.at/forum/viewtopic.php?t=19680, 2024, VASP 6.4): for LEPSILON and
  LCALCEPS "the charges are printed by each direction of finite field applied", whereas
  for IBRION=7,8 "the charges are printed by each direction of ion displacement".
  (The VASP wiki's LCALCEPS formula ``Z*_ij = Ω/e ∂P_i/∂u_j = 1/e ∂F_i/∂E_j`` is
  self-contradictory in its indices and was not used.)

So for LEPSILON / LCALCEPS the printed block *is* ``Z*[k, b, a]`` (CONVENTIONS order,
``b`` field, ``a`` displacement) and no transpose is applied.  For IBRION=7 or 8 runs
the order is reported to be the transpose and could not be verified from VASP's own
documentation: the readers refuse such files unless ``born_rows`` says explicitly what
the rows are (``"displacement"`` transposes).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms

from ase_born.defaults import sha256
from ase_born.io import build_frame, calculator_results, load_structure, open_text, read_text

BornRows = Literal["field", "displacement"]

#: OUTCAR ε∞ headers, most preferred first (stripped line must equal one of these)
OUTCAR_EPSILON_HEADERS: tuple[str, ...] = (
    "MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects in DFT)",  # LEPSILON
    "MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects)",  # LCALCEPS
    "MACROSCOPIC STATIC DIELECTRIC TENSOR",
)
#: OUTCAR Born-charge headers known to be printed (documentation and tests): the reader
#: accepts any stripped line starting with :data:`OUTCAR_BORN_PREFIX` that does not say
#: "excluding local field effects" (see :func:`is_outcar_born_header`)
OUTCAR_BORN_HEADERS: tuple[str, ...] = (
    "BORN EFFECTIVE CHARGES (in e, cummulative output)",  # LEPSILON (DFPT)
    "BORN EFFECTIVE CHARGES (including local field effects)",  # LCALCEPS, VASP 5 manual
    # LEPSILON in VASP 6 (VASP wiki, MgO example), also LCALCEPS in VASP 6
    "BORN EFFECTIVE CHARGES (including local field effects) (in |e|, cummulative output)",
    # VASP wiki
    "BORN EFFECTIVE CHARGES (including local field effects) (in e, cummulative output)",
)
#: start of every OUTCAR Born-charge header
OUTCAR_BORN_PREFIX = "BORN EFFECTIVE CHARGES"
#: IBRION values of phonon runs around a reference structure (finite differences / DFPT)
PHONON_IBRION: tuple[int, ...] = (5, 6, 7, 8)

_IBRION_RE = re.compile(r"^\s*IBRION\s*=\s*(-?\d+)")
_VASPRUN_IBRION_RE = re.compile(r'name="IBRION">\s*(-?\d+)')


def read_ibrion(path: str | os.PathLike) -> int | None:
    """IBRION of a VASP OUTCAR or vasprun.xml (the first value printed), or None; reads the
    file only as far as that line."""
    xml = ".xml" in Path(path).name.lower()
    with open_text(path) as fh:
        for line in fh:
            m = (_VASPRUN_IBRION_RE.search if xml else _IBRION_RE.match)(line)
            if m:
                return int(m.group(1))
    return None


class OutcarGeometryError(ValueError):
    """ASE could not read a structure from an OUTCAR (pass ``structure=``)."""


def is_outcar_born_header(line: str) -> bool:
    """Whether an OUTCAR line opens an accepted Born-charge block.

    Any line starting (after stripping) with ``BORN EFFECTIVE CHARGES`` — e.g. the
    ``(in e, cummulative output)``, ``(including local field effects)`` and ``... (in |e|,
    cumulative output)`` variants — except ``(excluding local field effects)`` (LRPA).
    """
    stripped = line.strip()
    return stripped.startswith(OUTCAR_BORN_PREFIX) and (
        "excluding local field effects" not in stripped.lower()
    )


def _steps(
    ibrion: int | None, n_steps: int, n_born_blocks: int, source: str, all_steps: bool
) -> list[int]:
    """Indices of the ionic steps (= of their Born blocks) that become frames.

    One step (:func:`_step_index`) unless ``all_steps`` and every step of a non-phonon run
    has its own Born block.
    """
    if all_steps and ibrion not in PHONON_IBRION and n_steps > 1 and n_born_blocks == n_steps:
        return list(range(n_steps))
    return [_step_index(ibrion, n_steps, n_born_blocks, source)]


def _step_epsilon(
    blocks: list[np.ndarray], step: int, n_steps: int, ibrion: int | None
) -> np.ndarray | None:
    """ε∞ of ionic step ``step`` (an index into the steps) from the ε blocks in file order.

    The step's own block when every step printed one; else, for IBRION=5-8, the first
    block (the reference step's), otherwise the last block for the last step and ``None``
    for the other steps (which configuration a lone ε belongs to is not known).
    """
    if not blocks:
        return None
    if len(blocks) == n_steps:
        return blocks[step]
    if ibrion in PHONON_IBRION:
        return blocks[0]
    if step in (-1, n_steps - 1):
        return blocks[-1]
    return None


def _step_index(ibrion: int | None, n_steps: int, n_born_blocks: int, source: str) -> int:
    """Index (0 or -1) of the ionic step and Born block of the frame (module docstring)."""
    if ibrion in PHONON_IBRION:
        return 0
    if n_steps > 1 and n_born_blocks != n_steps:
        warnings.warn(
            f"{source}: {n_steps} ionic steps but {n_born_blocks} Born-charge block(s); Z* belongs "
            "to one configuration only and the file does not say which: the last ionic step's "
            "structure, energy, forces and stress are used with the last Born block",
            stacklevel=3,
        )
    return -1


_NIONS_RE = re.compile(r"NIONS\s*=\s*(\d+)")
_ION_RE = re.compile(r"^\s*ion\s+(\d+)\s*$")


def _orient(
    z_printed: np.ndarray, ibrion: int | None, born_rows: BornRows | None, source: str
) -> np.ndarray:
    """Bring VASP's printed blocks (rows as printed) into ``Z*[k, b, a]``."""
    if born_rows is None:
        if ibrion in (7, 8):
            raise ValueError(
                f"{source}: IBRION={ibrion} run. For IBRION=7,8 VASP is reported to print Born "
                "charges with rows = ion displacement direction (VASP forum t=19680), unlike "
                "LEPSILON/LCALCEPS (rows = field direction); this could not be verified from "
                "VASP's documentation. Pass born_rows='displacement' (transpose) or "
                "born_rows='field' (as printed) explicitly (CLI: --born-rows)."
            )
        born_rows = "field"
    if born_rows == "field":
        return z_printed.copy()
    if born_rows == "displacement":
        return np.ascontiguousarray(np.swapaxes(z_printed, 1, 2))
    raise ValueError(f"born_rows must be 'field' or 'displacement', got {born_rows!r}")


# ---------------------------------------------------------------------------
# vasprun.xml
# ---------------------------------------------------------------------------
def read_vasprun_born_epsilon(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Born charges and ε∞ of a ``vasprun.xml`` as printed, via phonopy's parser.

    Parameters
    ----------
    path : path-like
        ``vasprun.xml`` (phonopy also accepts ``.gz``/``.bz2``/``.xz``).

    Returns
    -------
    born : numpy.ndarray, shape=(n_atoms * n_blocks, 3, 3)
        Every ``<array name="born_charges">`` ``<set>`` in file order, rows as printed
        (row = field direction for LEPSILON/LCALCEPS), units of e.
    epsilon : numpy.ndarray, shape=(3, 3), or None
        Last ``<varray name="epsilon">`` / ``"epsilon_scf"`` (phonopy's choice).
    """
    from phonopy.file_IO import get_io_module_to_decompress
    from phonopy.interface.vasp import VasprunxmlExpat

    myio = get_io_module_to_decompress(path)
    with myio.open(path, "rb") as fh:
        vxml = VasprunxmlExpat(fh)
        vxml.parse()
    born = np.array(vxml.born, dtype=float)
    eps = np.asarray(vxml.epsilon, dtype=float)  # nan scalar when the file has none
    epsilon = eps.reshape(3, 3) if eps.size == 9 else None
    return born, epsilon


def read_vasprun(path: str | os.PathLike, *, born_rows: BornRows | None = None) -> Atoms:
    """Read a LEPSILON / LCALCEPS ``vasprun.xml`` into a frame.

    Born charges come from phonopy's :class:`~phonopy.interface.vasp.VasprunxmlExpat`
    (``<array name="born_charges">``); ε∞ is the one printed in the frame's
    ``<calculation>`` (``<varray name="epsilon">`` / ``"epsilon_scf"``, else
    ``"dielectric_dft"``; phonopy's file-level choice when no step holds one); structure,
    energy, free energy, forces and stress from ASE's ``vasp-xml`` reader.  Every labelled
    step of an MD/relaxation: :func:`read_vasprun_frames`.

    Index order (see the module docstring for the evidence): VASP prints each ion's Z* with
    rows = field direction for LEPSILON/LCALCEPS, which is ``Z*[k, b, a]`` already.

    Ionic step (module docstring, "Which ionic step"): the first one (the undisplaced
    reference) for IBRION=5-8 runs, else the last one; each ``<calculation>`` is one step
    and the Born block of the same step is used when every step has one.

    Parameters
    ----------
    path : path-like
        ``vasprun.xml``.
    born_rows : {"field", "displacement"}, optional
        What the rows of VASP's Born block are.  ``None`` (default): ``"field"``, except
        for IBRION=7,8 runs, which raise ``ValueError`` asking for an explicit choice.

    Returns
    -------
    ase.Atoms
        Frame with ``arrays["born_effective_charges"]`` ``shape=(n_atoms, 3, 3)`` (e),
        ``info["epsilon_inf"]`` ``shape=(3, 3)`` when present, and energy (eV, σ→0),
        free_energy (eV), forces (eV/Å), stress (eV/Å³, Voigt) of that ionic step.

    Raises
    ------
    ValueError
        No Born charges in the file, or their count does not match the atoms.

    Warns
    -----
    UserWarning
        Several ionic steps (not IBRION=5-8) but not one Born block per step.
    """
    return _read_vasprun(path, born_rows, all_steps=False)[0]


def read_vasprun_frames(path: str | os.PathLike, *, born_rows: BornRows | None = None) -> list[Atoms]:
    """Every labelled ionic step of a ``vasprun.xml``: one frame per step when each step
    (``<calculation>``) of a run other than IBRION=5-8 has its own Born block (e.g. MD or a
    relaxation with LCALCEPS), else ``[read_vasprun(path)]``.

    Each frame pairs a step's structure, energy, forces and stress with that step's Born
    charges and, when present, its own ε∞ (module docstring, "Which ionic step").  The
    steps of one file are one trajectory: :func:`one_trajectory` gives them one
    ``structure_id``.  Parameters, errors and warnings as :func:`read_vasprun`.
    """
    return one_trajectory(_read_vasprun(path, born_rows, all_steps=True), path)


def one_trajectory(frames: list[Atoms], path: str | os.PathLike) -> list[Atoms]:
    """Mark the frames of several ionic steps of one file as one structure for splitting:
    ``info["structure_id"]`` = ``"<path as given>@<first 12 hex digits of the file's
    SHA-256>"`` (kept when already set), and ``info["ionic_step"]`` = the step index.
    Consecutive MD/relaxation steps are nearly the same structure; with an ID each they
    could land on both sides of a train/validation split or of the TEST split
    (CONVENTIONS.md: splits by structure ID).  The content hash keeps two runs apart that
    were converted under the same name (``OUTCAR`` in each run directory).  A single
    frame is left as it is."""
    if len(frames) > 1:
        sid = f"{path}@{sha256(path)[:12]}"
        for step, atoms in enumerate(frames):
            atoms.info.setdefault("structure_id", sid)
            atoms.info["ionic_step"] = step
    return frames


def _vasprun_step_epsilons(path: str | os.PathLike) -> list[np.ndarray | None]:
    """ε∞ printed inside each ``<calculation>`` (``None`` where a step has none).

    Per step, the last ``<varray name="epsilon">`` / ``"epsilon_scf"`` (phonopy's choice),
    else ``"dielectric_dft"``.
    """
    import xml.etree.ElementTree as ET

    from phonopy.file_IO import get_io_module_to_decompress

    steps: list[np.ndarray | None] = []
    found: dict[str, np.ndarray] = {}
    depth = 0
    myio = get_io_module_to_decompress(path)
    with myio.open(path, "rb") as fh:
        for event, elem in ET.iterparse(fh, events=("start", "end")):
            if elem.tag == "calculation":
                if event == "start":
                    depth += 1
                    found = {}
                    continue
                depth -= 1
                eps = found.get("epsilon", found.get("dielectric_dft"))
                steps.append(eps)
                elem.clear()
            elif event == "end" and depth and elem.tag == "varray":
                name = elem.get("name")
                if name in ("epsilon", "epsilon_scf", "dielectric_dft"):
                    rows = [[float(x) for x in v.text.split()] for v in elem.findall("v")]
                    arr = np.array(rows, dtype=float)
                    if arr.shape == (3, 3):
                        found["dielectric_dft" if name == "dielectric_dft" else "epsilon"] = arr
    return steps


def _read_vasprun(path: str | os.PathLike, born_rows: BornRows | None, all_steps: bool) -> list[Atoms]:
    import ase.io

    images = ase.io.read(str(path), index=":", format="vasp-xml")
    if isinstance(images, Atoms):  # pragma: no cover - index=":" returns a list
        images = [images]
    params = getattr(images[0].calc, "parameters", {}) or {}
    ibrion = None if params.get("ibrion") is None else int(params["ibrion"])
    born, epsilon = read_vasprun_born_epsilon(path)
    n = len(images[0])
    if born.size == 0:
        raise ValueError(f'{path}: no <array name="born_charges"> (was LEPSILON or LCALCEPS set?)')
    if born.shape[1:] != (3, 3) or born.shape[0] % n:
        raise ValueError(f"{path}: Born-charge array of shape {born.shape} does not fit {n} atoms")
    n_blocks = born.shape[0] // n
    step_eps = _vasprun_step_epsilons(path)
    if len(step_eps) != len(images):  # steps not aligned with ASE's images: no own ε per step
        step_eps = [None] * len(images)
    blocks = [e for e in step_eps if e is not None]
    if not blocks:  # ε outside <calculation>: phonopy's (last "epsilon"), else ASE's
        found = [
            im.calc.results["dielectric_tensor"]
            for im in images[::-1]
            if im.calc is not None and im.calc.results.get("dielectric_tensor") is not None
        ]
        blocks = [epsilon] if epsilon is not None else [np.asarray(found[0], dtype=float)] if found else []
    frames = []
    for step in _steps(ibrion, len(images), n_blocks, str(path), all_steps):
        atoms = images[step]
        z = _orient(born.reshape(n_blocks, n, 3, 3)[step], ibrion, born_rows, str(path))
        eps = step_eps[step]
        if eps is None:
            eps = _step_epsilon(blocks, step, len(images), ibrion)
        frames.append(build_frame(atoms, z, eps, **calculator_results(atoms)))
    return frames


# ---------------------------------------------------------------------------
# OUTCAR
# ---------------------------------------------------------------------------
def _floats(line: str, n: int, where: str) -> list[float]:
    parts = line.split()
    if len(parts) != n:
        raise ValueError(f"{where}: expected {n} numbers, got {line.strip()!r}")
    try:
        return [float(x) for x in parts]
    except ValueError as exc:
        raise ValueError(f"{where}: unreadable number in {line.strip()!r}") from exc


def _parse_outcar_epsilon(lines: list[str], i: int, where: str) -> np.ndarray:
    # header, dashes, 3 rows
    if i + 5 > len(lines):
        raise ValueError(f"{where}: file ends inside the dielectric-tensor block (3 rows expected)")
    rows = [_floats(lines[i + 2 + r], 3, where) for r in range(3)]
    return np.array(rows, dtype=float)


def _parse_outcar_born(lines: list[str], i: int, where: str) -> np.ndarray:
    # header, dashes, then per ion: "ion  k" and three rows "r  z1 z2 z3"
    j = i + 2
    blocks = []
    while j < len(lines):
        m = _ION_RE.match(lines[j])
        if not m:
            break
        k = int(m.group(1))
        if k != len(blocks) + 1:
            raise ValueError(f"{where}: ion {k} found where ion {len(blocks) + 1} was expected")
        if j + 4 > len(lines):
            raise ValueError(
                f"{where}: file ends inside the Born-charge block, in ion {k} "
                f"({len(lines) - j - 1} of its 3 rows present)"
            )
        rows = []
        for r in range(3):
            vals = _floats(lines[j + 1 + r], 4, f"{where}, ion {k}")
            if int(vals[0]) != r + 1:
                raise ValueError(
                    f"{where}, ion {k}: row label {vals[0]} where {r + 1} was expected"
                )
            rows.append(vals[1:])
        blocks.append(rows)
        j += 4
    if not blocks:
        raise ValueError(f"{where}: Born-charge block without 'ion' entries")
    return np.array(blocks, dtype=float)


def parse_outcar_born_epsilon(
    path: str | os.PathLike,
) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """Born charges and ε∞ of an OUTCAR, as printed.

    Parameters
    ----------
    path : path-like
        OUTCAR of a LEPSILON or LCALCEPS run.

    Returns
    -------
    born : numpy.ndarray, shape=(n_atoms, 3, 3), or None
        Last accepted Born block (:func:`is_outcar_born_header`), rows as printed
        (row = field direction for LEPSILON/LCALCEPS), units of e.
    epsilon : numpy.ndarray, shape=(3, 3), or None
        Last block of the most preferred header of :data:`OUTCAR_EPSILON_HEADERS`.
    meta : dict
        ``ibrion`` (int or None), ``nions`` (int or None), ``born_header``,
        ``epsilon_header`` (str or None), ``born_blocks`` (every accepted Born block in
        file order, list of arrays ``shape=(n_atoms, 3, 3)``), ``epsilon_blocks`` (every
        block of ``epsilon_header`` in file order).

    Raises
    ------
    ValueError
        A block that cannot be read, e.g. a file that ends inside it (names the file and
        line).
    """
    text = read_text(path)
    lines = text.splitlines()
    born_blocks: list[np.ndarray] = []
    born_header = None
    eps_found: dict[str, list[np.ndarray]] = {}
    ibrion = nions = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if ibrion is None:
            m = _IBRION_RE.match(line)
            if m:
                ibrion = int(m.group(1))
        if nions is None and "NIONS" in line:
            m = _NIONS_RE.search(line)
            if m:
                nions = int(m.group(1))
        if stripped in OUTCAR_EPSILON_HEADERS:
            eps_found.setdefault(stripped, []).append(
                _parse_outcar_epsilon(lines, i, f"{path}:{i + 1}")
            )
        elif is_outcar_born_header(stripped):
            block = _parse_outcar_born(lines, i, f"{path}:{i + 1}")
            if nions is not None and len(block) != nions:
                ended = " (the file ends there)" if i + 2 + 4 * len(block) >= len(lines) else ""
                raise ValueError(
                    f"{path}:{i + 1}: Born-charge block with {len(block)} ions but "
                    f"NIONS = {nions}{ended}"
                )
            born_blocks.append(block)
            born_header = stripped
    eps_header = next((h for h in OUTCAR_EPSILON_HEADERS if h in eps_found), None)
    eps_blocks = eps_found[eps_header] if eps_header else []
    epsilon = eps_blocks[-1] if eps_blocks else None
    meta = {
        "ibrion": ibrion,
        "nions": nions,
        "born_header": born_header,
        "epsilon_header": eps_header,
        "born_blocks": born_blocks,
        "epsilon_blocks": eps_blocks,
    }
    return (born_blocks[-1] if born_blocks else None), epsilon, meta


def read_outcar(
    path: str | os.PathLike,
    *,
    structure: Atoms | str | os.PathLike | None = None,
    born_rows: BornRows | None = None,
) -> Atoms:
    """Read a LEPSILON / LCALCEPS OUTCAR into a frame.

    Born charges and ε∞ are parsed by :func:`parse_outcar_born_epsilon`; structure,
    energy (σ→0), free energy, forces and stress by ASE's ``vasp-out`` reader, unless
    ``structure`` is given.  Every labelled step of an MD/relaxation:
    :func:`read_outcar_frames`.  Ionic step (module docstring, "Which ionic step"): the first
    one (the undisplaced reference) for IBRION=5-8 runs, else the last one, each with the
    Born block of the same step when every step has one.

    Index order (see the module docstring for the evidence): each ion's rows
    ``1 Z11 Z12 Z13`` / ``2 ...`` / ``3 ...`` have the row index = field direction and the
    column = displacement direction for LEPSILON/LCALCEPS, i.e. ``Z*[k, b, a]`` already.

    Parameters
    ----------
    path : path-like
        OUTCAR.
    structure : ase.Atoms or path-like, optional
        Geometry (e.g. the run's POSCAR) to use instead of the OUTCAR's own; then no
        energy/forces/stress are attached (unless ``structure`` carries them).  Meant for
        OUTCARs without a readable geometry: :func:`ase_born.io.read_dataset` passes it
        only when this function raised :class:`OutcarGeometryError` without it.  Refused
        (``ValueError``) for an OUTCAR with a Born block per ionic step (not IBRION=5-8):
        which step the structure is cannot be told.
    born_rows : {"field", "displacement"}, optional
        What the rows of VASP's Born block are.  ``None`` (default): ``"field"``, except
        for IBRION=7,8 runs, which raise ``ValueError`` asking for an explicit choice.

    Returns
    -------
    ase.Atoms
        Frame with ``arrays["born_effective_charges"]`` ``shape=(n_atoms, 3, 3)`` (e),
        ``info["epsilon_inf"]`` ``shape=(3, 3)`` when found, energies (eV), forces (eV/Å),
        stress (eV/Å³) when read from the OUTCAR.

    Raises
    ------
    OutcarGeometryError
        (a ``ValueError``) An OUTCAR whose geometry ASE cannot parse (pass ``structure=``).
    ValueError
        No Born block, a block cut off by the end of the file, atom-count mismatch.

    Warns
    -----
    UserWarning
        Several ionic steps (not IBRION=5-8) but not one Born block per step.
    """
    return _read_outcar(path, structure, born_rows, all_steps=False)[0]


def read_outcar_frames(
    path: str | os.PathLike,
    *,
    structure: Atoms | str | os.PathLike | None = None,
    born_rows: BornRows | None = None,
) -> list[Atoms]:
    """Every labelled ionic step of an OUTCAR: one frame per step when each step of a run
    other than IBRION=5-8 has its own Born block (e.g. MD or a relaxation with LCALCEPS),
    else ``[read_outcar(path, ...)]``.

    Each frame pairs a step's structure, energy, forces and stress with that step's Born
    block and, when ε is printed at every step, its own ε∞ (module docstring, "Which ionic
    step").  With ``structure`` there is one frame.  The steps share one ``structure_id``
    (:func:`one_trajectory`).  Parameters, errors and warnings as :func:`read_outcar`.
    """
    return one_trajectory(_read_outcar(path, structure, born_rows, all_steps=True), path)


def _read_outcar(
    path: str | os.PathLike,
    structure: Atoms | str | os.PathLike | None,
    born_rows: BornRows | None,
    all_steps: bool,
) -> list[Atoms]:
    born, _, meta = parse_outcar_born_epsilon(path)
    if born is None:
        raise ValueError(
            f"{path}: no Born-charge block (a line starting with {OUTCAR_BORN_PREFIX!r}, "
            "not 'excluding local field effects'); was LEPSILON or LCALCEPS set?"
        )
    blocks = meta["born_blocks"]
    if structure is None:
        import ase.io
        from ase.io import ParseError

        try:
            images = ase.io.read(str(path), index=":", format="vasp-out")
            if isinstance(images, Atoms):  # pragma: no cover - index=":" returns a list
                images = [images]
            if not images:
                raise ValueError("no ionic step found")
        except (ParseError, StopIteration, IndexError, ValueError) as exc:
            raise OutcarGeometryError(
                f"{path}: ASE could not read the geometry from this OUTCAR ({exc}); "
                "pass structure= (--structure; e.g. the POSCAR of the run)"
            ) from exc
        steps = _steps(meta["ibrion"], len(images), len(blocks), str(path), all_steps)
    else:
        if len(blocks) > 1 and meta["ibrion"] not in PHONON_IBRION:
            # an MD/relaxation with a Born block per step: which step is the given structure?
            raise ValueError(
                f"{path}: {len(blocks)} Born-charge blocks (one per ionic step) and one structure= "
                "(--structure): which step it is cannot be told; read the OUTCAR with its own "
                "geometry (a complete OUTCAR gives one frame per step)"
            )
        images = [load_structure(structure)]
        steps = [0 if meta["ibrion"] in PHONON_IBRION else -1]
    n_steps = len(images) if structure is None else len(blocks)  # for the ε of each step
    frames = []
    for step in steps:
        atoms = images[step]  # with ``structure``: its one image (step 0 or -1)
        n = len(atoms)
        if blocks[step].shape[0] != n:
            raise ValueError(f"{path}: {blocks[step].shape[0]} Born-charge tensors for {n} atoms")
        if meta["nions"] is not None and meta["nions"] != n:
            raise ValueError(f"{path}: NIONS={meta['nions']} but the structure has {n} atoms")
        z = _orient(blocks[step], meta["ibrion"], born_rows, str(path))
        eps = _step_epsilon(meta["epsilon_blocks"], step, n_steps, meta["ibrion"])
        frames.append(build_frame(atoms, z, eps, **calculator_results(atoms)))
    return frames


__all__ = [
    "OUTCAR_BORN_HEADERS",
    "OUTCAR_BORN_PREFIX",
    "OUTCAR_EPSILON_HEADERS",
    "PHONON_IBRION",
    "OutcarGeometryError",
    "is_outcar_born_header",
    "one_trajectory",
    "parse_outcar_born_epsilon",
    "read_outcar",
    "read_outcar_frames",
    "read_vasprun",
    "read_vasprun_born_epsilon",
    "read_vasprun_frames",
]
