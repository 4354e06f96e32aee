"""VASP readers: OUTCAR and vasprun.xml (LEPSILON / LCALCEPS) -> frames.

The writers below produce the text layout VASP prints (checked against the real VASP
6.3.2 ``vasprun_dfpt.xml`` shipped with ASE's tests and the OUTCAR layout ASE's and
phonopy's parsers expect); numbers are rounded to the printed precision so that the
round-trip is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from ase_born.conventions import KEY_BORN, KEY_EPSILON_INF
from ase_born.io.vasp import parse_outcar_born_epsilon, read_outcar, read_vasprun

DATA = Path(__file__).resolve().parents[1] / "data" / "vasp"
SPECIES = ("Ca", "Ti", "O")
POTCARS = {
    "Ca": "PAW_PBE Ca_sv 06Sep2000",
    "Ti": "PAW_PBE Ti_sv 26Sep2005",
    "O": "PAW_PBE O 08Apr2002",
}


# ---------------------------------------------------------------------------
# test data
# ---------------------------------------------------------------------------
def perovskite(seed: int) -> Atoms:
    """Distorted 5-atom perovskite (P1), triclinic cell, positions on the OUTCAR grid (1e-5 Å)."""
    rng = np.random.default_rng(seed)
    cell = np.round(np.diag([3.91, 3.89, 3.95]) + 0.04 * rng.standard_normal((3, 3)), 9)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = (frac + 0.02 * rng.standard_normal(frac.shape)) % 1.0
    atoms = Atoms(["Ca", "Ti", "O", "O", "O"], scaled_positions=frac, cell=cell, pbc=True)
    atoms.positions = np.round(atoms.positions, 5)
    return atoms


def nonsymmetric_born(n: int, seed: int, decimals: int = 5) -> np.ndarray:
    """Z*[k, b, a] with clearly non-symmetric off-diagonal parts, rounded to the printed digits."""
    rng = np.random.default_rng(seed)
    diag = np.array([2.6, 7.1, -2.1, -5.6, -2.0][:n] + [1.0] * max(0, n - 5))
    z = diag[:, None, None] * np.eye(3) + 0.3 * rng.standard_normal((n, 3, 3))
    z = np.round(z, decimals)
    assert np.min(np.abs(z - np.swapaxes(z, 1, 2))[:, [0, 0, 1], [1, 2, 2]]) > 1e-3
    return z


# ---------------------------------------------------------------------------
# writers (text as VASP prints it)
# ---------------------------------------------------------------------------
def _counts(symbols):
    species = [s for s in SPECIES if s in symbols]
    return species, [symbols.count(s) for s in species]


def outcar_text(
    atoms: Atoms,
    born_printed: np.ndarray,
    epsilon: np.ndarray,
    *,
    energy: float,
    forces: np.ndarray,
    stress_kB: np.ndarray,
    ibrion: int = -1,
    lcalceps: bool = False,
    ionic_epsilon: np.ndarray | None = None,
) -> str:
    """OUTCAR of a one-step LEPSILON (or LCALCEPS) run; ``born_printed[k]`` rows as printed."""
    symbols = atoms.get_chemical_symbols()
    species, counts = _counts(symbols)
    assert symbols == [s for s, c in zip(species, counts) for _ in range(c)], (
        "atoms must be sorted by species"
    )
    n = len(atoms)
    out = [
        " vasp.6.3.2 27Jun22 (build Jul 04 2022 11:47:50) complex                          parallel",
        " executed on             LinuxIFC date 2024.01.01  12:00:00",
        " running on    1 total cores",
        "",
        " INCAR:",
    ]
    out += [f" POTCAR:    {POTCARS[s]}" for s in species] * 2
    out += [
        "",
        " Dimension of arrays:",
        "   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1   number of bands    NBANDS=     24",
        f"   number of dos      NEDOS =    301   number of ions     NIONS = {n:6d}",
        "   ions per type =            " + "".join(f"{c:4d}" for c in counts),
        "",
        " k-points in reciprocal lattice and weights: Gamma",
        "   0.00000000  0.00000000  0.00000000       1.000",
        "",
        " Ionic relaxation",
        "   NSW    =      0    number of steps for IOM",
        f"   IBRION = {ibrion:6d}    ionic relax: 0-MD 1-quasi-New 2-CG",
        "",
        " Linear response parameters",
        f"   LEPSILON=     {'F' if lcalceps else 'T'}    determine dielectric tensor",
        "",
        "----------------------------------------- Iteration    1(   1)  ---------------------------------------",
        "",
        "------------------------ aborting loop because EDIFF is reached ----------------------------------------",
        "",
    ]
    dash = " " + "-" * 54
    if lcalceps:
        eps_head = " MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects)"
        born_head = (
            " BORN EFFECTIVE CHARGES (including local field effects) (in |e|, cummulative output)"
        )
    else:
        # a distractor that must not be taken for epsilon_inf
        out += [
            " HEAD OF MICROSCOPIC STATIC DIELECTRIC TENSOR (INDEPENDENT PARTICLE, excluding Hartree and local field effects)",
            dash,
        ]
        out += [f"  {r[0]:12.6f}{r[1]:12.6f}{r[2]:12.6f}" for r in 1.5 * epsilon]
        out += [dash, ""]
        eps_head = " MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects in DFT)"
        born_head = " BORN EFFECTIVE CHARGES (in e, cummulative output)"
    out += [eps_head, dash]
    out += [f"  {r[0]:12.6f}{r[1]:12.6f}{r[2]:12.6f}" for r in epsilon]
    out += [dash, "", born_head, " " + "-" * 81]
    for k in range(n):
        out.append(f" ion {k + 1:4d}")
        out += [
            f"    {i + 1:d}{r[0]:12.5f}{r[1]:12.5f}{r[2]:12.5f}"
            for i, r in enumerate(born_printed[k])
        ]
    out += [
        "",
        "  FORCE on cell =-STRESS in cart. coord.  units (eV):",
        "  Direction    XX          YY          ZZ          XY          YZ          ZX",
        "  " + "-" * 86,
        "  in kB  " + "".join(f"{s:12.5f}" for s in stress_kB),
        "  external pressure =        0.00 kB  Pullay stress =        0.00 kB",
        "",
        " VOLUME and BASIS-vectors are now :",
        " " + "-" * 77,
        f"  volume of cell : {atoms.get_volume():11.2f}",
        "      direct lattice vectors                 reciprocal lattice vectors",
    ]
    rec = atoms.cell.reciprocal()
    out += [
        f"  {a[0]:13.9f}{a[1]:13.9f}{a[2]:13.9f}  {b[0]:13.9f}{b[1]:13.9f}{b[2]:13.9f}"
        for a, b in zip(atoms.cell.array, rec)
    ]
    out += [
        "",
        "",
        " POSITION                                       TOTAL-FORCE (eV/Angst)",
        " " + "-" * 83,
    ]
    out += [
        f" {p[0]:12.5f} {p[1]:12.5f} {p[2]:12.5f}   {f[0]:14.6f} {f[1]:14.6f} {f[2]:14.6f}"
        for p, f in zip(atoms.positions, forces)
    ]
    out += [" " + "-" * 83, "", ""]
    if ionic_epsilon is not None:
        out += [" MACROSCOPIC STATIC DIELECTRIC TENSOR IONIC CONTRIBUTION", dash]
        out += [f"  {r[0]:12.6f}{r[1]:12.6f}{r[2]:12.6f}" for r in ionic_epsilon]
        out += [dash, ""]
    out += [
        "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)",
        "  ---------------------------------------------------",
        f"  free  energy   TOTEN  = {energy:18.8f} eV",
        "",
        f"  energy  without entropy= {energy:18.8f}  energy(sigma->0) = {energy:18.8f}",
        "",
        "",
    ]
    return "\n".join(out) + "\n"


def _v(row, fmt="16.8f") -> str:
    return "<v>" + "".join(f" {x:{fmt}}" for x in row) + " </v>"


def vasprun_text(
    atoms: Atoms,
    born_printed: np.ndarray,
    epsilon: np.ndarray,
    *,
    energy: float,
    forces: np.ndarray,
    stress_kB: np.ndarray,
    ibrion: int = -1,
) -> str:
    """vasprun.xml of a one-step LEPSILON run in VASP 6.3.2's layout (elements ASE/phonopy read)."""
    symbols = atoms.get_chemical_symbols()
    species, _ = _counts(symbols)
    frac = atoms.get_scaled_positions(wrap=False)

    def structure(name: str | None, ind: str) -> list[str]:
        head = f'{ind}<structure name="{name}" >' if name else f"{ind}<structure>"
        s = [head, f"{ind} <crystal>", f'{ind}  <varray name="basis" >']
        s += [f"{ind}   " + _v(r) for r in atoms.cell.array]
        s += [
            f"{ind}  </varray>",
            f'{ind}  <i name="volume"> {atoms.get_volume():16.8f} </i>',
            f"{ind} </crystal>",
        ]
        s += (
            [f'{ind} <varray name="positions" >']
            + [f"{ind}  " + _v(r) for r in frac]
            + [f"{ind} </varray>"]
        )
        return s + [f"{ind}</structure>"]

    energy_block = [
        f'    <i name="e_fr_energy"> {energy:16.8f} </i>',
        f'    <i name="e_wo_entrp"> {energy:16.8f} </i>',
        f'    <i name="e_0_energy"> {energy:16.8f} </i>',
    ]
    x = [
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        "<modeling>",
        " <generator>",
        '  <i name="program" type="string">vasp </i>',
        '  <i name="version" type="string">6.3.2  </i>',
        " </generator>",
        " <incar>",
        f'  <i type="int" name="IBRION"> {ibrion:5d}</i>',
        '  <i type="logical" name="LEPSILON"> T  </i>',
        " </incar>",
        " <kpoints>",
        '  <generation param="Gamma" >',
        '   <v type="int" name="divisions">       1        1        1 </v>',
        "  </generation>",
        '  <varray name="kpointlist" >',
        "   " + _v([0.0, 0.0, 0.0]),
        "  </varray>",
        '  <varray name="weights" >',
        "   " + _v([1.0]),
        "  </varray>",
        " </kpoints>",
        " <parameters>",
        '  <separator name="ionic" >',
        f'   <i type="int" name="IBRION"> {ibrion:5d}</i>',
        '   <i name="PSTRESS">      0.00000000</i>',
        "  </separator>",
        '  <separator name="linear response parameters" >',
        '   <i type="logical" name="LEPSILON"> T  </i>',
        "  </separator>",
        " </parameters>",
        " <atominfo>",
        f"  <atoms> {len(atoms):7d} </atoms>",
        f"  <types> {len(species):7d} </types>",
        '  <array name="atoms" >',
        '   <dimension dim="1">ion</dimension>',
        '   <field type="string">element</field>',
        '   <field type="int">atomtype</field>',
        "   <set>",
    ]
    x += [f"    <rc><c>{s:2s}</c><c>{species.index(s) + 1:4d}</c></rc>" for s in symbols]
    x += ["   </set>", "  </array>", " </atominfo>"]
    x += structure("initialpos", " ")
    x += (
        [" <calculation>", "  <scstep>", "   <energy>"]
        + [" " + e for e in energy_block]
        + ["   </energy>", "  </scstep>"]
    )
    x += structure(None, "  ")
    x += ['  <varray name="forces" >'] + ["   " + _v(f) for f in forces] + ["  </varray>"]
    x += ['  <varray name="stress" >'] + ["   " + _v(s) for s in stress_kB] + ["  </varray>"]
    x += ["  <energy>"] + [e[1:] for e in energy_block] + ["  </energy>"]
    for name in ("dielectric_dft", "epsilon"):
        x += [f'  <varray name="{name}" >'] + ["   " + _v(r) for r in epsilon] + ["  </varray>"]
    x += ['  <array name="born_charges" >', '   <dimension dim="1">ion</dimension>']
    for zk in born_printed:
        x += ["   <set>"] + ["    " + _v(r) for r in zk] + ["   </set>"]
    x += ["  </array>", " </calculation>"]
    x += structure("finalpos", " ")
    x += ["</modeling>"]
    return "\n".join(x) + "\n"


