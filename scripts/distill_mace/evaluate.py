#!/usr/bin/env python
"""Evaluate the distilled MACE against its teacher (held-out frames) and against ABINIT DFT.

Runs in the project's environment (mace-torch 0.3.16, e3nn 0.4.4)::

    nice -n 5 python scripts/distill_mace/evaluate.py \\
        --model data/models/mace_catio3.model --data runs/distill/data

Writes ``data/models/mace_catio3_eval.json`` with

* ``test``: errors vs SevenNet-0 on ``test.xyz`` (frames never used in training), overall and
  per ``config_type``: energy (meV/atom), forces (meV/Å, per component), stress (meV/Å³, per
  Voigt component; 1 meV/Å³ = 0.1602 GPa), MAE and RMSE;
* ``pnma_relaxation``: lattice parameters of Pnma CaTiO3 relaxed with the MACE model
  (FrechetCellFilter + BFGS, fmax 0.005 eV/Å) vs experiment and vs the teacher;
* ``cubic``: the MACE cubic lattice constant (cubic fit of E(a)) vs the teacher's;
* ``tilt_scan``: frozen R (a0a0c-) and M (a0a0c+) tilt energies vs the teacher's
  (``teacher_reference.json`` from sample.py);
* ``dft``: force/stress errors vs the ABINIT PBEsol frames of ``data/dft/catio3_dfpt.extxyz``
  (no teacher and no distillation saw them), when that file exists and holds frames;
  energies are compared after removing the mean per-atom offset (different absolute
  references); ``dft.test_split``: the same on the fixed TEST frames only, the number to
  quote for a model fine-tuned on the DFT data (``finetune_dft.py`` trains on the others).
  The teacher is PBE(+U) (MPtrj), the DFT is PBEsol: part of that error is the functional;
* ``timing``: MACE CPU time per MD step for 160- and 640-atom Pnma supercells.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.optimize import BFGS

EXPERIMENT_PNMA_ABC = (5.4423, 7.6401, 5.3796)
TEACHER_PNMA_ABC = (5.506, 7.694, 5.406)  # measured with SevenNet-0 (fallback if no reference file)


def load_calculator(model: str, device: str, dtype: str):
    warnings.filterwarnings("ignore")
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=model, device=device, default_dtype=dtype)


def _stats(diff: np.ndarray, scale: float) -> dict:
    d = np.asarray(diff, dtype=float).ravel() * scale
    if d.size == 0:
        return {"mae": None, "rmse": None, "n": 0}
    return {
        "mae": float(np.mean(np.abs(d))),
        "rmse": float(np.sqrt(np.mean(d**2))),
        "n": int(d.size),
    }


def reference_labels(atoms: Atoms) -> dict:
    """Energy/forces/stress labels of a frame: REF_* keys first, then an attached calculator."""
    out = {}
    res = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    e = atoms.info.get("REF_energy", res.get("energy", res.get("free_energy")))
    if e is not None:
        out["energy"] = float(e)
    f = atoms.arrays.get("REF_forces", res.get("forces"))
    if f is not None:
        out["forces"] = np.asarray(f, dtype=float).reshape(len(atoms), 3)
    s = atoms.info.get("REF_stress", res.get("stress"))
    if s is not None:
        s = np.asarray(s, dtype=float).ravel()
        if s.size == 9:
            m = s.reshape(3, 3)
            s = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
        out["stress"] = s
    return out


def predict(frames: list[Atoms], calc) -> list[dict]:
    preds = []
    for atoms in frames:
        a = Atoms(
            atoms.get_chemical_symbols(),
            positions=atoms.positions,
            cell=atoms.cell[:],
            pbc=atoms.pbc,
        )
        a.calc = calc
        preds.append(
            {
                "energy": a.get_potential_energy(),
                "forces": a.get_forces(),
                "stress": a.get_stress(voigt=True),
            }
        )
    return preds


def compare(frames: list[Atoms], preds: list[dict], remove_energy_offset: bool = False) -> dict:
    refs = [reference_labels(a) for a in frames]
    n_at = np.array([len(a) for a in frames])
    out = {"n_frames": len(frames), "n_atoms": int(n_at.sum())}
    e_idx = [i for i, r in enumerate(refs) if "energy" in r]
    if e_idx:
        de = np.array([(preds[i]["energy"] - refs[i]["energy"]) / n_at[i] for i in e_idx])
        if remove_energy_offset:
            out["energy_offset_meV_per_atom"] = float(de.mean() * 1000)
            de = de - de.mean()
        out["energy_meV_per_atom"] = _stats(de, 1000)
    f_idx = [i for i, r in enumerate(refs) if "forces" in r]
    if f_idx:
        df = np.concatenate([preds[i]["forces"] - refs[i]["forces"] for i in f_idx])
        fref = np.concatenate([refs[i]["forces"] for i in f_idx])
        out["forces_meV_per_A"] = _stats(df, 1000)
        out["forces_ref_rms_meV_per_A"] = float(np.sqrt(np.mean(fref**2)) * 1000)
    s_idx = [i for i, r in enumerate(refs) if "stress" in r]
    if s_idx:
        ds = np.array([preds[i]["stress"] - refs[i]["stress"] for i in s_idx])
        out["stress_meV_per_A3"] = _stats(ds, 1000)
        out["pressure_offset_GPa"] = float(-ds[:, :3].mean() * 160.21766)  # P = -tr(s)/3
        dev = ds.copy()  # deviatoric part: isotropic (pressure) difference of each frame removed
        dev[:, :3] -= ds[:, :3].mean(axis=1, keepdims=True)
        out["stress_deviatoric_meV_per_A3"] = _stats(dev, 1000)
    return out


def relax_pnma(calc) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from sample import pnma_experimental  # the structure definition lives there

    atoms = pnma_experimental()
    atoms.calc = calc
    t0 = time.perf_counter()
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=0.005, steps=400)
    abc = atoms.cell.cellpar()[:3]
    return {
        "abc_A": abc.tolist(),
        "angles_deg": atoms.cell.cellpar()[3:].tolist(),
        "steps": opt.nsteps,
        "time_s": time.perf_counter() - t0,
        "energy_eV_per_atom": float(atoms.get_potential_energy()) / len(atoms),
    }


def cubic_lattice(calc) -> float:
    from sample import cubic

    grid = np.linspace(3.80, 3.98, 10)
    energies = []
    for a in grid:
        c = cubic(a)
        c.calc = calc
        energies.append(c.get_potential_energy())
    p = np.polyfit(grid, energies, 3)
    roots = [r.real for r in np.roots(np.polyder(p)) if abs(r.imag) < 1e-12 and 3.7 < r.real < 4.1]
    if not roots:  # no minimum inside the fit window
        return float("nan")
    return float(min(roots, key=lambda r: np.polyval(p, r)))


def tilt_scan(calc, a_cubic: float, angles) -> dict:
    from sample import tilted

    out = {"angles_deg": list(angles), "a_A": a_cubic}
    for name, pattern in (("R_a0a0c-", "00-"), ("M_a0a0c+", "00+")):
        e = []
        for phi in angles:
            at = tilted(a_cubic, [0.0, 0.0, phi], pattern)
            at.calc = calc
            e.append(at.get_potential_energy())
        e = np.asarray(e)
        out[name + "_meV_per_fu"] = ((e - e[0]) / 8 * 1000).tolist()
    return out


def md_step_timing(calc) -> dict:
    from sample import pnma_experimental

    out = {}
    for rep in ((2, 2, 2), (4, 2, 4)):
        atoms = pnma_experimental().repeat(rep)
        atoms.rattle(0.02, seed=0)
        atoms.calc = calc
        atoms.get_forces()
        t0 = time.perf_counter()
        n = 3
        for _ in range(n):
            atoms.positions += 1e-3
            atoms.get_forces()
            atoms.get_stress()
        out[f"{len(atoms)}_atoms_s_per_step"] = (time.perf_counter() - t0) / n
    return out


def compare_dft(calc, dft: Path, result: dict) -> None:
    """Fill ``result["dft"]``: errors of ``calc`` against the ABINIT PBEsol frames of ``dft``."""
    frames = []
    if dft.exists() and dft.stat().st_size > 0:
        try:
            from ase_born.io.extxyz import read_frames

            frames = read_frames(dft)
        except ImportError:
            frames = read(dft, ":")
    if frames:
        preds = predict(frames, calc)
        result["dft"] = {
            "file": str(dft),
            "functional": "PBEsol (ABINIT)",
            **compare(frames, preds, remove_energy_offset=True),
        }
        # the fixed TEST split on its own: the frames no model of the project trains on (a
        # force field fine-tuned on the DFT data saw the others)
        test = [i for i, a in enumerate(frames) if str(a.info.get("split", "")).lower() == "test"]
        if test:
            result["dft"]["test_split"] = {
                "note": "frames with split == 'test' only (never trained on, also after fine-tuning)",
                **compare([frames[i] for i in test], [preds[i] for i in test],
                          remove_energy_offset=True),
            }
        d = result["dft"]
        print(
            f"vs ABINIT DFT ({d['n_frames']} frames, {d['n_atoms']} atoms): "
            f"F MAE {d['forces_meV_per_A']['mae']:.1f} / RMSE {d['forces_meV_per_A']['rmse']:.1f} "
            f"meV/Å, S MAE {d['stress_meV_per_A3']['mae']:.2f} meV/Å³ (deviatoric "
            f"{d['stress_deviatoric_meV_per_A3']['mae']:.2f}), pressure offset "
            f"{d['pressure_offset_GPa']:+.2f} GPa"
        )
        study = dft.parent / "convergence.json"
        try:
            from ase_born.dft.convergence import basis_corrected_stress
        except ImportError:  # an environment without the project (the teacher's venv)
            study = None
        if study is not None and study.exists():  # the basis-set (Pulay) stress of the frames' cutoff removed
            points = json.loads(study.read_text())["points"]
            corrected = []
            for a in frames:
                b = a.copy()
                b.info["REF_stress"] = basis_corrected_stress(a, points)
                corrected.append(b)
            c = compare(corrected, preds)
            result["dft"]["basis_corrected"] = {
                "note": "DFT stress minus the Pulay stress of its cutoff (ase_born.dft.convergence.pulay_stress)",
                **{k: c[k] for k in ("stress_meV_per_A3", "pressure_offset_GPa")},
            }
            print(f"  after the basis-set stress correction: S MAE {c['stress_meV_per_A3']['mae']:.2f} meV/Å³, "
                  f"pressure offset {c['pressure_offset_GPa']:+.2f} GPa")
            if test:  # what a fine-tune trains on (corrected stress), on frames it never saw
                ct = compare([corrected[i] for i in test], [preds[i] for i in test])
                result["dft"]["test_split"]["basis_corrected"] = {
                    k: ct[k] for k in ("stress_meV_per_A3", "pressure_offset_GPa")}
        if test:
            t = result["dft"]["test_split"]
            tc = t.get("basis_corrected")
            print(f"  TEST split only ({t['n_frames']} frames): F MAE {t['forces_meV_per_A']['mae']:.1f} meV/Å, "
                  f"S MAE {t['stress_meV_per_A3']['mae']:.2f} meV/Å³"
                  + (f" ({tc['stress_meV_per_A3']['mae']:.2f} after the basis-set correction)" if tc else ""))
    else:
        result["dft"] = {"file": str(dft), "skipped": "file missing or without frames"}
        print(f"{dft} missing or empty: DFT check skipped")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/mace_catio3.model")
    ap.add_argument("--data", default="runs/distill/data", help="sample.py output folder")
    ap.add_argument("--dft", default="data/dft/catio3_dfpt.extxyz")
    ap.add_argument("--out", default="data/models/mace_catio3_eval.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--skip-relax", action="store_true")
    ap.add_argument("--dft-only", action="store_true",
                    help="recompute only the `dft` block (the DFPT file grew) and keep the rest of --out")
    ap.add_argument("--new-model", action="store_true",
                    help="with --dft-only: --out evaluates another model file (e.g. before a fine-tune "
                         "on the DFT frames) whose distillation blocks cannot be recomputed here: start "
                         "--out afresh with the `dft` block only (the others are dropped, not kept)")
    args = ap.parse_args(argv)
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    calc = load_calculator(args.model, args.device, args.dtype)
    data = Path(args.data)
    model_path = Path(args.model)
    from ase_born.defaults import sha256

    digest = sha256(model_path)
    if args.dft_only:
        result = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        if args.new_model and result.get("model_sha256", digest) != digest:
            result = {"model": str(model_path), "model_size_bytes": model_path.stat().st_size,
                      "dtype": args.dtype,
                      "note": f"DFT block only: the distillation blocks evaluated another file "
                              f"(SHA-256 {result['model_sha256'][:12]}…) and were dropped"}
        if result.get("model", str(model_path)) != str(model_path):
            raise SystemExit(f"{args.out} evaluates {result['model']}, not {model_path}")
        if result.get("model_sha256", digest) != digest:  # same path, another file: no mixing
            raise SystemExit(f"{args.out} evaluates another {model_path} (SHA-256 {result['model_sha256'][:12]}…): "
                             "rerun the whole evaluation, or --new-model for the DFT block alone")
        result["model_sha256"] = digest
        compare_dft(calc, Path(args.dft), result)
        _write(result, Path(args.out))
        return
    result: dict = {
        "model": str(model_path),
        "model_sha256": digest,
        "model_size_bytes": model_path.stat().st_size,
        "dtype": args.dtype,
        "teacher": "SevenNet-0 (7net-0, 11Jul2024)",
    }
    models = getattr(calc, "models", [])
    if models:
        result["n_parameters"] = int(sum(p.numel() for p in models[0].parameters()))

    if (data / "summary.json").exists():
        summary = json.loads((data / "summary.json").read_text())
        result["dataset"] = {
            k: summary[k]
            for k in ("seed", "n_frames", "n_train", "n_valid", "n_test", "n_atoms_train", "counts")
            if k in summary
        }
        result["dataset"]["generator"] = "scripts/distill_mace/sample.py"

    test_path = data / "test.xyz"
    if test_path.exists():
        frames = read(test_path, ":")
        t0 = time.perf_counter()
        preds = predict(frames, calc)
        result["test"] = {
            "file": str(test_path),
            "overall": compare(frames, preds),
            "time_s": time.perf_counter() - t0,
            "by_config_type": {},
        }
        for ct in sorted({a.info.get("config_type", "?") for a in frames}):
            idx = [i for i, a in enumerate(frames) if a.info.get("config_type", "?") == ct]
            result["test"]["by_config_type"][ct] = compare(
                [frames[i] for i in idx], [preds[i] for i in idx]
            )
        o = result["test"]["overall"]
        print(
            f"test vs teacher ({o['n_frames']} frames): E MAE {o['energy_meV_per_atom']['mae']:.2f} meV/atom, "
            f"F MAE {o['forces_meV_per_A']['mae']:.1f} / RMSE {o['forces_meV_per_A']['rmse']:.1f} meV/Å, "
            f"S MAE {o['stress_meV_per_A3']['mae']:.3f} meV/Å³"
        )
    else:
        print(f"{test_path} not found: held-out teacher check skipped (run sample.py first)")

    teacher_ref = {}
    if (data / "teacher_reference.json").exists():
        teacher_ref = json.loads((data / "teacher_reference.json").read_text())
    teacher_abc = teacher_ref.get("pnma_abc_A", list(TEACHER_PNMA_ABC))
    if not args.skip_relax:
        r = relax_pnma(calc)
        abc = np.array(r["abc_A"])
        r["experiment_abc_A"] = list(EXPERIMENT_PNMA_ABC)
        r["teacher_abc_A"] = teacher_abc
        r["rel_dev_vs_experiment_percent"] = ((abc / EXPERIMENT_PNMA_ABC - 1) * 100).tolist()
        r["rel_dev_vs_teacher_percent"] = ((abc / np.array(teacher_abc) - 1) * 100).tolist()
        result["pnma_relaxation"] = r
        print(
            "Pnma relaxed abc (Å):",
            np.round(abc, 4).tolist(),
            "| teacher",
            np.round(teacher_abc, 4).tolist(),
            "| experiment",
            list(EXPERIMENT_PNMA_ABC),
        )
        a_c = cubic_lattice(calc)
        result["cubic"] = {"a_A": a_c, "teacher_a_A": teacher_ref.get("a_cubic_A")}
        print(f"cubic a: MACE {a_c:.4f} Å, teacher {teacher_ref.get('a_cubic_A')}")
        if "tilt_scan" in teacher_ref:
            ts = teacher_ref["tilt_scan"]
            mine = tilt_scan(calc, ts["a_A"], ts["angles_deg"])
            result["tilt_scan"] = {"mace": mine, "teacher": ts}
            for k in ("R_a0a0c-_meV_per_fu", "M_a0a0c+_meV_per_fu"):
                print(
                    k, "MACE", np.round(mine[k], 1).tolist(), "teacher", np.round(ts[k], 1).tolist()
                )
        result["timing"] = md_step_timing(calc)
        print("timing:", result["timing"])

    compare_dft(calc, Path(args.dft), result)

    _write(result, Path(args.out))


def _write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
