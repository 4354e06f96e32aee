"""FixedBornCharges: arrays, phonopy BORN files, extxyz frames, supercell mapping."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import make_supercell

from ase_born import FixedBornCharges, physics
from ase_born.io.extxyz import set_born_charges, write_frames
from ase_born.testing import assert_born_equivariant

RNG = np.random.default_rng(7)


def _p1_cell() -> Atoms:
    """5-atom triclinic P1 cell with no symmetry."""
    cell = [[3.9, 0.1, 0.0], [0.2, 4.1, 0.1], [-0.1, 0.3, 3.8]]
    frac = [
        [0.02, 0.01, 0.03],
        [0.51, 0.48, 0.53],
        [0.49, 0.52, 0.02],
        [0.03, 0.47, 0.49],
        [0.52, 0.04, 0.51],
    ]
    return Atoms("CaTiO3", scaled_positions=frac, cell=cell, pbc=True)


def _inversion_cell() -> Atoms:
    """P-1 cell: Ti on the inversion centre, one O pair related by inversion."""
    cell = [[3.6, 0.0, 0.0], [0.4, 3.9, 0.0], [0.3, -0.2, 4.2]]
    return Atoms(
        "TiO2",
        scaled_positions=[[0, 0, 0], [0.31, 0.12, 0.23], [0.69, 0.88, 0.77]],
        cell=cell,
        pbc=True,
    )


def test_array_model_and_validation():
    z = RNG.normal(size=(5, 3, 3))
    atoms = _p1_cell()
    model = FixedBornCharges(z)
    assert np.array_equal(model.get_born_charges(atoms), z)
    with pytest.raises(ValueError, match="tensors for 5 atoms"):
        model.get_born_charges(atoms.repeat(2))
    with pytest.raises(ValueError, match="shape"):
        FixedBornCharges(np.zeros((5, 3)))
    bad = z.copy()
    bad[2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[2\]"):
        FixedBornCharges(bad)
    with pytest.raises(ValueError, match="primitive has 5 atoms"):
        FixedBornCharges(z[:4], atoms)


def test_supercell_mapping_by_position():
    prim = _p1_cell()
    z = RNG.normal(size=(5, 3, 3))
    model = FixedBornCharges(z, prim)
    prim.set_tags(np.arange(5))
    sc = make_supercell(prim, [[1, 1, 0], [-1, 1, 0], [0, 0, 2]])  # non-diagonal, 20 atoms
    perm = RNG.permutation(len(sc))
    sc = sc[perm]
    sc.rattle(0.05, seed=3)
    assert np.array_equal(model.get_born_charges(sc), z[sc.get_tags()])
    # a plain repeat, atoms wrapped into the cell, still maps
    rep = prim.repeat((2, 1, 3))
    rep.positions += np.array([1, 0, 1]) @ prim.cell.array  # move by a primitive lattice vector
    rep.wrap()
    assert np.array_equal(model.map_to(rep), z[rep.get_tags()])


def test_supercell_mapping_strain_thermal_motion_and_reordering():
    prim = _p1_cell()
    z = RNG.normal(size=(5, 3, 3))
    model = FixedBornCharges(z, prim)
    prim.set_tags(np.arange(5))
    sc = prim.repeat((3, 2, 2))
    # homogeneous strain of a few percent (NpT): far images drift by more than the tolerance
    strained = sc.copy()
    strained.set_cell(
        sc.cell.array @ (np.eye(3) + [[0.04, 0.01, 0], [0.01, -0.03, 0], [0, 0, 0.05]]),
        scale_atoms=True,
    )
    assert np.array_equal(model.get_born_charges(strained), z[sc.get_tags()])
    # after the first match, thermal excursions beyond match_tolerance keep the map
    hot = strained.copy()
    hot.positions[7] += [0.45, 0.0, 0.0]
    assert np.array_equal(model.get_born_charges(hot), z[sc.get_tags()])
    # a differently ordered supercell with the same species sequence is re-matched
    by_species = sc[np.argsort(sc.numbers, kind="stable")]
    other = by_species[np.lexsort((-by_species.get_tags(), by_species.numbers))]
    assert np.array_equal(other.numbers, by_species.numbers)
    assert np.array_equal(model.get_born_charges(by_species), z[by_species.get_tags()])
    assert np.array_equal(model.get_born_charges(other), z[other.get_tags()])


def test_supercell_mapping_errors():
    prim = _p1_cell()
    model = FixedBornCharges(RNG.normal(size=(5, 3, 3)), prim)
    sc = prim.repeat(2)
    sc.positions[3] += [0.7, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"atom 3 .*matches no atom of the primitive cell"):
        model.get_born_charges(sc)
    wrong = prim.repeat(2)
    wrong.numbers[0] = 12  # Mg: no such species in the primitive cell
    with pytest.raises(ValueError, match="none of that species"):
        FixedBornCharges(model.born_charges, prim).get_born_charges(wrong)
    # not a supercell: 9 atoms
    with pytest.raises(ValueError, match="not a supercell"):
        FixedBornCharges(model.born_charges, prim).get_born_charges(prim.repeat(2)[:9])
    # a tolerance above the O-O distance (2.8 Å): an O matches two primitive O sites
    with pytest.raises(ValueError, match=r"atom \d+ matches two primitive atoms within 3.0 Å"):
        FixedBornCharges(model.born_charges, prim, match_tolerance=3.0).get_born_charges(prim.repeat(2))
    # rotated cell: not an integer multiple of the primitive lattice
    rot = prim.repeat(2)
    rot.rotate(30, "z", rotate_cell=True)
    with pytest.raises(ValueError, match="integer M"):
        FixedBornCharges(model.born_charges, prim).get_born_charges(rot)


def _born_text(z_rows: np.ndarray, eps: np.ndarray) -> str:
    # phonopy's documented BORN format: line 1 unit factor, line 2 ε∞ (xx xy xz yx ... zz),
    # then for each independent atom the 9 numbers of Z* in the same row-major order
    lines = ["14.400", " ".join(f"{x:.12f}" for x in eps.ravel())]
    lines += [" ".join(f"{x:.12f}" for x in z.ravel()) for z in z_rows]
    return "\n".join(lines) + "\n"


def test_born_file_round_trip_with_phonopy_writer(tmp_path):
    from phonopy.file_IO import write_BORN
    from phonopy.structure.atoms import PhonopyAtoms

    prim = _inversion_cell()
    zo = RNG.normal(size=(3, 3))
    assert not np.allclose(zo, zo.T)
    z = np.array([-2 * zo, zo, zo])  # sum rule holds, inversion-consistent, non-symmetric
    eps = np.array([[6.0, 0.1, 0.0], [0.1, 5.5, 0.0], [0.0, 0.0, 5.0]])
    patoms = PhonopyAtoms(
        numbers=prim.numbers, cell=prim.cell.array, scaled_positions=prim.get_scaled_positions()
    )
    path = tmp_path / "BORN"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_BORN(patoms, z, eps, filename=str(path))
    # phonopy writes only the independent atoms (Ti and one O)
    assert len(path.read_text().strip().splitlines()) == 4
    model = FixedBornCharges.from_born_file(path, prim)
    assert np.allclose(model.get_born_charges(prim), z, atol=1e-7)
    assert np.allclose(model.epsilon_inf, eps, atol=1e-7)
    prim.set_tags(np.arange(3))
    sc = prim.repeat((2, 2, 2))
    assert np.allclose(model.get_born_charges(sc), z[sc.get_tags()], atol=1e-7)


def test_born_file_index_order_against_phonopy_nac(tmp_path):
    """BORN rows are Z*[b (field), a (displacement)]: checked with phonopy's own NAC term.

    phonopy's docs (doc/formulation.md, non-analytical term correction) contract the
    FIRST index of Z*_{j,γα} with the wave vector q (the direction of the macroscopic
    field) and keep the second as the displacement index of the dynamical matrix, so the
    NAC term is ∝ (q·Z*_j)_α (q·Z*_j')_β.  In our convention q·Z*_j is exactly the field
    force Z*_jᵀ q, so phonopy's NAC matrix must be ∝ outer(F, F) with F =
    field_forces(Z*, q) — and not with the transposed tensors.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    prim = Atoms(
        "TiO2",
        scaled_positions=[[0, 0, 0], [0.3, 0.1, 0.2], [0.6, 0.7, 0.9]],
        cell=np.diag([3.0, 3.5, 4.0]),
        pbc=True,
    )  # P1
    z = RNG.normal(size=(3, 3, 3))
    z -= z.mean(0)
    path = tmp_path / "BORN"
    path.write_text(_born_text(z, 5.0 * np.eye(3)))
    model = FixedBornCharges.from_born_file(path, prim)
    loaded = model.get_born_charges(prim)
    assert np.allclose(loaded, z, atol=1e-11)  # read without transposition

    patoms = PhonopyAtoms(
        numbers=prim.numbers, cell=prim.cell.array, scaled_positions=prim.get_scaled_positions()
    )
    ph = Phonopy(patoms, supercell_matrix=np.eye(3, dtype=int))
    ph.force_constants = np.zeros((3, 3, 3, 3))
    ph.nac_params = {"born": loaded, "dielectric": 5.0 * np.eye(3), "factor": 1.0, "method": "wang"}
    q_red = np.array([0.3, -0.5, 0.8])
    ph.dynamical_matrix.run([0, 0, 0], q_direction=q_red)
    dyn = ph.dynamical_matrix.dynamical_matrix.real
    m = np.repeat(ph.primitive.masses, 3)
    nac = dyn * np.sqrt(np.outer(m, m))
    q_cart = q_red @ np.linalg.inv(prim.cell.array).T
    f = physics.field_forces(loaded, q_cart).ravel()
    f_t = physics.field_forces(loaded.transpose(0, 2, 1), q_cart).ravel()
    c = nac[0, 0] / f[0] ** 2
    assert np.allclose(nac, c * np.outer(f, f), rtol=1e-8, atol=1e-12)
    assert not np.allclose(nac, nac[0, 0] / f_t[0] ** 2 * np.outer(f_t, f_t), rtol=1e-3)


def test_born_file_errors(tmp_path):
    prim = _p1_cell()
    with pytest.raises(FileNotFoundError):
        FixedBornCharges.from_born_file(tmp_path / "missing", prim)
    path = tmp_path / "BORN"
    path.write_text(
        _born_text(RNG.normal(size=(2, 3, 3)), np.eye(3))
    )  # 2 lines for 5 independent atoms
    with pytest.raises(ValueError, match="could not read BORN"):
        FixedBornCharges.from_born_file(path, prim)


def test_from_extxyz_frame(tmp_path):
    prim = _p1_cell()
    z = RNG.normal(size=(5, 3, 3))
    frame = prim.copy()
    set_born_charges(frame, z)
    frame.info["epsilon_inf"] = np.diag([5.0, 6.0, 7.0])
    write_frames(tmp_path / "d.extxyz", [frame])
    model = FixedBornCharges.from_extxyz(tmp_path / "d.extxyz")
    assert np.array_equal(model.get_born_charges(prim), z)
    assert np.allclose(model.epsilon_inf, np.diag([5.0, 6.0, 7.0]))
    prim.set_tags(np.arange(5))
    sc = prim.repeat((1, 2, 2))
    assert np.array_equal(model.get_born_charges(sc), z[sc.get_tags()])
    with pytest.raises(ValueError, match="no 'born_effective_charges'"):
        FixedBornCharges.from_atoms(_p1_cell())


def test_torch_level_and_dict_round_trip():
    prim = _p1_cell()
    z = RNG.normal(size=(5, 3, 3))
    model = FixedBornCharges(z, prim, epsilon_inf=np.eye(3) * 4)
    pos = torch.tensor(prim.positions, dtype=torch.float32)
    zt = model.get_born_charges_torch(prim, pos, torch.tensor(prim.cell.array, dtype=torch.float32))
    assert zt.dtype == torch.float32 and torch.allclose(zt, torch.tensor(z, dtype=torch.float32))
    again = FixedBornCharges.from_dict(model.todict())
    sc = prim.repeat(2)
    assert np.array_equal(again.get_born_charges(sc), model.get_born_charges(sc))
    assert np.array_equal(again.epsilon_inf, model.epsilon_inf)


def test_equivariance_helper_on_fixed_tensors():
    # fixed tensors do not rotate with the structure: only isotropic ones pass
    atoms = _p1_cell()
    iso = FixedBornCharges(np.array([q * np.eye(3) for q in (2.6, 7.1, -3.2, -3.2, -3.3)]))
    assert assert_born_equivariant(iso, atoms) < 1e-12
    aniso = FixedBornCharges(RNG.normal(size=(5, 3, 3)))
    with pytest.raises(AssertionError, match="not rotation-equivariant"):
        assert_born_equivariant(aniso, atoms)
