#!/usr/bin/env python
"""Refresh the machine-readable model card after a shipped model file changed.

    python scripts/update_model_card.py --force-field   # after replacing models/mace_catio3.model
    python scripts/update_model_card.py --born-model    # after replacing the Equivar file

Recomputes, from the files named in ``data/models/defaults.json``, the SHA-256 and the
``reference_check`` numbers that ``tests/unit/test_defaults.py`` compares against (the same
structure and procedure as the test: Pnma CaTiO3 rattled 0.05 Å with ase's seed 1, float64,
CPU).  Everything else in the card (summaries, metrics, pressure correction, ε∞) is left
as it is: those come from the training/validation runs and are edited with them.
"""

from __future__ import annotations

import argparse
import json

from ase_born import defaults
from ase_born.dft.sampler import pnma_catio3

REFERENCE_STRUCTURE = "pnma_catio3() rattled 0.05 A (ase rattle seed 1)"


def _rattled():
    atoms = pnma_catio3()
    atoms.rattle(0.05, seed=1)
    return atoms


def refresh_force_field(card: dict) -> None:
    entry = card["force_field"]
    atoms = _rattled()
    atoms.calc = defaults.load_force_field(device="cpu", dtype="float64")
    entry["reference_check"] = {
        "structure": REFERENCE_STRUCTURE,
        "energy_eV": float(atoms.get_potential_energy()),
        "forces_first3": atoms.get_forces()[:3].tolist(),
        "stress": atoms.get_stress().tolist(),
    }


def born_reference_check(path) -> dict:
    """The card's ``reference_check`` of an Equivar file (what the defaults loader computes:
    float64, CPU, sum rule on), from the file itself (no hash check against the card)."""
    from ase_born.models import EquivarCalculator

    z = EquivarCalculator(str(path), device="cpu", dtype="float64").get_born_charges(_rattled())
    return {"structure": REFERENCE_STRUCTURE + ", float64, ASR on", "born_charges_first3": z[:3].tolist()}


def refresh_born_model(card: dict) -> None:
    card["born_model"]["reference_check"] = born_reference_check(
        defaults.models_dir() / card["born_model"]["file"]
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force-field", action="store_true")
    ap.add_argument("--born-model", action="store_true")
    args = ap.parse_args(argv)
    if not (args.force_field or args.born_model):
        ap.error("name the model(s) to refresh: --force-field and/or --born-model")
    path = defaults.models_dir() / "defaults.json"
    card = json.loads(path.read_text())

    def write() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(card, indent=1) + "\n")
        tmp.replace(path)

    for key, flag, refresh in (("force_field", args.force_field, refresh_force_field),
                               ("born_model", args.born_model, refresh_born_model)):
        if flag:
            # new hash first: the loaders refuse a file whose hash does not match the card
            card[key]["sha256"] = defaults.sha256(defaults.models_dir() / card[key]["file"])
            write()
            refresh(card)
            write()
            print(f"{key}: {card[key]['file']} sha256 {card[key]['sha256']}")


if __name__ == "__main__":
    main()
