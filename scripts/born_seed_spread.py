#!/usr/bin/env python
"""Seed spread and seed ensemble of the default Born-model recipe, out of sample (issue 6).

    python scripts/born_seed_spread.py                     # seeds 1 2 beside the shipped fit
    python scripts/born_seed_spread.py --seeds 1 2 3 --threads 2
    python scripts/born_seed_spread.py --set model=BM1 --seeds 0 1   # a variant of the recipe

Fits the shipped recipe (``--config``, the provisional default config) again with other
seeds on exactly the structures of the shipped fit (the card's ``training_structures``;
TEST frames are not even in the training file), then evaluates each member and the mean
of all members (a seed ensemble, the shipped model being seed 0) on the "unseen"
structures of ``check_born_default.py``: training-split frames whose DFPT finished after
the fit.  The TEST split is never read.  Metrics as the check script's (sum rule applied to
prediction and DFPT).  A seed whose run directory already holds a completed
``metrics.json`` on the same structures is not trained again (runs go to
``runs/born_seeds_<SHA-256 prefix of the shipped model>``).  Nothing in ``data/`` changes.

``--set KEY=VALUE`` changes the recipe (any training-config key, e.g. ``model=BM1`` for the
larger preset issue 6 asks about): then every member, seed 0 included, is trained with the
changed recipe, the ensemble is theirs, and the shipped model is printed beside them for
reference (runs go to ``runs/born_seeds_<prefix>_<key>-<value>``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from ase_born import defaults
from ase_born.io.extxyz import get_born_charges, read_frames, write_frames
from ase_born.train.config import TrainConfig, config_differences
from ase_born.train.dataset import correct_asr, training_frames

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "configs" / "equivar_bm2_catio3_provisional.yaml"


def fit_frames(frames: list, fitted: set[str]) -> list:
    """The frames of the shipped fit: training split and ID in ``fitted``."""
    return training_frames(frames, fitted)


def recipe_changes(items: list[str], base: dict) -> dict:
    """``KEY=VALUE`` strings (values read as YAML, numbers as numbers) -> dict, checked
    against the training config (unknown keys and invalid values stop the script before
    any training)."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. model=BM1")
        value = yaml.safe_load(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        changes[key.strip()] = value
    for key in ("seed", "train_files", "out"):
        if key in changes:
            raise SystemExit(f"--set {key}: set by this script (use --seeds / --data / --out)")
    try:
        TrainConfig.from_dict({**base, **changes})
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--set: {err}") from None
    return changes


def variant_tag(changes: dict) -> str:
    """Directory suffix naming a changed recipe: ``model-BM1_epochs-500`` ('' for none)."""
    return "_".join(f"{k}-{v}" for k, v in changes.items()).replace("/", "-").replace(" ", "")


def spread(preds: dict[str, list[np.ndarray]], ref: list[np.ndarray], ids: list[str],
           reference: dict[str, list[np.ndarray]] | None = None) -> dict[str, dict]:
    """MAE (e) over all elements and per structure of each member, of their mean
    (``"ensemble"``) and of the ``reference`` rows (not in the ensemble); predictions and
    ``ref`` are sum-rule corrected, one (N, 3, 3) per frame."""
    rows = dict(reference or {})
    rows.update(preds)
    rows["ensemble"] = [np.mean([p[i] for p in preds.values()], axis=0) for i in range(len(ref))]
    out = {}
    for name, pp in rows.items():
        err = [np.abs(p - r) for p, r in zip(pp, ref)]
        out[name] = {"mae": float(np.mean(np.concatenate([e.ravel() for e in err]))),
                     "mae_per_structure": {s: float(e.mean()) for s, e in zip(ids, err)}}
    return out


#: config keys this script sets per run (paths, output) and that do not change the fit
_NOT_RECIPE = frozenset({"train_files", "out", "device", "plots", "progress"})


def recipe_differences(run: Path, intended: dict) -> list[str]:
    """Keys whose value in the finished ``run`` (its ``config.yaml``, written by the
    trainer) differs from the ``intended`` config, paths and output switches aside."""
    recorded = TrainConfig.from_yaml(run / "config.yaml")
    return list(config_differences(recorded, TrainConfig.from_dict(intended), ignore=_NOT_RECIPE))


def train_seed(config: Path, seed: int, fit_file: Path, out: Path, threads: int,
               fit_ids: list[str], changes: dict | None = None) -> Path:
    """Train the recipe of ``config`` (with ``changes``) with ``seed`` on ``fit_file`` (the
    structures ``fit_ids``) into ``out``; a completed run on the same structures with the same
    recipe is reused, one on other structures (an older shipped fit) or with another recipe
    is refused."""
    cfg = yaml.safe_load(config.read_text())
    cfg.update(changes or {})
    cfg.update(seed=seed, train_files=[str(fit_file)], out=str(out), plots=False, progress=False)
    metrics, ids_file = out / "metrics.json", out / "fit_structures.json"
    if metrics.exists() and json.loads(metrics.read_text()).get("status") == "completed":
        done_on = json.loads(ids_file.read_text()) if ids_file.exists() else None
        if done_on != fit_ids:
            raise SystemExit(f"{out}: a finished run on other structures than the shipped fit's "
                             f"({ids_file.name} {'differs' if done_on else 'missing'}); "
                             "pass another --out or remove it")
        if differ := recipe_differences(out, cfg):
            raise SystemExit(f"{out}: a finished run with another recipe ({', '.join(differ)} "
                             "differ); pass another --out or remove it")
        return out / "model.pt"
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / f"seed{seed}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "ase_born.cli.main", "train", str(cfg_path), "--device", "cpu",
           "--threads", str(threads), "--quiet"]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    ids_file.write_text(json.dumps(fit_ids) + "\n")
    return out / "model.pt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="seeds besides the shipped fit (default 1 2; none: the shipped fit alone); "
                         "with --set, the seeds to train (default 0 1)")
    ap.add_argument("--set", dest="changes", metavar="KEY=VALUE", action="append", default=[],
                    help="change the recipe (training-config key, e.g. model=BM1); repeatable")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--data", type=Path, default=defaults.data_dir() / "dft" / "catio3_dfpt.extxyz")
    ap.add_argument("--out", type=Path, default=None,
                    help="run directory (default runs/born_seeds_<first 8 hex of the shipped model's "
                         "SHA-256>[_<changes>])")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 beside the DFT pipeline)")
    args = ap.parse_args(argv)
    args.config = args.config.resolve()  # the training subprocess runs with cwd=REPO
    args.out = None if args.out is None else args.out.resolve()
    changes = recipe_changes(args.changes, yaml.safe_load(args.config.read_text()))
    seeds = args.seeds if args.seeds is not None else ([0, 1] if changes else [1, 2])
    if changes and not seeds:
        raise SystemExit("--set needs at least one seed to train (--seeds 0 1 ...)")

    import check_born_default as check  # a sibling script: scripts/ is on sys.path when it runs

    entry = defaults.model_card()["born_model"]
    fitted = set(entry["training_structures"])
    frames = read_frames(args.data)
    unseen = check.unseen_frames(frames, fitted)
    if not unseen:
        raise SystemExit("no unseen structures (every training-split frame was in the shipped fit)")
    fit = fit_frames(frames, fitted)
    fit_ids = sorted(str(f.info["structure_id"]) for f in fit)
    tag = variant_tag(changes)
    args.out = args.out or REPO / "runs" / f"born_seeds_{entry['sha256'][:8]}{'_' + tag if tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    fit_file = args.out / "fit.extxyz"
    write_frames(fit_file, fit)
    shipped = {"seed 0 (shipped)": defaults.checked_file(entry)}
    members = {} if changes else dict(shipped)
    for seed in seeds:
        members[f"{tag + ' ' if tag else ''}seed {seed}"] = train_seed(
            args.config, seed, fit_file, args.out / f"seed{seed}", args.threads, fit_ids, changes)

    from ase_born.calculators.equivar import EquivarCalculator

    def predict(path: Path) -> list[np.ndarray]:
        calc = EquivarCalculator(str(path), device="cpu", dtype="float64", asr=False)
        return [correct_asr(check.raw_prediction(calc, f)) for f in unseen]

    preds = {name: predict(path) for name, path in members.items()}
    reference = {name: predict(path) for name, path in shipped.items()} if changes else None
    ids = [str(f.info["structure_id"]) for f in unseen]
    report = spread(preds, [correct_asr(get_born_charges(f)) for f in unseen], ids, reference)
    print(f"fit: {len(fit)} structures (the shipped fit's); unseen: {len(unseen)} structures; MAE in e"
          + (f"; recipe changed: {changes}" if changes else ""))
    width = max(18, *(len(n) + 2 for n in report))
    print(f"{'model':<{width}}{'MAE':>8}  " + "  ".join(ids))
    for name, r in report.items():
        print(f"{name:<{width}}{r['mae']:8.4f}  "
              + "  ".join(f"{r['mae_per_structure'][s]:{len(s)}.3f}" for s in ids))
    singles = [report[n]["mae"] for n in preds]
    print(f"single fits {min(singles):.4f}-{max(singles):.4f} e (mean {np.mean(singles):.4f}); "
          f"ensemble of {len(singles)}: {report['ensemble']['mae']:.4f} e")
    (args.out / "spread.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
