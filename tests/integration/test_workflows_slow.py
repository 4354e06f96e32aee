"""Slow workflow checks (run with ``pytest -m slow``); each has a fast, smaller variant in tests/unit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

pytestmark = pytest.mark.slow


def test_direct_mode_with_position_dependent_charges_is_not_conservative():
    """Negative control of test_workflows_nve: direct mode ignores (∂Z*/∂R)·u, so K + E0 − E·d
    is not conserved when Z* depends on positions (documented in BornFieldCalculator)."""
    from test_workflows_nve import FLUCT_TOL, _fluct_drift, _run

    from ase_born.workflows.standins import QuadraticBornModel, random_born_charges

    z = random_born_charges(5, 4)
    e_total, _, _ = _run(
        "direct", lambda ref: QuadraticBornModel(z, ref, alpha=3.0), (0.05, -0.03, 0.08)
    )
    assert _fluct_drift(e_total)[0] > 10 * FLUCT_TOL


def test_solvable_system_npt_two_temperatures_plus_minus(tmp_path):
    """Larger variant of test_workflows_dielectric: NpT, two temperatures, ±E, 4x longer runs.
    Every route agrees with ZᵀΦ⁻¹Z/(Ω ε0) within its error bars; the even-order response is 0."""
    import ase.io
    from test_workflows_dielectric import PHI, Z, _config, born_model, force_field

    from ase_born.dft.sampler import cubic_catio3
    from ase_born.workflows.dielectric import run_dielectric
    from ase_born.workflows.standins import exact_epsilon_ion

    p = tmp_path / "cubic5.extxyz"
    ase.io.write(p, cubic_catio3(), format="extxyz")
    cfg = _config(
        str(p),
        ensemble="npt",
        temperatures_K=(300.0, 600.0),
        production_steps=10000,
        plus_minus=True,
        n_blocks=20,
    )
    res = run_dielectric(
        cfg, force_field, born_model, str(tmp_path / "run"), progress=False, log=lambda m: None
    )
    exact = exact_epsilon_ion(PHI, Z, cubic_catio3().get_volume())
    for tr in res["temperatures"]:
        ff = tr["epsilon_ion"]["finite_field"]
        v, e = np.asarray(ff["value"]), np.asarray(ff["error"])
        assert np.all(np.abs(v - exact) <= 4 * e + 0.01 * np.abs(exact).max())
        fl = tr["epsilon_ion"]["fluctuation"]
        v, e = np.diag(np.asarray(fl["value"])), np.diag(np.asarray(fl["error"]))
        assert np.all(np.abs(v - np.diag(exact)) <= 4 * e)
        assert np.all(e < 0.25 * np.diag(exact))
        lin = tr["linearity"]
        d, de = np.diag(np.asarray(lin["difference"])), np.diag(np.asarray(lin["difference_error"]))
        assert np.all(np.abs(d) <= 4 * de + 0.01 * np.abs(exact).max())
