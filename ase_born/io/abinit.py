"""Read ABINIT main output files (``.abo``/``.out``) into training frames.

What is read
------------
* Structure, energy, forces, stress from the final echo of variables
  ("-outvars: echo values of variables after computation"): ``acell`` (Bohr),
  ``rprim``, ``xred``, ``typat``, ``znucl``, ``etotal`` (Ha), ``fcart`` (Ha/Bohr),
  ``strten`` (Ha/Bohr³, Voigt order 11 22 33 32 31 21 = ASE's xx yy zz yz xz xy).
  ABINIT's stress sign is ASE's: positive = tensile, ``P = -tr(σ)/3`` (checked on
  the "Pressure=" line of ABINIT's own output).  With several datasets, the
  structure is that of the last dataset, while ``etotal``/``fcart``/``strten`` are
  taken only from a ground-state dataset (``optdriver`` 0, read per dataset; the
  last one that echoes them): in a response-function (DFPT, ``optdriver`` 1)
  dataset ABINIT echoes a second-order energy as ``etotal`` and zeros as
  ``fcart``/``strten``.  An output without a ground-state dataset (e.g. an
  electric-field run on its own) gives no energy/forces/stress and a
  ``UserWarning``; so does a ground-state dataset whose structure differs from the
  last dataset's (the forces would belong to another geometry).
* Born effective charges from the table "Effective charges, in cartesian
  coordinates, (from electric field response)" and the clamped-ion dielectric
  tensor ε∞ from "Dielectric tensor, in cartesian coordinates".

ABINIT's response tables and the project's index order
-------------------------------------------------------
Each table line is ``dir1 pert1 dir2 pert2 real imag``: a pair of perturbations,
each a (direction, perturbation) pair.  ABINIT numbers perturbations as
``1..natom`` = displacement of atom ``pert`` along Cartesian ``dir``,
``natom+1`` = d/dk, ``natom+2`` = homogeneous electric field along ``dir``
(ABINIT documentation of ``rfatpol``/``rfelfd`` and of the DDB blocks).  In the
"from electric field response" table, ``j1`` is the atomic displacement and ``j2``
the field.  The mapping does NOT rely on that column order: for every line, the
pair whose ``pert == natom+2`` gives the field direction ``b``, the other gives the
atom ``k`` and displacement direction ``a``, and the value is stored as
``Z*[k-1, b-1, a-1]`` — the CONVENTIONS.md order ``Z*[k, b, a] = ∂F_{k,a}/∂(eE_b)``.
The test ``tests/unit/test_io_abinit.py`` pins this on a real low-symmetry
CaTiO3 output whose Ti tensor is not symmetric.

The raw tensors are returned (ABINIT imposes no sum rule on this table unless
``asr`` is set in the input); ``info["acoustic_sum"]`` holds
``Σ_k Z*[k]`` (3x3, e) of the raw output.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from ase_born.conventions import BOHR_A, HARTREE_EV, KEY_ACOUSTIC_SUM, KEY_BORN, KEY_EPSILON_INF

_ECHO_START = "-outvars: echo values of variables after computation"
_ECHO_END = "================================================================================"
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?"
_VAR_LINE = re.compile(r"^\s{1,20}([a-z][a-z_0-9]*?)(\d*)\s+(" + _NUM + r"(?:\s+" + _NUM + r")*)\s*(\w+)?\s*$")
_CONT_LINE = re.compile(r"^\s+(" + _NUM + r"(?:\s+" + _NUM + r")*)\s*$")


class AbinitParseError(ValueError):
    """The file is not a (complete) ABINIT output with the requested data."""


def _to_float(tok: str) -> float:
    return float(tok.replace("D", "E").replace("d", "e"))


def parse_final_echo(text: str) -> dict[str, dict[int, np.ndarray]]:
    """Variables echoed after the computation.

    Returns
    -------
    dict
        ``{name: {dataset: values}}``; dataset 0 means "no dataset suffix".
        Values are flat float arrays in the unit ABINIT prints (atomic units,
        except where a unit word follows, which is ignored here: ``acell`` and
        the structure are always echoed in Bohr).
    """
    start = text.rfind(_ECHO_START)
    if start < 0:
        raise AbinitParseError("no final echo of variables (run incomplete or not an ABINIT output)")
    block = text[start:].split("\n")[1:]
    out: dict[str, dict[int, list[float]]] = {}
    current = None
    for line in block:
        if line.startswith((_ECHO_END, " chkinp")) or "== END DATASET" in line:
            break
        m = _VAR_LINE.match(line)
        if m:
            name, ds, nums = m.group(1), m.group(2), m.group(3)
            current = out.setdefault(name, {}).setdefault(int(ds) if ds else 0, [])
            current.extend(_to_float(t) for t in nums.split())
            continue
        m = _CONT_LINE.match(line)
        if m and current is not None:
            current.extend(_to_float(t) for t in m.group(1).split())
        else:
            current = None
    return {k: {d: np.array(v) for d, v in dsets.items()} for k, dsets in out.items()}


def _last(echo: dict, name: str) -> np.ndarray | None:
    if name not in echo:
        return None
    dsets = echo[name]
    return dsets[max(dsets)]


def _of_dataset(echo: dict, name: str, dataset: int) -> np.ndarray | None:
    """Value of ``name`` in ``dataset``: its own (suffixed) echo, else the common one."""
    dsets = echo.get(name)
    if not dsets:
        return None
    return dsets.get(dataset, dsets.get(0))


def _dataset_ids(echo: dict) -> list[int]:
    """Datasets of the run in order (``jdtset``, else ``1..ndtset``); ``[0]`` for a single one."""
    jdtset = _last(echo, "jdtset")
    if jdtset is not None and jdtset.size:
        return [int(d) for d in jdtset]
    ndtset = _last(echo, "ndtset")
    if ndtset is not None and int(ndtset[0]) > 0:
        return list(range(1, int(ndtset[0]) + 1))
    return [0]


def ground_state_datasets(echo: dict) -> list[int]:
    """Datasets of a final echo that are ground-state runs (``optdriver`` 0, the default).

    Parameters
    ----------
    echo : dict
        :func:`parse_final_echo` output.

    Returns
    -------
    list of int
        Dataset numbers in run order; ``0`` stands for a run without datasets.
    """
    out = []
    for d in _dataset_ids(echo):
        optdriver = _of_dataset(echo, "optdriver", d)
        if optdriver is None or int(optdriver[0]) == 0:
            out.append(d)
    return out


def _response_table(text: str, header: str) -> list[tuple[int, int, int, int, float]]:
    """Rows ``(dir1, pert1, dir2, pert2, real)`` of the LAST table with ``header``; the rows
    must start within :data:`_TABLE_START_LINES` lines of it (ABINIT prints 3-4 header lines),
    so a header without its table (a truncated output) does not pick up later lines."""
    pos = text.rfind(header)
    if pos < 0:
        return []
    rows = []
    lines = text[pos:].split("\n")
    started = False
    for i, line in enumerate(lines[1:], start=1):
        parts = line.split()
        if len(parts) == 6 and all(p.lstrip("-").isdigit() for p in parts[:4]):
            started = True
            d1, p1, d2, p2 = (int(p) for p in parts[:4])
            rows.append((d1, p1, d2, p2, _to_float(parts[4])))
        elif (parts if started else i > _TABLE_START_LINES):  # the table ended / never began
            break
    return rows


#: lines after a response-table header within which its first row must appear
_TABLE_START_LINES = 8


def born_charges_from_table(
    rows: Sequence[tuple[int, int, int, int, float]], natom: int, complete: bool = True
) -> np.ndarray:
    """Z* ``(natom, 3, 3)`` in CONVENTIONS order from ABINIT table rows (see module doc);
    with ``complete=False`` elements absent from ``rows`` are NaN instead of an error."""
    z = np.full((natom, 3, 3), np.nan)
    field = natom + 2
    for d1, p1, d2, p2, val in rows:
        if p2 == field and 1 <= p1 <= natom:
            k, a, b = p1, d1, d2
        elif p1 == field and 1 <= p2 <= natom:
            k, a, b = p2, d2, d1
        else:
            continue
        z[k - 1, b - 1, a - 1] = val
    if complete and np.isnan(z).any():
        missing = sorted({int(i) + 1 for i in np.argwhere(np.isnan(z))[:, 0]})
        raise AbinitParseError(f"effective-charge table incomplete (atoms {missing}); use rfdir 1 1 1 and all atoms")
    return z


def dielectric_from_table(rows: Sequence[tuple[int, int, int, int, float]], natom: int) -> np.ndarray:
    """ε∞ ``(3, 3)`` from the rows with both perturbations = electric field."""
    eps = np.full((3, 3), np.nan)
    for d1, p1, d2, p2, val in rows:
        if p1 == natom + 2 and p2 == natom + 2:
            eps[d1 - 1, d2 - 1] = val
    if np.isnan(eps).any():
        raise AbinitParseError("dielectric tensor table incomplete")
    return eps


def _atoms_from_echo(echo: dict, dataset: int | None = None) -> Atoms:
    """Structure of ``dataset`` (default: the last dataset that echoes each variable)."""

    def get(name: str) -> np.ndarray | None:
        return _last(echo, name) if dataset is None else _of_dataset(echo, name, dataset)

    acell = get("acell")
    rprim = get("rprim")
    xred = get("xred")
    typat = get("typat")
    znucl = get("znucl")
    if xred is None or typat is None or znucl is None:
        raise AbinitParseError("structure (xred/typat/znucl) missing from the final echo")
    acell = np.ones(3) if acell is None else acell
    rprim = np.eye(3) if rprim is None else rprim.reshape(3, 3)
    cell = rprim * acell[:, None] * BOHR_A
    numbers = [round(znucl[int(t) - 1]) for t in typat]
    return Atoms(
        symbols=[chemical_symbols[n] for n in numbers],
        scaled_positions=xred.reshape(-1, 3),
        cell=cell,
        pbc=True,
    )


def structure_difference(a: Atoms, b: Atoms, tol_A: float = 1e-6) -> str | None:
    """How structure ``b`` differs from ``a`` (species order, cell, or positions up to
    lattice translations, by more than ``tol_A``), or None when they are the same."""
    if a.get_chemical_symbols() != b.get_chemical_symbols():
        return "species order differs"
    dcell = np.abs(a.cell.array - b.cell.array).max()
    frac = b.get_scaled_positions(wrap=False) - a.get_scaled_positions(wrap=False)
    dpos = np.abs((frac - np.round(frac)) @ a.cell.array).max()
    if dpos > tol_A or dcell > tol_A:
        return f"|Δr| {dpos:.2e} Å, |Δcell| {dcell:.2e} Å"
    return None


_CPU_RE = re.compile(r"^\+Overall time at end \(sec\) : cpu=\s*([0-9.Ee+-]+)\s+wall=\s*([0-9.Ee+-]+)", re.MULTILINE)


def read_run_times(path: str | os.PathLike) -> tuple[float, float] | None:
    """``(cpu_s, wall_s)`` of a finished ABINIT run, summed over its MPI processes.

    From the ``+Overall time at end (sec) : cpu= ... wall= ...`` line of the ``.abo``;
    ``None`` if the file or the line is missing. CPU seconds do not count time the
    processes spent stopped or waiting for a busy core, so they measure the cost of a run
    on a shared machine better than the wall clock.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    m = _CPU_RE.findall(text)
    return (float(m[-1][0]), float(m[-1][1])) if m else None


