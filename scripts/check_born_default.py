#!/usr/bin/env python
"""Acceptance checks of a Born-charge model against the project's DFPT data (issue 6).

    python scripts/check_born_default.py                        # the shipped default model
    python scripts/check_born_default.py --model runs/x/model.pt --out runs/x/check.json
    python scripts/check_born_default.py --set-epsilon          # also ship ε∞ of pnma_eq

Prints and writes (``--out``, JSON):

* metrics on the fixed DFPT TEST split (frames with ``info["split"] == "test"``, never used
  for model selection), the trainer's definitions (:mod:`ase_born.train.metrics`: the
  sum-rule-corrected prediction against the sum-rule-corrected DFPT Z*; the ASR violation
  of the raw network output);
* for the shipped model, the same metrics on ``unseen`` structures: training-split frames
  whose DFPT finished after the fit (not in the card's ``training_structures``), an
  out-of-sample view between retrains that does not touch the TEST split;
* the mean diagonal Z* per species the model predicts on the experimental Pnma structure
  (:func:`ase_born.dft.sampler.pnma_catio3`; a bias check while ``pnma_eq`` has no DFPT frame);
* the equilibrium check on ``pnma_eq`` (the experimental Pnma structure): every atom's
  diagonal Z* within 5 % and every off-diagonal element within 0.1 e of the raw DFPT
  values (:func:`ase_born.train.evaluation.equilibrium_check`), when that frame exists.

``--set-epsilon`` writes the DFPT ε∞ of ``pnma_eq`` into the repository's
``data/models/defaults.json`` (``--card`` for another file): the isotropic value
trace/3 as the shipped ε∞ (the main job applies it to cells in any orientation), the
full tensor (axes of :func:`ase_born.dft.sampler.pnma_catio3`) alongside for reference.

While ``pnma_eq`` is unfinished, the field directions carried over in
``data/dft/partial/pnma_eq`` (``--partial``) give the Z* rows they determine (the
Cartesian row of each finished direction in the orthorhombic cell); the same check runs on
those elements only and is reported as partial.

``--detail ID ...`` adds, for the named frames, whether an error is a bias or a missed
variation between atoms (:func:`deviation_detail`): the mean diagonal Z* per species,
predicted and DFPT, and how each atom's deviation from its species mean compares (spread,
correlation, the model's amplitude as a least-squares slope).  Session 40: on the hot
`pnma20_0002` (unseen, MAE 0.164 e) the species means agree within 0.09 e and the
deviations correlate 0.96 with an amplitude of 0.90, against 1.00 / 1.00 on the fitted
`pnma20_0000`.

Exit status 1 when the (complete) ``pnma_eq`` check fails, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ase_born import defaults
from ase_born.calculators.equivar import EquivarCalculator
from ase_born.conventions import KEY_BORN, KEY_EPSILON_INF
from ase_born.dft.pipeline import carried_directions, load_plan, partial_born_charges
from ase_born.dft.sampler import pnma_catio3
from ase_born.io.extxyz import get_born_charges, read_frames
from ase_born.train.dataset import correct_asr, split_tag, training_frames
from ase_born.train.evaluation import equilibrium_check
from ase_born.train.metrics import compute_metrics

REFERENCE_ID = "pnma_eq"
REPO = Path(__file__).resolve().parents[1]


def raw_prediction(calc: EquivarCalculator, atoms) -> np.ndarray:
    """The network's Z* before the sum-rule correction, ``shape=(n_atoms, 3, 3)``."""
    calc.set(asr=False)
    a = atoms.copy()
    a.calc = calc
    return np.asarray(calc.get_property(KEY_BORN, a), dtype=float)


def check_partial(calc: EquivarCalculator, carry_dir: Path, plan: Path) -> dict | None:
    """The equilibrium check on the Z* elements the carried field directions of an
    unfinished ``pnma_eq`` determine; ``None`` when nothing is carried."""
    if not carried_directions(carry_dir):
        return None
    (structure,) = [a for a in load_plan(plan) if a.info["structure_id"] == REFERENCE_ID]
    ref, dirs = partial_born_charges(carry_dir, structure)
    if np.isnan(ref).all():
        return {"directions": dirs, "note": "the finished directions determine no Cartesian element"}
    pred = correct_asr(raw_prediction(calc, structure))
    return {"directions": dirs, **equilibrium_check(pred, ref, structure.numbers)}


