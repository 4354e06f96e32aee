"""QE ph.x output -> frames: round-trip, index order, block choice, cross-checks with ASE/phonopy.

The writer below prints what ``PHonon/PH`` prints (``summarize_epsilon``/``summarize_zeu``/
``summarize_zue`` formats: ``(10x,"(",3f18.9," )")`` for ε, ``(6x,"Ex  (",3f15.5," )")`` for
Z* rows), in the QE >= 6.x layout (raw block, sum, ASR block) or the older one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.units import Bohr

from ase_born.conventions import KEY_BORN, KEY_EPSILON_INF
from ase_born.io.qe import parse_ph_output, read_ph_output

DATA = Path(__file__).resolve().parents[1] / "data" / "qe"
MASS = {"Ca": 40.078, "Ti": 47.867, "O": 15.999, "Sr": 87.62}


def perovskite(seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.diag([3.91, 3.89, 3.95]) + 0.04 * rng.standard_normal((3, 3))
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = (frac + 0.02 * rng.standard_normal(frac.shape)) % 1.0
    return Atoms(["Ca", "Ti", "O", "O", "O"], scaled_positions=frac, cell=cell, pbc=True)


def nonsym(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.array([2.6, 7.1, -2.1, -5.6, -2.0])[:n, None, None] * np.eye(
        3
    ) + 0.3 * rng.standard_normal((n, 3, 3))
    z = np.round(z, 5)
    assert np.min(np.abs(z - np.swapaxes(z, 1, 2))[:, [0, 0, 1], [1, 2, 2]]) > 1e-3
    return z


def _zblock(z: np.ndarray, labels, row: str, mean: bool) -> list[str]:
    out = []
    for k, (zk, lab) in enumerate(zip(z, labels)):
        head = f"           atom {k + 1:6d}{lab:>6s}"
        if mean:
            head += f"  Mean Z*: {np.trace(zk) / 3:14.5f}"
        out.append(head)
        for i, ax in enumerate("xyz"):
            out.append(
                f"      {(row + ax).ljust(4)}(" + "".join(f"{v:15.5f}" for v in zk[i]) + " )"
            )
    return out


def ph_out_text(
    atoms: Atoms,
    z: np.ndarray,
    epsilon: np.ndarray,
    *,
    new_layout: bool = True,
    z_dpdu: np.ndarray | None = None,
    labels=None,
) -> str:
    """ph.x output of a Gamma-point epsil=.true. (trans) run; z rows as printed (Ex, Ey, Ez)."""
    labels = labels or atoms.get_chemical_symbols()
    alat = float(np.linalg.norm(atoms.cell[0])) / Bohr  # ibrav=0, CELL_PARAMETERS: alat = |a1|
    a_alat = atoms.cell.array / (alat * Bohr)
    tau = atoms.positions / (alat * Bohr)
    species = list(dict.fromkeys(atoms.get_chemical_symbols()))
    out = [
        "",
        "     Program PHONON v.7.2 starts on  1Jan2024 at 12: 0: 0 ",
        "",
        "     Calculation of q =    0.0000000   0.0000000   0.0000000",
        "",
        "     bravais-lattice index     =            0",
        f"     lattice parameter (alat)  = {alat:12.4f}  a.u.",
        f"     unit-cell volume          = {atoms.get_volume() / Bohr**3:12.4f} (a.u.)^3",
        f"     number of atoms/cell      = {len(atoms):12d}",
        f"     number of atomic types    = {len(species):12d}",
        "",
        f"     celldm(1)= {alat:11.6f}  celldm(2)=   0.000000  celldm(3)=   0.000000",
        "     celldm(4)=   0.000000  celldm(5)=   0.000000  celldm(6)=   0.000000",
        "",
        "     crystal axes: (cart. coord. in units of alat)",
    ]
    out += [
        f"               a({i + 1}) = ({r[0]:11.6f}{r[1]:11.6f}{r[2]:11.6f} )  "
        for i, r in enumerate(a_alat)
    ]
    out += ["", "     Atoms inside the unit cell: ", "", "     Cartesian axes", ""]
    out += ["     site n.  atom      mass           positions (alat units)"]
    out += [
        f"     {k + 1:5d}     {s:4s}{MASS[s]:8.4f}   tau({k + 1:5d}) = ({t[0]:11.7f}{t[1]:11.7f}{t[2]:11.7f}  )"
        for k, (s, t) in enumerate(zip(atoms.get_chemical_symbols(), tau))
    ]
    out += [
        "",
        "     Electric Fields Calculation",
        "",
        "     End of electric fields calculation",
        "",
    ]
    out += ["          Dielectric constant in cartesian axis ", ""]
    out += ["          (" + "".join(f"{v:18.9f}" for v in r) + " )" for r in epsilon]
    if new_layout:
        out += [
            "",
            "          Effective charges (d Force / dE) in cartesian axis without acoustic sum rule applied (asr)",
            "",
        ]
        out += _zblock(z, labels, "E", True)
        s = z.sum(axis=0)
        out += ["", f"          Effective charges Sum: Mean: {np.trace(s) / 3:14.5f}"]
        out += ["          " + "".join(f"{v:15.5f}" for v in r) for r in s]
        out += [
            "",
            "          Effective charges (d Force / dE) in cartesian axis with asr applied: ",
        ]
        out += _zblock(z - s / len(z), labels, "E*", True)
    else:
        out += ["", "          Effective charges (d Force / dE) in cartesian axis", ""]
        out += _zblock(z, labels, "E", False)
    if z_dpdu is not None:
        out += ["", "          Effective charges (d P / du) in cartesian axis ", ""]
        out += _zblock(z_dpdu, labels, "P", False)
    out += [
        "",
        "     Diagonalizing the dynamical matrix",
        "",
        "     q = (    0.000000000   0.000000000   0.000000000 ) ",
        "",
    ]
    out += [" " + "*" * 74]
    freqs = np.linspace(-0.05, 20.0, 3 * len(atoms))  # placeholder mode list, THz
    out += [
        f"     freq ({i + 1:5d}) = {f:14.6f} [THz] = {f * 33.35641:14.6f} [cm-1]"
        for i, f in enumerate(freqs)
    ]
    out += [" " + "*" * 74, "", "     JOB DONE.", ""]
    return "\n".join(out) + "\n"


def _case(seed: int):
    atoms = perovskite(seed)
    z = nonsym(len(atoms), seed)
    eps = np.round(np.diag([6.1, 6.0, 5.9]) + 0.01, 9)
    return atoms, z, eps


def test_round_trip_nonsymmetric(tmp_path):
    atoms, z, eps = _case(1)
    path = tmp_path / "ph.out"
    path.write_text(ph_out_text(atoms, z, eps))
    frame = read_ph_output(path, atoms)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)  # Ex row = field x: Z*[k, 0, :]
    assert not np.allclose(frame.arrays[KEY_BORN], np.swapaxes(z, 1, 2))
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)
    np.testing.assert_array_equal(frame.positions, atoms.positions)


def test_explicit_rows_are_field_directions(tmp_path):
    atoms, z, eps = _case(2)
    z[0] = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    text = ph_out_text(atoms, z, eps)
    assert "      Ex  (        1.00000        2.00000        3.00000 )" in text
    path = tmp_path / "ph.out"
    path.write_text(text)
    zf = read_ph_output(path, atoms).arrays[KEY_BORN][0]
    assert zf[0, 1] == 2.0  # Ex row, y column: field x, force/displacement y
    assert zf[1, 0] == 4.0


def test_block_choice_raw_asr_dpdu(tmp_path):
    atoms, z, eps = _case(3)
    z_dpdu = np.round(z + 0.01, 5)
    path = tmp_path / "ph.out"
    path.write_text(ph_out_text(atoms, z, eps, z_dpdu=z_dpdu))
    parsed = parse_ph_output(path)
    assert set(parsed["born"]) == {"dF/dE", "dF/dE-asr", "dP/du"}
    np.testing.assert_array_equal(read_ph_output(path, atoms).arrays[KEY_BORN], z)
    asr = read_ph_output(path, atoms, born_block="dF/dE-asr").arrays[KEY_BORN]
    np.testing.assert_allclose(asr.sum(axis=0), 0.0, atol=3e-5)  # printed with 5 decimals
    np.testing.assert_allclose(asr, z - z.sum(axis=0) / len(z), atol=5e-6)
    np.testing.assert_array_equal(
        read_ph_output(path, atoms, born_block="dP/du").arrays[KEY_BORN], z_dpdu
    )


def test_old_layout_and_missing_block(tmp_path):
    atoms, z, eps = _case(4)
    path = tmp_path / "ph.out"
    path.write_text(ph_out_text(atoms, z, eps, new_layout=False))
    np.testing.assert_array_equal(read_ph_output(path, atoms).arrays[KEY_BORN], z)
    with pytest.raises(ValueError, match="dF/dE-asr"):
        read_ph_output(path, atoms, born_block="dF/dE-asr")


def test_structure_checks(tmp_path):
    atoms, z, eps = _case(5)
    path = tmp_path / "ph.out"
    path.write_text(ph_out_text(atoms, z, eps))
    with pytest.raises(ValueError, match="atoms"):
        read_ph_output(path, atoms[:4])
    swapped = atoms.copy()
    swapped.symbols[0] = "Sr"
    with pytest.raises(ValueError, match="atom 1"):
        read_ph_output(path, swapped)
    # species labels like O1 / Ti_s map to elements
    path.write_text(ph_out_text(atoms, z, eps, labels=["Ca", "Ti_s", "O1", "O2", "O3"]))
    np.testing.assert_array_equal(read_ph_output(path, atoms).arrays[KEY_BORN], z)


def test_fallback_to_ph_header_structure(tmp_path):
    atoms, z, eps = _case(6)
    path = tmp_path / "ph.out"
    path.write_text(ph_out_text(atoms, z, eps))
    with pytest.warns(UserWarning, match="structure printed by ph.x"):
        frame = read_ph_output(path)
    assert frame.get_chemical_symbols() == atoms.get_chemical_symbols()
    # ASE keeps 5 decimals of alat (~7.4 bohr) for positions, 4 for the cell
    np.testing.assert_allclose(frame.cell.array, atoms.cell.array, atol=2e-3)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=2e-3)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)


def test_sample_files_and_third_party_parsers():
    expected = json.loads((DATA / "expected.json").read_text())
    ph_out, pw_in = DATA / "ph.out", DATA / "scf.in"
    frame = read_ph_output(ph_out, pw_in)
    np.testing.assert_array_equal(
        frame.arrays[KEY_BORN], np.array(expected["born_effective_charges"])
    )
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], np.array(expected["epsilon_inf"]))
    np.testing.assert_allclose(frame.positions, np.array(expected["positions"]), atol=1e-10)
    assert frame.get_chemical_symbols() == expected["symbols"]
    dpdu = read_ph_output(ph_out, pw_in, born_block="dP/du").arrays[KEY_BORN]
    np.testing.assert_array_equal(dpdu, np.array(expected["born_dP_du"]))
    asr = read_ph_output(ph_out, pw_in, born_block="dF/dE-asr").arrays[KEY_BORN]
    # ASE's ph.x reader (rounds to 5 decimals, keeps the last dF/dE block = the ASR one)
    from ase.io.espresso import read_espresso_ph

    with open(ph_out) as fh:
        ase_res = read_espresso_ph(fh)[1]
    np.testing.assert_allclose(np.array(ase_res["borneffcharge"]), asr, atol=1e-12)
    np.testing.assert_allclose(ase_res["dieltensor"], frame.info[KEY_EPSILON_INF], atol=1e-12)
    np.testing.assert_allclose(np.array(ase_res["borneffcharge_dfpt"]), dpdu, atol=1e-12)
    # phonopy's phonopy-qe-born parser (raw block, rows unchanged)
    try:
        from phonopy.cui.phonopy_qe_born_script import parse_ph_out
    except ImportError:
        pytest.skip("phonopy's QE Born parser not available")
    eps_p, born_p = parse_ph_out(str(ph_out), len(frame))
    np.testing.assert_array_equal(born_p, frame.arrays[KEY_BORN])
    np.testing.assert_array_equal(eps_p, frame.info[KEY_EPSILON_INF])


def test_sample_pw_input_is_what_ph_printed():
    """The hand-made pw.x input and the ph.x header describe the same cell (within print precision)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from_header = read_ph_output(DATA / "ph.out")
    from_input = read_ph_output(DATA / "ph.out", DATA / "scf.in")
    np.testing.assert_allclose(from_header.cell.array, from_input.cell.array, atol=2e-3)
    np.testing.assert_allclose(from_header.positions, from_input.positions, atol=2e-3)
