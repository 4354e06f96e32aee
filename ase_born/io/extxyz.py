"""Extended XYZ: the project's interchange format for Born-charge datasets.

On disk (CONVENTIONS.md "Datasets")
-----------------------------------
* per-atom ``born_effective_charges``: 9 columns, row-major ``[b, a]`` order, i.e.
  columns ``Z*[k,0,0] Z*[k,0,1] Z*[k,0,2] Z*[k,1,0] ...`` with ``b`` the field and
  ``a`` the displacement direction;
* ``info["epsilon_inf"]``: 3x3 array (dimensionless);
* ``energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, ASE sign) as ASE's own keys.

In memory (what :func:`read_frames` returns and :func:`write_frames` accepts)
-------------------------------------------------------------------------------
* ``atoms.arrays["born_effective_charges"]``: ``shape=(n_atoms, 3, 3)``, float64;
* ``atoms.info["epsilon_inf"]``: ``shape=(3, 3)`` ndarray when present;
* energy/forces/stress in a :class:`~ase.calculators.singlepoint.SinglePointCalculator`.

Why a wrapper: ``born_effective_charges`` is a registered ASE property, so plain
``ase.io.read`` puts it into ``atoms.calc.results`` with shape ``(N, 9)`` instead of
``atoms.arrays``, and writing an ``(N, 3, 3)`` array fails.  ASE's reader does the same
with every other key it knows as a calculator property (``ase.io.extxyz``'s
``per_config_properties`` such as ``polarization``, ``dipole``, ``dielectric_tensor``,
``magmom`` in ``info``; per-atom arrays such as ``charges``, ``magmoms``, ``energies``):
:func:`read_frames` puts those back where :func:`write_frames` took them from
(``info``/``arrays``), and the frame's calculator holds only energy, free_energy, forces
and stress.  ASE's writer keeps only 8 decimals, so the text is produced here with
``repr`` precision (ASE's own ``key_val_dict_to_str`` for ``info``) and read back with
ASE's reader.

What round-trips exactly (same values): species, positions, cell, pbc, Z*, ε∞, energy,
free_energy, forces, stress, per-atom float/int/bool/string arrays of shape ``(N,)`` or
``(N, k)`` with ``k > 1``, and ``info`` values that are numbers, bools, numeric arrays
of two or more elements, or non-empty strings that do not look like a number or a bool.
Not exactly, because ASE's reader parses the text back by its look: a string such as
``"T"``, ``"False"``, ``"10.0"`` or ``"3"`` comes back as a bool / float / int, ``None`` as
``True``, a list or a bool array as a NumPy array / list, a one-element array as its scalar,
Python numbers as NumPy scalars (``3`` → ``np.int64(3)``), and an ``(N, 1)`` array as
``(N,)``; an ``info["energy"]`` (or another calculator key) without a calculator comes back
in the frame's calculator.  Store such labels unambiguously (``"v10.0"``, ``"md_300K"``).
An empty (or blank) string is refused by :func:`write_frames`: ASE's reader would take the
next key's text as its value and lose that key.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ase_born.conventions import KEY_BORN, KEY_EPSILON_INF

_CALC_KEYS = ("energy", "free_energy", "forces", "stress")


def get_born_charges(atoms: Atoms) -> np.ndarray | None:
    """Return the frame's Z* as ``(n_atoms, 3, 3)`` float64, or ``None``.

    Looks in ``atoms.arrays`` first, then in ``atoms.calc.results`` (where plain
    ``ase.io.read`` puts it, flattened to 9 columns).
    """
    n = len(atoms)
    z = atoms.arrays.get(KEY_BORN)
    if z is None and atoms.calc is not None:
        z = getattr(atoms.calc, "results", {}).get(KEY_BORN)
    if z is None:
        return None
    z = np.asarray(z, dtype=float)
    if z.shape == (n, 9):
        z = z.reshape(n, 3, 3)
    if z.shape != (n, 3, 3):
        raise ValueError(f"born_effective_charges has shape {z.shape}; expected ({n}, 3, 3) or ({n}, 9)")
    return z


def set_born_charges(atoms: Atoms, z: np.ndarray) -> None:
    """Store Z* ``(n_atoms, 3, 3)`` in ``atoms.arrays`` (the in-memory convention)."""
    z = np.asarray(z, dtype=float)
    if z.shape != (len(atoms), 3, 3):
        raise ValueError(f"Born charges must have shape ({len(atoms)}, 3, 3), got {z.shape}")
    atoms.arrays[KEY_BORN] = z.copy()


def _normalise(atoms: Atoms) -> Atoms:
    """Bring a frame as read by ASE into the in-memory convention (in place).

    The calculator keeps energy/free_energy/forces/stress; every other result ASE's reader
    moved out of ``info`` (its ``per_config_properties``) or ``arrays`` goes back there.
    """
    from ase.io.extxyz import per_config_properties

    z = get_born_charges(atoms)
    results = {}
    if atoms.calc is not None:
        results = {k: v for k, v in atoms.calc.results.items() if k in _CALC_KEYS}
        for key, val in atoms.calc.results.items():
            if key in _CALC_KEYS or key == KEY_BORN:
                continue
            if key in per_config_properties:
                atoms.info[key] = val
            else:
                atoms.arrays[key] = np.asarray(val)
    for key, val in list(atoms.arrays.items()):  # ASE reads string columns as dtype=object
        if val.dtype == object and all(isinstance(x, str) for x in val.ravel()):
            atoms.arrays[key] = val.astype(str)
    if KEY_BORN in atoms.arrays:
        del atoms.arrays[KEY_BORN]
    if z is not None:
        atoms.arrays[KEY_BORN] = z
    if KEY_EPSILON_INF in atoms.info:
        atoms.info[KEY_EPSILON_INF] = np.asarray(atoms.info[KEY_EPSILON_INF], dtype=float).reshape(3, 3)
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def read_frames(path: str | os.PathLike, index: str | int | slice = ":") -> list[Atoms]:
    """Read frames from an extxyz file into the in-memory convention.

    Parameters
    ----------
    path : path-like
        extxyz file.
    index : str, int or slice
        ASE index (default all frames).
    """
    try:
        frames = ase.io.read(str(path), index=index, format="extxyz")
    except (ValueError, IndexError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        torn = _incomplete_frame(path)
        hint = "" if torn is None else (
            f"; frame {torn[0]} (line {torn[1] + 1}, byte {torn[2]}) is incomplete, as an "
            f"interrupted append leaves it: restore the file (e.g. from git) or cut it at byte {torn[2]}")
        err = type(exc) if isinstance(exc, OSError) else ValueError
        raise err(f"{path}: not readable as extxyz: {exc}{hint}") from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    return [_normalise(a) for a in frames]


def _incomplete_frame(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(frame, line, byte)`` (0-based) of a last frame with fewer lines than its atom count
    announces, as an interrupted append leaves it; None otherwise (also when the layout
    breaks elsewhere, e.g. at a count line that is not a number)."""
    try:
        lines = Path(path).read_bytes().splitlines(keepends=True)
    except OSError:
        return None
    i = offset = frame = 0
    while i < len(lines):
        try:
            n = int(lines[i].strip())
        except ValueError:
            return None
        if n >= 0 and i + 2 + n > len(lines):
            return frame, i, offset
        offset += sum(len(x) for x in lines[i:i + 2 + n])
        i += 2 + n
        frame += 1
    return None