def deviation_detail(pred: np.ndarray, ref: np.ndarray, symbols) -> dict:
    """Bias against missed variation, for one structure's Z* (both ``shape=(n, 3, 3)``, sum
    rule applied): ``mean_diag`` per species ``{"pred": ..., "dft": ...}``; over all tensor
    elements of every atom, the deviation from its species' mean tensor: ``std_dft``,
    ``std_pred``, their correlation ``corr`` and ``slope``, the least-squares amplitude of
    the predicted deviations on the DFPT ones (1: the model varies from atom to atom as much
    as DFPT; ``nan`` when DFPT has no variation)."""
    symbols = np.asarray(symbols)
    means, dp, dr = {}, [], []
    for el in sorted(set(symbols.tolist())):
        p, r = pred[symbols == el], ref[symbols == el]
        means[el] = {"pred": float(np.mean(np.diagonal(p, axis1=1, axis2=2))),
                     "dft": float(np.mean(np.diagonal(r, axis1=1, axis2=2)))}
        dp.append((p - p.mean(axis=0)).ravel())
        dr.append((r - r.mean(axis=0)).ravel())
    dp, dr = np.concatenate(dp), np.concatenate(dr)
    norm = float(np.dot(dr, dr))
    varied = norm > 0 and float(np.dot(dp, dp)) > 0
    return {"mean_diag": means, "std_dft": float(dr.std()), "std_pred": float(dp.std()),
            "corr": float(np.corrcoef(dp, dr)[0, 1]) if varied else float("nan"),
            "slope": float(np.dot(dp, dr) / norm) if norm > 0 else float("nan")}


def unseen_frames(frames: list, fitted: set[str]) -> list:
    """Training-split frames whose structure ID is not in ``fitted`` (the model's fit)."""
    return training_frames(frames, fitted, exclude=True)


def frame_metrics(calc: EquivarCalculator, frames: list) -> dict:
    """The trainer's metrics (sum rule applied to prediction and DFPT, raw ASR violation) on
    ``frames``, with the MAE per structure and per structure kind."""
    raw = [raw_prediction(calc, f) for f in frames]
    dft = [get_born_charges(f) for f in frames]
    pred, ref = [correct_asr(z) for z in raw], [correct_asr(z) for z in dft]
    batch = np.concatenate([np.full(len(f), i) for i, f in enumerate(frames)])
    out = compute_metrics(
        np.concatenate(pred), np.concatenate(ref), np.concatenate([f.numbers for f in frames]),
        pred_raw=np.concatenate(raw), target_raw=np.concatenate(dft), batch=batch,
    )
    out["structure_ids"] = [str(f.info.get("structure_id")) for f in frames]
    out["mae_per_structure"] = {
        sid: float(np.mean(np.abs(p - r))) for sid, p, r in zip(out["structure_ids"], pred, ref)
    }
    errors: dict[str, list[np.ndarray]] = {}  # per kind, one array per structure
    for f, p, r in zip(frames, pred, ref):
        errors.setdefault(str(f.info.get("kind")), []).append(np.abs(p - r).ravel())
    out["kinds"] = {k: len(v) for k, v in errors.items()}
    out["mae_per_kind"] = {k: float(np.mean(np.concatenate(v))) for k, v in errors.items()}
    return out