def _case(seed: int, decimals: int = 5):
    atoms = perovskite(seed)
    rng = np.random.default_rng(100 + seed)
    z = nonsymmetric_born(len(atoms), seed, decimals)
    m = rng.standard_normal((3, 3))
    eps = np.round(np.diag([6.1, 6.0, 5.9]) + 0.02 * (m + m.T), 6)
    forces = np.round(rng.standard_normal((len(atoms), 3)), 6)
    stress_kB = np.round(rng.standard_normal(6) * 5, 5)
    energy = round(float(-40 + rng.standard_normal()), 8)
    return atoms, z, eps, energy, forces, stress_kB


# ---------------------------------------------------------------------------
# OUTCAR
# ---------------------------------------------------------------------------
def test_outcar_round_trip_nonsymmetric(tmp_path):
    atoms, z, eps, energy, forces, stress_kB = _case(1)
    path = tmp_path / "OUTCAR"
    path.write_text(outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB))
    frame = read_outcar(path)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)  # rows = field: Z*[k, b, a] as printed
    assert not np.allclose(frame.arrays[KEY_BORN], np.swapaxes(z, 1, 2))
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)
    assert frame.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-12)
    np.testing.assert_allclose(frame.cell.array, atoms.cell.array, atol=1e-12)
    assert frame.calc.results["energy"] == energy
    np.testing.assert_array_equal(frame.calc.results["forces"], forces)
    import ase.io

    ref = ase.io.read(path, format="vasp-out")  # stress conversion (kB -> eV/Å³, sign) is ASE's
    np.testing.assert_array_equal(frame.calc.results["stress"], ref.get_stress())


