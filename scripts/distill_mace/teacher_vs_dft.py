#!/usr/bin/env python
"""Errors of the teacher (SevenNet-0) itself against the ABINIT PBEsol frames.

Runs in ``.venv-sevenn``; separates the functional / teacher error from the distillation
error that ``evaluate.py`` reports for the MACE model::

    nice -n 5 .venv-sevenn/bin/python scripts/distill_mace/teacher_vs_dft.py

Writes ``data/models/mace_catio3_teacher_vs_dft.json`` (same metrics as ``evaluate.py``'s
``dft`` block).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # ase_born (its basis-set stress correction)
from evaluate import compare_dft  # script folder on the path (above)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dft", default="data/dft/catio3_dfpt.extxyz")
    ap.add_argument("--out", default="data/models/mace_catio3_teacher_vs_dft.json")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    from sevenn.calculator import SevenNetCalculator

    torch.set_num_threads(1)
    calc = SevenNetCalculator("7net-0", device="cpu")
    result: dict = {"model": "SevenNet-0 (7net-0, 11Jul2024)"}
    compare_dft(calc, Path(args.dft), result)
    dft = result.pop("dft")
    Path(args.out).write_text(json.dumps({**result, **dft}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
