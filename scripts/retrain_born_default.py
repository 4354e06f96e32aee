#!/usr/bin/env python
"""Retrain the shipped default Born-charge model when the DFPT dataset has grown (issue 6).

    python scripts/retrain_born_default.py              # retrains only when due (>= 50 % more)
    python scripts/retrain_born_default.py --check      # says whether it is due, changes nothing
    python scripts/retrain_born_default.py --force      # retrains anyway
    python scripts/retrain_born_default.py --force --resume   # continues a killed retrain

The card (``data/models/defaults.json``, ``born_model.training_structures``) records the
structure IDs the shipped model was fitted to.  The training set now is every non-TEST
frame of the DFPT dataset (what the config's ``train_files`` read).  When it has grown by
``--growth`` (default 0.5, issue 6) or more, this

1. trains with ``ase-born train CONFIG --device cpu`` into ``runs/born_default_<n>``
   (n = number of training structures),
2. checks the run before anything in ``data/`` changes (completed, TEST metrics present,
   model loads) and computes the new card entry from the run itself: hash and reference
   numbers of its ``model.pt`` (``scripts/update_model_card.py``), TEST MAE, the training
   structures from the run's ``splits.json`` (what it was really fitted to, however the
   dataset grew since), a summary naming the run's own ``config.yaml``,
3. replaces the shipped model file, its ``*_metrics.json`` and the card, each atomically
   (temporary file + rename, in that order, after all checks),
4. prints the acceptance checks (``scripts/check_born_default.py``) for the notes.

The prose of ``data/README.md`` (model card section), the README status paragraph and the
config's header comment quote these numbers and are edited by hand afterwards; the script
lists them at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ase_born import defaults
from ase_born.io.extxyz import read_frames
from ase_born.train.dataset import training_frames

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "configs" / "equivar_bm2_catio3_provisional.yaml"
HAND_EDITED = (
    "data/README.md (section 'Default Born-charge model': data, TEST metrics, history, pnma_eq check)",
    "README.md (status of the default models: structure count and TEST MAE)",
    "the config's header comment (structures at the last fit, TEST MAE history)",
)


def training_structures(frames: list) -> dict[str, str]:
    """Structure ID -> kind of every frame outside the fixed TEST split."""
    return {str(a.info["structure_id"]): str(a.info.get("kind", a.info["structure_id"]))
            for a in training_frames(frames)}


def retrain_due(now: set[str], fitted: set[str], growth: float = 0.5) -> tuple[bool, str]:
    """Whether the training set ``now`` has grown by ``growth`` (fraction) over ``fitted``,
    the structures of the shipped fit, and a one-line reason.  Structures that left the
    training set (none should) count against the growth."""
    new = len(now - fitted)
    gone = len(fitted - now)
    needed = max(1, int(-(-len(fitted) * growth // 1)))  # ceil
    grown = new - gone
    msg = (f"{len(now)} training structures now, {len(fitted)} at the shipped fit "
           f"({new} new{f', {gone} gone' if gone else ''}); retrain at >= {len(fitted) + needed}")
    return grown >= needed, msg


def summary(n_params: int, kinds: Counter, test_mae: float, recipe: str, model: str, provisional: bool,
            held_out: int = 0) -> str:
    """The card's one-line description; ``held_out``: structures of ``kinds`` that validated
    instead of training (a split recipe; 0 for a final fit)."""
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    head = "PROVISIONAL " if provisional else ""
    n = sum(kinds.values())
    fitted = (f"trained on {n - held_out} of the {n} DFPT training structures ({held_out} held out for "
              "validation)" if held_out else f"fitted to the {n} DFPT training structures")
    return (f"{head}Equivar {model} ({n_params:,} params) {fitted} at the production settings ({by_kind}; "
            f"30 Ha, k density 3.6); TEST MAE {test_mae:.3f} e (goal 0.02); recipe {recipe}")


def model_description(mc) -> str:
    """``"BM2"``, or ``"BM2, smooth cutoff, r_max 4 Å"`` for a preset with those changes."""
    import dataclasses

    from ase_born.models.equivar import PRESETS

    for name, preset in PRESETS.items():
        base = dataclasses.replace(mc, cutoff_envelope=preset.cutoff_envelope, r_max=preset.r_max)
        if base == dataclasses.replace(preset, asr=mc.asr):
            extra = (["smooth cutoff"] if mc.cutoff_envelope != "none" else []) + (
                [f"r_max {mc.r_max:g} Å"] if mc.r_max != preset.r_max else [])
            return ", ".join([name, *extra])
    return "custom"


def fitted_structures(out: Path) -> list[str]:
    """Structure IDs a training run was fitted to (train + validation of its ``splits.json``)."""
    splits = json.loads((out / "splits.json").read_text())
    return sorted(set(splits["train"]) | set(splits.get("val") or []))


def _stage(src: Path, dst: Path) -> Path:
    """A copy of ``src`` beside ``dst``, to be renamed onto it."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a part-written copy (full disk)
        raise
    return tmp


