"""Adapter for the paper's published TorchScript models (ase_born.models.torchscript).

The test builds its own TorchScript module that follows the published input/output
convention, and checks the adapter against an independent numpy evaluation (ASE's own
neighbour list, closed-form spherical harmonics and Cartesian tensors).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from ase_born.calculators.base import BornChargeModel
from ase_born.models.torchscript import TorchScriptEquivar

N_RADIAL = 6
R_MAX = 3.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Many tiny ops: on a shared 2-core box, torch's 2 OpenMP threads wait for each other
    and run 5-20x slower than one thread. Scoped to this module and restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class ToyPublished(torch.nn.Module):
    """Equivariant toy following the published convention (per-atom 0e, 2e, 1e output).

    o0 = Σ_edges R_0 Y_0;  o2e = Σ R_3 Y_2;  o1e = (Σ R_0 Y_1) x (Σ R_2 Y_1),
    sums over the edges whose centre (edge_index[1]) is the atom.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        n = self.n
        centre = data["edge_index"][1]
        ea = data["edge_attr"]
        num = int(data["num_nodes"])
        y1 = ea[:, n : 4 * n].reshape(-1, n, 3)
        y2 = ea[:, 4 * n : 9 * n].reshape(-1, n, 5)
        o0 = torch.zeros(num, 1, dtype=ea.dtype).index_add(0, centre, ea[:, 0:1])
        v = torch.zeros(num, 3, dtype=ea.dtype).index_add(0, centre, y1[:, 0, :])
        w = torch.zeros(num, 3, dtype=ea.dtype).index_add(0, centre, y1[:, 2, :])
        o2 = torch.zeros(num, 5, dtype=ea.dtype).index_add(0, centre, y2[:, 3, :])
        return torch.cat([o0, o2, torch.cross(v, w, dim=1)], dim=1)


def expected_born(atoms: Atoms) -> np.ndarray:
    """Closed form of ToyPublished + the REFERENCE output map, with t_ij = Z*[k, i, j]."""
    i, _, d_vec = ase_neighbor_list("ijD", atoms, R_MAX)  # D = r_j - r_i + S cell
    r = np.linalg.norm(d_vec, axis=1)
    keep = (r > 0.1) & (r < R_MAX)
    i, d_vec, r = i[keep], d_vec[keep], r[keep]
    u = d_vec / r[:, None]
    delta = R_MAX / (N_RADIAL - 1)

    def radial(k):
        return np.exp(-0.5 * ((r - k * delta) / delta) ** 2)

    n = len(atoms)
    y0, c1 = 1 / math.sqrt(4 * math.pi), math.sqrt(3 / (4 * math.pi))
    c2 = math.sqrt(15 / (8 * math.pi))  # |Y_2| = sqrt(5/4π) = c2 |r̂r̂ᵀ - 1/3|
    o0 = np.bincount(i, radial(0) * y0, minlength=n)
    v, w, sym = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3, 3))
    np.add.at(v, i, radial(0)[:, None] * c1 * u)
    np.add.at(w, i, radial(2)[:, None] * c1 * u)
    outer = np.einsum("ea,eb->eab", u, u) - np.eye(3) / 3
    np.add.at(sym, i, radial(3)[:, None, None] * c2 * outer)
    cross = np.cross(v, w)
    eps = np.zeros((3, 3, 3))
    for a, b, c in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        eps[a, b, c], eps[b, a, c] = 1.0, -1.0
    antisym = np.einsum("abc,kc->kab", eps, cross) / math.sqrt(2)
    return o0[:, None, None] * np.eye(3) / math.sqrt(3) + sym + antisym


@pytest.fixture()
def scripted_file(tmp_path):
    path = tmp_path / "toy_bm.pt"
    torch.jit.save(torch.jit.script(ToyPublished(N_RADIAL)), str(path))
    return path


@pytest.fixture()
def atoms():
    a = _perovskite()
    a.rattle(0.2, seed=3)
    return a


def _perovskite() -> Atoms:
    return Atoms(
        "CaTiO3",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        cell=[3.85, 3.9, 3.95],
        pbc=True,
    )


