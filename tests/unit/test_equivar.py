"""The Equivar network (ase_born.models.equivar)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from ase_born import physics
from ase_born.models._e3nn import e3nn_io, o3
from ase_born.models.benchmark import catio3_pnma
from ase_born.models.equivar import (
    BM1,
    BM2,
    TP_PATHS,
    ChannelwiseTensorProduct,
    Equivar,
    EquivarConfig,
    acoustic_sum,
    asr_violation,
    irreps_to_cartesian_matrix,
    paper_parameter_count,
    stock_uvu_tensor_product,
)
from ase_born.models.graph import GraphBatch, batch_from_atoms, build_graph, collate

pytestmark = pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Many tiny ops: on a shared 2-core box, torch's 2 OpenMP threads wait for each other
    and run 5-20x slower than one thread. Scoped to this module and restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# SI Table S1: (embedding_dim, num_rad, int_num_feat, edge_sh_lmax, num_interactions, model_size),
# the 20 distinct rows
TABLE_S1 = [
    (8, 32, 32, 2, 6, 136737),
    (16, 32, 32, 2, 6, 137793),
    (32, 32, 32, 2, 6, 139905),
    (64, 32, 32, 2, 6, 144129),
    (128, 32, 32, 2, 6, 152577),
    (32, 8, 32, 2, 6, 126081),
    (32, 16, 32, 2, 6, 130689),
    (32, 64, 32, 2, 6, 158337),
    (32, 128, 32, 2, 6, 195201),
    (32, 32, 8, 2, 6, 15489),
    (32, 32, 16, 2, 6, 42369),
    (32, 32, 64, 2, 6, 510081),
    (32, 32, 128, 2, 6, 1950849),
    (32, 32, 32, 4, 6, 139905),
    (32, 32, 32, 2, 4, 94721),
    (32, 32, 32, 2, 8, 185089),
    (32, 32, 32, 2, 10, 230273),
    (32, 32, 32, 2, 12, 275457),
    (32, 32, 32, 2, 14, 320641),
    (32, 32, 32, 2, 16, 365825),
]

SMALL = EquivarConfig(embedding_dim=6, num_radial=5, int_num_feat=4, num_interactions=3)


def randomized(config: EquivarConfig, seed: int = 0, dtype: str = "float64") -> Equivar:
    """A model with ALL parameters (biases included) random, so every term is exercised."""
    torch.manual_seed(seed)
    model = Equivar(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.7)
    return model


def rattled_catio3(seed: int = 0) -> Atoms:
    atoms = catio3_pnma()
    atoms.rattle(0.08, seed=seed)
    return atoms


def predict(model: Equivar, atoms: Atoms, *, raw: bool = False) -> np.ndarray:
    g = batch_from_atoms(atoms, model.r_max, model.r_min, dtype=model.dtype)
    with torch.no_grad():
        z, z_raw = model.forward_graph(g, return_raw=True)
    return (z_raw if raw else z).numpy()


# --------------------------------------------------------------------------- parameter counts
def test_table_s1_has_20_distinct_rows():
    assert len({row[:5] for row in TABLE_S1}) == 20


@pytest.mark.parametrize("E, n, F, lmax, L, size", TABLE_S1)
def test_table_s1_parameter_count(E, n, F, lmax, L, size):
    cfg = EquivarConfig(
        embedding_dim=E, num_radial=n, int_num_feat=F, edge_sh_lmax=lmax, num_interactions=L
    )
    model = Equivar(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == size
    assert model.num_parameters() == size
    assert paper_parameter_count(cfg) == size


def test_presets():
    assert Equivar(BM1).num_parameters() == 510081
    assert Equivar("BM2").num_parameters() == 139905
    assert Equivar.from_config("bm1").config == BM1


def test_stock_e3nn_modules_have_exactly_the_counted_weights():
    """3nF edge-linear weights even with lmax 4 (l = 3, 4 have no path) and 19F² TP weights."""
    n, F = 3, 2
    lin = o3.Linear(
        f"{n}x0e+{n}x1o+{n}x2e+{n}x3o+{n}x4e",
        f"{F}x0e+{F}x1o+{F}x2e",
        biases=True,
        internal_weights=False,
        shared_weights=True,
    )
    assert lin.weight_numel == 3 * n * F and lin.bias_numel == F
    tp = stock_uvu_tensor_product(F)
    assert tp.weight_numel == 19 * F * F
    assert len(TP_PATHS) == 19
    out = sorted(str(tp.irreps_out[ins.i_out].ir) for ins in tp.instructions)
    assert sorted(set(out)) == sorted(["0e", "1o", "2e", "1e", "2o", "3o", "3e", "4e"])


# --------------------------------------------------------------------------- fast == e3nn
def test_channelwise_tensor_product_matches_stock_e3nn_float64():
    F = 3
    torch.manual_seed(1)
    fast = ChannelwiseTensorProduct(F, dtype="float64")
    stock = stock_uvu_tensor_product(F, dtype="float64")
    x1 = torch.randn(7, 9 * F, dtype=torch.float64)
    x2 = torch.randn(7, 9 * F, dtype=torch.float64)
    w = torch.randn(stock.weight_numel, dtype=torch.float64)
    ref = stock(x1, x2, w)
    assert ref.shape == (7, 40 * F)
    torch.testing.assert_close(fast(x1, x2, w), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"edge_sh_lmax": 4, "cutoff_envelope": "polynomial"},
        {"radial_basis": "bessel", "avg_num_neighbors": 5.0, "num_interactions": 1},
    ],
)
def test_model_fast_matches_e3nn_reference_with_same_state_dict(overrides):
    cfg = dataclasses.replace(SMALL, **overrides)
    fast = randomized(cfg, seed=2)
    ref = Equivar(cfg, tp_impl="e3nn", dtype="float64")
    ref.load_state_dict(fast.state_dict(), strict=True)
    atoms = [rattled_catio3(1), bulk("NaCl", "rocksalt", a=4.0)]
    g = batch_from_atoms(atoms, dtype="float64")
    with torch.no_grad():
        z_fast, raw_fast = fast.forward_graph(g, return_raw=True)
        z_ref, raw_ref = ref.forward_graph(g, return_raw=True)
    assert raw_fast.abs().max() > 0.1  # non-trivial output
    torch.testing.assert_close(raw_fast, raw_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(z_fast, z_ref, atol=1e-10, rtol=0)
    # the e3nn modules are not part of the module tree / state dict, nor of copies
    assert set(ref.state_dict()) == set(fast.state_dict())
    assert copy.deepcopy(ref)._e3nn_cache == {}


def _compiled_vs_fast(with_grad: bool):
    """Z* (and dΣZ²/dR) of tp_impl="compiled" vs "fast", same weights (two cell sizes
    without gradients: a new edge count must not change the result)."""
    model = randomized(SMALL, seed=5)
    structures = [rattled_catio3(3)] + ([] if with_grad else [rattled_catio3(4).repeat((2, 1, 1))])
    for atoms in structures:
        g = batch_from_atoms(atoms, dtype="float64")
        out = {}
        for impl in ("fast", "compiled"):
            model.tp_impl = impl
            pos = g.positions.clone().requires_grad_(with_grad)
            with torch.set_grad_enabled(with_grad):
                z = model(pos, g.numbers, g.edge_index, g.shifts, g.cell, g.batch, 1)
                grad = torch.autograd.grad((z**2).sum(), pos)[0] if with_grad else None
            out[impl] = (z.detach(), grad)
        assert out["fast"][0].abs().max() > 0.1
        torch.testing.assert_close(out["compiled"][0], out["fast"][0], atol=1e-10, rtol=0)
        if with_grad:
            torch.testing.assert_close(out["compiled"][1], out["fast"][1], atol=1e-10, rtol=0)
    # the compiled function is a cache: never pickled or deep-copied
    assert model._compiled_fast is not None and copy.deepcopy(model)._compiled_fast is None


def test_compiled_tp_impl_matches_fast_no_grad():
    """torch.compile of the fast path (~1 min of compilation on 2 cores)."""
    _compiled_vs_fast(with_grad=False)


@pytest.mark.slow
def test_compiled_tp_impl_matches_fast_with_position_gradient():
    _compiled_vs_fast(with_grad=True)


# --------------------------------------------------------------------------- Cartesian map
def test_cartesian_matrix_is_e3nn_cartesian_tensor_and_equivariant():
    m = irreps_to_cartesian_matrix(torch.float64)
    torch.testing.assert_close(m @ m.T, torch.eye(9, dtype=torch.float64), atol=1e-14, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = e3nn_io.CartesianTensor("ij")
    assert str(ct) == "1x0e+1x1e+1x2e"
    perm = [0, 6, 7, 8, 1, 2, 3, 4, 5]  # 0e+2e+1e -> 0e+1e+2e
    torch.manual_seed(3)
    o = torch.randn(9, dtype=torch.float64)
    torch.testing.assert_close(
        (m @ o).reshape(3, 3),
        ct.to_cartesian(o[perm]),
        atol=1e-6,
        rtol=0,  # e3nn: float32 basis
    )
    rot = o3.rand_matrix(dtype=torch.float64)
    d = o3.Irreps("0e+2e+1e").D_from_matrix(rot)
    torch.testing.assert_close(
        (m @ (d @ o)).reshape(3, 3), rot @ (m @ o).reshape(3, 3) @ rot.T, atol=1e-12, rtol=0
    )


# --------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_rotation_and_inversion_equivariance(dtype, tol):
    model = randomized(dataclasses.replace(SMALL, int_num_feat=5), seed=4, dtype=dtype)
    atoms = rattled_catio3(2)
    z = predict(model, atoms, raw=True)
    assert np.abs(z).max() > 0.1
    assert np.abs(z - z.transpose(0, 2, 1)).max() > 1e-3  # antisymmetric (1e) part present
    torch.manual_seed(5)
    for improper in (False, True):
        rot = o3.rand_matrix(dtype=torch.float64).numpy()
        if improper:
            rot = -rot
        moved = atoms.copy()
        moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
        moved.positions = atoms.positions @ rot.T
        z_rot = predict(model, moved, raw=True)
        expected = np.einsum("ab,kbc,dc->kad", rot, z, rot)
        np.testing.assert_allclose(z_rot, expected, atol=tol, rtol=0)


def test_translation_wrapping_and_permutation_invariance():
    model = randomized(SMALL, seed=6)
    atoms = rattled_catio3(3)
    z = predict(model, atoms, raw=True)
    moved = atoms.copy()
    moved.positions += np.array([0.37, -1.21, 2.9])
    moved.positions[3] += 2 * atoms.cell[1] - atoms.cell[2]  # unwrapped atom
    np.testing.assert_allclose(predict(model, moved, raw=True), z, atol=1e-10)
    perm = np.random.default_rng(0).permutation(len(atoms))
    np.testing.assert_allclose(predict(model, atoms[perm], raw=True), z[perm], atol=1e-10)


@pytest.mark.parametrize("asr", [False, True])
def test_supercell_consistency(asr):
    model = randomized(SMALL, seed=7)
    model.asr = asr
    atoms = rattled_catio3(4)
    z = predict(model, atoms)
    sc = atoms.repeat((2, 2, 2))  # ase repeat: the 8 images of atom k follow each other per image
    np.testing.assert_allclose(predict(model, sc), np.tile(z, (8, 1, 1)), atol=1e-10)


def _brute_force_graph(atoms: Atoms, r_max: float, r_min: float) -> GraphBatch:
    """GraphBatch from an explicit sum over lattice translations (no neighbour-list code)."""
    cell, pos = atoms.cell.array, atoms.positions
    m = 4
    edges, shifts = [], []
    for s in itertools.product(range(-m, m + 1), repeat=3):
        vec = pos[None, :, :] - pos[:, None, :] + np.array(s) @ cell
        d = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero((d > r_min) & (d < r_max))):
            edges.append((j, i))
            shifts.append(s)
    g = build_graph(atoms, r_max, r_min)
    g = dataclasses.replace(
        g, edge_index=np.array(edges, dtype=np.int64).T, shifts=np.array(shifts, dtype=float)
    )
    return collate([g], dtype="float64")


def test_small_cell_matches_brute_force_images_and_supercell():
    """A cell shorter than r_max: many images of every neighbour (and of the atom itself)."""
    model = randomized(SMALL, seed=8)
    atoms = bulk("NaCl", "rocksalt", a=4.1)  # primitive vectors 2.9 Å < r_max
    atoms.rattle(0.1, seed=1)
    z = predict(model, atoms, raw=True)
    g = _brute_force_graph(atoms, model.r_max, model.r_min)
    assert g.n_edges > 2 * 12
    with torch.no_grad():
        _, z_bf = model.forward_graph(g, return_raw=True)
    np.testing.assert_allclose(z, z_bf.numpy(), atol=1e-10)
    sc = atoms.repeat((3, 3, 3))
    np.testing.assert_allclose(predict(model, sc, raw=True), np.tile(z, (27, 1, 1)), atol=1e-10)


# --------------------------------------------------------------------------- ASR and batching
def test_asr_and_batch_consistency():
    model = randomized(SMALL, seed=9)
    structures = [rattled_catio3(5), bulk("NaCl", "rocksalt", a=4.0) * (2, 1, 1)]
    structures[1].rattle(0.05, seed=2)
    g = batch_from_atoms(structures, dtype="float64")
    with torch.no_grad():
        z, z_raw = model.forward_graph(g, return_raw=True)
    sums = acoustic_sum(z, g.batch, g.n_structures)
    assert sums.shape == (2, 3, 3) and sums.abs().max() < 1e-12
    raw_sums = acoustic_sum(z_raw, g.batch, g.n_structures)
    assert raw_sums.abs().max() > 1e-3
    violation = asr_violation(z_raw, g.batch, g.n_structures)
    torch.testing.assert_close(violation, raw_sums.abs().mean(dim=(1, 2)))
    n0 = int(g.ptr[1])
    assert violation[0].item() == pytest.approx(physics.asr_violation(z_raw[:n0].numpy()))
    counts = torch.bincount(g.batch).double()
    torch.testing.assert_close(
        z, z_raw - (raw_sums / counts[:, None, None])[g.batch], atol=1e-12, rtol=0
    )
    # batched == one by one
    offsets = g.ptr.tolist()
    for s, atoms in enumerate(structures):
        np.testing.assert_allclose(
            predict(model, atoms), z[offsets[s] : offsets[s + 1]].numpy(), atol=1e-10
        )
    model.asr = False
    with torch.no_grad():
        torch.testing.assert_close(model.forward_graph(g), z_raw)
    assert model.config.asr is False


def test_float32_matches_float64():
    m64 = randomized(SMALL, seed=10)
    m32 = Equivar(SMALL, dtype="float32")
    m32.load_state_dict(m64.state_dict())
    atoms = rattled_catio3(6)
    np.testing.assert_allclose(predict(m32, atoms), predict(m64, atoms), atol=1e-4)


def test_smooth_envelope_removes_cutoff_jump():
    def pair(r):
        return Atoms("TiO", positions=[[0, 0, 0], [r, 0, 0]])

    eps = 1e-6
    for envelope, jumps in (("none", True), ("polynomial", False)):
        model = randomized(dataclasses.replace(SMALL, cutoff_envelope=envelope), seed=11)
        model.asr = False
        inside, outside = predict(model, pair(3.0 - eps)), predict(model, pair(3.0 + eps))
        gap = np.abs(inside - outside).max()
        assert (gap > 1e-3) if jumps else (gap < 1e-8)


def test_position_gradient_through_forward():
    model = randomized(SMALL, seed=12)
    atoms = rattled_catio3(7)
    g = batch_from_atoms(atoms, dtype="float64")
    pos = g.positions.clone().requires_grad_(True)
    cell = g.cell.clone().requires_grad_(True)
    z = model(pos, g.numbers, g.edge_index, g.shifts, cell, g.batch, 1)
    (z * torch.randn_like(z)).sum().backward()
    assert pos.grad is not None and pos.grad.abs().max() > 0
    assert cell.grad is not None and cell.grad.abs().max() > 0


# --------------------------------------------------------------------------- config
def test_config_validation_and_dict_round_trip():
    assert EquivarConfig.from_dict(BM2.to_dict()) == BM2
    with pytest.raises(ValueError, match="edge_sh_lmax"):
        EquivarConfig(edge_sh_lmax=1)
    with pytest.raises(ValueError, match="radial_basis"):
        EquivarConfig(radial_basis="chebyshev")
    with pytest.raises(ValueError, match="unknown"):
        EquivarConfig.from_dict({"embedding_dim": 8, "bogus": 1})
    with pytest.raises(ValueError, match="preset"):
        Equivar("BM3")
    with pytest.raises(ValueError, match="tp_impl"):
        Equivar(SMALL, tp_impl="cuda")
    model = Equivar.from_config(SMALL.to_dict(), dtype="float64")
    assert model.config == SMALL and model.dtype == torch.float64


# --------------------------------------------------------------------------- serialization
def test_save_load_round_trip_weights_only(tmp_path):
    model = randomized(SMALL, seed=13)
    model.asr = False
    path = tmp_path / "model.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)  # plain tensors + containers only
    assert payload["config"] == model.config.to_dict()
    assert {"ase_born", "torch", "e3nn"} <= set(payload["versions"])
    loaded = Equivar.load(path)
    assert loaded.config == model.config and loaded.dtype == torch.float64
    atoms = rattled_catio3(8)
    np.testing.assert_array_equal(predict(loaded, atoms), predict(model, atoms))
    as32 = Equivar.load(path, dtype="float32")
    assert as32.dtype == torch.float32


class _Marker:
    """Unpickling this object creates a file: stands for arbitrary code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.path,))


