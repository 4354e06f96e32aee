"""Units, constants, property keys and the Born-charge index order.

This module is the ONE place where the project's physical conventions live
(see ``CONVENTIONS.md`` in the design notes). Everything else imports from here.

Units inside the package (ASE units)
------------------------------------
=================  ==========================================
energy             eV
length             Å
time               ASE time units (``ase.units.fs`` per fs)
charge             e (elementary charge)
mass               amu
electric field     V/Å   (1 V/Å = 1e10 V/m = 1e8 V/cm)
polarization       e/Å²  (1 e/Å² = 16.02177 C/m²)
dipole             e·Å   (d = Ω P)
Born charges Z*    e
=================  ==========================================

Born effective charge index order
---------------------------------
``born_effective_charges`` has shape ``(n_atoms, 3, 3)`` and::

    Z*[k, b, a] = (Ω/e) ∂P_b/∂u_{k,a} = ∂F_{k,a} / ∂(e E_b)

The first Cartesian index ``b`` is the field / polarization direction, the
second ``a`` the displacement / force direction (seed eq. 1 order,
``F_{k,a} = F0_{k,a} + Σ_b E_b Z*_{k,b a}``).  Readers and writers of other
codes convert explicitly to this order.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from ase import units as _ase_units

# ---------------------------------------------------------------------------
# Physical constants (CODATA 2018 for e, ε0, k_B; Hartree/Bohr below from ase.units)
# ---------------------------------------------------------------------------
#: elementary charge in C
ELEMENTARY_CHARGE_C: Final[float] = 1.602176634e-19
#: vacuum permittivity in F/m
EPSILON0_SI: Final[float] = 8.8541878128e-12
#: vacuum permittivity in e/(V·Å):  ε0 [C/(V m)] / e [C] * 1e-10 [m/Å]
EPSILON0: Final[float] = EPSILON0_SI / ELEMENTARY_CHARGE_C * 1e-10
#: Boltzmann constant in eV/K
KB_EV_PER_K: Final[float] = 8.617333262e-5
#: Hartree in eV and Bohr in Å, taken from ``ase.units`` (ASE's default CODATA set)
#: so that atomic-unit conversions agree with every ASE reader.
HARTREE_EV: Final[float] = float(_ase_units.Hartree)
BOHR_A: Final[float] = float(_ase_units.Bohr)

# ---------------------------------------------------------------------------
# Field conversions: V/Å inside
# ---------------------------------------------------------------------------
V_PER_M_PER_V_PER_A: Final[float] = 1e10  # 1 V/Å = 1e10 V/m
V_PER_CM_PER_V_PER_A: Final[float] = 1e8  # 1 V/Å = 1e8 V/cm
MV_PER_CM_PER_V_PER_A: Final[float] = 1e2  # 1 V/Å = 100 MV/cm
#: fields larger than this (in V/Å) are almost surely V/m passed by mistake
MAX_FIELD_V_PER_A: Final[float] = 1.0

# ---------------------------------------------------------------------------
# Polarization conversions: e/Å² inside
# ---------------------------------------------------------------------------
C_PER_M2_PER_E_PER_A2: Final[float] = ELEMENTARY_CHARGE_C / 1e-20  # 16.02176634
UC_PER_CM2_PER_E_PER_A2: Final[float] = C_PER_M2_PER_E_PER_A2 * 100.0  # 1 C/m² = 100 µC/cm²

# ---------------------------------------------------------------------------
# ASE property keys (ase/outputs.py) and the project's extra result names
# ---------------------------------------------------------------------------
KEY_ENERGY: Final[str] = "energy"
KEY_FREE_ENERGY: Final[str] = "free_energy"
KEY_FORCES: Final[str] = "forces"
KEY_STRESS: Final[str] = "stress"
KEY_BORN: Final[str] = "born_effective_charges"
KEY_POLARIZATION: Final[str] = "polarization"
KEY_DIPOLE: Final[str] = "dipole"
KEY_DIELECTRIC: Final[str] = "dielectric_tensor"
KEY_EPSILON_INF: Final[str] = "epsilon_inf"
KEY_FIELD_ENERGY: Final[str] = "field_energy"
KEY_FIELD_FORCES: Final[str] = "field_forces"
KEY_FIELD_STRESS: Final[str] = "field_stress"
#: scalar sum-rule violation (1/9) Σ_ab |Σ_k Z*_k,ab| of one structure (e), the seed SI metric
KEY_ASR_VIOLATION: Final[str] = "asr_violation"
#: raw acoustic sum Σ_k Z*_k, shape (3, 3) (e); datasets store this in ``info``
KEY_ACOUSTIC_SUM: Final[str] = "acoustic_sum"

#: Human-readable statement of the Z* index order, used in docs and error messages.
BORN_INDEX_ORDER: Final[str] = (
    "Z*[k, b, a] = dF_{k,a}/d(e E_b) = (Omega/e) dP_b/du_{k,a}: "
    "first index b = field/polarization direction, second index a = displacement/force direction"
)
#: einsum signature of the field force F_{k,a} = sum_b E_b Z*_{k,b,a}
BORN_FORCE_EINSUM: Final[str] = "b,kba->ka"
#: einsum signature of the dipole d_b = sum_{k,a} Z*_{k,b,a} u_{k,a}
BORN_DIPOLE_EINSUM: Final[str] = "kba,ka->b"


# ---------------------------------------------------------------------------
# Conversion helpers (the only sanctioned way to enter non-ASE units)
# ---------------------------------------------------------------------------
def field_from_V_per_m(field_V_per_m: np.ndarray | float) -> np.ndarray:
    """Convert an electric field from V/m to the internal V/Å.

    Parameters
    ----------
    field_V_per_m : array_like
        Field in V/m, any shape (typically ``shape=(3,)``).

    Returns
    -------
    numpy.ndarray
        Field in V/Å, same shape.  ``5e7 V/m -> 0.005 V/Å``.
    """
    return np.asarray(field_V_per_m, dtype=float) / V_PER_M_PER_V_PER_A


def field_to_V_per_m(field_V_per_A: np.ndarray | float) -> np.ndarray:
    """Convert an electric field from V/Å to V/m."""
    return np.asarray(field_V_per_A, dtype=float) * V_PER_M_PER_V_PER_A


def field_from_MV_per_cm(field_MV_per_cm: np.ndarray | float) -> np.ndarray:
    """Convert an electric field from MV/cm to V/Å (1 MV/cm = 0.01 V/Å)."""
    return np.asarray(field_MV_per_cm, dtype=float) / MV_PER_CM_PER_V_PER_A


def field_to_MV_per_cm(field_V_per_A: np.ndarray | float) -> np.ndarray:
    """Convert an electric field from V/Å to MV/cm."""
    return np.asarray(field_V_per_A, dtype=float) * MV_PER_CM_PER_V_PER_A


def polarization_to_C_per_m2(p_e_per_A2: np.ndarray | float) -> np.ndarray:
    """Convert polarization from e/Å² to C/m²."""
    return np.asarray(p_e_per_A2, dtype=float) * C_PER_M2_PER_E_PER_A2


def polarization_from_C_per_m2(p_C_per_m2: np.ndarray | float) -> np.ndarray:
    """Convert polarization from C/m² to e/Å²."""
    return np.asarray(p_C_per_m2, dtype=float) / C_PER_M2_PER_E_PER_A2


def polarization_to_uC_per_cm2(p_e_per_A2: np.ndarray | float) -> np.ndarray:
    """Convert polarization from e/Å² to µC/cm²."""
    return np.asarray(p_e_per_A2, dtype=float) * UC_PER_CM2_PER_E_PER_A2


def validate_field(
    field: np.ndarray | list | tuple,
    *,
    allow_large_field: bool = False,
    name: str = "field",
) -> np.ndarray:
    """Check an electric field given in V/Å and return it as ``float64`` ``shape=(3,)``.

    Parameters
    ----------
    field : array_like, shape=(3,)
        Field vector in V/Å.
    allow_large_field : bool
        Magnitudes above :data:`MAX_FIELD_V_PER_A` (1 V/Å = 1e10 V/m) raise
        ``ValueError`` unless this opt-in is set: such a value is almost
        surely a field in V/m passed by mistake.
    name : str
        Name used in error messages.

    Raises
    ------
    TypeError
        If ``field`` is not numeric.
    ValueError
        Wrong shape, non-finite entries, or too large without opt-in.
    """
    try:
        arr = np.asarray(field, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric 3-vector in V/Å, got {field!r}") from exc
    if arr.shape != (3,):
        raise ValueError(f"{name} must have shape (3,) (a vector in V/Å), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr}")
    mag = float(np.linalg.norm(arr))
    if mag > MAX_FIELD_V_PER_A and not allow_large_field:
        raise ValueError(
            f"{name} magnitude {mag:.4g} V/Å exceeds {MAX_FIELD_V_PER_A} V/Å (= 1e10 V/m); "
            "this is almost surely a field in V/m passed as V/Å. Convert with "
            "ase_born.conventions.field_from_V_per_m(), or pass allow_large_field=True."
        )
    return arr


__all__ = [name for name in dir() if name.isupper() or name.startswith(("field_", "polarization_"))]
__all__ += ["validate_field"]
