"""The shipped checks of ase_born.testing: each passes on a correct input and raises on a wrong one."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from ase_born.testing import (
    SpringsToSites,
    assert_born_permutation_equivariant,
    assert_born_translation_invariant,
    assert_forces_match_fd,
    assert_stress_matches_fd,
)

CELL = np.array([[5.1, 0.0, 0.0], [0.9, 4.8, 0.0], [-0.7, 0.4, 5.3]])  # triclinic


def _structure(seed: int = 7) -> Atoms:
    rng = np.random.default_rng(seed)
    return Atoms(
        "CaTiO2O",  # two O: equal species at different places
        scaled_positions=rng.random((5, 3)),
        cell=CELL,
        pbc=True,
    )


# ---------------------------------------------------------------------------
# Stress and forces by finite differences
# ---------------------------------------------------------------------------


class ScaledStress(SpringsToSites):
    """Wrong on purpose: the stress is ``factor`` times the true strain derivative."""

    def __init__(self, *args, factor: float = 1.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor = factor

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        kw = {} if system_changes is None else {"system_changes": system_changes}
        super().calculate(atoms, properties, **kw)
        self.results["stress"] = self.factor * self.results["stress"]


class ScaledForces(SpringsToSites):
    """Wrong on purpose: the forces are 1.1 times −dE/dR."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        kw = {} if system_changes is None else {"system_changes": system_changes}
        super().calculate(atoms, properties, **kw)
        self.results["forces"] = 1.1 * self.results["forces"]


def _displaced(calc_cls, **kwargs) -> Atoms:
    ref = _structure()
    atoms = ref.copy()
    atoms.positions += np.random.default_rng(3).normal(scale=0.15, size=atoms.positions.shape)
    atoms.calc = calc_cls(ref, spring_constants={"Ca": 4.0, "Ti": 9.0, "O": 6.0}, **kwargs)
    return atoms


def test_stress_check_passes_on_the_true_stress():
    atoms = _displaced(SpringsToSites)
    stress = atoms.get_stress()
    # a nonzero, anisotropic stress with shear parts, so the check below is not vacuous
    assert np.min(np.abs(stress)) > 1e-4
    assert assert_stress_matches_fd(atoms, rtol=1e-6) < 1e-9 * np.max(np.abs(stress))


@pytest.mark.parametrize("factor", [1.1, 0.9, -1.0])
def test_stress_check_raises_on_a_wrong_stress(factor):
    atoms = _displaced(ScaledStress, factor=factor)
    with pytest.raises(AssertionError, match="stress differs from the numerical strain derivative"):
        assert_stress_matches_fd(atoms, rtol=1e-6)
    # within a tolerance wide enough for the factor the same check passes
    if factor > 0:
        assert assert_stress_matches_fd(atoms, rtol=0.2) > 0.05 * np.max(np.abs(atoms.get_stress()))


def test_forces_check_passes_on_true_and_raises_on_wrong_forces():
    assert assert_forces_match_fd(_displaced(SpringsToSites), rtol=1e-6) < 1e-8
    with pytest.raises(AssertionError, match="forces differ from −dE/dR"):
        assert_forces_match_fd(_displaced(ScaledForces), rtol=1e-6)


# ---------------------------------------------------------------------------
# Born-charge model checks
# ---------------------------------------------------------------------------


class PairBorn:
    """Correct model: Z*_k = Z_k 1 + Σ_{j≠k} exp(−|r_kj|²/4) r_kj ⊗ r_kj, r_kj = R_j − R_k.

    Built from relative positions and species only: invariant under translations,
    equivariant under permutations (no minimum image, so no wrapping is involved).
    """

    def _base(self, atoms):
        r = atoms.positions[None, :, :] - atoms.positions[:, None, :]  # r[k, j] = R_j − R_k
        w = np.exp(-np.sum(r * r, axis=-1) / 4.0)
        z = np.einsum("kj,kjb,kja->kba", w, r, r)
        return z + atoms.numbers[:, None, None] * 0.1 * np.eye(3)

    def get_born_charges(self, atoms):
        return self._base(atoms)


class AbsolutePositionBorn(PairBorn):
    """Wrong: Z*_k also depends on the absolute position R_k (still permutation-equivariant)."""

    def get_born_charges(self, atoms):
        r = atoms.positions
        return self._base(atoms) + 0.05 * np.einsum("kb,ka->kba", r, r)


class IndexBorn(PairBorn):
    """Wrong: Z*_k also depends on the atom index k (still translation invariant)."""

    def get_born_charges(self, atoms):
        k = np.arange(len(atoms), dtype=float)
        return self._base(atoms) + 0.05 * k[:, None, None] * np.eye(3)


def test_born_checks_pass_on_a_correct_model():
    atoms = _structure()
    model = PairBorn()
    z = model.get_born_charges(atoms)
    assert np.max(np.abs(z - z[0])) > 0.1  # atoms differ, so permuting them changes Z*
    assert assert_born_translation_invariant(model, atoms) < 1e-12
    assert assert_born_translation_invariant(model, atoms, shift=[10.0, -3.0, 7.5]) < 1e-12
    for seed in (0, 1, 2):
        assert assert_born_permutation_equivariant(model, atoms, seed=seed) < 1e-12


def test_translation_check_raises_on_a_position_dependent_model():
    atoms = _structure()
    with pytest.raises(AssertionError, match="rigid translation"):
        assert_born_translation_invariant(AbsolutePositionBorn(), atoms)
    with pytest.raises(AssertionError, match="rigid translation"):
        assert_born_translation_invariant(AbsolutePositionBorn(), atoms, shift=[0.0, 0.0, 1.0])
    # an index-dependent model is translation invariant: this check does not flag it
    assert assert_born_translation_invariant(IndexBorn(), atoms) < 1e-12


def test_permutation_check_raises_on_an_index_dependent_model():
    atoms = _structure()
    for seed in (0, 1):
        with pytest.raises(AssertionError, match="not permutation-equivariant"):
            assert_born_permutation_equivariant(IndexBorn(), atoms, seed=seed)
    # a model of the absolute position is still permutation-equivariant
    assert assert_born_permutation_equivariant(AbsolutePositionBorn(), atoms) < 1e-12
