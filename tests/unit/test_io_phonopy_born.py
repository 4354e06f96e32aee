"""phonopy BORN files: round-trip, index order (checked against phonopy's NAC code), expansion."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from ase_born.conventions import BORN_FORCE_EINSUM, KEY_BORN, KEY_EPSILON_INF
from ase_born.io.phonopy_born import (
    born_file_text,
    independent_atoms,
    read_born_file,
    write_born_file,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "phonopy"


def p1_perovskite(seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.diag([3.91, 3.89, 3.95]) + 0.04 * rng.standard_normal((3, 3))
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = (frac + 0.02 * rng.standard_normal(frac.shape)) % 1.0
    return Atoms(["Ca", "Ti", "O", "O", "O"], scaled_positions=frac, cell=cell, pbc=True)


def p4_cell() -> Atoms:
    """Space group P4 (75): the 4-fold sites allow an antisymmetric Z*_xy = -Z*_yx."""
    frac = [
        [0.5, 0.5, 0.5],
        [0, 0, 0.02],
        [0, 0.5, 0.1],
        [0.5, 0, 0.1],
        [0.2, 0.3, 0.6],
        [-0.2, -0.3, 0.6],
        [-0.3, 0.2, 0.6],
        [0.3, -0.2, 0.6],
    ]
    return Atoms(
        ["Ba", "Ti", "O", "O", "O", "O", "O", "O"],
        scaled_positions=frac,
        cell=[4.0, 4.0, 4.2],
        pbc=True,
    )


def _nonsym(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3, 3)) + 2 * np.eye(3)
    assert np.min(np.abs(z - np.swapaxes(z, 1, 2))[:, [0, 0, 1], [1, 2, 2]]) > 1e-4
    return z


def test_round_trip_p1_nonsymmetric(tmp_path):
    atoms = p1_perovskite(0)
    assert len(independent_atoms(atoms)) == len(atoms)
    z = _nonsym(len(atoms), 1)
    eps = np.diag([6.1, 6.0, 5.9]) + 0.01
    path = tmp_path / "BORN"
    write_born_file(path, atoms, z, eps)
    frame = read_born_file(path, atoms)
    # repr precision on disk; phonopy applies the (float) identity rotation L I L^-1 to
    # independent atoms too, hence rounding at the 1e-16 level
    np.testing.assert_allclose(frame.arrays[KEY_BORN], z, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)
    np.testing.assert_array_equal(frame.positions, atoms.positions)
    # a gzipped BORN reads the same (it failed to decode)
    import gzip

    with gzip.open(tmp_path / "BORN.gz", "wb") as fh:
        fh.write(path.read_bytes())
    packed = read_born_file(tmp_path / "BORN.gz", atoms)
    np.testing.assert_array_equal(packed.arrays[KEY_BORN], frame.arrays[KEY_BORN])


def test_line_is_row_major_field_first_from_documented_format(tmp_path):
    """A BORN line 'a b c d e f g h i' is Z*[k] = [[a b c], [d e f], [g h i]]: Z*[k, 0, 1] = b."""
    atoms = p1_perovskite(2)
    lines = ["# written by hand", "6.0 0 0 0 6.0 0 0 0 6.0"]
    lines += [" ".join(str(10 * k + v) for v in range(1, 10)) for k in range(len(atoms))]
    path = tmp_path / "BORN"
    path.write_text("\n".join(lines) + "\n")
    z = read_born_file(path, atoms).arrays[KEY_BORN]
    assert z[0, 0, 1] == pytest.approx(2.0, abs=1e-12)  # field x, displacement y
    assert z[0, 1, 0] == pytest.approx(4.0, abs=1e-12)  # field y, displacement x
    assert z[3, 2, 0] == pytest.approx(37.0, abs=1e-12)


def test_phonopy_nac_contracts_q_with_first_index():
    """phonopy's NAC term is built from (q . Z_k)_a = sum_b q_b Z[k, b, a] (first index = field).

    With zero force constants and Wang's NAC at q -> 0 along q_dir, phonopy's dynamical matrix
    is rank one, proportional to v v^T with v_{k,a} = sum_b q_b Z*[k, b, a] / sqrt(m_k).  A Z*
    given to phonopy in the CONVENTIONS order reproduces that vector; its transpose does not.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    atoms = p1_perovskite(3)
    z = _nonsym(len(atoms), 4)
    z -= z.mean(axis=0)
    unit = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
    )
    ph = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int), primitive_matrix="P")
    n = len(atoms)
    ph.force_constants = np.zeros((n, n, 3, 3))
    ph.nac_params = {
        "born": z,
        "dielectric": np.diag([5.0, 6.0, 7.0]),
        "factor": 1.0,
        "method": "wang",
    }
    q_red = np.array([0.3, -0.5, 0.8])
    ph.dynamical_matrix.run([0.0, 0.0, 0.0], q_direction=q_red)
    dm = ph.dynamical_matrix.dynamical_matrix.real
    w, v = np.linalg.eigh(dm)
    assert np.sort(np.abs(w))[-2] < 1e-10 * np.max(np.abs(w))  # rank one
    top = v[:, np.argmax(np.abs(w))]
    q_cart = np.linalg.inv(atoms.cell.array) @ q_red  # phonopy: q_cart = q_red . rec_lat^T
    sqm = np.sqrt(np.asarray(unit.masses))[:, None]
    ours = (np.einsum(BORN_FORCE_EINSUM, q_cart, z) / sqm).ravel()
    transposed = (np.einsum(BORN_FORCE_EINSUM, q_cart, np.swapaxes(z, 1, 2)) / sqm).ravel()
    assert abs(ours @ top) / np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-10)
    assert abs(transposed @ top) / np.linalg.norm(transposed) < 0.99


