"""scripts/distill_mace/validate_physics.py: the volume-correction search refuses a pressure
range that cannot reach the experimental volume (no force field needed: V(P) is faked)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms


@pytest.mark.parametrize(("v0_factor", "slope", "match"), [
    (1.20, 0.001, "at 12.0 GPa is still above"),  # too soft: 12 GPa was reported as the answer
    (0.80, 0.001, "at -6.0 GPa is still below"),
])
def test_pressure_search_refuses_an_unreachable_experimental_volume(load_script, v0_factor, slope, match):
    mod = load_script("distill_mace/validate_physics")
    v_exp = float(np.prod(mod.EXPERIMENT_PNMA_ABC))
    calls = []

    def relaxed(calc, p):
        calls.append(p)
        a = (v_exp * v0_factor * (1.0 - slope * p)) ** (1 / 3)
        return Atoms("Ca", cell=[a, a, a], pbc=True)

    mod.relaxed_at_pressure = relaxed
    with pytest.raises(RuntimeError, match=match):
        mod.check_pressure(calc=None)
    assert len(calls) == 2  # 0 GPa and the end of the range: no bisection, no phonons


def test_verdict_fails_what_the_criteria_exclude(load_script):
    """The report had no verdict: an NpT run that drifted or ran at the wrong temperature, or a
    Pnma cell that is no minimum at the corrected volume, still read as checked. The shipped
    model's committed report passes every check."""
    import copy
    import json
    from pathlib import Path

    mod = load_script("distill_mace/validate_physics")
    shipped = json.loads((Path(__file__).resolve().parents[2] / "data" / "models"
                          / "mace_catio3_validation.json").read_text())
    checks = ["pnma", "cubic", "pressure", "npt"]
    assert all(v["passed"] for v in mod.verdict(shipped, checks).values())
    for check, key, value in (("npt", "conserved_drift_meV_per_atom_per_ps", 3.0),
                              ("npt", "mean_T_K_after_1ps", 1500.0), ("npt", "stable", False),
                              ("pressure", "local_minimum", False), ("cubic", "tilt_instability_R", False)):
        bad = copy.deepcopy(shipped)
        bad[check][key] = value
        assert mod.verdict(bad, checks)[check]["passed"] is False, (check, key)
    assert mod.verdict({}, checks) == {}


@pytest.mark.parametrize(("v0_factor", "minimum_at", "expected_sign"), [
    (1.02, "experimental", +1),  # PBE teacher: too large at 0 GPa, a minimum once compressed
    (0.98, "zero", 0),  # PBEsol fine-tune: a minimum at its own volume, polar when stretched
    (0.98, "experimental", -1),  # a tension is kept where it is the one minimum
])
def test_pressure_correction_keeps_pnma_a_minimum(load_script, v0_factor, minimum_at, expected_sign):
    """The correction is the experimental-volume pressure unless Pnma is unstable there and
    stable at the model's own volume: then none (0 GPa) is applied, and the report's top level
    describes the structure the workflows run at."""
    mod = load_script("distill_mace/validate_physics")
    v_exp = float(np.prod(mod.EXPERIMENT_PNMA_ABC))

    calls = []

    def relaxed(calc, p):  # V(P) linear, 1 % per GPa
        calls.append(p)
        a = (v_exp * v0_factor * (1.0 - 0.01 * p)) ** (1 / 3)
        return Atoms("Ca", cell=[a, a, a], pbc=True)

    def pnma_at(calc, atoms):  # the experimental-volume cell, or the 0 GPa one (2 % off)
        is_exp = abs(atoms.get_volume() - v_exp) < 0.01 * v_exp
        minimum = is_exp if minimum_at == "experimental" else not is_exp
        return {"volume_A3": atoms.get_volume(), "local_minimum": minimum,
                "lowest_optical_THz": 1.0 if minimum else -2.0}

    mod.relaxed_at_pressure = relaxed
    mod._pnma_at = pnma_at
    r = mod.check_pressure(calc=None)
    assert len(calls) == len(set(calls))  # each pressure relaxed once (scan and phonons share it)
    p_exp = r["experimental_volume_pressure_GPa"]
    assert np.sign(p_exp) == np.sign(v0_factor - 1.0)
    assert abs(r["at_experimental_volume"]["volume_A3"] - v_exp) < 0.1
    assert np.sign(r["pressure_correction_GPa"]) == expected_sign
    assert r["pressure_correction_GPa"] in (0.0, p_exp)
    assert r["local_minimum"] and r["lowest_optical_THz"] == 1.0
    assert r["volume_A3"] == (r["at_zero_pressure"] if expected_sign == 0 else r["at_experimental_volume"])["volume_A3"]
    assert mod.verdict({"pressure": r}, ["pressure"])["pressure"]["passed"]
    # nowhere a minimum: the experimental-volume pressure, and the check fails
    assert mod.choose_correction(p_exp, False, False) == p_exp


@pytest.mark.parametrize(("r0", "repulsive"), [
    (3.0, True),  # minimum beyond every probed pair's distance: every probe climbs the wall
    (1.4, False),  # a false minimum inside it (version 1's O-O at ~1.4 Å): the check fails
])
def test_pair_probes_catch_a_false_short_range_minimum(load_script, r0, repulsive):
    """The `pairs` check on a Morse pair potential whose minimum distance is known."""
    from ase.calculators.morse import MorsePotential

    from ase_born.dft.sampler import pnma_catio3

    mod = load_script("distill_mace/validate_physics")
    calc = MorsePotential(epsilon=1.0, r0=r0, rho0=6.0, rcut1=1.9, rcut2=2.7)
    atoms = pnma_catio3()
    i, j, d0 = mod.nearest_pair(atoms, "O", "O")
    assert {atoms[i].symbol, atoms[j].symbol} == {"O"}
    assert d0 == pytest.approx(min(atoms.get_distance(a, b, mic=True) for a in range(len(atoms))
                                   for b in range(a) if atoms[a].symbol == atoms[b].symbol == "O"))
    # the probe moves the pair to exactly the requested distance
    rises = mod.pair_probe(atoms, calc, i, j, [d0])
    assert rises == [pytest.approx(0.0, abs=1e-12)]
    r = mod.check_pairs(calc)
    assert r["pairs"]["O-O"]["repulsive"] is repulsive
    assert mod.verdict({"pairs": r}, ["pairs"])["pairs"]["passed"] is repulsive
