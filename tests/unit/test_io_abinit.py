"""ABINIT output parsing on a real output produced here (tests/data/abinit)."""

from pathlib import Path

import ase.units
import numpy as np
import pytest

from ase_born.conventions import BOHR_A, HARTREE_EV
from ase_born.io.abinit import (
    AbinitParseError,
    born_charges_from_table,
    dielectric_from_table,
    parse_final_echo,
    read_abinit_output,
    read_ddb,
    read_run_times,
    response_from_ddb,
)
from ase_born.io.extxyz import get_born_charges, read_frames, write_frames

DATA = Path(__file__).parents[1] / "data" / "abinit"


@pytest.fixture(scope="module")
def frame():
    return read_abinit_output(DATA / "gs.abo", DATA / "efield.abo")


def test_structure_from_echo(frame):
    assert frame.get_chemical_formula() == "CaO3Ti"
    assert frame.get_chemical_symbols() == ["Ca", "Ti", "O", "O", "O"]
    np.testing.assert_allclose(frame.cell.lengths(), 3.85, atol=1e-9)
    # input xred of the test input file
    text = (DATA / "gs.abi").read_text().split("xred")[1].split("pp_dirpath")[0]
    xred = np.array(text.split(), float).reshape(5, 3)
    np.testing.assert_allclose(frame.get_scaled_positions(wrap=False), xred, atol=1e-9)


def test_energy_forces_stress_units(frame):
    echo = parse_final_echo((DATA / "gs.abo").read_text())
    etotal = echo["etotal"][0][0]
    fcart = echo["fcart"][0].reshape(5, 3)
    strten = echo["strten"][0]
    assert frame.get_potential_energy() == pytest.approx(etotal * ase.units.Hartree, rel=1e-12)
    np.testing.assert_allclose(frame.get_forces(), fcart * HARTREE_EV / BOHR_A)
    np.testing.assert_allclose(frame.get_stress(), strten * HARTREE_EV / BOHR_A**3)
    # Ha/Bohr -> eV/Å: 51.422 eV/Å per Ha/Bohr, as ASE's own units
    assert HARTREE_EV / BOHR_A == pytest.approx(ase.units.Hartree / ase.units.Bohr, rel=1e-14)
    assert HARTREE_EV / BOHR_A == pytest.approx(51.4221, rel=1e-5)
    # ABINIT printed Pressure= -2.0685E+02 GPa; ASE sign: P = -tr(stress)/3
    pressure_GPa = -frame.get_stress()[:3].mean() * 160.21766208
    assert pressure_GPa == pytest.approx(-206.85, rel=1e-3)


def test_born_charge_index_order_on_real_output(frame):
    """Lines 'dir1 pert1 dir2 pert2' with pert2 = natom+2 = 7 (field):
    '2 2 1 7 0.2045482382' = atom 2 (Ti) displaced along y, field along x  -> Z*[1, b=x, a=y]
    '1 2 2 7 0.2261376442' = atom 2 displaced along x, field along y       -> Z*[1, b=y, a=x]
    """
    z = get_born_charges(frame)
    assert z.shape == (5, 3, 3)
    assert z[1, 0, 1] == pytest.approx(0.2045482382)
    assert z[1, 1, 0] == pytest.approx(0.2261376442)
    assert abs(z[1, 0, 1] - z[1, 1, 0]) > 0.02  # genuinely non-symmetric
    assert z[0, 0, 0] == pytest.approx(2.8717239875)
    assert z[4, 1, 0] == pytest.approx(-0.0608958984)  # '1 5 2 7': atom 5, disp x, field y
    np.testing.assert_allclose(frame.info["acoustic_sum"], z.sum(axis=0))