def test_expansion_from_independent_atoms_keeps_antisymmetric_part(tmp_path):
    from phonopy.structure.atoms import PhonopyAtoms
    from phonopy.structure.symmetry import symmetrize_borns_and_epsilon

    atoms = p4_cell()
    indep = independent_atoms(atoms)
    assert len(indep) < len(atoms)
    unit = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
    )
    with warnings.catch_warnings():  # phonopy warns that random tensors are far from symmetric
        warnings.simplefilter("ignore", UserWarning)
        z, eps = symmetrize_borns_and_epsilon(
            _nonsym(len(atoms), 5), np.diag([5.0, 5.0, 6.0]), unit
        )
    ti = 1  # on the 4-fold axis: Z_xy = -Z_yx survives P4
    assert abs(z[ti, 0, 1] - z[ti, 1, 0]) > 1e-3
    path = tmp_path / "BORN"
    write_born_file(path, atoms, z, eps)
    assert len(path.read_text().splitlines()) == 2 + len(indep)
    frame = read_born_file(path, atoms)
    np.testing.assert_allclose(frame.arrays[KEY_BORN], z, atol=1e-12)


def test_writer_refuses_tensors_breaking_symmetry(tmp_path):
    atoms = p4_cell()
    z = _nonsym(len(atoms), 6)
    with pytest.raises(ValueError, match="not invariant"):
        write_born_file(tmp_path / "BORN", atoms, z, np.eye(3))
    assert not (tmp_path / "BORN").exists()
    write_born_file(tmp_path / "BORN", atoms, z, np.eye(3), is_symmetry=False)
    back = read_born_file(tmp_path / "BORN", atoms, is_symmetry=False)
    np.testing.assert_allclose(back.arrays[KEY_BORN], z, rtol=0, atol=1e-13)
    # the same file through read_dataset and `ase-born convert --nosym`
    from ase.io import write

    from ase_born.cli.main import main
    from ase_born.io import read_dataset
    from ase_born.io.extxyz import read_frames

    write(tmp_path / "POSCAR", atoms, format="vasp")
    with (
        pytest.warns(UserWarning, match="independent atoms"),
        pytest.raises(ValueError, match="phonopy could not parse"),
    ):
        read_dataset([tmp_path / "BORN"], structure=tmp_path / "POSCAR")
    (frame,) = read_dataset([tmp_path / "BORN"], structure=tmp_path / "POSCAR", is_symmetry=False)
    np.testing.assert_allclose(frame.arrays[KEY_BORN], z, rtol=0, atol=1e-13)
    out = tmp_path / "out.extxyz"
    args = ["convert", str(tmp_path / "BORN"), "-o", str(out), "--structure", str(tmp_path / "POSCAR")]
    assert main([*args, "--nosym"]) == 0
    np.testing.assert_allclose(read_frames(out)[0].arrays[KEY_BORN], z, rtol=0, atol=1e-12)


def test_factor_line_and_header_check(tmp_path):
    atoms = p1_perovskite(7)
    z = _nonsym(len(atoms), 8)
    text = born_file_text(atoms, z, np.eye(3) * 4, factor=14.4)
    assert text.splitlines()[0].startswith("14.4 # epsilon and Z* of atoms 1 2 3 4 5")
    path = tmp_path / "BORN"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(
            read_born_file(path, atoms).arrays[KEY_BORN], z, rtol=0, atol=1e-13
        )
    # a header naming other atoms than the structure's independent ones is flagged
    path.write_text(text.replace("atoms 1 2 3 4 5", "atoms 1 2 4 3 5"))
    with pytest.warns(UserWarning, match="independent atoms"):
        read_born_file(path, atoms)


def test_sample_files():
    expected = json.loads((DATA / "expected.json").read_text())
    # P1 cell: every atom has its own line
    frame = read_born_file(DATA / "BORN", DATA / "POSCAR")
    np.testing.assert_allclose(
        frame.arrays[KEY_BORN], np.array(expected["born_effective_charges"]), atol=1e-12
    )
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], np.array(expected["epsilon_inf"]))
    np.testing.assert_allclose(frame.positions, np.array(expected["positions"]), atol=1e-12)
    # cubic perovskite: 3 lines (Sr, Ti, O1) expanded by phonopy to 5 atoms
    cubic = read_born_file(DATA / "BORN_cubic", DATA / "POSCAR_cubic")
    zc = cubic.arrays[KEY_BORN]
    exp_c = np.array(expected["cubic_born_effective_charges"])
    np.testing.assert_allclose(zc, exp_c, atol=1e-12)
    assert len((DATA / "BORN_cubic").read_text().split("\n", 2)[2].split()) == 3 * 9


def test_bad_number_names_file_and_line(tmp_path):
    lines = (DATA / "BORN").read_text().splitlines()
    tokens = lines[3].split()
    tokens[0] += "x"  # line 4 = Z* of the second independent atom
    lines[3] = " ".join(tokens)
    path = tmp_path / "BORN"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:4: '{tokens[0]}' is not a number"):
        read_born_file(path, DATA / "POSCAR")
    path.write_text("")  # phonopy's own format errors name the file too
    with pytest.raises(ValueError, match=rf"^{path}: phonopy could not parse"):
        read_born_file(path, DATA / "POSCAR")