_ETOT_RE = re.compile(r"^[ -]ETOT\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)


def read_scf_history(path: str | os.PathLike) -> list[tuple[int, float, float]]:
    """``(iteration, residm, vres2)`` of each SCF iteration printed in an ABINIT log or
    output (its ``ETOT`` lines: ground state and DFPT alike; a ddk run prints vres2 0);
    ``[]`` when the file or the lines are missing.  A file holding several SCF cycles
    (datasets, a continued run's log) gives them in order."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    rows = []
    for m in _ETOT_RE.finditer(text):
        try:
            rows.append((int(m.group(1)), _to_float(m.group(4)), _to_float(m.group(5))))
        except ValueError:
            continue
    return rows


def _ground_state_results(echo: dict, atoms: Atoms, source: str | os.PathLike) -> dict:
    """energy/free_energy (eV), forces (eV/Å), stress (eV/Å³) of the last ground-state
    dataset that echoes them (module docstring); ``{}`` with a warning if there is none."""
    names = ("etotal", "fcart", "strten")
    gs = [
        d
        for d in ground_state_datasets(echo)
        if any(_of_dataset(echo, n, d) is not None for n in names)
    ]
    if not gs:
        if any(n in echo for n in names):
            warnings.warn(
                f"{source}: no ground-state dataset (optdriver 0) in this ABINIT output; its "
                "etotal/fcart/strten are those of response-function datasets (second-order "
                "energy, zero forces/stress), so no energy, forces or stress are attached",
                stacklevel=3,
            )
        return {}
    dataset = gs[-1]
    gs_atoms = _atoms_from_echo(echo, dataset)
    if (
        gs_atoms.get_chemical_symbols() != atoms.get_chemical_symbols()
        or np.abs(gs_atoms.cell.array - atoms.cell.array).max() > 1e-6
        or np.abs(gs_atoms.positions - atoms.positions).max() > 1e-6
    ):
        warnings.warn(
            f"{source}: the ground-state dataset {dataset} has another structure than the last "
            "dataset; no energy, forces or stress are attached",
            stacklevel=3,
        )
        return {}
    results = {}
    etotal = _of_dataset(echo, "etotal", dataset)
    if etotal is not None:
        results["energy"] = results["free_energy"] = float(etotal[0]) * HARTREE_EV
    fcart = _of_dataset(echo, "fcart", dataset)
    if fcart is not None:
        results["forces"] = fcart.reshape(len(atoms), 3) * (HARTREE_EV / BOHR_A)
    strten = _of_dataset(echo, "strten", dataset)
    if strten is not None:
        results["stress"] = strten.reshape(6) * (HARTREE_EV / BOHR_A**3)
    return results


def _version(text: str) -> str | None:
    m = re.search(r"\.Version\s+(\S+)\s+of ABINIT", text)
    return m.group(1) if m else None


def read_abinit_output(
    path: str | os.PathLike,
    response_path: str | os.PathLike | None = None,
) -> Atoms:
    """Read an ABINIT output into a frame.

    Parameters
    ----------
    path : path-like
        Main output with the ground state (energy/forces/stress) — or any ABINIT
        output, single- or multi-dataset; whatever is present is read.  Energy,
        forces and stress come only from a ground-state dataset (``optdriver`` 0; see
        the module docstring).
    response_path : path-like, optional
        Separate output of the electric-field DFPT run (as written by
        :func:`ase_born.dft.abinit.run_structure`); when omitted, the response
        tables are searched in ``path``.  Its echoed structure must be ``path``'s
        (:func:`structure_difference`), else :class:`AbinitParseError`.

    Returns
    -------
    ase.Atoms
        Structure (Å) of the last dataset, with a SinglePointCalculator holding
        ``energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE sign, Voigt) of the
        last ground-state dataset when present; ``arrays["born_effective_charges"]``
        ``(N, 3, 3)`` (e,
        CONVENTIONS order) and ``info["epsilon_inf"]`` ``(3, 3)`` when present;
        ``info["acoustic_sum"]`` ``(3, 3)`` = raw Σ_k Z*_k; ``info["abinit_version"]``,
        ``info["ecut_Ha"]``, ``info["ngkpt"]``, ``info["ixc"]`` when echoed.

    Warns
    -----
    UserWarning
        When ``path`` has ``etotal``/``fcart``/``strten`` but no ground-state dataset
        (e.g. an electric-field DFPT output read on its own), or its ground-state
        dataset has another structure than the last dataset: no energy, forces or
        stress are attached then.
    """
    text = Path(path).read_text(errors="replace")
    echo = parse_final_echo(text)
    atoms = _atoms_from_echo(echo)
    natom = len(atoms)
    results = _ground_state_results(echo, atoms, path)

    rtext = Path(response_path).read_text(errors="replace") if response_path is not None else text
    if response_path is not None:
        try:
            other = _atoms_from_echo(parse_final_echo(rtext))
        except AbinitParseError:
            other = None  # no structure echoed: nothing to compare
        diff = None if other is None else structure_difference(atoms, other)
        if diff is not None:
            raise AbinitParseError(f"{response_path}: another structure than {path} ({diff}); the ground "
                                   "state and the electric-field response must be of one structure")
    zrows = _response_table(rtext, "(from electric field response)")
    if zrows:
        z = born_charges_from_table(zrows, natom)
        atoms.arrays[KEY_BORN] = z
        atoms.info[KEY_ACOUSTIC_SUM] = z.sum(axis=0)
    erows = _response_table(rtext, "Dielectric tensor, in cartesian coordinates")
    if erows:
        atoms.info[KEY_EPSILON_INF] = dielectric_from_table(erows, natom)
    if response_path is not None and not zrows:
        raise AbinitParseError(f"{response_path}: no Born charges from the electric-field response")

    version = _version(text)
    if version:
        atoms.info["abinit_version"] = version
    for key, name in (("ecut", "ecut_Ha"), ("ixc", "ixc")):
        v = _last(echo, key)
        if v is not None:
            atoms.info[name] = float(v[0]) if key == "ecut" else int(v[0])
    ngkpt = _last(echo, "ngkpt")
    if ngkpt is not None:
        atoms.info["ngkpt"] = ngkpt.astype(int)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


# --- derivative databases (DDB) of electric-field runs ------------------------------------------

_DDB_HEADER_END = "Description of the potentials"


def read_ddb(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[tuple[int, int, int, int], float]]:
    """Header and second-derivative elements of an ABINIT DDB text file.

    Returns
    -------
    header : dict
        Header variables as float arrays (``natom``, ``acell``, ``rprim``, ``typat``,
        ``zion``, ...; ``D`` exponents read).
    elements : dict
        ``(dir1, pert1, dir2, pert2) -> real part`` of every "2nd derivatives" block
        (directions in REDUCED coordinates; perturbations numbered as in the module doc).

    Raises
    ------
    AbinitParseError
        Naming the file, when it is not a DDB or is incomplete or malformed: a structure
        header variable of the wrong size, no database section, fewer data blocks than
        its "Number of data blocks", a block with fewer element lines than its
        "# elements" or a line that is not ``dir1 pert1 dir2 pert2 re im``, or a last line
        without its newline (a file cut while it was written or copied).  A truncated DDB
        must not give other Born charges silently.
    """
    text = Path(path).read_text(errors="replace")
    if "DERIVATIVE DATABASE" not in text:
        raise AbinitParseError(f"{path}: not an ABINIT DDB file")
    if not text.endswith("\n"):
        raise AbinitParseError(f"{path}: incomplete DDB (its last line has no newline: truncated?)")
    head = text.split(_DDB_HEADER_END, 1)[0]
    header: dict[str, list[float]] = {}
    name = None
    for line in head.splitlines()[2:]:
        parts = line.split()
        if not parts:
            continue
        if re.fullmatch(r"[a-z_]+", parts[0]):
            name, vals, new_name = parts[0], parts[1:], True
        elif name is None:
            continue
        else:
            vals, new_name = parts, False
        try:
            values = [_to_float(v) for v in vals]
        except ValueError:  # free text: a "name" that is not a variable, or the text after the last one
            if new_name:
                header.pop(name, None)
            name = None
            continue
        if new_name:
            header[name] = []
        header[name].extend(values)
    header_arrays = {k: np.asarray(v) for k, v in header.items()}
    _check_ddb_header(path, header_arrays)
    lines = text.splitlines()
    declared = next((ln for ln in lines if "Number of data blocks" in ln), None)
    if declared is None:
        raise AbinitParseError(f"{path}: incomplete DDB (no database section with its number of data blocks)")
    try:
        n_blocks = int(declared.split("=")[-1])
    except ValueError:
        raise AbinitParseError(f"{path}: malformed line {declared.strip()!r}") from None
    starts = [i for i, line in enumerate(lines) if "# elements" in line]
    if len(starts) != n_blocks:
        raise AbinitParseError(f"{path}: incomplete DDB ({len(starts)} of {n_blocks} data blocks)")
    elements: dict[tuple[int, int, int, int], float] = {}
    for i in starts:
        line = lines[i]
        if "2nd derivatives" not in line:
            continue
        try:
            n = int(line.split(":")[-1])
        except ValueError:
            raise AbinitParseError(f"{path}: malformed block header on line {i + 1}: {line.strip()!r}") from None
        if i + 1 >= len(lines) or lines[i + 1].split()[:1] != ["qpt"]:
            raise AbinitParseError(f"{path}: block on line {i + 1} has no qpt line")
        rows = lines[i + 2 : i + 2 + n]  # after the "qpt" line
        if len(rows) < n:
            raise AbinitParseError(f"{path}: incomplete DDB (block on line {i + 1} has {len(rows)} of {n} elements)")
        for j, row in enumerate(rows, start=i + 3):
            p = row.split()
            try:
                if len(p) != 6 or not all(_DDB_NUMBER.fullmatch(v) for v in p[4:]):
                    raise ValueError
                key = (int(p[0]), int(p[1]), int(p[2]), int(p[3]))
            except ValueError:
                raise AbinitParseError(f"{path}: malformed element on line {j}: {row.strip()!r}") from None
            elements[key] = _to_float(p[4])
    return header_arrays, elements


#: a real number as ABINIT writes DDB elements (Fortran ``D`` or ``E`` exponent)
_DDB_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([DdEe][-+]?\d+)?")


def _check_ddb_header(path: str | os.PathLike, header: dict[str, np.ndarray]) -> None:
    """Raise :class:`AbinitParseError` unless the structure variables have their sizes."""
    if header.get("natom") is None or header["natom"].size != 1:
        raise AbinitParseError(f"{path}: malformed DDB header (natom)")
    natom = int(header["natom"][0])
    ntypat = int(header["ntypat"][0]) if header.get("ntypat") is not None and header["ntypat"].size else None
    sizes = {"acell": 3, "rprim": 9, "typat": natom, "xred": 3 * natom, "zion": ntypat}
    bad = [k for k, n in sizes.items() if header.get(k) is None or (n is not None and header[k].size != n)]
    if bad:
        raise AbinitParseError(f"{path}: malformed DDB header ({', '.join(bad)} missing or of the wrong size)")


def response_from_ddb(paths: Sequence[str | os.PathLike], partial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Born charges and ε∞ from the DDBs of electric-field runs (one or several directions).

    The DDB stores mixed derivatives in reduced coordinates; in Cartesian ones
    (checked against ABINIT's own printed tables to 5e-11 on a non-orthogonal cell,
    ``tests/unit/test_io_abinit.py``)::

        Z*[k, a, b] = zion_k δ_ab + Σ_ij (R/2π)[a, i] · D[k, i, j] · G[b, j]
        ε∞[a, b]   = δ_ab − (4π/Ω) Σ_ij (R/2π)[a, i] · DE[i, j] · (R/2π)[b, j]

    with ``R`` the lattice vectors as columns (Bohr), ``G = R⁻ᵀ`` (reciprocal vectors
    as columns, no 2π), ``D[k, i, j]`` the element (atom ``k`` displaced along reduced
    ``j``, field along reduced ``i``), ``DE`` the field-field block and Ω the volume
    (Bohr³).  Z* is returned in CONVENTIONS order ``Z*[k, field, displacement]``.

    The field-field block is symmetric; an element present in only one order is used
    for both.  A run of field direction ``i`` contains ``DE[i, j]`` only for the ddk
    directions ``j`` it could read, so runs that together hold the lower triangle give
    the whole tensor; elements found in no file leave ε∞ entries NaN (a Cartesian
    element mixes several reduced ones).

    With ``partial=True`` missing field directions are allowed (a structure whose
    directions are not all finished): the Z* rows ``Z*[:, a, :]`` that mix a missing
    reduced direction are NaN (in an orthogonal cell, field direction ``i`` alone gives
    the Cartesian row ``a = i``).

    Raises
    ------
    AbinitParseError
        When the files disagree on the structure or (unless ``partial``) a field
        direction is missing (every Z* element needs all three).
    """
    header, elements = None, {}
    for p in paths:
        h, el = read_ddb(p)
        if header is None:
            header = h
        elif any(not np.allclose(h[k], header[k]) for k in ("natom", "acell", "rprim", "xred", "typat")):
            raise AbinitParseError(f"{p}: DDB of another structure than {paths[0]}")
        elements.update(el)
    if header is None:
        raise AbinitParseError("no DDB files given")
    natom = int(header["natom"][0])
    field = natom + 2
    rprimd = header["rprim"].reshape(3, 3) * header["acell"][:, None]  # rows = lattice vectors
    r = rprimd.T / (2.0 * np.pi)
    g = np.linalg.inv(rprimd)  # columns: reciprocal vectors (no 2π), G = R^-T
    zion = header["zion"][header["typat"].astype(int) - 1]
    present = {d2 for (_, p1, d2, p2) in elements if p2 == field and 1 <= p1 <= natom}
    missing = [i for i in (1, 2, 3) if i not in present]
    if missing and not partial:
        raise AbinitParseError(f"electric-field direction(s) {missing} (reduced) missing from the DDB files")
    # the same (field, atom) mapping as the printed tables, in reduced directions: d[k, field i, displacement j]
    d = born_charges_from_table([(*key, val) for key, val in elements.items()], natom, complete=not partial)
    mixes = (np.abs(r) > 1e-12).astype(float)  # [a, i]: Cartesian a involves reduced i
    z = np.einsum("ai,kij,bj->kab", r, np.nan_to_num(d), g) + zion[:, None, None] * np.eye(3)
    z[:, mixes @ np.isnan(d).any(axis=(0, 2)) > 0, :] = np.nan  # rows that need a missing field direction
    de = np.full((3, 3), np.nan)
    for i in range(3):
        for j in range(3):
            vals = [elements[key] for key in ((i + 1, field, j + 1, field), (j + 1, field, i + 1, field)) if key in elements]
            if vals:
                de[i, j] = float(np.mean(vals))
    volume = abs(np.linalg.det(rprimd))
    eps = np.eye(3) - 4.0 * np.pi / volume * (r @ np.nan_to_num(de) @ r.T)
    # a Cartesian element is unknown if it mixes an unknown reduced one
    eps[mixes @ np.isnan(de).astype(float) @ mixes.T > 0] = np.nan
    return z, eps
