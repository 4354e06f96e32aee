#!/usr/bin/env python
"""Refresh the machine-readable model card after a shipped model file changed.

    python scripts/update_model_card.py --force-field   # after replacing models/mace_catio3.model
    python scripts/update_model_card.py --born-model    # after replacing the Equivar file

Recomputes, from the files named in ``data/models/defaults.json``, the SHA-256 and the
``reference_check`` numbers that ``tests/unit/test_defaults.py`` compares against (the same
structure and procedure as the test: Pnma CaTiO3 rattled 0.05 Å with ase's seed 1, float64,
CPU).  Everything else in the card (summaries, metrics, ε∞) is left as it is: those come
from the training/validation runs and are edited with them.

The force field's volume correction (``pressure_correction_GPa``, applied by the workflows)
belongs to one model file: a new force-field file removes it (the workflows then apply
none) until it is set again from that file's own check::

    python scripts/distill_mace/validate_physics.py --checks pressure       # shipped model
    python scripts/update_model_card.py --pressure-from data/models/mace_catio3_validation.json

(``--pressure-from`` refuses a report made for another file.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def pressure_entry(report_path, card: dict) -> dict:
    """The card's ``pressure_correction_GPa`` from a ``validate_physics.py`` report of the
    card's own force-field file."""
    report = json.loads(Path(report_path).read_text())
    sha = card["force_field"].get("sha256")
    if (report.get("model") or {}).get("sha256") != sha:
        raise SystemExit(f"{report_path} checks another file (sha256 "
                         f"{(report.get('model') or {}).get('sha256')}), not the card's force "
                         f"field ({sha}): run validate_physics.py --checks pressure on it first")
    check = report.get("pressure")
    if not isinstance(check, dict) or "pressure_correction_GPa" not in check:
        raise SystemExit(f"{report_path} has no pressure check: run validate_physics.py --checks pressure")
    minimum = "a local minimum" if check.get("local_minimum") else "NOT a local minimum"
    value = float(check["pressure_correction_GPa"])
    p_exp = float(check.get("experimental_volume_pressure_GPa", value))  # older reports: equal
    at_exp = check.get("at_experimental_volume") or check
    if value == p_exp:
        why = (f"pressure at which the MACE-relaxed Pnma cell has the experimental volume "
               f"({check['experimental_volume_A3']:.1f} A^3); Pnma is {minimum} there")
    else:
        why = (f"none: at the experimental volume ({check['experimental_volume_A3']:.1f} A^3, "
               f"{p_exp:+.2f} GPa) the MACE-relaxed Pnma cell has unstable Gamma modes (lowest "
               f"{at_exp.get('lowest_optical_THz', float('nan')):.2f} THz); at {value:g} GPa "
               f"(volume {check.get('volume_A3', float('nan')):.1f} A^3) Pnma is {minimum}")
    return {
        "value": value,
        "source": (f"{why} (lowest Gamma optical {check.get('lowest_optical_THz', float('nan')):.2f} "
                   f"THz); from {report_path} "
                   f"({check.get('command', 'validate_physics.py --checks pressure')})"),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force-field", action="store_true")
    ap.add_argument("--born-model", action="store_true")
    ap.add_argument("--pressure-from", metavar="REPORT",
                    help="set the volume correction from a validate_physics.py report of the card's force field")
    ap.add_argument("--summary", metavar="TEXT",
                    help="with --force-field/--born-model: the new file's one-line summary (where it comes "
                         "from, what it was fitted to, its checks); a new file keeps the old one otherwise")
    args = ap.parse_args(argv)
    if not (args.force_field or args.born_model or args.pressure_from):
        ap.error("name the model(s) to refresh: --force-field and/or --born-model (or --pressure-from)")
    if args.summary is not None and args.force_field == args.born_model:
        ap.error("--summary goes with exactly one of --force-field / --born-model")
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
            old = card[key].get("sha256")
            card[key]["sha256"] = defaults.sha256(defaults.models_dir() / card[key]["file"])
            new_file = old != card[key]["sha256"]
            if new_file and key == "force_field" and card[key].pop("pressure_correction_GPa", None) is not None:
                print("force_field: new file, its volume correction removed (it belonged to the "
                      "old file; the workflows apply none until --pressure-from sets it)")
            if args.summary is not None:
                card[key]["summary"] = args.summary
            elif new_file:
                print(f"{key}: NOTE new file, but its summary still describes the old one: pass "
                      "--summary; for a force field also rerun validate_physics.py (then "
                      "--pressure-from) and evaluate.py (--dft-only --new-model without the "
                      "distillation data), whose reports name the old file's hash")
            write()
            refresh(card)
            write()
            print(f"{key}: {card[key]['file']} sha256 {card[key]['sha256']}")
    if args.pressure_from:
        card["force_field"]["pressure_correction_GPa"] = pressure_entry(args.pressure_from, card)
        write()
        print(f"force_field: pressure correction {card['force_field']['pressure_correction_GPa']['value']} GPa")


if __name__ == "__main__":
    main()
