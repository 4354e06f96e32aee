#!/usr/bin/env python
"""Per-structure cross-validation errors of Born-model recipes (cutoff study, issue 6).

    ase-born train examples/configs/cutoff_study/r3.0.yaml --device cpu --threads 1   # one per recipe
    python scripts/born_cv_report.py runs/cutoff_study/r3.0 runs/cutoff_study/r4.0p ...

Each RUN is an ``ase-born train`` directory with ``folds > 1`` (``fold_<k>/`` subdirectories,
each with ``model.pt`` and ``splits.json``).  Every training structure is predicted once, by
the fold model that did not train on it (its validation fold); TEST frames are never read
(they are not in any fold).  Printed per recipe: the atom-weighted MAE over all structures
(sum rule applied to prediction and DFPT, the trainer's definition), the MAE per structure
kind and per species, and the structures with the largest error.  The fold models are the
best-validation epochs of their folds, so the numbers are optimistic in the same way for
every recipe: compare recipes, do not quote them as test errors.  ``--last-epoch`` uses
each fold's final weights instead (``checkpoints/last.pt`` at the configured last epoch),
without the selection on the validation folds: the closest CV stand-in for a final fit
(``val_fraction: 0``), which no held-out data select either -- it ships its lowest
training-set MAE epoch, near the end at a constant learning rate (epoch 962 of 1000 for the
session-24 default).  It also prints the fold-mean validation MAE along the training
(``log.csv``), to compare learning-rate schedules and epoch counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ase_born.calculators.equivar import EquivarCalculator
from ase_born.io.extxyz import get_born_charges, read_frames_by_id
from ase_born.models.equivar import Equivar
from ase_born.train.checkpoint import load_checkpoint, model_from_checkpoint
from ase_born.train.dataset import correct_asr, split_tag


def last_epoch_model(fold: Path) -> Equivar:
    """The fold's weights after its last configured epoch (``checkpoints/last.pt``)."""
    ckpt = load_checkpoint(fold / "checkpoints" / "last.pt")
    epochs = int(ckpt["train_config"]["epochs"])
    if int(ckpt["epoch"]) != epochs:
        raise SystemExit(f"{fold}: checkpoints/last.pt is from epoch {ckpt['epoch']}, not the last "
                         f"({epochs}): the fold did not finish (resume it with ase-born train --resume)")
    return model_from_checkpoint(ckpt)


def val_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and the validation MAE averaged over the folds (each fold's ``log.csv``)."""
    curves = []
    for fold in sorted(run.glob("fold_*")):
        rows = list(csv.DictReader((fold / "log.csv").open()))
        curves.append([(int(r["epoch"]), float(r["val_mae"])) for r in rows])
    n = min(len(c) for c in curves)
    arr = np.array([c[:n] for c in curves])  # (folds, epochs, 2)
    return arr[0, :, 0].astype(int), arr[:, :, 1].mean(axis=0)


def cv_errors(run: Path, frames: dict, last_epoch: bool = False) -> dict[str, np.ndarray]:
    """Structure ID -> |ΔZ*| (n_atoms, 3, 3) from the fold model that validated it
    (its best-validation epoch, or with ``last_epoch`` its final weights)."""
    out: dict[str, np.ndarray] = {}
    folds = sorted(run.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    if not folds:
        raise SystemExit(f"{run}: no fold_<k>/ directories (train with folds > 1)")
    # only a finished cross-validation: every fold trained to the end (an interrupted one
    # would report the folds done so far as if they were all)
    summary = run / "metrics.json"
    n_folds = None
    if summary.is_file():
        cv = json.loads(summary.read_text()).get("cross_validation") or {}
        n_folds = cv.get("folds")
        n_folds = len(n_folds) if isinstance(n_folds, list) else n_folds
    if n_folds != len(folds):
        raise SystemExit(f"{run}: cross-validation not finished ({len(folds)} fold directories, "
                         f"{n_folds or 'no'} folds in {summary.name}); resume it with --resume")
    for fold in folds:
        status = json.loads((fold / "metrics.json").read_text()).get("status") \
            if (fold / "metrics.json").is_file() else None
        if status != "completed":
            raise SystemExit(f"{fold}: fold not completed (status {status}); resume the run")
    for fold in folds:
        model = last_epoch_model(fold) if last_epoch else fold / "model.pt"
        calc = EquivarCalculator(model, dtype="float64", asr=True)
        for sid in json.loads((fold / "splits.json").read_text())["val"]:
            f = frames[sid]
            if split_tag(f) == "test":
                raise SystemExit(f"{fold}: TEST structure {sid} in a validation fold")
            pred = calc.get_born_charges(f)
            out[sid] = np.abs(pred - correct_asr(get_born_charges(f)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "dft" / "catio3_dfpt.extxyz")
    ap.add_argument("--worst", type=int, default=4)
    ap.add_argument("--last-epoch", action="store_true",
                    help="each fold's final weights instead of its best-validation epoch")
    args = ap.parse_args(argv)
    try:
        frames = read_frames_by_id(args.data)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    for run in args.runs:
        err = cv_errors(run, frames, args.last_epoch)
        allerr = np.concatenate([e.reshape(-1) for e in err.values()])
        kinds: dict[str, list] = {}
        species: dict[str, list] = {}
        for sid, e in err.items():
            kinds.setdefault(str(frames[sid].info.get("kind", sid)), []).append(e.reshape(-1))
            for sym, ek in zip(frames[sid].get_chemical_symbols(), e):
                species.setdefault(sym, []).append(ek.reshape(-1))
        per_structure = sorted(((float(e.mean()), sid) for sid, e in err.items()), reverse=True)
        which = "last epoch" if args.last_epoch else "best-validation epochs"
        print(f"{run}: {len(err)} structures, CV MAE {allerr.mean():.4f} e ({which})")
        if args.last_epoch:
            epochs, curve = val_curve(run)
            marks = np.unique(np.linspace(0, len(epochs) - 1, 6).round().astype(int))[1:]
            print("  fold-mean val MAE (log.csv; folds weighted equally, not by atoms) at epoch " + ", ".join(
                f"{epochs[i]} {curve[i]:.4f}" for i in marks) + f"; minimum {curve.min():.4f} "
                f"at {epochs[int(curve.argmin())]}")
        print("  per kind: " + ", ".join(f"{k} {np.concatenate(v).mean():.4f} ({len(v)})"
                                         for k, v in sorted(kinds.items())))
        print("  per species: " + ", ".join(f"{k} {np.concatenate(v).mean():.4f}" for k, v in sorted(species.items())))
        print("  worst: " + ", ".join(f"{sid} {m:.4f}" for m, sid in per_structure[: args.worst]))
        for sid in sorted(s for s in err if frames[s].info.get("kind") == "pnma20"):  # Pnma-like
            ca = np.array(frames[sid].get_chemical_symbols()) == "Ca"
            print(f"  {sid}: MAE {err[sid].mean():.4f} e, Ca diagonal MAE "
                  f"{np.mean(np.diagonal(err[sid][ca], axis1=1, axis2=2)):.4f} e")
    return 0


if __name__ == "__main__":
    sys.exit(main())
