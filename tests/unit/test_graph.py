"""Neighbour lists and batching (ase_born.models.graph)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ase_born.models.graph import (
    batch_from_atoms,
    build_graph,
    collate,
    edge_vectors,
    minimum_image_edges_baseline,
    neighbor_list,
)


def brute_force_edges(positions, cell, pbc, r_max, r_min=0.1):
    """All (j, i, shift) with r_min < |r_j - r_i + shift @ cell| < r_max, by an explicit
    sum over lattice translations large enough to contain the cutoff sphere."""
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    full = np.array(cell, float)
    for k in range(3):  # give zero (vacuum) vectors a direction, only to measure heights
        if np.linalg.norm(full[k]) == 0:
            full[k] = np.cross(full[(k + 1) % 3], full[(k + 2) % 3])
    ranges = []
    for k in range(3):
        if pbc[k]:
            # distance between lattice planes of direction k
            normal = np.cross(full[(k + 1) % 3], full[(k + 2) % 3])
            height = abs(np.dot(cell[k], normal)) / np.linalg.norm(normal)
            extent = positions @ normal / np.linalg.norm(normal)
            span = extent.max() - extent.min()
            m = int(np.ceil((r_max + span) / height)) + 1
            ranges.append(range(-m, m + 1))
        else:
            ranges.append(range(1))
    out = set()
    for shift in itertools.product(*ranges):
        s = np.array(shift, float)
        vec = positions[None, :, :] - positions[:, None, :] + s @ cell  # [i, j]
        d = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero((d > r_min) & (d < r_max))):
            out.add((int(j), int(i), shift))
    return out


def as_set(edge_index, shifts):
    return {(int(j), int(i), tuple(round(v) for v in s)) for (j, i), s in zip(edge_index.T, shifts)}


SMALL_CELLS = [
    # (cell, n_atoms, pbc) -- cells shorter than 2 r_max = 6 Å, some shorter than r_max
    (np.diag([2.1, 2.4, 2.9]), 2, True),
    (np.array([[2.5, 0.0, 0.0], [1.1, 2.3, 0.0], [0.7, -0.9, 2.2]]), 3, True),  # triclinic
    (np.array([[4.0, 0.0, 0.0], [3.5, 1.2, 0.0], [0.0, 0.0, 5.0]]), 2, True),  # very skewed
    (np.diag([1.3, 7.0, 2.0]), 1, True),  # one atom sees only itself
    (np.diag([2.2, 2.6, 0.0]), 3, [True, True, False]),  # slab, zero vacuum vector
]


@pytest.mark.parametrize("cell, n_atoms, pbc", SMALL_CELLS)
def test_vesin_matches_brute_force_image_sum(cell, n_atoms, pbc):
    rng = np.random.default_rng(n_atoms)
    frac = rng.random((n_atoms, 3))
    positions = frac @ cell + rng.normal(scale=0.3, size=(n_atoms, 3))
    # unwrapped positions (as in MD) must work too
    positions[0] += 3 * cell[0]
    edge_index, shifts = neighbor_list(positions, cell, pbc, r_max=3.0, r_min=0.1)
    got = as_set(edge_index, shifts)
    assert len(got) == edge_index.shape[1], "duplicate edges"
    assert got == brute_force_edges(positions, cell, pbc, 3.0, 0.1)
    # the stored shifts reproduce the distances
    vec = positions[edge_index[0]] - positions[edge_index[1]] + shifts @ cell
    d = np.linalg.norm(vec, axis=1)
    assert np.all((d > 0.1) & (d < 3.0))


def test_non_periodic_molecule():
    atoms = molecule("CH3CH2OH")
    g = build_graph(atoms, r_max=3.0)
    assert np.all(g.shifts == 0)
    assert as_set(g.edge_index, g.shifts) == brute_force_edges(
        atoms.positions, np.zeros((3, 3)), False, 3.0
    )


def test_minimum_image_baseline_agrees_for_large_cells_and_misses_images_in_small_ones():
    big = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2)  # 11.3 Å > 2 r_max
    big.rattle(0.05, seed=3)
    e1, s1 = neighbor_list(big.positions, big.cell.array, True)
    e2, s2 = minimum_image_edges_baseline(big.positions, big.cell.array, True)
    assert as_set(e1, s1) == as_set(e2, s2)
    small = bulk("Cu", "fcc", a=3.6)  # primitive cell, 2.55 Å lattice vectors
    e1, s1 = neighbor_list(small.positions, small.cell.array, True)
    e2, _ = minimum_image_edges_baseline(small.positions, small.cell.array, True)
    assert e1.shape[1] == 12  # fcc: 12 nearest neighbours, all images of the one atom
    assert e2.shape[1] == 0  # one image per pair and no self-pair: wrong


def test_collate_offsets_and_edge_vectors():
    a = bulk("NaCl", "rocksalt", a=4.0)
    b = bulk("Si", "diamond", a=5.43)
    b.rattle(0.02, seed=1)
    ga, gb = build_graph(a), build_graph(b)
    batch = collate([ga, gb], dtype="float64")
    assert batch.n_structures == 2
    assert batch.n_atoms == len(a) + len(b)
    assert batch.n_edges == ga.n_edges + gb.n_edges
    assert batch.ptr.tolist() == [0, len(a), len(a) + len(b)]
    assert batch.batch.tolist() == [0] * len(a) + [1] * len(b)
    vec = batch.edge_vectors().numpy()
    ref_a = ga.positions[ga.edge_index[0]] - ga.positions[ga.edge_index[1]] + ga.shifts @ ga.cell
    ref_b = gb.positions[gb.edge_index[0]] - gb.positions[gb.edge_index[1]] + gb.shifts @ gb.cell
    np.testing.assert_allclose(vec, np.concatenate([ref_a, ref_b]), atol=1e-12)
    assert batch.edge_index[:, ga.n_edges :].min() >= len(a)
    b32 = batch.to(dtype="float32")
    assert b32.positions.dtype == torch.float32 and b32.numbers.dtype == torch.int64
    assert (batch.r_max, batch.r_min) == (b32.r_max, b32.r_min) == (ga.r_max, ga.r_min)
    with pytest.raises(ValueError, match="different cutoffs"):
        collate([ga, build_graph(b, r_max=4.0)])


def test_edge_vectors_differentiable_in_positions_and_cell():
    atoms = bulk("Cu", "fcc", a=3.6)
    g = batch_from_atoms(atoms, dtype="float64")
    pos = g.positions.clone().requires_grad_(True)
    cell = g.cell.clone().requires_grad_(True)
    vec = edge_vectors(pos, g.edge_index, g.shifts, cell, g.batch)
    vec.sum().backward()
    # d(sum vec)/d cell[0, c, :] = sum over edges of shifts[:, c]
    np.testing.assert_allclose(cell.grad[0].numpy(), g.shifts.sum(0)[:, None].expand(3, 3).numpy())
    assert torch.all(pos.grad == 0)  # one atom: r_j - r_i cancels


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        neighbor_list(np.zeros((2, 2)), np.eye(3), True)
    with pytest.raises(ValueError):
        neighbor_list(np.zeros((2, 3)), np.eye(3), True, r_max=0.05, r_min=0.1)
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[5, 5, 0], pbc=True)
    with pytest.raises(ValueError, match="zero cell vector"):
        build_graph(atoms)