def test_outcar_explicit_row_means_field():
    """Row '1  Zx Zy Zz' of ion 1 is the field-x row: Z*[0, 0, :] (displacement x, y, z)."""
    atoms, z, eps, energy, forces, stress_kB = _case(2)
    z = z.copy()
    z[0] = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    text = outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB)
    assert "    1     1.00000     2.00000     3.00000" in text
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "OUTCAR"
        p.write_text(text)
        frame = read_outcar(p)
    zf = frame.arrays[KEY_BORN][0]
    assert zf[0, 1] == 2.0  # field x (b=0), displacement y (a=1)
    assert zf[1, 0] == 4.0  # field y, displacement x


def test_outcar_epsilon_is_clamped_ion_not_ionic_or_ipa(tmp_path):
    atoms, z, eps, energy, forces, stress_kB = _case(3)
    text = outcar_text(
        atoms,
        z,
        eps,
        energy=energy,
        forces=forces,
        stress_kB=stress_kB,
        ionic_epsilon=30 * np.eye(3),
    )
    path = tmp_path / "OUTCAR"
    path.write_text(text)
    born, epsilon, meta = parse_outcar_born_epsilon(path)
    np.testing.assert_array_equal(epsilon, eps)
    assert meta["epsilon_header"].endswith("(including local field effects in DFT)")
    np.testing.assert_array_equal(born, z)


def test_outcar_lcalceps_headers(tmp_path):
    atoms, z, eps, energy, forces, stress_kB = _case(4)
    path = tmp_path / "OUTCAR"
    path.write_text(
        outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB, lcalceps=True)
    )
    frame = read_outcar(path)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)