def test_table_mapping_independent_of_column_order():
    rng = np.random.default_rng(0)
    natom = 3
    z = rng.normal(size=(natom, 3, 3))
    rows_field_second = [(a + 1, k + 1, b + 1, natom + 2, z[k, b, a]) for k in range(natom) for a in range(3) for b in range(3)]
    rows_field_first = [(b, natom + 2, a, k, v) for a, k, b, _, v in rows_field_second]
    np.testing.assert_array_equal(born_charges_from_table(rows_field_second, natom), z)
    np.testing.assert_array_equal(born_charges_from_table(rows_field_first, natom), z)
    # a transposed reading would differ
    assert not np.allclose(born_charges_from_table(rows_field_second, natom), z.transpose(0, 2, 1))
    with pytest.raises(AbinitParseError, match="incomplete"):
        born_charges_from_table(rows_field_second[:-1], natom)


def test_dielectric(frame):
    eps = frame.info["epsilon_inf"]
    assert eps.shape == (3, 3)
    assert eps[0, 0] == pytest.approx(8.1378346025)
    assert eps[0, 1] == pytest.approx(0.0565000860)
    rows = [(i + 1, 7, j + 1, 7, float(3 * i + j)) for i in range(3) for j in range(3)]
    np.testing.assert_array_equal(dielectric_from_table(rows, 5), np.arange(9.0).reshape(3, 3))


def test_roundtrip_extxyz(frame, tmp_path):
    write_frames(tmp_path / "f.xyz", frame)
    (back,) = read_frames(tmp_path / "f.xyz")
    np.testing.assert_array_equal(get_born_charges(back), get_born_charges(frame))
    np.testing.assert_array_equal(back.info["epsilon_inf"], frame.info["epsilon_inf"])
    np.testing.assert_array_equal(back.get_forces(), frame.get_forces())
    np.testing.assert_array_equal(back.get_stress(), frame.get_stress())


def test_not_an_abinit_output(tmp_path):
    p = tmp_path / "x.abo"
    p.write_text("hello\n")
    with pytest.raises(AbinitParseError, match="final echo"):
        read_abinit_output(p)


def test_gs_only_has_no_born(tmp_path):
    a = read_abinit_output(DATA / "gs.abo")
    assert "born_effective_charges" not in a.arrays
    with pytest.raises(AbinitParseError, match="no Born charges"):
        read_abinit_output(DATA / "gs.abo", DATA / "gs.abo")


def test_split_outputs_of_different_structures_are_refused(tmp_path):
    """The two-path reader took the response tables of any output: a response of another
    structure (here the same cell with one atom moved) gave a frame of mixed data."""
    text = (DATA / "efield.abo").read_text()
    first = "xred      4.4881063900E-03"  # atom 1, x (reduced), in the final echo
    i = text.rfind(first)
    moved = tmp_path / "moved.abo"
    moved.write_text(text[:i] + "xred      1.4488106390E-02" + text[i + len(first):])  # +0.01: 0.039 Å
    with pytest.raises(AbinitParseError, match="another structure"):
        read_abinit_output(DATA / "gs.abo", moved)
    with pytest.raises(AbinitParseError, match="species order"):
        read_abinit_output(DATA / "tilt10_tiny" / "gs.abo", DATA / "efield.abo")
    # the same structure with a coordinate wrapped by a lattice vector is the same structure
    wrapped = tmp_path / "wrapped.abo"
    i = text.rfind("9.9043566121E-01")
    assert i > text.rfind("xred")
    wrapped.write_text(text[:i] + "-9.5643387900E-03" + text[i + len("9.9043566121E-01"):])
    np.testing.assert_allclose(get_born_charges(read_abinit_output(DATA / "gs.abo", wrapped)),
                               get_born_charges(read_abinit_output(DATA / "gs.abo", DATA / "efield.abo")))


def test_response_output_alone_has_no_second_order_energy_or_zero_forces():
    """efield.abo alone: its etotal (-172.67 Ha) is a second-order energy and fcart/strten
    are zeros (optdriver 1); no energy/forces/stress may be attached to the frame."""
    echo = parse_final_echo((DATA / "efield.abo").read_text())
    assert echo["optdriver"][0][0] == 1 and echo["etotal"][0][0] == pytest.approx(-172.67414681)
    with pytest.warns(UserWarning, match="no ground-state dataset"):
        a = read_abinit_output(DATA / "efield.abo")
    assert a.calc is None
    assert get_born_charges(a).shape == (5, 3, 3)  # the response data are still read