def test_load_refuses_untrusted_pickles(tmp_path):
    model = randomized(SMALL, seed=14)
    whole = tmp_path / "whole_module.pt"
    torch.save(model, whole)
    with pytest.raises(pickle.UnpicklingError, match="trust=True"):
        Equivar.load(whole)
    trusted = Equivar.load(whole, trust=True)
    atoms = rattled_catio3(9)
    np.testing.assert_array_equal(predict(trusted, atoms), predict(model, atoms))

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ase_born.equivar", "payload": _Marker(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        Equivar.load(evil)
    assert not marker.exists()


def test_structure_without_edges_on_every_implementation():
    """Atoms farther apart than r_max: no edges at all (an isolated atom, a dilute gas). The
    Z* come from the node embeddings alone, the same on the fast and e3nn paths (the e3nn
    path's edge attributes once failed with reshape(0, -1))."""
    cfg = dataclasses.replace(SMALL, cutoff_envelope="polynomial")
    fast = randomized(cfg, seed=4)
    ref = Equivar(cfg, tp_impl="e3nn", dtype="float64")
    ref.load_state_dict(fast.state_dict(), strict=True)
    far = Atoms("TiO", positions=[[0.0, 0.0, 0.0], [2.0 * cfg.r_max, 0.0, 0.0]], pbc=False)
    g = batch_from_atoms([far], dtype="float64")
    assert g.edge_index.shape[1] == 0
    with torch.no_grad():
        z_fast, raw_fast = fast.forward_graph(g, return_raw=True)
        z_ref, raw_ref = ref.forward_graph(g, return_raw=True)
    assert z_fast.shape == (2, 3, 3) and torch.isfinite(z_fast).all()
    torch.testing.assert_close(raw_fast, raw_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(z_fast, z_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", ["fast", "e3nn"])
def test_atomic_numbers_outside_the_embedding_table_are_refused(impl):
    model = randomized(SMALL, seed=6)
    model.tp_impl = impl
    n_species = model.config.num_species
    for bad in (0, n_species):
        g = batch_from_atoms([Atoms("TiO", positions=[[0, 0, 0], [1.9, 0, 0]], pbc=False)], dtype="float64")
        g.numbers[1] = bad
        with pytest.raises(ValueError, match=rf"atomic numbers \[{bad}\] are outside the model's embedding table"):
            model.forward_graph(g)


def test_graph_built_with_other_cutoffs_is_refused():
    """A batch records the cutoffs it was built with; the network refuses other ones (a 3 Å
    graph given to a 4 Å model would silently miss every edge between 3 and 4 Å)."""
    cfg = dataclasses.replace(SMALL, r_max=4.0, cutoff_envelope="polynomial")
    model = randomized(cfg, seed=5)
    atoms = rattled_catio3(seed=5)
    own = batch_from_atoms(atoms, model.r_max, model.r_min, dtype="float64")
    assert (own.r_max, own.r_min) == (4.0, cfg.r_min)
    short = batch_from_atoms(atoms, dtype="float64")  # the 3 Å default
    long_ = batch_from_atoms(atoms, 5.0, model.r_min, dtype="float64")
    assert short.n_edges < own.n_edges < long_.n_edges
    with torch.no_grad():
        z_own = model.forward_graph(own)
        for bad, name in ((short, "r_max = 3 "), (long_, "r_max = 5 ")):
            with pytest.raises(ValueError, match=name):
                model.forward_graph(bad)
        with pytest.raises(ValueError, match="r_min"):
            model.forward_graph(batch_from_atoms(atoms, model.r_max, 0.05, dtype="float64"))
        # a batch made by hand (cutoffs unknown) is taken as it is
        unknown = dataclasses.replace(own, r_max=None, r_min=None)
        torch.testing.assert_close(model.forward_graph(unknown), z_own, atol=0, rtol=0)
        # ... and so is one whose extra edges all lie beyond r_max with a smooth envelope
        z_long = model(
            long_.positions, long_.numbers, long_.edge_index, long_.shifts, long_.cell
        )
    torch.testing.assert_close(z_long, z_own, atol=1e-12, rtol=0)
