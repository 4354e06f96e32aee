"""Single point of Pnma CaTiO3 in a 5e7 V/m field: energy, forces, stress, Z* and polarization."""

from __future__ import annotations

import numpy as np
from ase.spacegroup import crystal

from ase_born import BornFieldCalculator, FixedBornCharges
from ase_born.conventions import field_from_V_per_m, polarization_to_uC_per_cm2
from ase_born.testing import SpringsToSites


def catio3_pnma():
    """20-atom Pnma CaTiO3 (REFERENCE.md lattice and Wyckoff positions)."""
    return crystal(
        ["Ca", "Ti", "O", "O"],
        basis=[(0.03442, 0.25, 0.99349), (0.5, 0.0, 0.0), (0.48394, 0.25, 0.07113), (0.28887, 0.03716, 0.71056)],
        spacegroup=62,
        cellpar=[5.4423, 7.6401, 5.3796, 90, 90, 90],
    )


def cubic_like_born_charges(atoms):
    """Literature cubic-CaTiO3 Z* (Ca 2.58, Ti 7.08, O∥ -5.65, O⊥ -2.00) on the Pnma cell.

    O∥ is along that oxygen's Ti–O–Ti axis (the two nearest Ti), O⊥ across it.
    """
    z = np.zeros((len(atoms), 3, 3))
    ti = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Ti"]
    for k, sym in enumerate(atoms.get_chemical_symbols()):
        if sym == "Ca":
            z[k] = 2.58 * np.eye(3)
        elif sym == "Ti":
            z[k] = 7.08 * np.eye(3)
        else:
            vec = atoms.get_distances(k, ti, mic=True, vector=True)
            two = vec[np.argsort(np.linalg.norm(vec, axis=1))[:2]]
            axis = two[0] - two[1]
            axis /= np.linalg.norm(axis)
            z[k] = -2.00 * np.eye(3) + (-5.65 + 2.00) * np.outer(axis, axis)
    return z


def main() -> None:
    ref = catio3_pnma()
    # stand-in force field: springs to the Pnma sites (κ in eV/Å²); swap in MACE for real work
    ff = SpringsToSites(ref, {"Ca": 4.0, "Ti": 8.0, "O": 6.0})
    born = FixedBornCharges(cubic_like_born_charges(ref), ref)
    field = field_from_V_per_m([0.0, 0.0, 5e7])  # 0.005 V/Å along z
    calc = BornFieldCalculator(ff, born, field=field, reference=ref, asr=True)

    atoms = ref.copy()
    atoms.rattle(0.02, seed=1)
    atoms.calc = calc
    print(f"atoms: {atoms.get_chemical_formula()}  field: {field} V/Å")
    print(f"energy          {atoms.get_potential_energy(): .6f} eV")
    print(f"  contributions {calc.results['energy_contributions']} eV (force field, field)")
    print(f"max |F|         {np.abs(atoms.get_forces()).max():.4f} eV/Å")
    print(f"field force Ti0 {calc.get_property('field_forces', atoms)[4]} eV/Å")
    print(f"stress          {atoms.get_stress()} eV/Å³")
    p = calc.get_property("polarization", atoms)
    print(f"polarization    {p} e/Å² = {polarization_to_uC_per_cm2(p)} µC/cm²")
    print(f"dipole          {calc.get_property('dipole', atoms)} e·Å")
    print(f"ASR violation of the input Z*: {calc.get_property('asr_violation', atoms):.4f} e (removed)")
    print(f"Z*(Ti0) =\n{calc.get_property('born_effective_charges', atoms)[4]}")


if __name__ == "__main__":
    main()