def test_multi_dataset_energy_forces_stress_from_ground_state_dataset():
    """alas_multi.abo: ONE real run with datasets 1 = GS, 2 = ddk, 3 = E-field/phonon DFPT.
    The last dataset echoes etotal3 = -383.79 Ha (second order) and fcart3 = strten3 = 0."""
    echo = parse_final_echo((DATA / "alas_multi.abo").read_text())
    assert {d: int(v[0]) for d, v in echo["optdriver"].items()} == {1: 0, 2: 1, 3: 1}
    assert not echo["fcart"][3].any() and not echo["strten"][3].any()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = read_abinit_output(DATA / "alas_multi.abo")
    assert a.get_potential_energy() == pytest.approx(echo["etotal"][1][0] * HARTREE_EV, rel=1e-12)
    assert a.get_potential_energy() == pytest.approx(-9.8053207324 * HARTREE_EV, rel=1e-10)
    np.testing.assert_allclose(a.get_forces(), echo["fcart"][1].reshape(2, 3) * HARTREE_EV / BOHR_A)
    assert np.abs(a.get_forces()).max() > 0.2  # As displaced from its site
    np.testing.assert_allclose(a.get_stress(), echo["strten"][1] * HARTREE_EV / BOHR_A**3)
    assert a.get_chemical_symbols() == ["Al", "As"]
    z = get_born_charges(a)
    assert z[0, 0, 0] == pytest.approx(1.8746829389)  # '1 1 1 4': atom 1 disp x, field x
    assert z[1, 1, 0] == pytest.approx(-0.0074822354)  # '1 2 2 4': atom 2 disp x, field y
    assert z[1, 0, 1] == pytest.approx(-0.0074773263)  # '2 2 1 4': atom 2 disp y, field x


def test_ground_state_dataset_of_another_structure_gives_no_energy(tmp_path):
    """If the GS dataset's xred differs from the last dataset's, its forces are not the
    frame's: none attached, with a warning (alas_multi.abo with xred split per dataset)."""
    text = (DATA / "alas_multi.abo").read_text()
    echo_at = text.rindex("-outvars: echo values of variables after computation")
    old = (
        "             xred      0.0000000000E+00  0.0000000000E+00  0.0000000000E+00\n"
        "                       2.6000000000E-01  2.5000000000E-01  2.4000000000E-01\n"
    )
    assert text.count(old, echo_at) == 1
    new = old.replace("    xred ", "   xred1 ") + old.replace("    xred ", "   xred3 ").replace(
        "2.6000000000E-01", "2.7000000000E-01"
    )
    path = tmp_path / "split.abo"
    path.write_text(text[:echo_at] + text[echo_at:].replace(old, new))
    with pytest.warns(UserWarning, match="dataset 1 has another structure"):
        a = read_abinit_output(path)
    assert a.calc is None
    assert a.get_scaled_positions()[1, 0] == pytest.approx(0.27)  # the last dataset's


def test_two_file_path_unchanged_by_dataset_selection():
    """gs.abo + efield.abo (the DFT pipeline's layout): energy etc. from gs.abo, as before."""
    a = read_abinit_output(DATA / "gs.abo", DATA / "efield.abo")
    gs = parse_final_echo((DATA / "gs.abo").read_text())
    assert a.get_potential_energy() == gs["etotal"][0][0] * HARTREE_EV
    forces = gs["fcart"][0].reshape(5, 3) * (HARTREE_EV / BOHR_A)
    np.testing.assert_array_equal(a.get_forces(), forces)
    np.testing.assert_array_equal(a.get_stress(), gs["strten"][0] * (HARTREE_EV / BOHR_A**3))
    assert a.get_potential_energy() == pytest.approx(-3986.78, abs=0.01)


