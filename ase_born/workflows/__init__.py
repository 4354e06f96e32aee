"""Workflows: heating runs, finite-temperature dielectric tensor, static P(E), harmonic ε.

Public entry points (imported lazily, so ``import ase_born.workflows`` stays cheap)
-------------------------------------------------------------------------------
harmonic_dielectric(atoms, born_charges)
    0 K ionic dielectric tensor ``Zᵀ Φ⁺ Z/(Ω ε0)`` of a structure carrying any ASE force
    field (:mod:`.harmonic`).
run_heating(config, force_field, born_model, out)
    NpT heating run with lattice parameters, tilt order parameters, phases (seed Fig. 4;
    :mod:`.heating`).
run_dielectric(config, force_field, born_model, out)
    ε tensor vs T from finite-field and fluctuation MD, plus the 0 K value (seed Fig. 5;
    :mod:`.dielectric`).
run_pe_curve(config, force_field, born_model, out)
    static P(E) by relaxation in a field, static ε and onset of nonlinearity (seed Fig. 3;
    :mod:`.pe_curve`).

Every ``run_*`` writes CSV/JSON/PNG and extxyz trajectories into ``out`` as it goes and resumes
from its last checkpoint when called again (:mod:`.rundir`).  Supporting modules:
:mod:`.analysis` (octahedral tilts, phases), :mod:`.structures` (supercells, Glazer builder),
:mod:`.md` (integrator, exact restart state), :mod:`.stats`, :mod:`.standins` (exactly
solvable stand-in models), :mod:`.models` (loading MACE/Equivar/defaults), :mod:`.plots`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "harmonic_dielectric": "ase_born.workflows.harmonic",
    "force_constants_gamma": "ase_born.workflows.harmonic",
    "relax": "ase_born.workflows.harmonic",
    "DielectricConfig": "ase_born.workflows.dielectric",
    "run_dielectric": "ase_born.workflows.dielectric",
    "HeatingConfig": "ase_born.workflows.heating",
    "run_heating": "ase_born.workflows.heating",
    "analyze_heating": "ase_born.workflows.heating",
    "PECurveConfig": "ase_born.workflows.pe_curve",
    "run_pe_curve": "ase_born.workflows.pe_curve",
    "TiltAnalyzer": "ase_born.workflows.analysis",
    "identify_phase": "ase_born.workflows.analysis",
    "glazer_perovskite": "ase_born.workflows.structures",
    "IncompatibleSettingsError": "ase_born.workflows.rundir",
}

__all__ = [  # noqa: RUF022 - grouped by module, as in _LAZY
    "harmonic_dielectric",
    "force_constants_gamma",
    "relax",
    "DielectricConfig",
    "run_dielectric",
    "HeatingConfig",
    "run_heating",
    "analyze_heating",
    "PECurveConfig",
    "run_pe_curve",
    "TiltAnalyzer",
    "identify_phase",
    "glazer_perovskite",
    "IncompatibleSettingsError",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ase_born.workflows' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
