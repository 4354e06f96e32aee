"""NpT heating run of Pnma CaTiO3 with octahedral-tilt and lattice-parameter analysis (seed Fig. 4).

Runs in about a minute on a laptop CPU with the stand-in models (springs to the Pnma sites +
nominal Born charges), which cannot melt the tilts: the point is the workflow, its outputs
(heat_log.csv, trajectory.extxyz, heat_windows.csv, heat_phases.json, heat.png in
runs/examples/03_heating) and the phase analysis, shown at the end on synthetic structures with
known tilts.

Real models: pass a MACE calculator and an Equivar model instead of the stand-ins, e.g. the
shipped defaults (``data/models/``; ``ase-born heat`` uses them)::

    from ase_born.defaults import load_born_model, load_force_field
    force_field = load_force_field(device="cuda")
    born_model = load_born_model(device="cuda")
    # and, as `ase-born heat` does, the defaults' volume correction:
    # HeatingConfig(..., pressure_GPa=ase_born.defaults.default_pressure_GPa())

or your own files: ``ase_born.workflows.models.mace_calculator("my.model", device="cuda")``
and ``ase_born.models.EquivarCalculator("my_equivar.pt", device="cuda")``.

Paper-sized run (GPU; ``ase-born heat --paper`` does the same): 640-atom ``(4, 2, 4)`` and
1280-atom ``(4, 4, 4)`` supercells, 300 -> 1800 K at 1 K/ps::

    HeatingConfig(**ase_born.workflows.heating.PAPER_PRESET)            # 640 atoms
    HeatingConfig(**{**PAPER_PRESET, "supercell": (4, 4, 4)})            # 1280 atoms
"""

from __future__ import annotations

from ase_born.workflows.analysis import TiltAnalyzer, identify_phase
from ase_born.workflows.heating import HeatingConfig, format_heating_report, run_heating
from ase_born.workflows.standins import standin_born_model, standin_force_field
from ase_born.workflows.structures import glazer_perovskite


def main() -> None:
    config = HeatingConfig(
        supercell=(1, 1, 2),  # 40 atoms; the paper: (4, 2, 4) = 640 and (4, 4, 4) = 1280
        temperatures_K=(300.0, 1800.0),
        ramp_steps=3000,  # 2 fs steps: 250 K/ps (the paper: 1 K/ps)
        equilibration_steps=200,
        log_every=10,
        traj_every=100,
        window_K=150.0,
        seed=1,
    )
    result = run_heating(
        config, standin_force_field, standin_born_model, "runs/examples/03_heating", overwrite=True
    )
    print(format_heating_report(result))

    print("\nPhase analysis of synthetic structures with known tilts:")
    for label, atoms in [
        ("a-b+a- 8°/6°", glazer_perovskite((8.0, 6.0, 8.0), "-+-")),
        ("a0a0c- 6°", glazer_perovskite((0.0, 0.0, 6.0), "00-")),
        ("untilted", glazer_perovskite((0.0, 0.0, 0.0), "000")),
    ]:
        res = identify_phase(atoms, TiltAnalyzer(atoms))
        print(
            f"  {label:14s} -> {res['glazer']:8s} {res['phase']:7s} (spglib: {res['spglib_symbol']})"
        )


if __name__ == "__main__":
    main()