def check(model_path: Path, frames: list, device: str = "cpu", carry_dir: Path | None = None,
          plan: Path | None = None, fitted: set[str] | None = None, detail: list[str] | None = None) -> dict:
    """The report; ``fitted`` (structure IDs of the model's training set, from its card) adds
    ``unseen``: the same metrics on training-split frames the model was not fitted to (DFPT
    finished after it was trained), an out-of-sample view between retrains that leaves the
    TEST split alone; ``detail`` (structure IDs) adds :func:`deviation_detail` of those frames.

    Raises
    ------
    ValueError
        When a ``detail`` ID has no frame in ``frames``.
    """
    calc = EquivarCalculator(str(model_path), device=device, dtype="float64", asr=False)
    report: dict = {"model": str(model_path), "sha256": defaults.sha256(model_path)}
    if detail:
        by_id = {str(f.info.get("structure_id")): f for f in frames}
        missing = [sid for sid in detail if sid not in by_id]
        if missing:
            raise ValueError(f"no DFPT frame for {', '.join(missing)}")
        report["detail"] = {
            sid: deviation_detail(correct_asr(raw_prediction(calc, by_id[sid])),
                                  correct_asr(get_born_charges(by_id[sid])), by_id[sid].get_chemical_symbols())
            for sid in detail}
    test = [f for f in frames if split_tag(f) == "test"]
    if test:
        report["test"] = frame_metrics(calc, test)
    if fitted is not None:
        unseen = unseen_frames(frames, fitted)
        if unseen:
            report["unseen"] = frame_metrics(calc, unseen)
    pnma = pnma_catio3()
    z = correct_asr(raw_prediction(calc, pnma))
    symbols = np.array(pnma.get_chemical_symbols())
    report["pnma_experimental_mean_diag"] = {
        el: float(np.mean(np.diagonal(z[symbols == el], axis1=1, axis2=2))) for el in sorted(set(symbols))
    }
    ref = [f for f in frames if f.info.get("structure_id") == REFERENCE_ID]
    if ref:
        f = ref[-1]
        pred = correct_asr(raw_prediction(calc, f))
        report[REFERENCE_ID] = equilibrium_check(pred, get_born_charges(f), f.numbers)
        report[REFERENCE_ID][KEY_EPSILON_INF] = np.asarray(f.info[KEY_EPSILON_INF]).tolist()
    elif carry_dir is not None and plan is not None:
        partial = check_partial(calc, carry_dir, plan)
        if partial is not None:
            report[f"{REFERENCE_ID}_partial"] = partial
    return report


