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
