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

from ase.io import read

sys.path.insert(0, str(Path(__file__).parent))
from evaluate import compare, predict  # script folder on the path (above)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dft", default="data/dft/catio3_dfpt.extxyz")
    ap.add_argument("--out", default="data/models/mace_catio3_teacher_vs_dft.json")
    args = ap.parse_args(argv)
    dft = Path(args.dft)
    frames = read(dft, ":") if dft.exists() and dft.stat().st_size > 0 else []
    if not frames:
        print(f"{dft} missing or empty: nothing to compare")
        return
    warnings.filterwarnings("ignore")
    import torch
    from sevenn.calculator import SevenNetCalculator

    torch.set_num_threads(1)
    calc = SevenNetCalculator("7net-0", device="cpu")
    result = {
        "file": str(dft),
        "model": "SevenNet-0 (7net-0, 11Jul2024)",
        **compare(frames, predict(frames, calc), remove_energy_offset=True),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
