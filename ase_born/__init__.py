"""ase_born: field-driven molecular dynamics with machine-learned Born effective charges.

Public API
----------
BornFieldCalculator
    ASE calculator wrapping any force-field calculator and a Born-charge model,
    adding the external-field forces, energy, stress and polarization.
FixedBornCharges
    Born-charge model with fixed per-atom tensors (array, phonopy BORN, extxyz).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["BornFieldCalculator", "FixedBornCharges", "__version__"]


def __getattr__(name: str):
    # Lazy imports keep `import ase_born` cheap (torch/e3nn load only when needed).
    if name == "BornFieldCalculator":
        from ase_born.calculators.field import BornFieldCalculator

        return BornFieldCalculator
    if name == "FixedBornCharges":
        from ase_born.calculators.born import FixedBornCharges

        return FixedBornCharges
    raise AttributeError(f"module 'ase_born' has no attribute {name!r}")
