"""scripts/compare_dft_settings.py: differences between two settings of the same structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

from ase_born.io.extxyz import read_frames, write_frames


def test_differences_of_shared_structures(load_script, tmp_path, capsys):
    mod = load_script("compare_dft_settings")
    from ase_born import defaults

    frames = read_frames(defaults.data_dir() / "dft" / "catio3_dfpt.extxyz")[:3]
    other = [f.copy() for f in frames]
    for f, o in zip(frames, other):
        o.calc = SinglePointCalculator(o, energy=f.get_potential_energy(), forces=f.get_forces() * 1.1,
                                       stress=f.get_stress() + 0.01)
    write_frames(tmp_path / "a.extxyz", frames)
    write_frames(tmp_path / "b.extxyz", other[:2])
    d = mod.compare(read_frames(tmp_path / "a.extxyz")[1], read_frames(tmp_path / "b.extxyz")[1])
    f = frames[1].get_forces()
    assert np.abs(f).max() > 0.01
    assert d["max_dF"] == pytest.approx(np.abs(0.1 * f).max(), rel=1e-6)
    assert d["rel_rms_dF"] == pytest.approx(0.1 / 1.1, rel=1e-6)
    assert d["max_dZ"] == 0.0
    assert d["dstress_GPa"] == pytest.approx([-0.01 / GPa] * 6, rel=1e-9)
    assert mod.main([str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # the two shared structures only


def test_missing_stress_and_repeated_ids(load_script, tmp_path, capsys):
    """A frame without stress is compared on the rest ("-" for stress); a file with several
    frames under one structure ID (a VASP trajectory) is refused by name, not paired at random."""
    mod = load_script("compare_dft_settings")
    from ase_born import defaults

    (f,) = read_frames(defaults.data_dir() / "dft" / "catio3_dfpt.extxyz")[:1]
    o = f.copy()
    o.calc = SinglePointCalculator(o, energy=f.get_potential_energy(), forces=f.get_forces())
    write_frames(tmp_path / "a.extxyz", [f])
    write_frames(tmp_path / "b.extxyz", [o])
    d = mod.compare(read_frames(tmp_path / "a.extxyz")[0], read_frames(tmp_path / "b.extxyz")[0])
    assert d["dstress_GPa"] is None and d["max_dF"] == 0.0
    assert mod.main([str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz")]) == 0
    assert "d stress (GPa) -" in capsys.readouterr().out
    write_frames(tmp_path / "two.extxyz", [f, f.copy()])
    with pytest.raises(SystemExit, match="several frames with structure_id"):
        mod.main([str(tmp_path / "two.extxyz"), str(tmp_path / "b.extxyz")])