def set_epsilon(frames: list, card_path: Path) -> dict | None:
    """Ship the DFPT ε∞ of ``pnma_eq`` in ``card_path``; ``None`` when that frame does not exist yet."""
    ref = [f for f in frames if f.info.get("structure_id") == REFERENCE_ID]
    if not ref:
        return None
    f = ref[-1]
    eps = np.asarray(f.info[KEY_EPSILON_INF], dtype=float).reshape(3, 3)
    eps = 0.5 * (eps + eps.T)
    iso = float(np.trace(eps) / 3.0)
    settings = json.loads(f.info.get("dft_settings", "{}"))
    entry = {
        "value": np.round(iso * np.eye(3), 4).tolist(),
        "tensor": np.round(eps, 4).tolist(),
        "source": (
            f"ABINIT DFPT eps_inf of {REFERENCE_ID} (experimental Pnma CaTiO3, {f.info.get('xc', 'PBEsol')}, "
            f"{settings.get('ecut_Ha', '?')} Ha, k-mesh {np.asarray(f.info.get('kpts', [])).tolist()}): "
            "isotropic part trace/3 (value); the symmetrised tensor in the axes of "
            "ase_born.dft.sampler.pnma_catio3 (tensor)"
        ),
    }
    card = json.loads(card_path.read_text())
    card[KEY_EPSILON_INF] = entry
    tmp = card_path.with_name(f".{card_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    os.replace(tmp, card_path)
    return entry


def print_metrics(head: str, m: dict) -> None:
    print(f"{head}: MAE {m['mae']:.4f} e, RMSE {m['rmse']:.4f} e, RMSPE diag {m['rmspe_diag']:.2f} %, "
          f"raw ASR violation {m['asr_violation_mae']:.4f} e")
    for name in ("species", "kind", "structure"):
        print(f"  MAE per {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m[f"mae_per_{name}"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="Equivar .pt file (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "dft" / "catio3_dfpt.extxyz")
    ap.add_argument("--card", type=Path, default=REPO / "data" / "models" / "defaults.json",
                    help="model card that --set-epsilon writes")
    ap.add_argument("--out", type=Path, default=None, help="JSON report")
    ap.add_argument("--partial", type=Path, default=REPO / "data" / "dft" / "partial" / REFERENCE_ID,
                    help=f"carried field directions of an unfinished {REFERENCE_ID} (checked on what they determine)")
    ap.add_argument("--plan", type=Path, default=REPO / "data" / "dft" / "plan_catio3.extxyz")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set-epsilon", action="store_true", help=f"ship the DFPT ε∞ of {REFERENCE_ID}")
    ap.add_argument("--detail", nargs="+", default=None, metavar="ID",
                    help="per named frame: species means and atom-to-atom deviations, predicted vs DFPT")
    args = ap.parse_args(argv)
    model, fitted = args.model, None
    if model is None:
        entry = defaults.model_card().get("born_model")
        if not entry:
            raise SystemExit("no default Born model in data/models/defaults.json; pass --model")
        model = defaults.checked_file(entry)  # refuses a file whose SHA-256 is not the card's
        fitted = set(entry["training_structures"]) if "training_structures" in entry else None
    frames = read_frames(args.data)
    try:
        report = check(model, frames, args.device, args.partial, args.plan, fitted, args.detail)
    except ValueError as exc:
        raise SystemExit(f"check_born_default.py: {exc}") from None
    if "test" in report:
        t = report["test"]
        print_metrics(f"TEST ({len(t['structure_ids'])} structures {t['kinds']})", t)
    else:
        print("TEST: no test frames in the dataset")
    if "unseen" in report:
        u = report["unseen"]
        print_metrics(f"unseen training-split structures ({len(u['structure_ids'])} {u['kinds']}, DFPT "
                      "finished after the fit; not used for selection)", u)
    print("experimental Pnma, mean diagonal Z* (sum rule applied): "
          + ", ".join(f"{k} {v:+.3f}" for k, v in report["pnma_experimental_mean_diag"].items()) + " e")
    if REFERENCE_ID in report:
        r = report[REFERENCE_ID]
        print(f"{REFERENCE_ID}: {'PASS' if r['passed'] else 'FAIL'} — worst diagonal {100 * r['max_rel_diag']:.2f} % "
              f"(atom {r['max_rel_diag_atom']}, tol {100 * r['diag_rel_tol']:.0f} %), worst off-diagonal "
              f"{r['max_abs_offdiag']:.3f} e (atom {r['max_abs_offdiag_atom']}, tol {r['offdiag_abs_tol']} e), "
              f"{r['n_atoms_failing']} of {len(r['atoms'])} atoms outside")
    elif f"{REFERENCE_ID}_partial" in report:
        r = report[f"{REFERENCE_ID}_partial"]
        head = f"{REFERENCE_ID} (unfinished, field directions {r['directions']} of 3)"
        if "note" in r:
            print(f"{head}: {r['note']}")
        else:
            print(f"{head}, {r['n_elements_checked']} of {9 * len(r['atoms'])} Z* elements: "
                  f"{'PASS' if r['passed'] else 'FAIL'} — worst diagonal {100 * r['max_rel_diag']:.2f} % "
                  f"(atom {r['max_rel_diag_atom']}), worst off-diagonal {r['max_abs_offdiag']:.3f} e "
                  f"(atom {r['max_abs_offdiag_atom']}), {r['n_atoms_failing']} of {len(r['atoms'])} atoms outside")
    else:
        print(f"{REFERENCE_ID}: not in the dataset yet")
    for sid, d in report.get("detail", {}).items():
        print(f"detail {sid}: mean diagonal Z* pred / DFPT "
              + ", ".join(f"{el} {m['pred']:+.3f} / {m['dft']:+.3f}" for el, m in d["mean_diag"].items())
              + f" e; deviations from the species mean: std DFPT {d['std_dft']:.3f} e, model {d['std_pred']:.3f} e, "
              f"correlation {d['corr']:.3f}, model amplitude (slope) {d['slope']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.set_epsilon:
        entry = set_epsilon(frames, args.card)
        print(f"epsilon_inf: {REFERENCE_ID} not in the dataset yet, card left as it is" if entry is None
              else f"epsilon_inf shipped in {args.card}: {entry['value'][0][0]} (tensor {entry['tensor']})")
    return 0 if report.get(REFERENCE_ID, {"passed": True})["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