def test_outcar_ibrion8_needs_explicit_born_rows(tmp_path):
    atoms, z, eps, energy, forces, stress_kB = _case(5)
    path = tmp_path / "OUTCAR"
    path.write_text(
        outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB, ibrion=8)
    )
    with pytest.raises(ValueError, match="IBRION=8"):
        read_outcar(path)
    np.testing.assert_array_equal(read_outcar(path, born_rows="field").arrays[KEY_BORN], z)
    np.testing.assert_array_equal(
        read_outcar(path, born_rows="displacement").arrays[KEY_BORN], np.swapaxes(z, 1, 2)
    )


def test_outcar_with_separate_structure_and_count_check(tmp_path):
    atoms, z, eps, energy, forces, stress_kB = _case(6)
    text = outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB)
    # an excerpt without the ionic-step output: geometry must come from elsewhere
    excerpt = text.split("  FORCE on cell")[0]
    path = tmp_path / "OUTCAR"
    path.write_text(excerpt)
    with pytest.raises(ValueError, match="structure="):
        read_outcar(path)
    frame = read_outcar(path, structure=atoms)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)
    assert frame.calc is None
    with pytest.raises(ValueError, match="atoms"):
        read_outcar(path, structure=atoms[:4])


def test_outcar_sample_file_and_phonopy_agree():
    path = DATA / "OUTCAR"
    expected = json.loads((DATA / "expected.json").read_text())
    frame = read_outcar(path)
    np.testing.assert_array_equal(
        frame.arrays[KEY_BORN], np.array(expected["born_effective_charges"])
    )
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], np.array(expected["epsilon_inf"]))
    assert frame.get_chemical_symbols() == expected["symbols"]
    np.testing.assert_allclose(frame.positions, np.array(expected["positions"]), atol=1e-12)
    assert frame.calc.results["energy"] == expected["energy"]
    np.testing.assert_array_equal(frame.calc.results["forces"], np.array(expected["forces"]))
    # phonopy's own OUTCAR parser (used by phonopy-vasp-born) reads the same tensors in the same order
    vasp = pytest.importorskip("phonopy.interface.vasp")
    if not hasattr(vasp, "_read_born_and_epsilon_from_OUTCAR"):
        pytest.skip("phonopy's OUTCAR parser moved")
    borns, epsilon = vasp._read_born_and_epsilon_from_OUTCAR(path)
    np.testing.assert_array_equal(borns, frame.arrays[KEY_BORN])
    np.testing.assert_array_equal(epsilon, frame.info[KEY_EPSILON_INF])


# ---------------------------------------------------------------------------
# vasprun.xml
# ---------------------------------------------------------------------------
def test_vasprun_round_trip_nonsymmetric(tmp_path):
    atoms, z, eps, energy, forces, _ = _case(7, decimals=8)
    stress = np.round(np.random.default_rng(7).standard_normal((3, 3)) * 5, 8)
    stress = stress + stress.T
    path = tmp_path / "vasprun.xml"
    path.write_text(vasprun_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress))
    frame = read_vasprun(path)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)
    assert not np.allclose(frame.arrays[KEY_BORN], np.swapaxes(z, 1, 2))
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)
    np.testing.assert_allclose(
        frame.positions, atoms.positions, atol=1e-7
    )  # fractional, 8 decimals
    assert frame.calc.results["energy"] == energy
    np.testing.assert_array_equal(frame.calc.results["forces"], forces)
    import ase.io

    ref = ase.io.read(path, format="vasp-xml")  # ASE's own reader of the same file
    np.testing.assert_array_equal(frame.calc.results["stress"], ref.get_stress())
    np.testing.assert_array_equal(
        ref.calc.results["born_effective_charges"], frame.arrays[KEY_BORN]
    )


def test_vasprun_ibrion7_needs_explicit_born_rows(tmp_path):
    atoms, z, eps, energy, forces, _ = _case(8)
    path = tmp_path / "vasprun.xml"
    path.write_text(
        vasprun_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=np.eye(3), ibrion=7)
    )
    with pytest.raises(ValueError, match="IBRION=7"):
        read_vasprun(path)
    np.testing.assert_array_equal(
        read_vasprun(path, born_rows="displacement").arrays[KEY_BORN], np.swapaxes(z, 1, 2)
    )


def test_vasprun_sample_file():
    expected = json.loads((DATA / "expected.json").read_text())
    frame = read_vasprun(DATA / "vasprun.xml")
    np.testing.assert_array_equal(
        frame.arrays[KEY_BORN], np.array(expected["born_effective_charges"])
    )
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], np.array(expected["epsilon_inf"]))
    np.testing.assert_allclose(frame.positions, np.array(expected["positions"]), atol=1e-7)
    assert frame.calc.results["energy"] == expected["energy"]
    # the same physical frame as the OUTCAR sample
    outcar = read_outcar(DATA / "OUTCAR")
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], outcar.arrays[KEY_BORN])


def test_real_vasp_632_vasprun_from_ase_testdata():
    """A real VASP 6.3.2 LEPSILON vasprun.xml (NaCl) shipped with ASE's tests."""
    import ase

    path = Path(ase.__file__).parent / "test" / "testdata" / "vasp" / "vasprun_dfpt.xml"
    if not path.is_file():
        pytest.skip("ASE test data not installed")
    import ase.io

    ref = ase.io.read(path, format="vasp-xml")
    frame = read_vasprun(path)
    assert frame.get_chemical_symbols() == ["Na", "Cl"]
    np.testing.assert_array_equal(
        frame.arrays[KEY_BORN], ref.calc.results["born_effective_charges"]
    )
    np.testing.assert_array_equal(
        frame.info[KEY_EPSILON_INF], ref.calc.results["dielectric_tensor"]
    )
    assert frame.calc.results["energy"] == ref.get_potential_energy()
    # NaCl: Z*(Na) = -Z*(Cl), isotropic
    np.testing.assert_allclose(frame.arrays[KEY_BORN][0], -frame.arrays[KEY_BORN][1])


