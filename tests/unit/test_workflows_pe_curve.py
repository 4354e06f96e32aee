"""Static P(E): linear for a harmonic crystal (slope = harmonic ε), onset of nonlinearity found
for an anharmonic one; cell relaxation under the field stress; input checks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from ase_born import physics
from ase_born.workflows.pe_curve import PECurveConfig, run_pe_curve
from ase_born.workflows.standins import standin_born_model, standin_force_field


class QuarticSites(Calculator):
    """Stand-in springs plus β Σ|u_k|⁴ (eV/Å⁴)."""

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, reference, beta=300.0):
        super().__init__()
        self.springs = standin_force_field(reference)
        self.scaled = reference.get_scaled_positions(wrap=False)
        self.beta = beta

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.springs
        u, _ = physics.minimum_image_displacements(a.positions, a.cell.array, self.scaled, a.pbc)
        r2 = np.sum(u * u, axis=1)
        f4 = -4.0 * self.beta * r2[:, None] * u
        s4 = np.einsum("ka,kb->ab", -f4, u) / a.get_volume()
        e = a.get_potential_energy() + self.beta * float(np.sum(r2**2))
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": a.get_forces() + f4,
            "stress": a.get_stress() + physics.stress_full_to_voigt(0.5 * (s4 + s4.T)),
        }


def _run(tmp_path, ff, **kw):
    cfg = PECurveConfig(
        **{"fields_V_per_m": (0.0, 1e7, 3e7, 6e7, 1e8), "directions": ("x", "z"), **kw}
    )
    return run_pe_curve(
        cfg, ff, standin_born_model, str(tmp_path / "pe"), progress=False, log=lambda m: None
    )


def test_harmonic_crystal_is_linear_with_the_harmonic_slope(tmp_path):
    res = _run(tmp_path, standin_force_field)
    h = np.asarray(res["epsilon_ion_harmonic"])
    s = np.asarray(res["epsilon_ion_static"])
    for c in (0, 2):
        np.testing.assert_allclose(s[:, c], h[:, c], rtol=2e-3, atol=1e-3)
    for d in res["directions"]:
        assert d["nonlinearity_onset_V_per_m"] is None
        assert max(d["relative_deviation_from_linear"]) < 5e-3
    assert (tmp_path / "pe" / "pe_curve.png").exists()


def test_anharmonic_crystal_has_an_onset_of_nonlinearity(tmp_path):
    res = _run(tmp_path, QuarticSites)
    onsets = [d["nonlinearity_onset_V_per_m"] for d in res["directions"]]
    assert all(o is not None and 1e7 < o <= 1e8 for o in onsets)
    for d in res["directions"]:  # stiffening: P falls below the linear extrapolation
        p, e = np.asarray(d["P_parallel_C_per_m2"]), np.asarray(d["field_V_per_m"])
        assert p[-1] < d["slope_C_per_m2_per_V_per_m"] * e[-1]


def test_cell_relaxation_in_field(tmp_path):
    """Springs to sites have no electrostriction: relaxing the cell under the field stress
    leaves the cell and the response unchanged."""
    res = _run(
        tmp_path,
        standin_force_field,
        relax_cell=True,
        harmonic=False,
        fmax_eV_per_A=1e-4,
        fields_V_per_m=(0.0, 1e8),
        directions=("z",),
    )
    s = np.asarray(res["epsilon_ion_static"])
    assert s[2, 2] == pytest.approx(117.7, rel=0.02)
    import ase.io

    frames = ase.io.read(tmp_path / "pe" / "structures.extxyz", index=":")
    np.testing.assert_allclose(frames[-1].cell.lengths(), frames[0].cell.lengths(), rtol=1e-3)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"fields_V_per_m": (0.0,)}, "nonzero"),
        ({"fields_V_per_m": (0.0, 2e10)}, "exceeds"),
        ({"directions": ()}, "empty"),
        ({"directions": ("q",)}, "direction"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        PECurveConfig(**kw)


def test_numeric_directions_are_comma_free_csv_labels(tmp_path):
    """A direction given as "1,1,0" or as numbers (the forms parse_direction documents) is
    stored as a comma-free label: pe_curve.csv keeps its columns and the run finishes."""
    from ase_born.workflows.common import parse_direction

    cfg = PECurveConfig(fields_V_per_m=(0.0, 1e7), directions=("1,1,0", (0.0, 0.0, 1.0)))
    assert cfg.directions == ("1 1 0", "0.0 0.0 1.0")
    np.testing.assert_allclose(parse_direction(cfg.directions[0]), np.array([1, 1, 0]) / np.sqrt(2))
    res = run_pe_curve(cfg, standin_force_field, standin_born_model, str(tmp_path / "pe"), progress=False,
                       log=lambda m: None)
    assert [d["direction"] for d in res["directions"]] == ["1 1 0", "0.0 0.0 1.0"]