def read_frames_by_id(path: str | os.PathLike) -> dict[str, Atoms]:
    """The frames of ``path`` keyed by ``info["structure_id"]`` (file order), for pairing
    structures across files or models.

    Raises
    ------
    ValueError
        A frame without a ``structure_id``, or several frames under one ID (the ionic
        steps of one VASP trajectory share theirs): they cannot be paired by ID.
    """
    out: dict[str, Atoms] = {}
    for i, atoms in enumerate(read_frames(path)):
        sid = atoms.info.get("structure_id")
        if sid is None:
            raise ValueError(f"{path}: frame {i} has no structure_id")
        if str(sid) in out:
            raise ValueError(f"{path}: several frames with structure_id {str(sid)!r}: one frame per structure expected")
        out[str(sid)] = atoms
    return out


def _frame_text(atoms: Atoms) -> str:
    """One extxyz frame with ``repr``-precision floats (ASE's writer keeps 8 decimals)."""
    from ase.io.extxyz import key_val_dict_to_str

    n = len(atoms)
    cols: list[tuple[str, str, np.ndarray]] = [("species", "S", np.array(atoms.get_chemical_symbols()))]
    cols.append(("pos", "R", atoms.positions))
    z = get_born_charges(atoms)
    if z is not None:
        cols.append((KEY_BORN, "R", z.reshape(n, 9)))
    info: dict = {}
    if atoms.cell.rank == 3 or atoms.pbc.any():
        info["Lattice"] = " ".join(repr(float(x)) for x in atoms.cell.array.reshape(9))
    results = {}
    if atoms.calc is not None:
        results = {k: v for k, v in atoms.calc.results.items() if k in _CALC_KEYS}
    if "forces" in results:
        cols.append(("forces", "R", np.asarray(results["forces"], dtype=float)))
    for key, val in atoms.arrays.items():
        if key in ("numbers", "positions", KEY_BORN):
            continue
        arr = np.asarray(val)
        kind = {"f": "R", "i": "I", "b": "L", "U": "S", "S": "S"}.get(arr.dtype.kind)
        if kind is None or arr.ndim > 2:
            raise ValueError(f"cannot write per-atom array {key!r} of dtype {arr.dtype}, shape {arr.shape}")
        cols.append((key, kind, arr.reshape(n, -1)))
    info["Properties"] = ":".join(f"{name}:{kind}:{1 if a.ndim == 1 else a.shape[1]}" for name, kind, a in cols)
    for k in ("energy", "free_energy"):
        if k in results:
            info[k] = float(results[k])
    if "stress" in results:
        from ase.stress import voigt_6_to_full_3x3_stress

        s = np.asarray(results["stress"], dtype=float)
        full = voigt_6_to_full_3x3_stress(s) if s.shape == (6,) else s.reshape(3, 3)
        info["stress"] = " ".join(repr(float(x)) for x in full.reshape(9))
    for k, v in atoms.info.items():
        if k in info:
            raise ValueError(f"info key {k!r} collides with a reserved extxyz key")
        if isinstance(v, (str, np.str_)) and not str(v).strip():
            # written as `key=` (or `key=""`), ASE's reader takes the NEXT key=value pair as
            # its value: that key (e.g. structure_id) would be lost without an error
            raise ValueError(f"info[{k!r}] is an empty string, which extxyz cannot hold: drop it or give it a value")
        info[k] = np.asarray(v, dtype=float).reshape(3, 3) if k == KEY_EPSILON_INF else v
    info["pbc"] = " ".join("T" if p else "F" for p in atoms.pbc)
    # key_val_dict_to_str would quote our preformatted strings: build the Lattice/
    # Properties/stress/pbc part by hand and let ASE serialise the rest.
    raw = {k: info.pop(k) for k in ("Lattice", "Properties", "stress", "pbc") if k in info}
    head = " ".join(f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in raw.items())
    rest = key_val_dict_to_str(info) if info else ""
    lines = [str(n), (head + " " + rest).strip()]

    def fmt(kind: str, x) -> str:
        if kind == "R":
            return repr(float(x))
        if kind == "L":
            return "T" if x else "F"
        return str(x)

    for i in range(n):
        fields = []
        for _, kind, a in cols:
            row = a[i] if a.ndim == 2 else [a[i]]
            fields.extend(fmt(kind, x) for x in row)
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def frames_to_string(frames: Iterable[Atoms]) -> str:
    """Serialise frames to extxyz text with full float precision (exact round-trip)."""
    return "".join(_frame_text(a) for a in frames)


def write_frames(path: str | os.PathLike, frames: Atoms | Sequence[Atoms], append: bool = False) -> None:
    """Write frames to ``path`` in the project's extxyz convention.

    ``append=False`` writes a temporary file and renames it over ``path`` (atomic; the
    temporary file is removed if writing fails).  ``append=True`` appends under an
    exclusive ``flock``, then ``fsync``: concurrent writers never interleave, and if
    the write fails part-way (disk full, file-size limit, interrupt) the file is truncated
    back to its length before the append and the exception is re-raised, so no half frame
    is left behind.  An existing file whose last line lacks its newline gets one first
    (otherwise the next frame's atom count would be glued to that line).
    """
    if isinstance(frames, Atoms):
        frames = [frames]
    data = frames_to_string(frames).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if append:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            end = os.lseek(fd, 0, os.SEEK_END)  # under the lock: no other writer moves it
            try:
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    data = b"\n" + data
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)  # also releases the lock
    else:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
