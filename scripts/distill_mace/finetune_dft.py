"""Fine-tune the distilled MACE on the project's ABINIT PBEsol frames (issue: default models).

Runs in the project environment (mace-torch's own trainer, ``mace_run_train`` with
``--foundation_model``; no MACE training code is written here)::

    nice -n 5 python scripts/distill_mace/finetune_dft.py                 # needs >= 50 structures
    python scripts/distill_mace/finetune_dft.py --force --epochs 2 --stage2 1 \\
        --work runs/finetune_smoke                                          # smoke test
    python scripts/distill_mace/finetune_dft.py --resume                  # after a kill

A ``--work`` folder that holds an earlier run (checkpoints) is refused unless ``--resume``
is given, and a resume is refused when the data changed (the pipeline adds frames between
a kill and a restart): mace-torch's ``--restart_latest`` would otherwise continue the old
run, with its old E0s, on the new data; so is a resume with another base model, learning
rate, epoch counts or extra arguments (``WORK/finetune_settings.json``).  Frames from
different DFT settings (``--dft`` files with another cutoff or k-point density) are refused:
their energies differ by the basis-set error (~85 meV/atom between 30 and 40 Ha).

Steps:

1. Frames: every frame of ``--dft`` with energy, forces and stress. The DFPT pipeline's
   fixed split decides (``info["split"]``): ``test`` frames are never trained on nor used
   for model selection; a deterministic 10 % of the ``train`` structures (by a hash of the
   structure ID) is the validation set.
2. Energy reference: ABINIT total energies (pseudopotential valence energies) and the
   teacher's energies differ by a constant per atom for a fixed 1:1:3 stoichiometry (the
   per-element split is not identifiable from CaTiO3 frames alone). The mean per-atom offset
   ``c`` of the base model on the training frames is added to every element's E0 of a copy
   of the base model (``WORK/foundation_shifted.model``), which is the foundation model of
   the fine-tuning and the "before" model of the comparison: the errors measure forces,
   stresses and energy differences, not the reference.
3. ``mace_run_train --foundation_model BASE --multiheads_finetuning False`` (naive
   fine-tuning of all weights at a lower learning rate), same loss as the distillation.
4. Errors vs DFT on the TEST frames (and on the training frames) before and after, written
   to ``WORK/finetune_eval.json`` and printed. The fine-tuned model is
   ``WORK/mace_catio3_dft_stagetwo.model`` (or ``..._dft.model`` without stage two); it
   replaces ``data/models/mace_catio3.model`` only after the physics checks of
   ``validate_physics.py --model FILE`` pass (Pnma minimum, R/M tilt modes, 1800 K NpT).

Stress labels: the production cutoff (30 Ha) converges Z* and forces but leaves an
isotropic basis-set (Pulay) stress of ~+0.056 eV/Å³ (-9 GPa of pressure, measured on the
convergence cell). It is removed from every frame's diagonal before training and before
the error reports (``--study``; :func:`ase_born.dft.convergence.pulay_stress`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.io import read, write

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ase_born.conventions import KEY_BORN
from ase_born.defaults import sha256
from ase_born.train.dataset import split_tag
from ase_born.workflows.models import mace_calculator


def load_frames(paths: list[str]) -> list:
    frames = []
    for p in paths:
        for a in read(p, ":"):
            r = a.calc.results if a.calc is not None else {}
            if all(k in r for k in ("energy", "forces", "stress")):
                frames.append(a)
    return frames


def _physics_settings(atoms) -> str:
    """A frame's ABINIT settings that change its energies (all but the convergence
    tolerances: cutoff, k-points, functional, pseudopotentials, smearing, ...), as JSON."""
    from ase_born.dft.abinit import TOLERANCE_KEYS

    d = json.loads(atoms.info.get("dft_settings") or "{}")
    return json.dumps({k: v for k, v in d.items() if k not in TOLERANCE_KEYS}, sort_keys=True)


def is_valid_id(sid: str, fraction: float = 0.1) -> bool:
    h = int(hashlib.sha256(f"valid:{sid}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def split(frames: list) -> dict[str, list]:
    out: dict[str, list] = {"train": [], "valid": [], "test": []}
    for a in frames:
        sid = str(a.info.get("structure_id", ""))
        if split_tag(a) == "test":  # the pipeline's tag, normalised as the trainer reads it
            out["test"].append(a)
        elif is_valid_id(sid):
            out["valid"].append(a)
        else:
            out["train"].append(a)
    if not out["valid"] and len(out["train"]) > 1:  # tiny sets: keep one validation frame
        out["valid"].append(out["train"].pop())
    return out


def labelled(frames: list) -> list:
    """Copies with REF_* keys (mace_run_train reads labels from info/arrays)."""
    out = []
    for a in frames:
        r = a.calc.results
        b = a.copy()
        b.calc = None
        b.info = {k: v for k, v in a.info.items() if isinstance(v, (str, int, float))}
        b.info["REF_energy"] = float(r["energy"])
        b.info["REF_stress"] = np.asarray(r["stress"], float)  # ASE sign, eV/Å³, Voigt
        b.arrays["REF_forces"] = np.asarray(r["forces"], float)
        b.arrays.pop(KEY_BORN, None)
        out.append(b)
    return out


def errors(model_path: str, frames: list) -> dict:
    """MAE/RMSE vs DFT: energy per atom, forces, stress."""
    if not frames:
        return {"n_frames": 0}
    calc = mace_calculator(model_path, device="cpu", dtype="float64")
    de, df, ds = [], [], []
    for a in frames:
        r = a.calc.results
        b = a.copy()
        b.calc = calc
        de.append((b.get_potential_energy() - r["energy"]) / len(a))
        df.append((b.get_forces() - r["forces"]).ravel())
        ds.append(b.get_stress() - r["stress"])
    de, df, ds = np.array(de), np.concatenate(df), np.concatenate(ds)
    return {
        "n_frames": len(frames),
        "n_atoms": int(sum(len(a) for a in frames)),
        "energy_mae_meV_atom": 1e3 * float(np.abs(de).mean()),
        "energy_rmse_meV_atom": 1e3 * float(np.sqrt((de**2).mean())),
        "forces_mae_meV_A": 1e3 * float(np.abs(df).mean()),
        "forces_rmse_meV_A": 1e3 * float(np.sqrt((df**2).mean())),
        "stress_mae_meV_A3": 1e3 * float(np.abs(ds).mean()),
        "stress_rmse_meV_A3": 1e3 * float(np.sqrt((ds**2).mean())),
    }


def energy_offset(model_path: str, frames: list) -> float:
    """Mean per-atom (E_DFT - E_model) on ``frames`` (eV/atom)."""
    calc = mace_calculator(model_path, device="cpu", dtype="float64")
    d = []
    for a in frames:
        b = a.copy()
        b.calc = calc
        d.append((a.calc.results["energy"] - b.get_potential_energy()) / len(a))
    return float(np.mean(d))


def shifted_model(model_path: str, shift_per_atom: float, out: Path) -> dict[int, float]:
    """Save ``model_path`` with ``shift_per_atom`` added to every E0; return the new E0s.

    The shift goes into the model's weights, and the same shifted E0s are passed as
    ``--E0s``: mace_run_train (0.3.16, ``model_script_utils``) builds the fine-tuned model's
    atomic energies from ``--E0s``, so both must agree.
    """
    import torch

    model = torch.load(model_path, map_location="cpu", weights_only=False)
    buf = model.atomic_energies_fn.atomic_energies
    with torch.no_grad():
        buf += shift_per_atom
    torch.save(model, out)
    zs = [int(z) for z in model.atomic_numbers]
    return dict(zip(zs, map(float, buf.detach().cpu().numpy().reshape(-1))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dft", nargs="+", default=["data/dft/catio3_dfpt.extxyz"])
    ap.add_argument("--model", default="data/models/mace_catio3.model",
                    help="base model (default: the shipped file, since session 32 itself fine-tuned; "
                         "the distilled version 2 the shipped one was made from: `git show "
                         "1f37d3e:data/models/mace_catio3.model > runs/mace_catio3_v2.model`)")
    ap.add_argument("--work", default="runs/finetune_dft")
    ap.add_argument("--min-structures", type=int, default=50)
    ap.add_argument("--force", action="store_true", help="run below --min-structures (smoke tests)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--stage2", type=int, default=45)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --work after a kill (same data; refused otherwise)")
    ap.add_argument("--study", default="data/dft/convergence.json",
                    help="convergence study whose cutoff axis gives the basis-set (Pulay) stress removed "
                         "from the DFT stress labels ('' keeps the raw ABINIT stress)")
    args, extra = ap.parse_known_args(argv)
    os.chdir(REPO)
    frames = load_frames(args.dft)
    settings = {_physics_settings(a) for a in frames}
    if len(settings) > 1:
        print(f"--dft mixes frames of {len(settings)} DFT settings (cutoff, k-points, functional or "
              "pseudopotentials); their energies are on different scales: fine-tune on one setting")
        return 1
    pulay_GPa = {}
    if args.study:  # 30 Ha leaves ~9 GPa of spurious pressure, far above the force field's own error
        from ase.units import GPa

        from ase_born.dft.convergence import basis_corrected_stress

        points = json.loads(Path(args.study).read_text())["points"]
        for a in frames:
            raw = np.asarray(a.calc.results["stress"], float)
            a.calc.results["stress"] = basis_corrected_stress(a, points)
            ecut = json.loads(a.info["dft_settings"])["ecut_Ha"]
            pulay_GPa[str(ecut)] = float((raw - a.calc.results["stress"])[0] / GPa)
        print("stress labels: basis-set stress removed (ASE sign), "
              + ", ".join(f"{e} Ha: {p:+.2f} GPa" for e, p in pulay_GPa.items()))
    # the threshold counts distinct structures (not frames: a structure may sit in two --dft
    # files) that can be trained on (TEST frames never are)
    n_structures = len({str(a.info.get("structure_id")) for a in frames if split_tag(a) != "test"})
    if n_structures < args.min_structures and not args.force:
        print(f"{n_structures} DFT training structures with energy/forces/stress < --min-structures "
              f"{args.min_structures}: not fine-tuning yet (--force for a smoke test)")
        return 1
    parts = split(frames)
    if not parts["train"]:
        print("no training frames")
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    earlier = any((work / "checkpoints").glob("*")) if (work / "checkpoints").is_dir() else False
    if earlier and not args.resume:
        print(f"{work} holds an earlier fine-tuning run (checkpoints/): --resume to continue it, "
              "or another --work")
        return 1
    texts = {}
    for name, fs in parts.items():  # the label files as text: compared on resume, then written
        buf = io.StringIO()
        if fs:
            write(buf, labelled(fs), format="extxyz")
        texts[name] = buf.getvalue()

    def old_text(name: str) -> str:
        f = work / f"{name}.xyz"
        return f.read_text() if f.is_file() else ""

    # the run's own settings: a resume continues the same recipe from the same base model
    run_settings = {"model_sha256": sha256(args.model),
                    "epochs": args.epochs, "stage2": args.stage2, "lr": args.lr,
                    "study_sha256": sha256(args.study) if args.study else None,  # content, not spelling
                    "extra": extra}  # fmt: skip
    settings_file = work / "finetune_settings.json"
    if earlier:  # resume: the same frames, or mace-torch would continue on other data
        changed = [n for n, t in texts.items() if old_text(n) != t]
        if changed:
            print(f"--resume refused: the {', '.join(changed)} frames differ from the run in {work} "
                  "(new DFT frames since it started?); start a new --work")
            return 1
        old = json.loads(settings_file.read_text()) if settings_file.is_file() else run_settings
        if "study" in old and "study_sha256" not in old:  # recorded by path before session 27
            path = old.pop("study")
            old["study_sha256"] = sha256(path) if path and Path(path).is_file() else path
        if old != run_settings:  # (a run from before this record: not checked)
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in run_settings.items() if old.get(k) != v)
            print(f"--resume refused: {work} was started with other settings ({diff}); "
                  "resume with the same ones, or start a new --work")
            return 1
    settings_file.write_text(json.dumps(run_settings, indent=1) + "\n")
    for name, text in texts.items():
        if parts[name]:
            (work / f"{name}.xyz").write_text(text)
    # a model file of an earlier run must not be taken for this run's (mace-torch writes
    # the stage-two file only when stage two starts)
    for stale in ("mace_catio3_dft.model", "mace_catio3_dft_stagetwo.model",
                  "mace_catio3_dft_compiled.model", "mace_catio3_dft_stagetwo_compiled.model"):
        (work / stale).unlink(missing_ok=True)
    c = energy_offset(args.model, parts["train"])
    foundation = work / "foundation_shifted.model"
    e0s = shifted_model(args.model, c, foundation)
    print(f"frames: train {len(parts['train'])}, valid {len(parts['valid'])}, test {len(parts['test'])};"
          f" energy offset {c:+.4f} eV/atom added to every E0")  # fmt: skip
    before = {k: errors(str(foundation), fs) for k, fs in parts.items()}
    cmd = [
        "mace_run_train", "--name", "mace_catio3_dft", "--seed", "1",
        "--work_dir", str(work), "--log_dir", str(work / "logs"),
        "--checkpoints_dir", str(work / "checkpoints"), "--results_dir", str(work / "results"),
        "--model_dir", str(work),
        "--train_file", str(work / "train.xyz"), "--valid_file", str(work / "valid.xyz"),
        "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--stress_key", "REF_stress",
        "--foundation_model", str(foundation), "--multiheads_finetuning", "False",
        "--E0s", json.dumps({str(z): e for z, e in e0s.items()}).replace('"', ""),
        "--compute_stress", "True", "--compute_forces", "True",
        "--loss", "stress", "--energy_weight", "1", "--forces_weight", "100", "--stress_weight", "1000",
        "--stage_two", "--start_stage_two", str(args.stage2), "--stage_two_lr", str(args.lr / 10),
        "--stage_two_energy_weight", "1000", "--stage_two_forces_weight", "100",
        "--stage_two_stress_weight", "10000",
        "--ema", "--ema_decay", "0.99", "--amsgrad", "--lr", str(args.lr),
        "--batch_size", "2", "--valid_batch_size", "4", "--max_num_epochs", str(args.epochs),
        "--patience", "50", "--eval_interval", "1", "--error_table", "PerAtomRMSEstressvirials",
        "--default_dtype", "float32", "--device", args.device, "--save_cpu",
    ] + (["--restart_latest"] if earlier else []) + extra  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        print(f"mace_run_train exited with {rc}")
        return rc
    model = next((p for p in (work / "mace_catio3_dft_stagetwo.model", work / "mace_catio3_dft.model")
                  if p.is_file()), None)  # fmt: skip
    if model is None:
        print("no fine-tuned model written")
        return 1
    after = {k: errors(str(model), fs) for k, fs in parts.items()}
    result = {
        "base_model": args.model,
        "finetuned_model": str(model),
        "dft_files": args.dft,
        "energy_offset_eV_atom": c,
        "stress_basis_correction_GPa": pulay_GPa or None,
        "e0s": {str(z): e for z, e in e0s.items()},
        "counts": {k: len(v) for k, v in parts.items()},
        "kinds": {k: sorted({str(a.info.get("kind")) for a in v}) for k, v in parts.items()},
        "before": before,
        "after": after,
    }
    (work / "finetune_eval.json").write_text(json.dumps(result, indent=2))
    for k in parts:
        b, a = before[k], after[k]
        if b.get("n_frames"):
            print(f"{k:5s} ({b['n_frames']} frames) F MAE {b['forces_mae_meV_A']:.1f} -> {a['forces_mae_meV_A']:.1f} meV/Å,"
                  f" E MAE {b['energy_mae_meV_atom']:.2f} -> {a['energy_mae_meV_atom']:.2f} meV/atom,"
                  f" S MAE {b['stress_mae_meV_A3']:.2f} -> {a['stress_mae_meV_A3']:.2f} meV/Å³")  # fmt: skip
    print(f"wrote {work / 'finetune_eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
