"""EquivarCalculator: ASE calculator + Born-charge model (ase_born.calculators.equivar)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk

from ase_born.calculators.base import BornChargeModel
from ase_born.conventions import KEY_ACOUSTIC_SUM, KEY_ASR_VIOLATION, KEY_BORN
from ase_born.models.benchmark import catio3_pnma
from ase_born.models.equivar import Equivar, EquivarConfig
from ase_born.models.graph import build_graph, collate

SMALL = EquivarConfig(embedding_dim=6, num_radial=5, int_num_feat=4, num_interactions=2)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Many tiny ops: on a shared 2-core box, torch's 2 OpenMP threads wait for each other
    and run 5-20x slower than one thread. Scoped to this module and restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> Equivar:
    torch.manual_seed(0)
    m = Equivar(SMALL, dtype="float64")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.7)
    return m


@pytest.fixture()
def atoms():
    a = catio3_pnma()
    a.rattle(0.08, seed=1)
    return a


def test_imports_from_models_package():
    from ase_born.models import Equivar as E
    from ase_born.models import EquivarCalculator as C

    assert E is Equivar
    assert issubclass(C, BornChargeModel)


def test_ase_properties_and_asr_switch(model, atoms):
    from ase_born.calculators.equivar import EquivarCalculator

    calc = EquivarCalculator(model)
    assert isinstance(calc, BornChargeModel) and calc.supports_torch
    atoms.calc = calc
    z = calc.get_property(KEY_BORN, atoms)
    assert z.shape == (len(atoms), 3, 3) and z.dtype == np.float64
    np.testing.assert_allclose(z.sum(axis=0), 0.0, atol=1e-12)
    total = calc.get_property(KEY_ACOUSTIC_SUM, atoms)
    assert total.shape == (3, 3) and np.abs(total).max() > 1e-3
    assert calc.get_property(KEY_ASR_VIOLATION, atoms) == pytest.approx(np.abs(total).mean())
    assert calc.get_asr_violation(atoms) == pytest.approx(np.abs(total).mean())
    np.testing.assert_array_equal(calc.get_born_charges(atoms), z)

    calc.set(asr=False)  # a parameter change clears the cache
    assert calc.results == {}
    raw = calc.get_born_charges(atoms)
    np.testing.assert_allclose(raw.sum(axis=0), total, atol=1e-12)
    np.testing.assert_allclose(calc.get_acoustic_sum(atoms), total, atol=1e-12)
    np.testing.assert_allclose(raw - raw.mean(axis=0), z, atol=1e-12)
    # a moved atom is recomputed, not served from the cache
    atoms.positions[0] += 0.05
    assert np.abs(calc.get_born_charges(atoms) - raw).max() > 1e-6


def test_asr_default_is_the_models_own_switch(model, atoms, tmp_path):
    """A model saved with asr=False gives its raw Z* through the calculator, as forward_graph
    does; an explicit asr overrides it; a non-bool asr is refused (a quoted "false" is truthy)."""
    from ase_born.calculators.equivar import EquivarCalculator

    raw_model = model.converted()
    raw_model.asr = False
    path = tmp_path / "raw.pt"
    raw_model.save(path)
    g = collate([build_graph(atoms, model.r_max, model.r_min)], dtype=torch.float64)
    with torch.no_grad():
        z_net = raw_model.forward_graph(g).numpy()
    assert np.abs(z_net.sum(axis=0)).max() > 1e-3  # the raw output violates the sum rule
    for source in (raw_model, path):
        calc = EquivarCalculator(source)
        assert calc.asr is False and calc.parameters["asr"] is False
        np.testing.assert_allclose(calc.get_born_charges(atoms), z_net, atol=1e-12)
    forced = EquivarCalculator(path, asr=True).get_born_charges(atoms)
    np.testing.assert_allclose(forced.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(forced, z_net - z_net.mean(axis=0), atol=1e-12)
    assert EquivarCalculator(model).asr is True  # the default model switch
    for bad in ("false", 1, None):
        with pytest.raises(TypeError, match="asr must be a bool"):
            EquivarCalculator(model).set(asr=bad)
    with pytest.raises(TypeError, match="asr must be a bool"):
        EquivarCalculator(model, asr="false")


def test_model_object_or_path_and_no_mutation_of_callers_model(model, atoms, tmp_path):
    from ase_born.calculators.equivar import EquivarCalculator

    path = tmp_path / "m.pt"
    model.save(path)
    z_obj = EquivarCalculator(model).get_born_charges(atoms)
    z_path = EquivarCalculator(path).get_born_charges(atoms)
    np.testing.assert_array_equal(z_obj, z_path)
    calc32 = EquivarCalculator(model, dtype="float32")
    assert model.dtype == torch.float64 and calc32.model.dtype == torch.float32
    np.testing.assert_allclose(calc32.get_born_charges(atoms), z_obj, atol=1e-4)
    json.dumps(calc32.todict())
    with pytest.raises(TypeError):
        EquivarCalculator(object())


def test_predict_many_matches_single_calls(model):
    from ase_born.calculators.equivar import EquivarCalculator

    calc = EquivarCalculator(model)
    structures = [
        catio3_pnma(),
        bulk("NaCl", "rocksalt", a=4.0),
        bulk("MgO", "rocksalt", a=4.2) * 2,
    ]
    for k, s in enumerate(structures):
        s.rattle(0.05, seed=k)
    many = calc.predict_many(structures, batch_size=2)
    for s, z in zip(structures, many):
        np.testing.assert_allclose(z, calc.get_born_charges(s), atol=1e-11)
        np.testing.assert_allclose(z.sum(0), 0.0, atol=1e-12)


def test_rejects_atomic_numbers_outside_embedding(model):
    from ase.build import molecule

    from ase_born.calculators.equivar import EquivarCalculator

    mol = molecule("H2O")
    mol.numbers[0] = 100
    with pytest.raises(ValueError, match="100"):
        EquivarCalculator(model).get_born_charges(mol)


def _min_cutoff_margin(atoms, r_max, r_min):
    g = build_graph(atoms, r_max=r_max + 0.05, r_min=0.0)
    vec = g.positions[g.edge_index[0]] - g.positions[g.edge_index[1]] + g.shifts @ g.cell
    d = np.linalg.norm(vec, axis=1)
    return min(np.abs(d - r_max).min(), np.abs(d - r_min).min())


def test_torch_level_gradients_match_finite_differences(model, atoms):
    """d(Σ w·Z*)/dR and /d(cell) by autograd vs central differences of get_born_charges."""
    from ase_born.calculators.equivar import EquivarCalculator

    calc = EquivarCalculator(model)
    h = 1e-5
    assert _min_cutoff_margin(atoms, model.r_max, model.r_min) > 10 * h
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(len(atoms), 3, 3))
    pos = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64, requires_grad=True)
    z = calc.get_born_charges_torch(atoms, pos, cell)
    assert z.dtype == torch.float64 and z.shape == (len(atoms), 3, 3)
    np.testing.assert_allclose(z.detach().numpy(), calc.get_born_charges(atoms), atol=1e-12)
    (z * torch.as_tensor(weights)).sum().backward()

    def objective(a):
        return float((calc.get_born_charges(a) * weights).sum())

    for k, c in [(0, 0), (3, 1), (7, 2), (12, 0), (19, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[k, c] += h
        minus.positions[k, c] -= h
        fd = (objective(plus) - objective(minus)) / (2 * h)
        assert pos.grad[k, c].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)
    for r, c in [(0, 0), (1, 1), (2, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        cp, cm = atoms.cell.array.copy(), atoms.cell.array.copy()
        cp[r, c] += h
        cm[r, c] -= h
        plus.set_cell(cp, scale_atoms=False)
        minus.set_cell(cm, scale_atoms=False)
        fd = (objective(plus) - objective(minus)) / (2 * h)
        assert cell.grad[r, c].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_float32_model_converted_to_float64_is_exactly_equivariant(model, atoms):
    """A float32 model used in float64 gets its constant buffers (Clebsch-Gordan, Cartesian
    map) rebuilt in float64: same numbers as a model built natively in float64 from the same
    weights (``.to(float64)`` would keep their float32 rounding, ~1e-8 e)."""
    from ase_born.calculators.equivar import EquivarCalculator

    m32 = model.converted(dtype="float32")
    calc = EquivarCalculator(m32, dtype="float64")
    native = Equivar(model.config, dtype="float64")
    native.load_state_dict(calc.model.state_dict())
    for name, buf in native.named_buffers():
        assert torch.equal(buf, dict(calc.model.named_buffers())[name]), name
    z = calc.get_born_charges(atoms)
    np.testing.assert_array_equal(z, EquivarCalculator(native).get_born_charges(atoms))
    rot = -np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]  # improper
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    moved.positions = atoms.positions @ rot.T
    expected = np.einsum("ab,kbc,dc->kad", rot, z, rot)
    np.testing.assert_allclose(calc.get_born_charges(moved), expected, atol=1e-12, rtol=0)
    assert m32.dtype == torch.float32  # the caller's model untouched


def test_calculator_leaves_the_callers_model_alone(model, atoms):
    """Neither the tensor-product implementation nor the train/eval mode of a model object
    passed in changes; a model that already matches is shared."""
    from ase_born.calculators.equivar import EquivarCalculator

    m = model.converted(tp_impl="e3nn")
    m.train()
    calc = EquivarCalculator(m, tp_impl="fast")
    assert m.tp_impl == "e3nn" and m.training
    assert calc.model.tp_impl == "fast" and not calc.model.training
    np.testing.assert_allclose(calc.get_born_charges(atoms), EquivarCalculator(model).get_born_charges(atoms),
                               atol=1e-10)
    m.eval()
    assert EquivarCalculator(m).model is m  # same device, dtype, tp_impl (its own) and eval
    n_species = model.config.num_species  # one past the table's last row
    g = collate([build_graph(atoms, model.r_max, model.r_min)], dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"atomic numbers \[{n_species}\] are outside"):
        m.forward(g.positions, torch.full_like(g.numbers, n_species), g.edge_index, g.shifts, g.cell)


def test_trained_elements_are_saved_and_warned_about(model, atoms, tmp_path):
    """``elements`` travels through save/load; a structure with another element gets one
    warning per new element naming both; a model without elements never warns."""
    import warnings

    from ase_born.calculators.equivar import EquivarCalculator

    m = model.converted()
    m.elements = (8, 20, 22)
    m.save(tmp_path / "m.pt")
    calc = EquivarCalculator(tmp_path / "m.pt")
    assert calc.model.elements == (8, 20, 22)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calc.get_born_charges(atoms)  # CaTiO3: no warning
    ba = atoms.copy()
    ba.numbers[ba.numbers == 20] = 56
    with pytest.warns(UserWarning, match=r"trained on \['O', 'Ca', 'Ti'\] only.*\['Ba'\]"):
        calc.get_born_charges(ba)
    ba.positions[0, 0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calc.get_born_charges(ba)  # warned once per element
        model.save(tmp_path / "plain.pt")
        EquivarCalculator(tmp_path / "plain.pt").get_born_charges(ba)  # unknown elements: silent


def test_bare_cuda_is_the_current_gpu(monkeypatch):
    """A GPU model sits on cuda:0 and torch.device("cuda") != torch.device("cuda:0"): a bare
    "cuda" request made EquivarCalculator copy a model already there (helper's review)."""
    import torch

    from ase_born.models.utils import DeviceUnavailableError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda:0") == resolve_device("cuda:0")
    with pytest.raises(DeviceUnavailableError, match="has 1 GPU"):
        resolve_device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")

