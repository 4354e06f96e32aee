"""The example scripts run as a user runs them (``python examples/NN_name.py`` from any folder)
and print physically right numbers. The fast ones (a few seconds each) are in the default
suite; the two workflow examples (about a minute each) are slow-marked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def vector_after(label: str, text: str) -> np.ndarray:
    """The numbers in the ``[...]`` that follows ``label`` on its line."""
    line = next(ln for ln in text.splitlines() if label in ln)
    inner = line[line.index(label) + len(label) :]
    inner = inner[inner.index("[") + 1 : inner.index("]")]
    return np.array([float(x) for x in inner.split()])


def test_single_point(tmp_path):
    out = run_example("01_single_point", tmp_path)
    # the field force on Ti is Z*ᵀE: E = 0.005 V/Å along z, Z*_zz(Ti) = 7.0695 after the sum rule
    f_ti = vector_after("field force Ti0", out)
    np.testing.assert_allclose(f_ti, [0.0, 0.0, 0.005 * 7.06954133], atol=1e-7)
    assert "ASR violation of the input Z*" in out


def test_nvt_in_field_matches_the_harmonic_tensor(tmp_path):
    out = run_example("02_nvt_in_field", tmp_path)
    md = vector_after("finite field (MD):", out)
    harmonic = vector_after("harmonic Zᵀ Φ⁻¹ Z:", out)
    assert harmonic[2] > 10.0
    np.testing.assert_allclose(md, harmonic, rtol=0.05, atol=0.05 * harmonic[2])


def test_pe_curve_harmonic_is_linear_quartic_bends(tmp_path):
    out = run_example("05_pe_curve", tmp_path)
    harmonic_part, quartic_part = out.split("--- quartic stand-in")
    assert harmonic_part.count("onset of nonlinearity: none in range") == 3
    assert len(re.findall(r"onset of nonlinearity: \d", quartic_part)) == 3


def test_train_born_model(tmp_path):
    out = run_example("06_train_born_model", tmp_path)
    mae = float(re.search(r"TEST MAE ([\d.]+) e", out).group(1))
    assert 0.0 < mae < 0.5  # a few epochs on the synthetic fixture: a sanity bound
    assert "P (µC/cm²)" in out


@pytest.mark.slow
def test_heating_run_classifies_known_tilts(tmp_path):
    out = run_example("03_heating_run", tmp_path)
    assert re.search(r"a-b\+a- 8°/6°\s+-> a-b\+a-\s+Pnma\s+\(spglib: Pnma\)", out)
    assert re.search(r"a0a0c- 6°\s+-> a0a0c-\s+I4/mcm", out)
    assert re.search(r"untilted\s+-> a0a0a0\s+Pm-3m", out)


@pytest.mark.slow
def test_dielectric_finite_field_matches_harmonic(tmp_path):
    """The stand-ins' exact ionic tensor is the 0 K harmonic one at every temperature: the
    finite-field estimate (correlated sampling) reproduces it within its error bar."""
    out = run_example("04_dielectric_tensor", tmp_path)
    assert "300 K, finite field" in out and "900 K, fluctuation" in out
    res = json.loads((tmp_path / "runs/examples/04_dielectric/dielectric.json").read_text())
    exact = np.asarray(res["zero_kelvin"]["harmonic"]["epsilon_ion"])
    assert np.diag(exact).min() > 50.0
    for t in res["temperatures"]:
        ff = t["epsilon_ion"]["finite_field"]
        val, err = np.asarray(ff["value"]), np.asarray(ff["error"])
        assert np.all(np.abs(val - exact) <= 4 * err + 0.01 * np.abs(exact).max()), t["temperature_K"]
