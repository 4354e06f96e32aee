"""Shared helpers of the unit tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def load_script(monkeypatch):
    """Import a file of ``scripts/`` (not a package) as a module: ``load_script("name")``.

    ``scripts/`` is put on ``sys.path`` as when a script runs (scripts import their siblings
    by name); sibling modules imported that way are dropped again afterwards."""
    scripts = ROOT / "scripts"
    monkeypatch.syspath_prepend(str(scripts))
    before = set(sys.modules)

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in set(sys.modules) - before:
        if Path(getattr(sys.modules[name], "__file__", None) or "").parent == scripts:
            del sys.modules[name]


@pytest.fixture
def frames_off_the_shipped_born_model(load_script):
    """``make(cases)``: experimental-Pnma frames whose "DFPT" Z* is the shipped Born model's
    (sum rule applied) with Z*(0,1) raised by ``shift`` on odd atoms and ``2 shift`` on even
    ones, so that after the sum rule every atom is off by ±shift/2: MAE shift/18 per frame.
    ``cases``: (structure_id, split, kind, shift) per frame; ``"FITTED"`` as an ID stands
    for the first structure of the shipped fit."""
    from ase_born import defaults
    from ase_born.calculators.equivar import EquivarCalculator
    from ase_born.dft.sampler import pnma_catio3
    from ase_born.io.extxyz import set_born_charges
    from ase_born.train.dataset import correct_asr

    def make(cases):
        entry = defaults.model_card()["born_model"]
        fitted = entry["training_structures"][0]
        calc = EquivarCalculator(str(defaults.checked_file(entry)), dtype="float64")
        atoms = pnma_catio3()
        pred = correct_asr(load_script("check_born_default").raw_prediction(calc, atoms))
        frames = []
        for sid, split, kind, shift in cases:
            f = atoms.copy()
            dft = pred.copy()
            dft[:, 0, 1] += shift
            dft[::2, 0, 1] += shift
            set_born_charges(f, dft)
            f.info.update(structure_id=fitted if sid == "FITTED" else sid, split=split, kind=kind)
            frames.append(f)
        return frames

    return make