def test_vasprun_epsilon_from_dielectric_dft_only(tmp_path):
    """Without <varray name="epsilon">, ε∞ comes from <varray name="dielectric_dft"> (ASE)."""
    text = (DATA / "vasprun.xml").read_text()
    start = text.index('  <varray name="epsilon" >')
    end = text.index("</varray>", start) + len("</varray>\n")
    path = tmp_path / "vasprun.xml"
    path.write_text(text[:start] + text[end:])
    expected = json.loads((DATA / "expected.json").read_text())
    frame = read_vasprun(path)
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], np.array(expected["epsilon_inf"]))


# ---------------------------------------------------------------------------
# which ionic step (IBRION=5/6 finite differences vs. other multi-step runs)
# ---------------------------------------------------------------------------
def _displaced(atoms: Atoms, forces, energy):
    """A finite-difference configuration: atom 0 moved by 0.015 Å along x."""
    moved = atoms.copy()
    moved.positions[0, 0] += 0.015
    return moved, np.round(forces + 0.5, 6), round(energy + 0.01, 8)


def _outcar_two_steps(
    ibrion: int, born_every_step: bool, z2=None, eps2=None
) -> tuple[str, tuple, tuple]:
    atoms, z, eps, energy, forces, stress_kB = _case(11)
    moved, forces2, energy2 = _displaced(atoms, forces, energy)
    stress2 = stress_kB + 3.0
    first = outcar_text(
        atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB, ibrion=ibrion
    )
    second = outcar_text(
        moved,
        z if z2 is None else z2,
        eps if eps2 is None else eps2,
        energy=energy2,
        forces=forces2,
        stress_kB=stress2,
    )
    marker = "----------------------------------------- Iteration    1("
    step2 = second[second.index(marker) :].replace("Iteration    1(", "Iteration    2(", 1)
    if not born_every_step:
        step2 = (
            "\n"
            + marker.replace("1(", "2(")
            + "   1)  ---\n"
            + step2[step2.index("  FORCE on cell") :]
        )
    return first + step2, (atoms, z, energy, forces), (moved, energy2, forces2)


@pytest.mark.parametrize("ibrion", [5, 6])
def test_outcar_finite_difference_run_uses_reference_step(tmp_path, ibrion):
    text, (atoms, z, energy, forces), (moved, _, _) = _outcar_two_steps(ibrion, False)
    path = tmp_path / "OUTCAR"
    path.write_text(text)
    import ase.io

    steps = ase.io.read(path, index=":", format="vasp-out")
    assert len(steps) == 2 and np.allclose(steps[-1].positions, moved.positions)
    frame = read_outcar(path)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-12)
    assert frame.calc.results["energy"] == energy
    np.testing.assert_array_equal(frame.calc.results["forces"], forces)
    np.testing.assert_array_equal(frame.calc.results["stress"], steps[0].get_stress())
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)


def test_outcar_relaxation_keeps_last_step_and_warns_when_unpaired(tmp_path):
    text, _, (moved, energy2, forces2) = _outcar_two_steps(2, False)
    path = tmp_path / "OUTCAR"
    path.write_text(text)
    with pytest.warns(UserWarning, match="2 ionic steps but 1 Born-charge block"):
        frame = read_outcar(path)
    np.testing.assert_allclose(frame.positions, moved.positions, atol=1e-12)
    assert frame.calc.results["energy"] == energy2
    np.testing.assert_array_equal(frame.calc.results["forces"], forces2)


def test_outcar_one_born_block_per_step_pairs_last_with_last(tmp_path):
    z2 = nonsymmetric_born(5, 12)
    text, _, (moved, energy2, _) = _outcar_two_steps(2, True, z2=z2)
    path = tmp_path / "OUTCAR"
    path.write_text(text)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_outcar(path)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z2)
    np.testing.assert_allclose(frame.positions, moved.positions, atol=1e-12)
    assert frame.calc.results["energy"] == energy2
    # one structure= for a Born block per step: which step it is cannot be told (the last
    # block was paired with it silently, also with the first step's POSCAR)
    with pytest.raises(ValueError, match="2 Born-charge blocks .* which step"):
        read_outcar(path, structure=_case(11)[0])
    # an IBRION=6 file with a block per step takes the reference step's block
    path.write_text(_outcar_two_steps(6, True, z2=z2)[0])
    np.testing.assert_array_equal(read_outcar(path).arrays[KEY_BORN], _case(11)[1])
    np.testing.assert_array_equal(read_outcar(path, structure=_case(11)[0]).arrays[KEY_BORN], _case(11)[1])