def test_run_times_of_real_outputs(tmp_path):
    # "+Overall time at end (sec) : cpu= ... wall= ..." (summed over MPI processes)
    assert read_run_times(DATA / "gs.abo") == (7.1, 10.7)
    assert read_run_times(DATA / "efield.abo") == (24.4, 40.6)
    assert read_run_times(tmp_path / "missing.abo") is None
    (tmp_path / "killed.abo").write_text("ABINIT output cut before the end\n")
    assert read_run_times(tmp_path / "killed.abo") is None


TILT = DATA / "tilt10_tiny"


def test_ddb_per_direction_runs_reproduce_the_one_run_tables():
    """Reduced -> Cartesian conversion of the DDB elements on a non-orthogonal cell."""
    ref = read_abinit_output(TILT / "gs.abo", TILT / "efield_onerun.abo")
    z, eps = response_from_ddb([TILT / f"efield{d}.ddb" for d in (1, 2, 3)])
    zr = get_born_charges(ref)
    assert np.abs(ref.cell.array - np.diag(np.diag(ref.cell.array))).max() > 3.0  # far from orthogonal
    np.testing.assert_allclose(z, zr, atol=1e-9)  # same CONVENTIONS order, Z*[k, field, displacement]
    assert np.abs(zr - zr.transpose(0, 2, 1)).max() > 0.05  # the order matters here
    # the one-run table averages the two non-stationary orders of each field-field element
    np.testing.assert_allclose(eps, ref.info["epsilon_inf"], atol=1e-6)
    np.testing.assert_allclose(eps, eps.T, atol=1e-12)


def test_ddb_header_and_elements():
    header, el = read_ddb(TILT / "efield2.ddb")
    assert int(header["natom"][0]) == 10 and header["zion"].tolist() == [10.0, 12.0, 6.0]
    assert header["rprim"].shape == (9,) and header["typat"].tolist() == [1, 1, 2, 2, 3, 3, 3, 3, 3, 3]
    field = 12
    # direction 2 with the ddk files of directions 1 and 2: field-field (2,1) and (2,2), not (2,3)
    assert (2, field, 1, field) in el and (2, field, 2, field) in el and (2, field, 3, field) not in el
    assert all((j, k, 2, field) in el for k in range(1, 11) for j in (1, 2, 3))


def test_ddb_missing_direction_or_structure_mismatch(tmp_path):
    with pytest.raises(AbinitParseError, match="direction"):
        response_from_ddb([TILT / "efield1.ddb", TILT / "efield2.ddb"])
    with pytest.raises(AbinitParseError, match="not an ABINIT DDB"):
        response_from_ddb([TILT / "gs.abo"])
    other = tmp_path / "other.ddb"
    text = (TILT / "efield3.ddb").read_text()
    other.write_text(text.replace("typat         1    1    2    2", "typat         2    1    1    2", 1))
    with pytest.raises(AbinitParseError, match="another structure"):
        response_from_ddb([TILT / "efield1.ddb", TILT / "efield2.ddb", other])


def test_ddb_unknown_field_field_elements_are_nan(tmp_path):
    """Directions computed in different sessions miss their mixed field-field elements."""
    field = 12
    lines = (TILT / "efield2.ddb").read_text().splitlines()
    keep = [ln for ln in lines if ln.split()[:4] != ["1", str(field), "2", str(field)]
            and ln.split()[:4] != ["2", str(field), "1", str(field)]]
    n_removed = len(lines) - len(keep)
    assert n_removed == 2
    keep = [ln.replace("# elements :      63", "# elements :      61") for ln in keep]
    (tmp_path / "e2.ddb").write_text("\n".join(keep) + "\n")
    z, eps = response_from_ddb([TILT / "efield1.ddb", tmp_path / "e2.ddb", TILT / "efield3.ddb"])
    np.testing.assert_allclose(z, response_from_ddb([TILT / f"efield{d}.ddb" for d in (1, 2, 3)])[0])
    assert np.isnan(eps).any()  # every Cartesian element mixes reduced (1, 2) on this cell


