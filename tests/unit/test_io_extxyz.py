"""extxyz interchange: exact round-trip, append, and what plain ASE sees."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ase_born.conventions import KEY_BORN, KEY_EPSILON_INF
from ase_born.io.extxyz import get_born_charges, read_frames, set_born_charges, write_frames


def _frame(seed: int, n: int = 5, pbc=(True, True, True)) -> Atoms:
    """A triclinic frame with non-symmetric Z*, ε∞, energies/forces/stress and extra info."""
    rng = np.random.default_rng(seed)
    cell = np.diag([3.9, 4.1, 4.3]) + 0.3 * rng.standard_normal((3, 3))
    atoms = Atoms(
        symbols=(["Ca", "Ti", "O", "O", "O"] * n)[:n],
        scaled_positions=rng.random((n, 3)),
        cell=cell,
        pbc=pbc,
    )
    set_born_charges(atoms, rng.standard_normal((n, 3, 3)))
    atoms.info[KEY_EPSILON_INF] = rng.standard_normal((3, 3))
    atoms.info["config_type"] = "md_300K"
    atoms.info["structure_id"] = 17 + seed
    atoms.info["temperature_K"] = 300.25
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=float(rng.standard_normal() * 40),
        free_energy=float(rng.standard_normal() * 40),
        forces=rng.standard_normal((n, 3)),
        stress=rng.standard_normal(6) * 1e-2,
    )
    return atoms


def _assert_same(a: Atoms, b: Atoms) -> None:
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.cell.array, b.cell.array)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    np.testing.assert_array_equal(get_born_charges(a), b.arrays[KEY_BORN])
    assert b.arrays[KEY_BORN].shape == (len(a), 3, 3)
    np.testing.assert_array_equal(a.info[KEY_EPSILON_INF], b.info[KEY_EPSILON_INF])
    assert b.info[KEY_EPSILON_INF].shape == (3, 3)
    for key in ("energy", "free_energy", "forces", "stress"):
        np.testing.assert_array_equal(a.calc.results[key], b.calc.results[key])
    for key in ("config_type", "structure_id", "temperature_K"):
        assert b.info[key] == a.info[key]


def test_exact_round_trip_triclinic(tmp_path):
    frames = [_frame(0), _frame(1, n=3, pbc=(True, True, False))]
    assert not np.allclose(frames[0].cell.array, np.diag(np.diag(frames[0].cell.array)))
    path = tmp_path / "frames.xyz"
    write_frames(path, frames)
    back = read_frames(path)
    assert len(back) == 2
    for a, b in zip(frames, back):
        _assert_same(a, b)


def test_nonsymmetric_born_order_on_disk(tmp_path):
    """Disk columns are row-major [b, a]: column 2 of the 9 is Z*[k, 0, 1] (field x, displacement y)."""
    atoms = _frame(2, n=2)
    z = get_born_charges(atoms)
    assert not np.allclose(z, np.swapaxes(z, 1, 2))
    path = tmp_path / "one.xyz"
    write_frames(path, atoms)
    lines = path.read_text().splitlines()
    props = lines[1].split("Properties=")[1].split()[0].split(":")
    # species:S:1:pos:R:3:born_effective_charges:R:9 -> columns 4..12 hold Z*
    assert props[:9] == ["species", "S", "1", "pos", "R", "3", KEY_BORN, "R", "9"]
    cols = [float(x) for x in lines[2].split()[4:13]]
    assert cols == list(z[0].reshape(9))
    assert cols[1] == z[0, 0, 1] and cols[3] == z[0, 1, 0]


def test_append_mode(tmp_path):
    path = tmp_path / "frames.xyz"
    write_frames(path, _frame(3))
    write_frames(path, [_frame(4), _frame(5, n=2)], append=True)
    back = read_frames(path)
    assert len(back) == 3
    for a, b in zip([_frame(3), _frame(4), _frame(5, n=2)], back):
        _assert_same(a, b)
    # append=False replaces the file
    write_frames(path, _frame(6))
    assert len(read_frames(path)) == 1


def test_plain_ase_read_gives_flat_calc_result_ours_gives_arrays(tmp_path):
    atoms = _frame(7)
    path = tmp_path / "f.xyz"
    write_frames(path, atoms)
    plain = ase.io.read(path, format="extxyz")
    assert KEY_BORN not in plain.arrays
    flat = plain.calc.results[KEY_BORN]
    assert flat.shape == (len(atoms), 9)
    np.testing.assert_array_equal(flat.reshape(-1, 3, 3), get_born_charges(atoms))
    ours = read_frames(path)[0]
    assert ours.arrays[KEY_BORN].shape == (len(atoms), 3, 3)
    assert KEY_BORN not in ours.calc.results
    # get_born_charges accepts both placements
    np.testing.assert_array_equal(get_born_charges(plain), ours.arrays[KEY_BORN])


def test_frame_without_calculator_or_epsilon(tmp_path):
    atoms = _frame(8)
    atoms.calc = None
    del atoms.info[KEY_EPSILON_INF]
    path = tmp_path / "bare.xyz"
    write_frames(path, atoms)
    back = read_frames(path)[0]
    assert back.calc is None
    assert KEY_EPSILON_INF not in back.info
    np.testing.assert_array_equal(back.arrays[KEY_BORN], get_born_charges(atoms))


def test_set_born_charges_rejects_wrong_shape():
    atoms = _frame(9, n=2)
    with pytest.raises(ValueError, match="shape"):
        set_born_charges(atoms, np.zeros((2, 9)))


def test_calculator_named_info_and_arrays_come_back_where_they_were(tmp_path):
    """ASE's reader moves info/arrays whose names are ASE properties (polarization, dipole,
    dielectric_tensor, magmom; charges, magmoms, energies) into calc.results: they come back
    in info/arrays, exactly, and the calculator keeps only energy/free_energy/forces/stress."""
    atoms = _frame(10)
    rng = np.random.default_rng(10)
    info = {
        "polarization": rng.standard_normal(3),
        "dipole": rng.standard_normal(3),
        "dielectric_tensor": rng.standard_normal((3, 3)),
        "magmom": 1.25,
    }
    arrays = {
        "charges": rng.standard_normal(5),
        "magmoms": rng.standard_normal(5),
        "energies": rng.standard_normal(5),
        "tags_int": np.arange(5),
        "mask": np.array([True, False, True, True, False]),
        "label": np.array(["a", "b", "c", "d", "e"]),
        "vec": rng.standard_normal((5, 3)),
    }
    atoms.info.update(info)
    for key, val in arrays.items():
        atoms.arrays[key] = val
    path = tmp_path / "f.xyz"
    write_frames(path, atoms)
    assert "polarization" in ase.io.read(path, format="extxyz").calc.results  # what ASE does
    (back,) = read_frames(path)
    _assert_same(atoms, back)
    assert set(back.calc.results) == {"energy", "free_energy", "forces", "stress"}
    for key, val in info.items():
        np.testing.assert_array_equal(back.info[key], val)
        assert np.shape(back.info[key]) == np.shape(val)
    for key, val in arrays.items():
        np.testing.assert_array_equal(back.arrays[key], val)
        assert back.arrays[key].dtype.kind == val.dtype.kind
    # what was read can be written again and reads back the same
    write_frames(tmp_path / "g.xyz", back)
    (again,) = read_frames(tmp_path / "g.xyz")
    _assert_same(atoms, again)
    assert set(again.info) == set(back.info) and set(again.arrays) == set(back.arrays)
    for key in [*info, "config_type"]:
        np.testing.assert_array_equal(again.info[key], back.info[key])
    for key in arrays:
        np.testing.assert_array_equal(again.arrays[key], back.arrays[key])


def test_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import ase_born.io.extxyz as mod

    path = tmp_path / "frames.xyz"
    write_frames(path, _frame(11))
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_frames(path, [_frame(12), _frame(13)], append=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    write_frames(path, _frame(12), append=True)
    assert len(read_frames(path)) == 2


def test_append_hitting_the_file_size_limit_is_rolled_back(tmp_path):
    """A real EFBIG part-way through the frame (RLIMIT_FSIZE in a child process): the file is
    truncated back, stays readable, and later appends work."""
    import subprocess
    import sys

    path = tmp_path / "frames.xyz"
    src = tmp_path / "src.xyz"
    write_frames(path, _frame(14))
    write_frames(src, [_frame(15, n=40), _frame(16, n=40)])
    size = path.stat().st_size
    limit = size + src.stat().st_size // 3  # room for part of the first new frame only
    code = (
        "import resource, sys\n"
        "from ase_born.io.extxyz import read_frames, write_frames\n"
        f"frames = read_frames({str(src)!r})\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    write_frames({str(path)!r}, frames, append=True)\n"
        "except OSError as exc:\n"
        "    print('errno', exc.errno)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "errno 27" in proc.stdout  # EFBIG
    assert path.stat().st_size == size
    assert len(read_frames(path)) == 1
    write_frames(path, read_frames(src), append=True)
    assert len(read_frames(path)) == 3


def test_append_to_a_file_without_final_newline(tmp_path):
    path = tmp_path / "frames.xyz"
    write_frames(path, _frame(17))
    path.write_text(path.read_text().rstrip("\n"))  # e.g. written by another tool
    write_frames(path, _frame(18, n=2), append=True)
    back = read_frames(path)
    assert len(back) == 2
    _assert_same(_frame(17), back[0])
    _assert_same(_frame(18, n=2), back[1])


def test_read_frames_by_id_pairs_unique_ids_and_refuses_others(tmp_path):
    from ase_born.io.extxyz import read_frames_by_id

    a, b = Atoms("H", cell=[3, 3, 3], pbc=True), Atoms("He", cell=[3, 3, 3], pbc=True)
    a.info["structure_id"], b.info["structure_id"] = "x", "y"
    write_frames(tmp_path / "ok.extxyz", [a, b])
    got = read_frames_by_id(tmp_path / "ok.extxyz")
    assert list(got) == ["x", "y"] and got["y"].get_chemical_symbols() == ["He"]
    b.info["structure_id"] = "x"
    write_frames(tmp_path / "twice.extxyz", [a, b])
    with pytest.raises(ValueError, match="several frames with structure_id 'x'"):
        read_frames_by_id(tmp_path / "twice.extxyz")
    del b.info["structure_id"]
    write_frames(tmp_path / "none.extxyz", [a, b])
    with pytest.raises(ValueError, match="frame 1 has no structure_id"):
        read_frames_by_id(tmp_path / "none.extxyz")


@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_string_info_is_refused_not_written(tmp_path, empty):
    # written as `label=`, ASE's reader took the next pair as label's value: structure_id lost
    a = Atoms("H", cell=[3, 3, 3], pbc=True)
    a.info.update({"label": empty, "structure_id": "s1"})
    with pytest.raises(ValueError, match="info\\['label'\\] is an empty string"):
        write_frames(tmp_path / "e.extxyz", [a])
    assert not (tmp_path / "e.extxyz").exists() or (tmp_path / "e.extxyz").read_text() == ""
    a.info["label"] = "run1"
    write_frames(tmp_path / "e.extxyz", [a])
    assert read_frames(tmp_path / "e.extxyz")[0].info["structure_id"] == "s1"


def test_python_numbers_come_back_as_numpy_scalars_as_documented(tmp_path):
    a = Atoms("H", cell=[3, 3, 3], pbc=True)
    a.info.update({"n": 3, "x": 2.5, "m": np.int64(4)})
    write_frames(tmp_path / "n.extxyz", [a])
    info = read_frames(tmp_path / "n.extxyz")[0].info
    assert type(info["n"]) is np.int64 and info["n"] == 3
    assert info["x"] == 2.5 and type(info["m"]) is np.int64 and info["m"] == 4


@pytest.mark.parametrize("where", ["mid_line", "line_end"])
def test_torn_last_frame_is_reported_with_the_file_and_where_to_cut(tmp_path, where):
    """A crash inside an append (power loss: no exception to roll back on) leaves part of a
    frame; reading names the file and the byte where the whole frames end."""
    from ase_born.io.extxyz import frames_to_string

    a, b = _frame(1), _frame(2)
    whole, second = frames_to_string([a]), frames_to_string([b])
    cut = len(second) // 2 if where == "mid_line" else second.index("\n", len(second) // 2) + 1
    path = tmp_path / "torn.extxyz"
    path.write_text(whole + second[:cut])
    with pytest.raises(OSError, match=f"torn.extxyz: not readable.*frame 1 .*cut it at byte {len(whole.encode())}"):
        read_frames(path)
    with open(path, "r+b") as fh:  # the advice works
        fh.truncate(len(whole.encode()))
    assert len(read_frames(path)) == 1


def test_unreadable_extxyz_names_the_file(tmp_path):
    path = tmp_path / "bad.extxyz"
    path.write_text("two\ncomment\nH 0 0 0\n")
    with pytest.raises((OSError, ValueError), match="bad.extxyz: not readable as extxyz") as exc:
        read_frames(path)
    assert "incomplete" not in str(exc.value)  # not the torn-append case: no advice to cut
    with pytest.raises(FileNotFoundError):
        read_frames(tmp_path / "missing.extxyz")