def test_loading_torchscript_requires_trust(scripted_file):
    with pytest.raises(PermissionError, match="trust=True"):
        TorchScriptEquivar.load(scripted_file)


def test_adapter_matches_closed_form(scripted_file, atoms):
    model = TorchScriptEquivar.load(
        scripted_file, trust=True, num_radial=N_RADIAL, asr=False, dtype="float64"
    )
    assert isinstance(model, BornChargeModel) and model.supports_torch
    z = model.get_born_charges(atoms)
    expected = expected_born(atoms)
    assert np.abs(expected - expected.transpose(0, 2, 1)).max() > 1e-4  # non-symmetric
    np.testing.assert_allclose(z, expected, atol=1e-10)
    # transpose switch and sum rule
    model_t = TorchScriptEquivar.load(
        scripted_file, trust=True, num_radial=N_RADIAL, asr=True, transpose=True, dtype="float64"
    )
    z_t = model_t.get_born_charges(atoms)
    ref_t = expected.transpose(0, 2, 1)
    np.testing.assert_allclose(z_t, ref_t - ref_t.mean(axis=0), atol=1e-10)


def test_input_dict_layout(atoms):
    model = TorchScriptEquivar(ToyPublished(N_RADIAL), num_radial=N_RADIAL, dtype="float64")
    inputs = model.build_inputs(atoms)
    assert set(inputs) >= {
        "edge_index",
        "edge_attr",
        "Z",
        "vol",
        "num_nodes",
        "batch",
        "structure_id",
    }
    assert inputs["Z"].dtype == torch.long and inputs["Z"].tolist() == atoms.numbers.tolist()
    assert inputs["edge_attr"].shape == (inputs["edge_index"].shape[1], 9 * N_RADIAL)
    assert inputs["vol"].item() == pytest.approx(atoms.get_volume())
    assert int(inputs["num_nodes"]) == len(atoms)
    j, i = inputs["edge_index"][:, 0].tolist()
    # vector from centre i to neighbour j: find it among ASE's i->j vectors
    ii, jj, dd = ase_neighbor_list("ijD", atoms, R_MAX)
    candidates = dd[(ii == i) & (jj == j)]
    l1 = inputs["edge_attr"][0, N_RADIAL : 4 * N_RADIAL].reshape(N_RADIAL, 3).numpy()
    r = np.linalg.norm(candidates, axis=1)
    rad0 = np.exp(-0.5 * (r / (R_MAX / (N_RADIAL - 1))) ** 2)
    y1 = math.sqrt(3 / (4 * math.pi)) * candidates / r[:, None]
    assert np.min(np.abs(rad0[:, None] * y1 - l1[0]).max(axis=1)) < 1e-12


def test_torch_level_is_differentiable_and_matches_finite_differences(scripted_file, atoms):
    model = TorchScriptEquivar.load(scripted_file, trust=True, num_radial=N_RADIAL, dtype="float64")
    pos = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array)
    z = model.get_born_charges_torch(atoms, pos, cell)
    z[1, 0, 2].backward()
    h = 1e-6
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[2, 1] += h
    minus.positions[2, 1] -= h
    fd = (model.get_born_charges(plus)[1, 0, 2] - model.get_born_charges(minus)[1, 0, 2]) / (2 * h)
    assert pos.grad[2, 1].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_minimum_image_mode_reproduces_published_single_image():
    small = _perovskite()  # 3.9 Å cell < 2 r_max: further images exist
    all_images = TorchScriptEquivar(ToyPublished(N_RADIAL), num_radial=N_RADIAL)
    single = TorchScriptEquivar(
        ToyPublished(N_RADIAL), num_radial=N_RADIAL, neighbors="minimum_image"
    )
    n_all = all_images.build_inputs(small)["edge_index"].shape[1]
    n_single = single.build_inputs(small)["edge_index"].shape[1]
    assert n_single < n_all
    with pytest.raises(ValueError):
        TorchScriptEquivar(ToyPublished(N_RADIAL), neighbors="some")


# ---------------------------------------------------------------------------
# cell gradient, the conservative calculator, rotations and permutations
# ---------------------------------------------------------------------------


