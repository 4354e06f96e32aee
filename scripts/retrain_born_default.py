#!/usr/bin/env python
"""Retrain the shipped default Born-charge model when the DFPT dataset has grown (issue 6).

    python scripts/retrain_born_default.py              # retrains only when due (>= 50 % more)
    python scripts/retrain_born_default.py --check      # says whether it is due, changes nothing
    python scripts/retrain_born_default.py --force      # retrains anyway

The card (``data/models/defaults.json``, ``born_model.training_structures``) records the
structure IDs the shipped model was fitted to.  The training set now is every non-TEST
frame of the DFPT dataset (what the config's ``train_files`` read).  When it has grown by
``--growth`` (default 0.5, issue 6) or more, this

1. trains with ``ase-born train CONFIG --device cpu`` into ``runs/born_default_<n>``
   (n = number of training structures),
2. copies ``model.pt`` and ``metrics.json`` over the shipped model file and its
   ``*_metrics.json``,
3. refreshes the card: hash and reference numbers (``scripts/update_model_card.py``),
   TEST MAE, training structures, summary,
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


def summary(n_params: int, kinds: Counter, test_mae: float, config: Path, provisional: bool) -> str:
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    head = "PROVISIONAL " if provisional else ""
    return (f"{head}Equivar BM2 ({n_params:,} params) fitted to the {sum(kinds.values())} DFPT training "
            f"structures at the production settings ({by_kind}; 30 Ha, k density 3.6); TEST MAE "
            f"{test_mae:.3f} e (goal 0.02); recipe {config.relative_to(REPO) if config.is_absolute() else config}")


def install(out: Path, ids: dict[str, str], config: Path) -> dict:
    """Copy a finished training run over the shipped model and refresh its card
    (``defaults.models_dir()``: the repository's ``data/models`` unless ``ASE_BORN_DATA``)."""
    card_path = defaults.models_dir() / defaults.CARD_NAME
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        raise SystemExit(f"{out}: training status {metrics.get('status')!r}, not installing")
    card = json.loads(card_path.read_text())
    entry = card["born_model"]
    target = card_path.parent / entry["file"]
    shutil.copyfile(out / metrics.get("model_file", "model.pt"), target)
    shutil.copyfile(out / "metrics.json", target.with_name(target.stem + "_metrics.json"))
    from ase_born.models import Equivar

    n_params = sum(p.numel() for p in Equivar.load(str(target)).parameters())
    entry["test_mae_e"] = float(metrics["test"]["mae"])
    entry["training_structures"] = sorted(ids)
    entry["summary"] = summary(n_params, Counter(ids.values()), entry["test_mae_e"], config,
                               bool(entry.get("provisional", True)))
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    import update_model_card  # a sibling script: scripts/ is on sys.path when a script runs

    update_model_card.main(["--born-model"])  # hash first, then the reference numbers
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--growth", type=float, default=0.5, help="retrain at this fractional growth (issue 6: 0.5)")
    ap.add_argument("--check", action="store_true", help="only say whether a retrain is due")
    ap.add_argument("--force", action="store_true", help="retrain even if not due")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 beside the DFT pipeline)")
    ap.add_argument("--install", type=Path, default=None, metavar="RUN_DIR",
                    help="install an already finished training run instead of training")
    args = ap.parse_args(argv)

    ids = training_structures(read_frames(defaults.data_dir() / "dft" / "catio3_dfpt.extxyz"))
    card = defaults.model_card()
    fitted = set(card["born_model"].get("training_structures", []))
    due, msg = retrain_due(set(ids), fitted, args.growth)
    print(("retrain due: " if due else "not due: ") + msg)
    if args.check or not (due or args.force or args.install):
        return 0
    out = args.install
    if out is None:
        out = REPO / "runs" / f"born_default_{len(ids)}"
        cmd = [sys.executable, "-m", "ase_born.cli.main", "train", str(args.config), "--device", "cpu",
               "--threads", str(args.threads), "--out", str(out), "--quiet"]
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