def _check_steps(frames, expected, atol):
    """One frame per ionic step, each with its own (structure, Z*, ε∞, energy)."""
    assert len(frames) == len(expected)
    for frame, (atoms, z, eps, energy) in zip(frames, expected):
        np.testing.assert_allclose(frame.positions, atoms.positions, atol=atol)
        np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)
        np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)
        assert frame.calc.results["energy"] == energy


def test_outcar_frames_one_per_labelled_step(tmp_path):
    """An MD/relaxation OUTCAR with a Born block (and ε) at every step: every step is a
    frame, each with its own structure, energy, forces, stress, Z* and ε∞."""
    from ase_born.io import read_dataset
    from ase_born.io.vasp import read_outcar_frames

    atoms, z, eps, energy, forces, _ = _case(11)
    z2 = nonsymmetric_born(5, 12)
    eps2 = eps + 0.5
    text, _, (moved, energy2, forces2) = _outcar_two_steps(2, True, z2=z2, eps2=eps2)
    path = tmp_path / "OUTCAR"
    path.write_text(text)
    import ase.io

    steps = ase.io.read(path, index=":", format="vasp-out")
    for frames in (read_outcar_frames(path), read_dataset([path])):
        _check_steps(frames, [(atoms, z, eps, energy), (moved, z2, eps2, energy2)], atol=1e-12)
        np.testing.assert_array_equal(frames[0].calc.results["forces"], forces)
        np.testing.assert_array_equal(frames[1].calc.results["forces"], forces2)
        for f, st in zip(frames, steps):
            np.testing.assert_array_equal(f.calc.results["stress"], st.get_stress())
    # the single-frame reader keeps the last step; one Born block only -> one frame
    np.testing.assert_array_equal(read_outcar(path).info[KEY_EPSILON_INF], eps2)
    path.write_text(_outcar_two_steps(2, False)[0])
    with pytest.warns(UserWarning, match="2 ionic steps but 1 Born-charge block"):
        assert len(read_outcar_frames(path)) == 1


def test_steps_of_one_file_are_one_structure_for_splits(tmp_path):
    """The ionic steps of one MD/relaxation file share one structure_id (the path), each with
    its ionic_step, so a split by structure keeps them together (each step had its own
    "file#k" ID, and correlated steps landed on both sides); an ID already set is kept and a
    single-frame file is left alone. They survive an extxyz round trip (ase-born convert)."""
    from ase_born.cli.main import main
    from ase_born.io import read_dataset
    from ase_born.io.extxyz import read_frames
    from ase_born.io.vasp import one_trajectory, read_outcar_frames, read_vasprun_frames
    from ase_born.train.dataset import BornDataset, split_by_structure

    z2 = nonsymmetric_born(5, 12)
    outcar = tmp_path / "md" / "OUTCAR"
    outcar.parent.mkdir()
    outcar.write_text(_outcar_two_steps(2, True, z2=z2)[0])
    vasprun = tmp_path / "vasprun.xml"
    vasprun.write_text(_vasprun_two_labelled_steps(0)[0])
    sid = {p: f"{p}@{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}" for p in (outcar, vasprun)}
    for path, frames in ((outcar, read_outcar_frames(outcar)), (vasprun, read_vasprun_frames(vasprun))):
        assert [f.info["structure_id"] for f in frames] == [sid[path]] * 2
        assert [f.info["ionic_step"] for f in frames] == [0, 1]
    frames = read_dataset([outcar, vasprun])
    ids = BornDataset.from_frames(frames, r_max=5.0, source="x").structure_ids
    assert ids == [sid[outcar]] * 2 + [sid[vasprun]] * 2
    train, val = split_by_structure(ids, val_fraction=0.5, seed=0)
    assert sorted(train) in ([0, 1], [2, 3]) and sorted(val) in ([0, 1], [2, 3])
    out = tmp_path / "md.extxyz"
    assert main(["convert", str(outcar), "-o", str(out)]) == 0
    back = read_frames(out)
    assert [(f.info["structure_id"], f.info["ionic_step"]) for f in back] == [(sid[outcar], 0), (sid[outcar], 1)]
    # another run converted under the same name (cd run; ase-born convert OUTCAR) is another structure
    other = tmp_path / "md2" / "OUTCAR"
    other.parent.mkdir()
    other.write_text(_outcar_two_steps(2, True, z2=nonsymmetric_born(5, 13))[0])
    cwd = os.getcwd()
    try:
        os.chdir(outcar.parent)
        first = read_outcar_frames("OUTCAR")
        os.chdir(other.parent)
        second = read_outcar_frames("OUTCAR")
    finally:
        os.chdir(cwd)
    assert len({f.info["structure_id"] for f in first + second}) == 2
    assert first[0].info["structure_id"].startswith("OUTCAR@")
    one = read_outcar_frames(outcar)[:1]
    one[0].info.pop("structure_id")
    assert "structure_id" not in one_trajectory(one, outcar)[0].info
    tagged = read_outcar_frames(outcar)
    for f in tagged:
        f.info["structure_id"] = "mine"
    assert {f.info["structure_id"] for f in one_trajectory(tagged, outcar)} == {"mine"}


def test_outcar_phonon_run_takes_epsilon_of_the_reference_step(tmp_path):
    """IBRION=6 with ε printed at each step: Z* and ε∞ both from the reference (first)."""
    atoms, z, eps, *_ = _case(11)
    path = tmp_path / "OUTCAR"
    path.write_text(_outcar_two_steps(6, True, z2=nonsymmetric_born(5, 12), eps2=eps + 1.0)[0])
    frame = read_outcar(path)
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-12)