def _adapter(path, **kwargs):
    """The adapter as the tests above build it (float64 for finite differences)."""
    kwargs = {"trust": True, "num_radial": N_RADIAL, "dtype": "float64", **kwargs}
    return TorchScriptEquivar.load(path, **kwargs)


def test_torch_level_cell_gradient_matches_finite_differences(scripted_file, atoms):
    """d(Σ W·Z*)/d(cell) at fixed Cartesian positions (edge vectors R_j − R_i + n·h depend
    on the cell through the image shifts) against central differences of all 9 entries."""
    model = _adapter(scripted_file)
    weights = np.random.default_rng(0).normal(size=(len(atoms), 3, 3))
    pos = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, requires_grad=True)
    z = model.get_born_charges_torch(atoms, pos, cell)
    _, grad = torch.autograd.grad((z * torch.tensor(weights)).sum(), (pos, cell), allow_unused=True)
    grad = torch.zeros((3, 3), dtype=torch.float64) if grad is None else grad  # cell not in graph
    h = 1e-6
    fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            vals = []
            for sign in (1, -1):
                probe = atoms.copy()
                c = atoms.cell.array.copy()
                c[i, j] += sign * h
                probe.set_cell(c, scale_atoms=False)
                vals.append(np.sum(weights * model.get_born_charges(probe)))
            fd[i, j] = (vals[0] - vals[1]) / (2 * h)
    assert np.abs(fd).max() > 1e-2  # the small cell has many image edges
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5, atol=1e-7)


def test_conservative_calculator_with_adapter_matches_finite_differences(scripted_file, atoms):
    """The adapter as the Born model of BornFieldCalculator(mode="conservative"): forces
    and stress are exact gradients of the field enthalpy (all of dZ*/dR and dZ*/dε)."""
    from ase_born import BornFieldCalculator
    from ase_born.testing import SpringsToSites, assert_forces_match_fd, assert_stress_matches_fd

    ref = _perovskite()
    atoms.calc = BornFieldCalculator(
        SpringsToSites(ref, 5.0), _adapter(scripted_file), field=[0.04, -0.07, 0.05],
        reference=ref, mode="conservative",
    )
    corr = atoms.calc.get_property("field_force_correction", atoms)
    assert np.abs(corr).max() > 1e-3  # Z* really depends on positions here
    assert np.abs(atoms.calc.get_property("field_stress", atoms)).max() > 1e-4
    assert_forces_match_fd(atoms, rtol=1e-6)
    assert_stress_matches_fd(atoms, rtol=1e-6)


@pytest.mark.parametrize("asr", [False, True])
def test_adapter_rotation_and_permutation_equivariance(scripted_file, atoms, asr):
    """Z*(R·x) = R Z*(x) Rᵀ (numpy and torch levels) and permuting atoms permutes Z*."""
    from ase_born.testing import (
        assert_born_equivariant,
        assert_born_permutation_equivariant,
        random_rotation,
    )

    model = _adapter(scripted_file, asr=asr)
    z = model.get_born_charges(atoms)
    assert np.abs(z - z.transpose(0, 2, 1)).max() > 1e-4  # non-symmetric: tests the index order
    for seed in (1, 2):
        assert assert_born_equivariant(model, atoms, random_rotation(seed), atol=1e-10) < 1e-10
    assert assert_born_permutation_equivariant(model, atoms, seed=3, atol=1e-12) < 1e-12


def test_structure_without_edges():
    """No atom within r_max of another: empty edge attributes of the published width, and
    the toy model's Z* (all edge sums zero) come out as zeros, not a reshape error."""
    far = Atoms("TiO", positions=[[0.0, 0.0, 0.0], [3.0 * R_MAX, 0.0, 0.0]], pbc=False)
    model = TorchScriptEquivar(ToyPublished(N_RADIAL), num_radial=N_RADIAL, dtype="float64")
    inputs = model.build_inputs(far)
    assert inputs["edge_index"].shape == (2, 0)
    assert inputs["edge_attr"].shape == (0, 9 * N_RADIAL)
    np.testing.assert_array_equal(model.get_born_charges(far), np.zeros((2, 3, 3)))
