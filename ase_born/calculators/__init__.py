"""ASE calculators and Born-charge models.

``BornFieldCalculator`` (field.py) wraps any ASE force field and a Born-charge model
(protocol in base.py); ``FixedBornCharges`` (born.py) holds fixed tensors.  Imports are
lazy so that ``import ase_born.calculators`` stays cheap.
"""

from __future__ import annotations

__all__ = ["BornChargeModel", "BornFieldCalculator", "FixedBornCharges", "check_born_charges"]


def __getattr__(name: str):
    if name == "BornFieldCalculator":
        from ase_born.calculators.field import BornFieldCalculator

        return BornFieldCalculator
    if name == "FixedBornCharges":
        from ase_born.calculators.born import FixedBornCharges

        return FixedBornCharges
    if name in ("BornChargeModel", "check_born_charges"):
        from ase_born.calculators import base

        return getattr(base, name)
    raise AttributeError(f"module 'ase_born.calculators' has no attribute {name!r}")