def _vasprun_two_steps(ibrion: int):
    atoms, z, eps, energy, forces, _ = _case(13, decimals=8)
    moved, forces2, energy2 = _displaced(atoms, forces, energy)
    stress = np.diag([1.0, 2.0, 3.0])
    first = vasprun_text(
        atoms, z, eps, energy=energy, forces=forces, stress_kB=stress, ibrion=ibrion
    )
    second = vasprun_text(moved, z, eps, energy=energy2, forces=forces2, stress_kB=stress + 5)
    calc = second[second.index(" <calculation>") : second.index(" </calculation>")]
    calc = calc[: calc.index('  <varray name="dielectric_dft" >')]  # no response data
    cut = first.index(" </calculation>") + len(" </calculation>\n")
    return (
        first[:cut] + calc + " </calculation>\n" + first[cut:],
        atoms,
        z,
        eps,
        energy,
        forces,
        moved,
    )


def _vasprun_two_labelled_steps(ibrion: int, shift: float = 0.5):
    """Two ``<calculation>`` elements, each with its own ε and Born charges (step 2's
    shifted by ``shift``)."""
    atoms, z, eps, energy, forces, _ = _case(13, decimals=8)
    moved, forces2, energy2 = _displaced(atoms, forces, energy)
    stress = np.diag([1.0, 2.0, 3.0])
    z2, eps2 = np.round(z + shift, 8), np.round(eps + shift, 8)
    first = vasprun_text(
        atoms, z, eps, energy=energy, forces=forces, stress_kB=stress, ibrion=ibrion
    )
    second = vasprun_text(moved, z2, eps2, energy=energy2, forces=forces2, stress_kB=stress + 5)
    calc = second[second.index(" <calculation>") : second.index(" </calculation>")]
    cut = first.index(" </calculation>") + len(" </calculation>\n")
    text = first[:cut] + calc + " </calculation>\n" + first[cut:]
    return text, (atoms, z, eps, energy), (moved, z2, eps2, energy2)


def test_vasprun_frames_one_per_labelled_step(tmp_path):
    from ase_born.io import read_dataset
    from ase_born.io.vasp import read_vasprun_frames

    text, (atoms, z, eps, energy), (moved, z2, eps2, energy2) = _vasprun_two_labelled_steps(0)
    path = tmp_path / "vasprun.xml"
    path.write_text(text)
    for frames in (read_vasprun_frames(path), read_dataset([path])):
        _check_steps(frames, [(atoms, z, eps, energy), (moved, z2, eps2, energy2)], atol=1e-7)
    last = read_vasprun(path)
    np.testing.assert_array_equal(last.arrays[KEY_BORN], z2)
    np.testing.assert_array_equal(last.info[KEY_EPSILON_INF], eps2)
    # IBRION=6: one frame, Z* and ε∞ of the reference step (not the last ε in the file)
    path.write_text(_vasprun_two_labelled_steps(6)[0])
    for frames in (read_vasprun_frames(path), [read_vasprun(path)]):
        assert len(frames) == 1
        np.testing.assert_array_equal(frames[0].arrays[KEY_BORN], z)
        np.testing.assert_array_equal(frames[0].info[KEY_EPSILON_INF], eps)


@pytest.mark.parametrize("ibrion", [5, 6])
def test_vasprun_finite_difference_run_uses_reference_step(tmp_path, ibrion):
    text, atoms, z, eps, energy, forces, moved = _vasprun_two_steps(ibrion)
    path = tmp_path / "vasprun.xml"
    path.write_text(text)
    import ase.io

    steps = ase.io.read(path, index=":", format="vasp-xml")
    assert len(steps) == 2 and np.allclose(steps[-1].positions, moved.positions, atol=1e-7)
    frame = read_vasprun(path)
    np.testing.assert_allclose(frame.positions, atoms.positions, atol=1e-7)
    assert frame.calc.results["energy"] == energy
    np.testing.assert_array_equal(frame.calc.results["forces"], forces)
    np.testing.assert_array_equal(frame.calc.results["stress"], steps[0].get_stress())
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)
    np.testing.assert_array_equal(frame.info[KEY_EPSILON_INF], eps)


def test_vasprun_relaxation_keeps_last_step_and_warns(tmp_path):
    text, _, z, _, energy, _, moved = _vasprun_two_steps(2)
    path = tmp_path / "vasprun.xml"
    path.write_text(text)
    with pytest.warns(UserWarning, match="2 ionic steps but 1 Born-charge block"):
        frame = read_vasprun(path)
    np.testing.assert_allclose(frame.positions, moved.positions, atol=1e-7)
    assert frame.calc.results["energy"] != energy
    np.testing.assert_array_equal(frame.arrays[KEY_BORN], z)