def install(out: Path, kinds: dict[str, str], config: Path = CONFIG) -> dict:
    """Install a finished training run as the shipped model (``defaults.models_dir()``: the
    repository's ``data/models`` unless ``ASE_BORN_DATA``). ``kinds``: structure ID -> kind
    for the card's counts. The card names ``config`` as the recipe when the run's own
    ``config.yaml`` is that recipe (up to paths and device), else the run's file. Nothing in
    ``data/`` changes unless every check passes."""
    from ase_born.models import Equivar
    from ase_born.train.config import TrainConfig, config_differences

    out = Path(out).resolve()
    card_path = defaults.models_dir() / defaults.CARD_NAME
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        raise SystemExit(f"{out}: training status {metrics.get('status')!r}, not installing")
    if (metrics.get("test") or {}).get("mae") is None:
        raise SystemExit(f"{out}: no TEST metrics (trained without the TEST split?), not installing")
    if metrics.get("fold") is not None or metrics.get("cross_validation"):
        raise SystemExit(f"{out}: a cross-validation run or fold (fitted to part of the training "
                         "structures), not installing: install a final fit")
    model_file = out / metrics.get("model_file", "model.pt")
    model = Equivar.load(model_file)  # loads, or raises
    n_params = sum(p.numel() for p in model.parameters())
    ids = fitted_structures(out)
    unknown = sorted(set(ids) - set(kinds))
    if unknown:
        raise SystemExit(f"{out}: fitted to structures not in the DFPT dataset now: {unknown[:5]}")
    where = frozenset(  # where and how a run ran, not what it trained
        {"out", "device", "num_workers", "progress", "plots", "train_files", "test_file", "val_file"})
    cfg = TrainConfig.from_yaml(out / "config.yaml")
    if "train_config" in metrics:  # what model.pt was trained with (config.yaml: the last setup)
        trained = TrainConfig.from_dict(metrics["train_config"])
        changed = config_differences(trained, cfg, ignore=where)
        if changed:
            raise SystemExit(
                f"{out}: config.yaml differs from the configuration model.pt was trained with "
                f"(metrics.json: {sorted(changed)}): a later resume is running or was interrupted; "
                "finish it, or install another run"
            )
        cfg = trained
    model_name = model_description(model.config)  # what the file is, not what a config says
    same = not config_differences(cfg, TrainConfig.from_yaml(config), ignore=where)
    recipe_file = Path(config).resolve() if same else out / "config.yaml"
    recipe = str(recipe_file.relative_to(REPO)) if recipe_file.is_relative_to(REPO) else str(recipe_file)
    import update_model_card  # a sibling script: scripts/ is on sys.path when a script runs

    card = json.loads(card_path.read_text())
    entry = card.get("born_model") or {"file": "equivar_bm2_catio3_provisional.pt", "provisional": True}
    card["born_model"] = entry
    entry["sha256"] = defaults.sha256(model_file)
    entry["reference_check"] = update_model_card.born_reference_check(model_file)
    entry["test_mae_e"] = float(metrics["test"]["mae"])
    entry["training_structures"] = ids
    held_out = 0 if metrics.get("val_is_train", True) else int(metrics.get("n_val") or 0)
    entry["summary"] = summary(n_params, Counter(kinds[i] for i in ids), entry["test_mae_e"], recipe,
                               model_name, bool(entry.get("provisional", True)), held_out)
    target = card_path.parent / entry["file"]
    # every file staged first (a full disk fails here, before anything changes), then three
    # renames, the card last: the loader checks the model against the card's hash
    new_card = card_path.with_name(f".{card_path.name}.new")
    metrics_target = target.with_name(target.stem + "_metrics.json")
    staged: list[tuple[Path, Path]] = []
    try:
        new_card.write_text(json.dumps(card, indent=1) + "\n")
        staged.append((_stage(model_file, target), target))
        staged.append((_stage(out / "metrics.json", metrics_target), metrics_target))
    except BaseException:  # a staging copy failed: leave data/models as it was, no stray files
        new_card.unlink(missing_ok=True)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, dst in staged:
        tmp.replace(dst)
    new_card.replace(card_path)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--growth", type=float, default=0.5, help="retrain at this fractional growth (issue 6: 0.5)")
    ap.add_argument("--check", action="store_true", help="only say whether a retrain is due")
    ap.add_argument("--force", action="store_true", help="retrain even if not due")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 beside the DFT pipeline)")
    ap.add_argument("--resume", action="store_true",
                    help="continue runs/born_default_<n> after a kill (ase-born train --resume)")
    ap.add_argument("--install", type=Path, default=None, metavar="RUN_DIR",
                    help="install an already finished training run instead of training")
    args = ap.parse_args(argv)
    args.config = args.config.resolve()  # the training runs with cwd=REPO

    ids = training_structures(read_frames(defaults.data_dir() / "dft" / "catio3_dfpt.extxyz"))
    card = defaults.model_card()
    fitted = set((card.get("born_model") or {}).get("training_structures", []))
    due, msg = retrain_due(set(ids), fitted, args.growth)
    print(("retrain due: " if due else "not due: ") + msg)
    if args.check or not (due or args.force or args.install):
        return 0
    out = None if args.install is None else args.install.resolve()
    if out is None:
        out = REPO / "runs" / f"born_default_{len(ids)}"
        if args.resume and not (out / "checkpoints" / "last.pt").is_file():
            others = sorted(p.name for p in (REPO / "runs").glob("born_default_*"))
            print(f"--resume: nothing to resume in {out} (the run for {len(ids)} training structures)"
                  + (f"; runs there: {', '.join(others)} (the dataset grew since? retrain without --resume)"
                     if others else ""))
            return 1
        cmd = [sys.executable, "-m", "ase_born.cli.main", "train", str(args.config), "--device", "cpu",
               "--threads", str(args.threads), "--out", str(out), "--quiet",
               *(["--resume"] if args.resume else [])]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    metrics = install(out, ids, args.config)
    print(f"installed {out} (TEST MAE {metrics['test']['mae']:.4f} e, best epoch {metrics.get('best_epoch')})")
    import check_born_default

    check_born_default.main([])
    print("\nedit by hand with these numbers:\n  " + "\n  ".join(HAND_EDITED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
