"""Train your own Equivar Born-charge model and use it in a field MD calculator.

Trains a small Equivar (seconds on a CPU) on the synthetic CaTiO3 fixture shipped with the
tests (analytic, equivariant Z*(R) — NOT DFT; replace ``train_files`` with your own extxyz
of DFPT frames, e.g. from ``ase-born dft run`` or ``ase-born convert OUTCAR ...``), reports
the TEST-split metrics, then plugs the trained model into ``BornFieldCalculator``.

Paper-sized training on the project's ABINIT data: the seed paper's recipe (BM2, abrupt 3 Å
cutoff, 500 epochs) is ``ase-born train examples/configs/equivar_bm2_catio3.yaml``; the shipped
default model's recipe (r_max 4 Å, smooth cutoff, final fit) is
``examples/configs/equivar_bm2_catio3_provisional.yaml`` (use ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from ase.calculators.lj import LennardJones

from ase_born import BornFieldCalculator
from ase_born.conventions import field_from_V_per_m, polarization_to_uC_per_cm2
from ase_born.io.extxyz import read_frames
from ase_born.models import EquivarCalculator
from ase_born.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)  # small graphs: one thread is fastest on a shared CPU
    out = ROOT / "runs/example06"
    shutil.rmtree(out, ignore_errors=True)  # a demo: start fresh (the trainer never overwrites a run)
    config = TrainConfig.from_yaml(ROOT / "examples/configs/equivar_tiny_cpu.yaml").replace(
        train_files=(str(ROOT / "tests/data/train/synthetic_catio3.extxyz"),),
        out=str(out),
        epochs=15,
    )
    result = train(config)
    print(f"best epoch {result.best_epoch}: validation MAE {result.best_val_mae:.4f} e")
    print(f"TEST MAE {result.test['mae']:.4f} e, RMSE {result.test['rmse']:.4f} e, "
          f"sum-rule violation of the raw output {result.test['asr_violation_mae']:.4f} e")

    # The trained model as a Born-charge model of the field calculator.
    born = EquivarCalculator(result.out / "model.pt", device="cpu", dtype="float64")
    atoms = read_frames(ROOT / "tests/data/train/synthetic_catio3.extxyz", index="0")[0]
    atoms.calc = BornFieldCalculator(
        force_field=LennardJones(sigma=2.0, epsilon=0.01, rc=5.0),  # stand-in force field
        born_model=born,
        field=field_from_V_per_m([0.0, 0.0, 5e7]),
    )
    atoms.get_forces()  # the first structure seen becomes the zero-displacement reference
    atoms.positions[0] += [0.0, 0.0, 0.05]  # displace one atom by 0.05 Å along z
    z = atoms.calc.get_property("born_effective_charges", atoms)
    p = atoms.calc.get_property("polarization", atoms)
    print("Z* of atom 0 (e):\n", np.round(z[0], 3))
    print("P (µC/cm²):", np.round(polarization_to_uC_per_cm2(p), 4))


if __name__ == "__main__":
    main()