def test_ddb_partial_directions_give_the_rows_they_determine(monkeypatch):
    """partial=True: in an orthogonal cell field direction i alone gives the Cartesian row
    Z*[:, i, :], equal to the full result; in a skewed cell it determines no row."""
    from ase_born.io import abinit as io_abinit

    files = [TILT / f"efield{d}.ddb" for d in (1, 2, 3)]
    full, _ = response_from_ddb(files)
    z1, _ = response_from_ddb(files[:1], partial=True)
    assert np.isnan(z1).all()  # every Cartesian row mixes all three reduced directions here
    np.testing.assert_allclose(response_from_ddb(files, partial=True)[0], full)

    real = io_abinit.read_ddb

    def orthogonal(path):  # the same elements on an orthorhombic cell
        header, el = real(path)
        header = dict(header, rprim=np.diag([7.2, 7.3, 7.4]).ravel(), acell=np.ones(3))
        return header, el

    monkeypatch.setattr(io_abinit, "read_ddb", orthogonal)
    full, eps_full = response_from_ddb(files)
    for subset in ([1], [1, 3], [2]):
        z, eps = response_from_ddb([files[d - 1] for d in subset], partial=True)
        for d in subset:  # the diagonal field-field element of each finished direction is known
            assert eps[d - 1, d - 1] == pytest.approx(eps_full[d - 1, d - 1])
        assert 2 in subset or np.isnan(eps[1, 1])
        for a in range(3):
            if a + 1 in subset:
                np.testing.assert_allclose(z[:, a, :], full[:, a, :], atol=1e-12)
            else:
                assert np.isnan(z[:, a, :]).all()
    with pytest.raises(AbinitParseError, match="direction"):
        response_from_ddb(files[:1])


def test_truncated_or_malformed_ddb_is_refused_naming_the_file(tmp_path):
    """A DDB cut anywhere (a kill while it was written or copied) gave silently wrong Z*
    (up to 3.6 e) or a KeyError/IndexError: every cut raises AbinitParseError naming it."""
    full = (TILT / "efield2.ddb").read_text()
    lines = full.splitlines(keepends=True)
    cut_file = tmp_path / "cut2.ddb"
    cuts = {len("".join(lines[:k])) for k in range(len(lines))}  # at every line end
    cuts |= set(range(0, len(full), 37)) | {len(full) - 1, len(full) - 4, len(full) - 25}  # mid-line
    for cut in sorted(cuts):
        cut_file.write_text(full[:cut])
        with pytest.raises(AbinitParseError, match="cut2.ddb"):
            response_from_ddb([TILT / "efield1.ddb", cut_file, TILT / "efield3.ddb"])
    # a lost element line in the middle of the block, a garbled element, a garbled header
    block = next(i for i, ln in enumerate(lines) if "2nd derivatives" in ln)
    for bad, what in (
        (lines[: block + 10] + lines[block + 11 :], "10 of 63|62 of 63"),
        (lines[: block + 10] + [lines[block + 10].replace("D+", "D*", 1)] + lines[block + 11 :], "malformed"),
        (lines[: block + 10] + ["   2  12   1\n"] + lines[block + 11 :], "malformed"),
        ([ln.replace("natom        10", "natom        11") for ln in lines], "malformed DDB header"),
    ):
        cut_file.write_text("".join(bad))
        with pytest.raises(AbinitParseError, match=f"cut2.ddb.*({what})"):
            read_ddb(cut_file)
    cut_file.write_text(full)
    assert read_ddb(cut_file)[1] == read_ddb(TILT / "efield2.ddb")[1]


def test_a_response_header_without_its_table_takes_no_later_lines():
    """A truncated output ends after the table header: lines far below that happen to have six
    integer-led fields are not read as the table (the rows must follow the header)."""
    from ase_born.io.abinit import _response_table

    text = (DATA / "efield.abo").read_text()
    full = _response_table(text, "(from electric field response)")
    assert len(full) == 3 * 3 * 5  # every (atom, direction, field direction) row of the 5-atom cell
    cut = text.index("(from electric field response)")
    truncated = text[:cut] + "(from electric field response)\n" + "\n".join(["   some other line"] * 12) \
        + "\n   1    1   1    7         2.8717239875         0.0000000000\n"
    assert _response_table(truncated, "(from electric field response)") == []
