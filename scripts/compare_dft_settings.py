#!/usr/bin/env python
"""Structures computed at two DFT settings: how much forces, stress, Z* and ε∞ differ.

    python scripts/compare_dft_settings.py data/dft/catio3_dfpt.extxyz \\
        data/dft/catio3_dfpt_ecut40_k4.extxyz

For every structure ID present in both files (same positions required): max |ΔF| (eV/Å),
relative RMS of ΔF (against the second file's forces), max |ΔZ*| (e), max |Δε∞| and the
stress difference (GPa, ASE sign and Voigt order).  The convergence study ran on the ideal
cubic cell, whose forces vanish by symmetry; this is the check of forces between settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ase.calculators.calculator import PropertyNotImplementedError
from ase.units import GPa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ase_born.io.extxyz import get_born_charges, read_frames_by_id


def _setting(atoms) -> str:
    s = json.loads(atoms.info.get("dft_settings", "{}"))
    return f"{s.get('ecut_Ha')} Ha, k {atoms.info.get('kpts')}"


def compare(a, b) -> dict:
    """Differences of frame ``a`` from frame ``b`` (same structure)."""
    if len(a) != len(b) or np.abs(a.positions - b.positions).max() > 1e-6:
        raise SystemExit(f"{a.info['structure_id']}: not the same structure in both files")
    fa, fb = a.get_forces(), b.get_forces()
    sa, sb = _stress(a), _stress(b)
    eps_a, eps_b = a.info.get("epsilon_inf"), b.info.get("epsilon_inf")
    return {
        "max_dF": float(np.abs(fa - fb).max()),
        "rel_rms_dF": float(np.sqrt(((fa - fb) ** 2).mean() / (fb**2).mean())) if np.any(fb) else None,
        "max_dZ": float(np.abs(get_born_charges(a) - get_born_charges(b)).max()),
        "max_deps": None if eps_a is None or eps_b is None else float(np.abs(eps_a - eps_b).max()),
        "dstress_GPa": None if sa is None or sb is None else ((sa - sb) / GPa).tolist(),
    }


def _stress(atoms) -> np.ndarray | None:
    """Voigt stress (eV/Å³, ASE sign) or None when the frame has none."""
    try:
        return atoms.get_stress()
    except (PropertyNotImplementedError, RuntimeError):  # RuntimeError: no calculator
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    args = ap.parse_args(argv)
    try:
        one, two = read_frames_by_id(args.first), read_frames_by_id(args.second)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    shared = sorted(set(one) & set(two))
    if not shared:
        print("no structure ID in both files")
        return 1
    for sid in shared:
        d = compare(one[sid], two[sid])
        eps = "-" if d["max_deps"] is None else f"{d['max_deps']:.3f}"
        dstress = "-" if d["dstress_GPa"] is None else np.round(d["dstress_GPa"], 2).tolist()
        rel = "- (no forces)" if d["rel_rms_dF"] is None else f"{100 * d['rel_rms_dF']:.1f} %"
        print(f"{sid} ({_setting(one[sid])} vs {_setting(two[sid])}): max |dF| {d['max_dF']:.3f} eV/A, "
              f"rel. RMS dF {rel}, max |dZ*| {d['max_dZ']:.3f} e, "
              f"max |d eps_inf| {eps}, d stress (GPa) {dstress}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
