"""scripts/born_cv_report.py reports only finished cross-validations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "born_cv_report.py"


def _module():
    spec = importlib.util.spec_from_file_location("born_cv_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_an_interrupted_cross_validation_is_refused(tmp_path):
    """Two of four folds done: reporting them as the recipe's CV error would compare recipes
    on different structures (it printed 'CV MAE' over half the training set)."""
    mod = _module()
    run = tmp_path / "cv"
    for k in (0, 1):
        (run / f"fold_{k}").mkdir(parents=True)
        (run / f"fold_{k}" / "metrics.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(SystemExit, match="cross-validation not finished"):
        mod.cv_errors(run, {})
    (run / "metrics.json").write_text(json.dumps({"cross_validation": {"folds": 4}}))
    with pytest.raises(SystemExit, match=r"2 fold directories, 4 folds"):
        mod.cv_errors(run, {})
    (run / "metrics.json").write_text(json.dumps({"cross_validation": {"folds": 2}}))
    (run / "fold_1" / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(SystemExit, match="fold_1: fold not completed"):
        mod.cv_errors(run, {})
