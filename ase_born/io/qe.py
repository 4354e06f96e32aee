"""Quantum ESPRESSO ``ph.x`` output (``epsil=.true.``) -> frames.

What ph.x prints (``PHonon/PH/summarize.f90`` and later versions)
--------------------------------------------------------------------
* ``Dielectric constant in cartesian axis`` then three rows ``( e1 e2 e3 )``: ε∞
  (ion-clamped, electronic).  The ``(DV_Hxc=0)`` and ``RPA`` variants are not used.
* ``Effective charges (d Force / dE) in cartesian axis`` (older versions) or
  ``... in cartesian axis without acoustic sum rule applied (asr)`` (newer versions, e.g.
  7.x): per atom a line ``atom  k  label [Mean Z*: ...]`` and three rows
  ``Ex ( . . . )``, ``Ey``, ``Ez``.  Newer versions then print ``Effective charges Sum``
  and ``... with asr applied:`` with rows ``E*x``, ``E*y``, ``E*z``.
* ``Effective charges (d P / du) in cartesian axis`` (only with ``zue=.true.``): rows
  ``Px``, ``Py``, ``Pz``.

QE's index order and the conversion
-----------------------------------
``summarize_zeu`` writes row ``Ex`` as ``(zstareu(1, jpol, na), jpol = 1, 3)`` (``Ey``:
``zstareu(2, ...)``, ...), and ``efield_mod`` documents ``zstareu(3, 3, nat)`` as "the
effective charges Z(E,Us)": first index the field E, second the displacement Us.  So row =
field direction ``b``, column = force/displacement direction ``a``: the printed block is
``Z*[k, b, a]`` = dF_{k,a}/d(e E_b) (CONVENTIONS order), no transpose.
``summarize_zue`` writes row ``Px`` as ``(zstarue(ipol, na, 1), ipol = 1, 3)`` with
``zstarue(3, nat, 3)`` = "Z(Us,E)": row = polarization direction ``b``, column =
displacement ``a``: also ``Z*[k, b, a]`` = (Ω/e) dP_b/du_{k,a}, no transpose.

Default block: the raw ``(d Force / dE)`` one (no ASR applied), as CONVENTIONS asks
datasets to store raw Z*.  phonopy's ``phonopy-qe-born`` (``phonopy.cui.
phonopy_qe_born_script.parse_ph_out``) reads the same block, rows unchanged, but only with
the newer header and fixed line offsets; ASE's ``read_espresso_ph`` rounds Z* to 5
decimals and keeps the last ``d Force / dE`` block (the ASR one when both are printed), so
the block is parsed here.  Both are used as cross-checks in the tests.

ε∞ is symmetric for the non-magnetic systems ph.x treats, so its row/column order is
immaterial (``summarize_epsilon`` prints ``((epsilon(i, j), i=1,3), j=1,3)``, older
``write_epsilon_and_zeu`` row-wise); the rows are read as printed.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from ase_born.io import build_frame, calculator_results, load_structure

BornBlock = Literal["dF/dE", "dF/dE-asr", "dP/du"]
BORN_BLOCKS: tuple[str, ...] = ("dF/dE", "dF/dE-asr", "dP/du")

_EPS_HEADER = "Dielectric constant in cartesian axis"
_ZEU_HEADER = "Effective charges (d Force / dE) in cartesian axis"
_ZUE_HEADER = "Effective charges (d P / du) in cartesian axis"
_ATOM_RE = re.compile(r"^\s*atom\s+(\d+)\s+(\S+)")
_ROW_RE = re.compile(r"^\s*(E\*?|P)([xyz])\s*\((.*)\)\s*$")
_EPS_ROW_RE = re.compile(r"^\s*\((.*)\)\s*$")
_NAT_RE = re.compile(r"number of atoms/cell\s*=\s*(\d+)")


def _three(s: str, where: str) -> list[float]:
    parts = s.split()
    if len(parts) != 3:
        raise ValueError(f"{where}: expected 3 numbers, got {s.strip()!r}")
    try:
        return [float(x.replace("D", "E").replace("d", "e")) for x in parts]
    except ValueError as exc:
        raise ValueError(f"{where}: unreadable number in {s.strip()!r}") from exc


def _block_name(stripped: str) -> str | None:
    if stripped.startswith(_ZEU_HEADER):
        return "dF/dE-asr" if "with asr applied" in stripped else "dF/dE"
    if stripped.startswith(_ZUE_HEADER):
        return "dP/du"
    return None


def _parse_born_block(lines: list[str], i: int, where: str) -> tuple[np.ndarray, list[str]]:
    tensors: list[list[list[float]]] = []
    labels: list[str] = []
    expect = "xyz"
    j = i + 1
    while j < len(lines):
        line = lines[j]
        if not line.strip():
            j += 1
            continue
        m_atom = _ATOM_RE.match(line)
        m_row = _ROW_RE.match(line)
        if m_atom:
            k = int(m_atom.group(1))
            if tensors and len(tensors[-1]) != 3:
                raise ValueError(
                    f"{where}: atom {len(tensors)} has {len(tensors[-1])} rows, expected 3"
                )
            if k != len(tensors) + 1:
                raise ValueError(
                    f"{where}: atom {k} found where atom {len(tensors) + 1} was expected"
                )
            tensors.append([])
            labels.append(m_atom.group(2))
        elif m_row and tensors:
            r = len(tensors[-1])
            if r >= 3 or m_row.group(2) != expect[r]:
                raise ValueError(
                    f"{where}: unexpected row {line.strip()!r} for atom {len(tensors)}"
                )
            tensors[-1].append(_three(m_row.group(3), f"{where}, atom {len(tensors)}"))
        else:
            break
        j += 1
    if not tensors or len(tensors[-1]) != 3:
        raise ValueError(f"{where}: incomplete effective-charge block")
    return np.array(tensors, dtype=float), labels


def parse_ph_output(path: str | os.PathLike) -> dict:
    """Dielectric tensor and effective-charge blocks of a ph.x output, as printed.

    Parameters
    ----------
    path : path-like
        ph.x standard output (``epsil=.true.``; ``zue=.true.`` adds the dP/du block).

    Returns
    -------
    dict
        ``"epsilon"``: ``shape=(3, 3)`` or ``None`` (last block);
        ``"born"``: ``{block: shape=(n_atoms, 3, 3)}`` for the blocks found among
        :data:`BORN_BLOCKS` (last occurrence of each), rows as printed = ``Z*[k, b, a]``;
        ``"labels"``: ``{block: [species label per atom]}``;
        ``"nat"``: ``number of atoms/cell`` or ``None``.
    """
    lines = Path(path).read_text(errors="replace").splitlines()
    out: dict = {"epsilon": None, "born": {}, "labels": {}, "nat": None}
    for i, line in enumerate(lines):
        stripped = line.strip()
        if out["nat"] is None:
            m = _NAT_RE.search(line)
            if m:
                out["nat"] = int(m.group(1))
        if stripped == _EPS_HEADER:
            rows = []
            j = i + 1
            while len(rows) < 3 and j < len(lines):
                if lines[j].strip():
                    m = _EPS_ROW_RE.match(lines[j])
                    if not m:
                        raise ValueError(
                            f"{path}:{j + 1}: dielectric row expected, got {lines[j].strip()!r}"
                        )
                    rows.append(_three(m.group(1), f"{path}:{j + 1}"))
                j += 1
            if len(rows) != 3:
                raise ValueError(f"{path}:{i + 1}: incomplete dielectric tensor")
            out["epsilon"] = np.array(rows, dtype=float)
            continue
        name = _block_name(stripped)
        if name is not None:
            z, labels = _parse_born_block(lines, i, f"{path}:{i + 1}")
            out["born"][name] = z
            out["labels"][name] = labels
    return out


def _label_to_symbol(label: str) -> str | None:
    """QE species label (``Ti``, ``O1``, ``Fe_up``) -> element symbol, or None."""
    letters = re.match(r"[A-Za-z]+", label)
    if not letters:
        return None
    s = letters.group(0)
    for cand in (s[:2], s[:1]):
        cand = cand.capitalize()
        if cand in atomic_numbers:
            return cand
    return None


def read_ph_output(
    path: str | os.PathLike,
    structure: Atoms | str | os.PathLike | None = None,
    *,
    born_block: BornBlock = "dF/dE",
) -> Atoms:
    """Read a ph.x output (``epsil=.true.``) and its structure into a frame.

    Index order (module docstring, from QE's ``summarize_zeu``/``summarize_zue`` and
    ``efield_mod``): rows ``Ex/Ey/Ez`` (or ``Px/Py/Pz``) are the field/polarization
    direction, columns the displacement direction: ``Z*[k, b, a]`` as printed.

    Parameters
    ----------
    path : path-like
        ph.x standard output.
    structure : ase.Atoms or path-like, optional
        The structure of the SCF run, e.g. the pw.x input or output (ASE's ``espresso-in``
        / ``espresso-out`` readers; a pw.x output also supplies energy, forces and
        stress).  When ``None``, the structure printed in the ph.x header is used (via
        ASE's ``read_espresso_ph``), which has only ~5 decimals in alat units: a
        ``UserWarning`` says so.
    born_block : {"dF/dE", "dF/dE-asr", "dP/du"}
        ``"dF/dE"`` (default): the raw ``(d Force / dE)`` block, no acoustic sum rule;
        ``"dF/dE-asr"``: the ``with asr applied`` block; ``"dP/du"``: the ``(d P / du)``
        block (``zue=.true.``).

    Returns
    -------
    ase.Atoms
        Frame with ``arrays["born_effective_charges"]`` ``shape=(n_atoms, 3, 3)`` (e),
        ``info["epsilon_inf"]`` ``shape=(3, 3)`` when printed, and pw.x energies/forces/
        stress when ``structure`` is a pw.x output.

    Raises
    ------
    ValueError
        Block missing, atom count or species not matching the structure.
    """
    if born_block not in BORN_BLOCKS:
        raise ValueError(f"born_block must be one of {BORN_BLOCKS}, got {born_block!r}")
    parsed = parse_ph_output(path)
    if born_block not in parsed["born"]:
        found = ", ".join(parsed["born"]) or "none"
        raise ValueError(
            f"{path}: no {born_block!r} effective-charge block (found: {found}); "
            "was ph.x run with epsil=.true. (and zue=.true. for dP/du)?"
        )
    z = parsed["born"][born_block]
    labels = parsed["labels"][born_block]
    if structure is None:
        from ase.io.espresso import read_espresso_ph

        try:
            with open(path) as fh:
                res = read_espresso_ph(fh)
        except (IndexError, ValueError, KeyError) as exc:
            raise ValueError(
                f"{path}: ASE could not read the ph.x header structure ({exc!r}); "
                "pass structure= (--structure; pw.x input/output)"
            ) from exc
        atoms = next((q["atoms"] for q in res.values() if "atoms" in q), None)
        if atoms is None:
            raise ValueError(
                f"{path}: no structure in the ph.x header; pass structure= (--structure; pw.x input/output)"
            )
        warnings.warn(
            f"{path}: using the structure printed by ph.x (about 5 decimals in alat units); "
            "pass structure= (--structure; the pw.x input or output) for full precision and energies",
            stacklevel=2,
        )
    else:
        atoms = load_structure(structure)
    n = len(atoms)
    if z.shape[0] != n:
        raise ValueError(
            f"{path}: {z.shape[0]} effective-charge tensors for {n} atoms in the structure"
        )
    if parsed["nat"] is not None and parsed["nat"] != n:
        raise ValueError(
            f"{path}: number of atoms/cell = {parsed['nat']} but the structure has {n} atoms"
        )
    symbols = atoms.get_chemical_symbols()
    for k, (lab, sym) in enumerate(zip(labels, symbols)):
        el = _label_to_symbol(lab)
        if el is not None and el != sym:
            raise ValueError(f"{path}: atom {k + 1} is {lab!r} in ph.x but {sym} in the structure")
    return build_frame(atoms, z, parsed["epsilon"], **calculator_results(atoms))


__all__ = ["BORN_BLOCKS", "parse_ph_output", "read_ph_output"]
