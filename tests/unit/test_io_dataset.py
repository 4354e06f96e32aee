"""read_dataset dispatcher and the ``ase-born convert`` command, end to end."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ase_born.cli.main import main
from ase_born.conventions import KEY_ACOUSTIC_SUM, KEY_BORN, KEY_EPSILON_INF
from ase_born.io import FormatUnavailableError, build_frame, guess_format, read_dataset
from ase_born.io.extxyz import read_frames, write_frames

DATA = Path(__file__).resolve().parents[1] / "data"
EXPECTED = json.loads((DATA / "vasp" / "expected.json").read_text())
Z = np.array(EXPECTED["born_effective_charges"])
EPS = np.array(EXPECTED["epsilon_inf"])


@pytest.mark.parametrize(
    "path, fmt",
    [
        (DATA / "vasp" / "vasprun.xml", "vasprun"),
        (DATA / "vasp" / "OUTCAR", "outcar"),
        (DATA / "phonopy" / "BORN", "phonopy-born"),
        (DATA / "qe" / "ph.out", "qe-ph"),
        (DATA / "abinit" / "efield.abo", "abinit"),
    ],
)
def test_guess_format_by_name(path, fmt):
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert guess_format(path) == fmt


def test_guess_format_by_content(tmp_path):
    for src, fmt in [
        (DATA / "vasp" / "vasprun.xml", "vasprun"),
        (DATA / "vasp" / "OUTCAR", "outcar"),
        (DATA / "qe" / "ph.out", "qe-ph"),
    ]:
        renamed = tmp_path / f"run_{fmt}.txt"
        shutil.copy(src, renamed)
        assert guess_format(renamed) == fmt
    xyz = tmp_path / "frames.dat"
    write_frames(xyz, build_frame(read_dataset(DATA / "vasp" / "OUTCAR")[0], Z, EPS))
    assert guess_format(xyz) == "extxyz"
    junk = tmp_path / "notes.txt"
    junk.write_text("nothing to see\n")
    with pytest.raises(ValueError, match="format="):
        guess_format(junk)


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".bz2"])
def test_guess_format_of_a_corrupt_compressed_file_is_one_value_error(tmp_path, suffix):
    bad = tmp_path / f"run{suffix}"
    bad.write_bytes(b"not compressed at all\n")
    with pytest.raises(ValueError, match=f"cannot read .*run{suffix}"):
        guess_format(bad)


def test_read_dataset_mixed_formats_agree():
    """The same hand-made frame in four formats gives the same Z*, ε∞ and species."""
    frames = read_dataset(
        [DATA / "vasp" / "vasprun.xml", DATA / "vasp" / "OUTCAR", DATA / "qe" / "ph.out"],
        structure=DATA / "qe" / "scf.in",  # used by ph.out only
    )
    frames += read_dataset(DATA / "phonopy" / "BORN", structure=DATA / "phonopy" / "POSCAR")
    assert len(frames) == 4
    for frame in frames:
        assert frame.get_chemical_symbols() == EXPECTED["symbols"]
        np.testing.assert_allclose(frame.arrays[KEY_BORN], Z, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], EPS)
        np.testing.assert_allclose(frame.info[KEY_ACOUSTIC_SUM], Z.sum(axis=0), atol=1e-12)
        np.testing.assert_allclose(frame.positions, np.array(EXPECTED["positions"]), atol=1e-7)
        assert Path(frame.info["source"]).exists()


def test_born_without_structure_is_an_error():
    with pytest.raises(ValueError, match="structure="):
        read_dataset(DATA / "phonopy" / "BORN")


def test_abinit_reader_missing_is_reported_or_skipped(monkeypatch):
    path = DATA / "abinit" / "efield.abo"
    if not path.exists():
        pytest.skip("no ABINIT sample")
    monkeypatch.setitem(sys.modules, "ase_born.io.abinit", None)  # import now fails
    with pytest.raises(FormatUnavailableError, match="ase_born.io.abinit"):
        read_dataset(path)
    with pytest.warns(UserWarning, match="skipped"):
        frames = read_dataset([path, DATA / "vasp" / "OUTCAR"], skip_unavailable=True)
    assert len(frames) == 1


def test_abinit_through_dispatcher():
    path = DATA / "abinit" / "efield.abo"
    if not path.exists():
        pytest.skip("no ABINIT sample")
    pytest.importorskip("ase_born.io.abinit")
    from ase_born.io.abinit import read_abinit_output

    with pytest.warns(UserWarning, match="no ground-state dataset"):
        (frame,) = read_dataset(path)
    with pytest.warns(UserWarning, match="no ground-state dataset"):
        ref = read_abinit_output(path)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], ref.arrays[KEY_BORN])
    # an electric-field output alone: no second-order "energy", no zero forces/stress
    assert frame.calc is None


def test_cli_convert_abinit_response_output_has_no_energy(tmp_path):
    out = tmp_path / "abinit.xyz"
    with pytest.warns(UserWarning, match="no ground-state dataset"):
        assert main(["convert", str(DATA / "abinit" / "efield.abo"), "-o", str(out)]) == 0
    (frame,) = read_frames(out)
    assert frame.calc is None and frame.arrays[KEY_BORN].shape == (5, 3, 3)


def test_cli_convert_abinit_response_with_its_ground_state(tmp_path):
    """Split ABINIT runs: the response output with --structure GS.abo is one complete frame
    (energy/forces/stress of the GS, Z* and ε∞ of the response), as the library's two-path
    reader gives; a ground state of another structure is refused."""
    from ase_born.io.abinit import read_abinit_output

    gs, response = DATA / "abinit" / "gs.abo", DATA / "abinit" / "efield.abo"
    out = tmp_path / "split.xyz"
    assert main(["convert", str(response), "--structure", str(gs), "-o", str(out)]) == 0
    (frame,) = read_frames(out)
    ref = read_abinit_output(gs, response)
    np.testing.assert_allclose(frame.arrays[KEY_BORN], ref.arrays[KEY_BORN], atol=1e-12)
    np.testing.assert_allclose(frame.get_forces(), ref.get_forces(), atol=1e-12)
    assert frame.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(frame.info["epsilon_inf"], ref.info["epsilon_inf"], atol=1e-12)
    other = DATA / "abinit" / "tilt10_tiny" / "gs.abo"  # 10 atoms
    assert main(["convert", str(response), "--structure", str(other), "-o", str(tmp_path / "x.xyz")]) == 1
    # --structure serves every input of a mixed call: a POSCAR for a BORN file is not taken
    # for the ground state of a complete ABINIT output beside it
    born, poscar, multi = DATA / "phonopy" / "BORN", DATA / "phonopy" / "POSCAR", DATA / "abinit" / "alas_multi.abo"
    mixed = tmp_path / "mixed.xyz"
    assert main(["convert", str(born), str(multi), "--structure", str(poscar), "-o", str(mixed)]) == 0
    assert len(read_frames(mixed)) == 2
    (frame,) = read_dataset(multi, structure=ref)  # an Atoms: not a ground-state output
    assert frame.calc is not None and KEY_BORN in frame.arrays


def _rattled_poscar(tmp_path) -> Path:
    import ase.io

    atoms = ase.io.read(DATA / "phonopy" / "POSCAR", format="vasp")
    atoms.positions += np.random.default_rng(3).normal(scale=0.01, size=atoms.positions.shape)
    path = tmp_path / "POSCAR_rattled"
    ase.io.write(path, atoms, format="vasp", direct=True)
    return path


def test_structure_is_used_only_by_inputs_without_a_geometry(tmp_path):
    """One --structure for an OUTCAR (own geometry) and a BORN file (none): only the BORN
    frame takes it; the OUTCAR frame keeps its geometry, energy, forces and stress."""
    import ase.io

    poscar = _rattled_poscar(tmp_path)
    rattled = ase.io.read(poscar, format="vasp")
    inputs = [DATA / "vasp" / "OUTCAR", DATA / "phonopy" / "BORN"]
    outcar, born = read_dataset(inputs, structure=poscar)
    np.testing.assert_allclose(outcar.positions, np.array(EXPECTED["positions"]), atol=1e-12)
    assert outcar.calc.results["energy"] == EXPECTED["energy"]
    np.testing.assert_array_equal(outcar.calc.results["forces"], np.array(EXPECTED["forces"]))
    assert "stress" in outcar.calc.results
    np.testing.assert_allclose(born.positions, rattled.positions, atol=1e-12)
    assert not np.allclose(born.positions, outcar.positions, atol=1e-4)
    # the same through the command line
    out = tmp_path / "two.xyz"
    argv = ["convert", str(DATA / "vasp" / "OUTCAR"), str(DATA / "phonopy" / "BORN")]
    assert main(argv + ["--structure", str(poscar), "-o", str(out)]) == 0
    frames = read_frames(out)
    assert frames[0].calc.results["energy"] == EXPECTED["energy"]
    np.testing.assert_allclose(frames[0].positions, outcar.positions, atol=1e-12)
    np.testing.assert_allclose(frames[1].positions, born.positions, atol=1e-12)


def test_structure_is_the_fallback_for_an_outcar_without_geometry(tmp_path):
    excerpt = tmp_path / "OUTCAR"
    excerpt.write_text((DATA / "vasp" / "OUTCAR").read_text().split("  FORCE on cell")[0])
    with pytest.raises(ValueError, match="structure="):
        read_dataset(excerpt)
    poscar = _rattled_poscar(tmp_path)
    (frame,) = read_dataset(excerpt, structure=poscar)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], Z)
    assert frame.calc is None
    import ase.io

    np.testing.assert_allclose(frame.positions, ase.io.read(poscar, format="vasp").positions)


def test_cli_convert_output_error_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file\n")
    for extra in ([], ["--append"]):
        out = blocker / "frames.xyz"
        rc = main(["convert", str(DATA / "vasp" / "OUTCAR"), "-o", str(out), *extra])
        err = capsys.readouterr().err
        assert rc == 1
        assert err.startswith("ase-born convert: error: cannot write") and err.count("\n") == 1
        assert "Traceback" not in err and str(out) in err


def test_cli_convert_end_to_end(tmp_path, capsys):
    out = tmp_path / "train.xyz"
    rc = main(
        [
            "convert",
            str(DATA / "vasp" / "vasprun.xml"),
            str(DATA / "vasp" / "OUTCAR"),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    assert "wrote 2 frame(s)" in capsys.readouterr().out
    rc = main(
        [
            "convert",
            str(DATA / "phonopy" / "BORN"),
            "--structure",
            str(DATA / "phonopy" / "POSCAR"),
            "-o",
            str(out),
            "--append",
        ]
    )
    assert rc == 0
    frames = read_frames(out)
    assert len(frames) == 3
    for frame in frames:
        assert frame.arrays[KEY_BORN].shape == (5, 3, 3)
        np.testing.assert_allclose(frame.arrays[KEY_BORN], Z, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], EPS)
    # VASP frames keep energy/forces through the extxyz file
    assert frames[0].calc.results["energy"] == EXPECTED["energy"]
    np.testing.assert_array_equal(frames[1].calc.results["forces"], np.array(EXPECTED["forces"]))
    assert frames[2].info["source"].endswith("BORN")


def test_cli_convert_qe_block_and_errors(tmp_path, capsys):
    out = tmp_path / "qe.xyz"
    rc = main(
        [
            "convert",
            str(DATA / "qe" / "ph.out"),
            "--structure",
            str(DATA / "qe" / "scf.in"),
            "--born-block",
            "dP/du",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    dpdu = np.array(json.loads((DATA / "qe" / "expected.json").read_text())["born_dP_du"])
    np.testing.assert_array_equal(read_frames(out)[0].arrays[KEY_BORN], dpdu)
    capsys.readouterr()
    rc = main(["convert", str(DATA / "phonopy" / "BORN"), "-o", str(tmp_path / "x.xyz")])
    assert rc == 1
    assert "structure=" in capsys.readouterr().err
    assert not (tmp_path / "x.xyz").exists()


def test_broken_inputs_raise_valueerror_naming_the_file(tmp_path, capsys):
    broken = tmp_path / "vasprun.xml"
    broken.write_text((DATA / "vasp" / "vasprun.xml").read_text()[:2000])  # truncated XML
    with pytest.raises(ValueError, match="vasprun.xml"):
        read_dataset(broken)
    born = tmp_path / "BORN"
    born.write_text((DATA / "phonopy" / "BORN").read_text() + "1 0 0 0 1 0 0 0 1\n")  # one line too many
    with pytest.raises(ValueError, match="BORN"):
        read_dataset(born, structure=DATA / "phonopy" / "POSCAR")
    assert main(["convert", str(broken), "-o", str(tmp_path / "out.xyz")]) == 1
    assert "vasprun.xml" in capsys.readouterr().err


def test_cli_convert_never_replaces_an_existing_output_silently(tmp_path, capsys):
    """`-o` onto an existing file (e.g. the DFT dataset) replaced it with exit 0; an output
    that is also an input was rewritten from itself."""
    out = tmp_path / "dataset.extxyz"
    outcar = str(DATA / "vasp" / "OUTCAR")
    assert main(["convert", outcar, "-o", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["convert", outcar, "-o", str(out)]) == 1
    assert "exists: pass --overwrite to replace it (or --append" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["convert", str(out), outcar, "-o", str(out), "--overwrite"]) == 1
    assert "is also an input" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["convert", outcar, "-o", str(out), "--append", "--overwrite"]) == 1
    assert main(["convert", outcar, "-o", str(out), "--append"]) == 0 and len(read_frames(out)) == 2
    assert main(["convert", outcar, "-o", str(out), "--overwrite"]) == 0 and len(read_frames(out)) == 1