# ---------------------------------------------------------------------------
# header variants, truncated files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        "BORN EFFECTIVE CHARGES (including local field effects) (in e, cummulative output)",
        "BORN EFFECTIVE CHARGES (including local field effects) (in |e|, cumulative output)",
        "BORN EFFECTIVE CHARGES (in e, cumulative output)",
        "BORN EFFECTIVE CHARGES (including local field effects) (in e, cumulative output)",
    ],
)
def test_outcar_born_header_variants(tmp_path, header):
    atoms, z, eps, energy, forces, stress_kB = _case(14)
    text = outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB)
    old = " BORN EFFECTIVE CHARGES (in e, cummulative output)\n"
    assert text.count(old) == 1
    path = tmp_path / "OUTCAR"
    path.write_text(text.replace(old, f" {header}\n"))
    np.testing.assert_array_equal(read_outcar(path).arrays[KEY_BORN], z)


def test_outcar_excluding_local_field_block_is_skipped(tmp_path):
    """LRPA=.TRUE. prints a second block '(excluding local field effects)' after the
    '(including ...)' one: it is the RPA response, not Z*."""
    atoms, z, eps, energy, forces, stress_kB = _case(15)
    text = outcar_text(
        atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB, lcalceps=True
    )
    head = " BORN EFFECTIVE CHARGES (including local field effects) (in |e|, cummulative output)"
    other = outcar_text(
        atoms, 0.5 * z, eps, energy=energy, forces=forces, stress_kB=stress_kB, lcalceps=True
    )
    rpa = other[other.index(head) : other.index("  FORCE on cell")].replace(
        "including", "excluding"
    )
    end = text.index("  FORCE on cell")
    path = tmp_path / "OUTCAR"
    path.write_text(text[:end] + rpa + text[end:])
    born, _, meta = parse_outcar_born_epsilon(path)
    np.testing.assert_array_equal(born, z)
    assert len(meta["born_blocks"]) == 1 and "including" in meta["born_header"]


def test_truncated_outcar_raises_valueerror_naming_file_and_block(tmp_path):
    atoms, z, eps, energy, forces, stress_kB = _case(16)
    text = outcar_text(atoms, z, eps, energy=energy, forces=forces, stress_kB=stress_kB)
    path = tmp_path / "OUTCAR"
    ion5 = text.index(" ion    5\n")
    path.write_text(text[: text.index("\n", ion5 + 11) + 1])  # 'ion 5' and one row of three
    with pytest.raises(
        ValueError, match=r"OUTCAR:\d+: file ends inside the Born-charge block, in ion 5"
    ):
        read_outcar(path)
    path.write_text(text[:ion5])  # ends after ion 4: NIONS = 5 says the block is cut
    with pytest.raises(
        ValueError, match=r"OUTCAR:\d+: .*4 ions but NIONS = 5 \(the file ends there\)"
    ):
        read_outcar(path)
    eps_head = text.index(
        " MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects in DFT)"
    )
    path.write_text(text[: text.index("\n", eps_head + 140) + 1])  # header, dashes, one row
    with pytest.raises(
        ValueError, match=r"OUTCAR:\d+: file ends inside the dielectric-tensor block"
    ):
        read_outcar(path)


@pytest.mark.parametrize("ibrion", [6, 2])
def test_vasp_output_as_structure_file_uses_the_step_the_born_charges_belong_to(tmp_path, ibrion):
    """structure=<vasprun.xml/OUTCAR> (a BORN file's structure, the OUTCAR fallback): a phonon
    run's (IBRION=5-8) first, undisplaced step, as the VASP readers pick; a relaxation's last.
    The last image was always taken, displaced geometry and energy included."""
    import ase.io

    from ase_born.io import load_structure
    from ase_born.io.vasp import read_ibrion

    text, atoms, _, _, energy, _, moved = _vasprun_two_steps(ibrion)
    path = tmp_path / "vasprun.xml"
    path.write_text(text)
    outcar = tmp_path / "OUTCAR"
    outcar.write_text(_outcar_two_steps(ibrion, False)[0])
    assert read_ibrion(path) == read_ibrion(outcar) == ibrion
    want = atoms if ibrion == 6 else moved
    np.testing.assert_allclose(load_structure(path).positions, want.positions, atol=1e-7)
    if ibrion == 6:
        assert load_structure(path).get_potential_energy() == pytest.approx(energy)
        first = ase.io.read(outcar, index=0, format="vasp-out")
        np.testing.assert_allclose(load_structure(outcar).positions, first.positions, atol=1e-7)


def test_compressed_outcar_and_born_files_read_like_plain_ones(tmp_path):
    """OUTCAR.gz (guessed as an OUTCAR, like vasprun.xml.gz) was read as plain text ("no
    Born-charge block"); BORN.gz failed to decode."""
    import gzip

    from ase_born.io import read_dataset

    text = _outcar_two_steps(6, False)[0]
    (tmp_path / "OUTCAR").write_text(text)
    with gzip.open(tmp_path / "OUTCAR.gz", "wt") as fh:
        fh.write(text)
    (plain,), (packed,) = read_dataset([tmp_path / "OUTCAR"]), read_dataset([tmp_path / "OUTCAR.gz"])
    np.testing.assert_array_equal(packed.arrays[KEY_BORN], plain.arrays[KEY_BORN])
    np.testing.assert_array_equal(packed.positions, plain.positions)
    assert packed.get_potential_energy() == plain.get_potential_energy()


def test_unrecognised_structure_file_is_a_value_error(tmp_path):
    from ase_born.io import load_structure

    (tmp_path / "notastructure.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="not a structure file ASE recognises"):
        load_structure(tmp_path / "notastructure.txt")
