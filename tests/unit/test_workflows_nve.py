"""NVE energy conservation in a field (VelocityVerlet, 10⁴ steps, 5-atom stand-in).

Stated tolerances (5 atoms at ~600 K, kinetic energy ~0.4 eV, dt = 1 fs):
* fluctuation (max − min) of the conserved quantity ≤ 5e-4 eV (Verlet's O(dt²) oscillation);
* drift (mean of the last 1000 steps − mean of the first 1000) ≤ 2e-6 eV for a constant field,
  ≤ 1e-4 eV for the time-dependent field, which pumps ~0.2 eV into the system (5e-4 of it).
The negative control (direct mode with position-dependent Z* is not conservative) is in
tests/integration/test_workflows_slow.py.
"""

from __future__ import annotations

import numpy as np
from ase import units
from ase.md.verlet import VelocityVerlet

from ase_born import BornFieldCalculator, FixedBornCharges
from ase_born.dft.sampler import cubic_catio3
from ase_born.workflows import md
from ase_born.workflows.standins import (
    HarmonicCrystal,
    QuadraticBornModel,
    random_born_charges,
    random_force_constants,
)

N_STEPS = 10_000
FLUCT_TOL = 5e-4  # eV
DRIFT_TOL = 2e-6  # eV


def _run(mode, born, field, n_steps=N_STEPS):
    ref = cubic_catio3()
    ff = HarmonicCrystal(ref, force_constants=random_force_constants(5, 3))
    calc = BornFieldCalculator(ff, born(ref), field=field, reference=ref, mode=mode)
    atoms = ref.copy()
    atoms.calc = calc
    md.thermalize(atoms, 600.0, np.random.default_rng(1))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    calc.attach_dynamics(dyn)
    e_total, e_work, corr = [], [], 0.0
    for _ in range(n_steps):
        dyn.run(1)
        k = atoms.get_kinetic_energy()
        epot = atoms.get_potential_energy()
        e0 = float(calc.results["energy_contributions"][0])
        e_total.append(k + epot)
        e_work.append(k + e0 - calc.field_work)
        corr = max(corr, float(np.abs(calc.results["field_force_correction"]).max()))
    return np.array(e_total), np.array(e_work), corr


def _fluct_drift(e):
    return float(e.max() - e.min()), float(abs(e[-1000:].mean() - e[:1000].mean()))


def test_conservative_mode_conserves_energy_with_position_dependent_born_charges():
    z = random_born_charges(5, 4)
    field = (0.05, -0.03, 0.08)  # V/Å
    e_total, e_work, corr = _run(
        "conservative", lambda ref: QuadraticBornModel(z, ref, alpha=3.0), field
    )
    fl, dr = _fluct_drift(e_total)
    assert corr > 1e-3, "the (∂Z*/∂R)·u term must be exercised"
    assert fl < FLUCT_TOL, f"K + E0 − E·d fluctuates by {fl:.2e} eV"
    assert dr < DRIFT_TOL, f"K + E0 − E·d drifts by {dr:.2e} eV over {N_STEPS} steps"
    # with a constant field the work formulation is the same conserved quantity
    assert _fluct_drift(e_work)[1] < 10 * DRIFT_TOL


def test_direct_mode_time_dependent_field_conserves_energy_minus_work():
    """E(t) = E0 sin(ωt): K + E0 − W (W = work done by the field) is the conserved quantity."""
    z = random_born_charges(5, 6)
    omega = 2 * np.pi / (200.0 * units.fs)

    def field(t):
        return np.array([0.012, 0.0, -0.018]) * np.sin(omega * t)

    e_total, e_work, _ = _run("direct", lambda ref: FixedBornCharges(z), field, n_steps=5000)
    fl, dr = _fluct_drift(e_work)
    assert np.ptp(e_total) > 0.05, "the field must do work on the system"
    assert fl < FLUCT_TOL, f"K + E0 − W fluctuates by {fl:.2e} eV"
    assert dr < 1e-4, f"K + E0 − W drifts by {dr:.2e} eV"
