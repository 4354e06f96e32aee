"""Atomic graphs for the Equivar network: neighbour lists and batching.

Edge convention (used by every model in :mod:`ase_born.models`)
----------------------------------------------------------------
An edge ``e`` connects a *centre* atom ``i`` with one periodic image of a
*neighbour* atom ``j``::

    edge_index[0, e] = j        (neighbour, message source)
    edge_index[1, e] = i        (centre, message target; messages are summed here)
    r_ij = r_j - r_i + shifts[e] @ cell         (Å, vector from the centre to the neighbour)

This is the torch_geometric ``[source, target]`` order also used by the paper's
published evaluation code. ``shifts`` are integer lattice translations stored as
floats (``shape=(n_edges, 3)``), so ``r_ij`` can be recomputed *in torch* from
positions and cell, which makes everything downstream differentiable with respect
to both (needed by the conservative mode of the field calculator).

Edges are kept when ``r_min < |r_ij| < r_max`` (defaults 0.1 Å and 3.0 Å, the paper's
values). The neighbour list is *complete*: every periodic image within the cutoff
is an edge, whatever the cell size, so cells shorter than ``2 r_max`` (where one
atom sees several images of the same neighbour, or images of itself) are handled
exactly. It is computed with `vesin <https://github.com/Luthaf/vesin>`_ in O(N).

:func:`minimum_image_edges_baseline` reproduces the paper's own O(N²) single-image
construction. It is kept ONLY as a benchmark baseline and as a reference for the
paper's TorchScript files; it is wrong for cells shorter than ``2 r_max``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from ase_born.models.utils import resolve_device, resolve_dtype

#: default radial cutoff (Å) of the Equivar network (paper section 2)
DEFAULT_R_MAX: float = 3.0
#: default lower distance bound (Å): pairs closer than this are not edges (paper's code)
DEFAULT_R_MIN: float = 0.1


def _cell_and_pbc(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool).reshape(3)
    for k in range(3):
        if pbc[k] and np.linalg.norm(cell[k]) == 0.0:
            raise ValueError(f"periodic direction {k} has a zero cell vector")
    return cell, pbc


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | Sequence[bool] | bool,
    r_max: float = DEFAULT_R_MAX,
    r_min: float = DEFAULT_R_MIN,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Complete periodic neighbour list (all images), O(N), with vesin.

    Parameters
    ----------
    positions : numpy.ndarray, shape=(n_atoms, 3)
        Cartesian positions in Å (need not be wrapped into the cell).
    cell : numpy.ndarray, shape=(3, 3)
        Lattice vectors as rows, Å. Rows of non-periodic directions may be zero.
    pbc : bool or sequence of 3 bool
        Periodicity per lattice direction.
    r_max, r_min : float
        Keep pairs with ``r_min < r < r_max`` (Å).
    n_threads : int, optional
        vesin's threads; default ``torch.get_num_threads()``, so that the thread setting
        of the network also bounds its graph (vesin alone takes every core).

    Returns
    -------
    edge_index : numpy.ndarray, shape=(2, n_edges), dtype=int64
        ``[neighbour j, centre i]`` (see module docstring), sorted by centre.
    shifts : numpy.ndarray, shape=(n_edges, 3), dtype=float64
        Integer lattice translations with ``r_ij = r_j - r_i + shifts @ cell``.
    """
    import vesin

    if not r_max > r_min >= 0.0:
        raise ValueError(f"need r_max > r_min >= 0, got r_max={r_max}, r_min={r_min}")
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {pos.shape}")
    box = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if len(pos) == 0:
        return np.zeros((2, 0), np.int64), np.zeros((0, 3), np.float64)
    threads = torch.get_num_threads() if n_threads is None else int(n_threads)
    nl = vesin.NeighborList(cutoff=float(r_max), full_list=True, sorted=True, n_threads=max(1, threads))
    i, j, s, d = nl.compute(pos, box, [bool(p) for p in periodic], quantities="ijSd")
    keep = (d > r_min) & (d < r_max)
    edge_index = np.stack([j[keep], i[keep]]).astype(np.int64)
    shifts = s[keep].astype(np.float64)
    return edge_index, shifts


def minimum_image_edges_baseline(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | Sequence[bool] | bool,
    r_max: float = DEFAULT_R_MAX,
    r_min: float = DEFAULT_R_MIN,
) -> tuple[np.ndarray, np.ndarray]:
    """Paper-style O(N²) minimum-image edges: ONE image per pair. Benchmark baseline only.

    Mirrors the published evaluation code (all-pairs minimum-image distances as
    :meth:`ase.Atoms.get_all_distances` with ``mic=True``, then ``r_min < r < r_max``).
    It costs O(N²) time and memory and is WRONG for cells shorter than ``2 r_max``
    (it misses further images of a neighbour and all images of the atom itself).
    Use :func:`neighbor_list` for real work. Same return convention as
    :func:`neighbor_list`.
    """
    from ase.geometry import get_distances

    pos = np.asarray(positions, dtype=np.float64)
    box = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    vec, dist = get_distances(pos, cell=box, pbc=periodic)  # vec[i, j] = r_j - r_i (mic)
    centre, neigh = np.nonzero((dist > r_min) & (dist < r_max))
    plain = pos[neigh] - pos[centre]
    if periodic.any():
        shifts = np.linalg.lstsq(box.T, (vec[centre, neigh] - plain).T, rcond=None)[0].T
        shifts = np.rint(shifts)
    else:
        shifts = np.zeros((len(centre), 3))
    return np.stack([neigh, centre]).astype(np.int64), shifts.astype(np.float64)


@dataclass(frozen=True)
class AtomicGraph:
    """Graph of ONE structure (numpy, float64): what a dataset caches per frame.

    Attributes
    ----------
    positions : numpy.ndarray, shape=(n_atoms, 3)
        Å.
    numbers : numpy.ndarray, shape=(n_atoms,), dtype=int64
        Atomic numbers.
    cell : numpy.ndarray, shape=(3, 3)
        Lattice vectors as rows, Å (zeros for non-periodic directions allowed).
    pbc : numpy.ndarray, shape=(3,), dtype=bool
    edge_index : numpy.ndarray, shape=(2, n_edges), dtype=int64
        ``[neighbour j, centre i]``.
    shifts : numpy.ndarray, shape=(n_edges, 3), dtype=float64
        Integer lattice translations (``r_ij = r_j - r_i + shifts @ cell``).
    r_max, r_min : float
        Cutoffs the edges were built with (Å).
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    edge_index: np.ndarray
    shifts: np.ndarray
    r_max: float
    r_min: float

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])


def build_graph(
    atoms: Atoms,
    r_max: float = DEFAULT_R_MAX,
    r_min: float = DEFAULT_R_MIN,
    *,
    method: str = "vesin",
) -> AtomicGraph:
    """Build the :class:`AtomicGraph` of ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
    r_max, r_min : float
        Edge cutoffs in Å.
    method : {"vesin", "minimum_image_baseline"}
        ``"vesin"`` (default): complete O(N) neighbour list. ``"minimum_image_baseline"``:
        the paper's O(N²) single-image construction (benchmarks / paper comparisons only).
    """
    cell, pbc = _cell_and_pbc(atoms)
    positions = np.asarray(atoms.positions, dtype=np.float64).copy()
    if method == "vesin":
        edge_index, shifts = neighbor_list(positions, cell, pbc, r_max, r_min)
    elif method == "minimum_image_baseline":
        edge_index, shifts = minimum_image_edges_baseline(positions, cell, pbc, r_max, r_min)
    else:
        raise ValueError(f"unknown neighbour-list method {method!r}")
    return AtomicGraph(
        positions=positions,
        numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
        cell=cell.copy(),
        pbc=pbc.copy(),
        edge_index=edge_index,
        shifts=shifts,
        r_max=float(r_max),
        r_min=float(r_min),
    )


@dataclass(frozen=True)
class GraphBatch:
    """A batch of structures as one disconnected graph (torch tensors).

    This is the input the Equivar network and the trainer work with.

    Attributes
    ----------
    positions : torch.Tensor, shape=(n_atoms_total, 3)
        Å, floating dtype of the model.
    numbers : torch.Tensor, shape=(n_atoms_total,), dtype=int64
    cell : torch.Tensor, shape=(n_structures, 3, 3)
        Lattice vectors as rows, Å.
    pbc : torch.Tensor, shape=(n_structures, 3), dtype=bool
    edge_index : torch.Tensor, shape=(2, n_edges_total), dtype=int64
        ``[neighbour j, centre i]`` with GLOBAL atom indices (offsets applied).
    shifts : torch.Tensor, shape=(n_edges_total, 3)
        Integer lattice translations (floating dtype), in the cell of the edge's structure.
    batch : torch.Tensor, shape=(n_atoms_total,), dtype=int64
        Structure index of every atom.
    ptr : torch.Tensor, shape=(n_structures + 1,), dtype=int64
        Atom offsets: atoms of structure ``s`` are ``ptr[s]:ptr[s+1]``.
    n_structures : int
    r_max, r_min : float or None
        Cutoffs the edges were built with (Å), shared by all structures; ``None`` when
        unknown. The network refuses a batch built with other cutoffs than its own.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    n_structures: int
    r_max: float | None = None
    r_min: float | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> GraphBatch:
        """Copy to ``device``/``dtype`` (floating tensors only change dtype)."""
        dev = resolve_device(device) if device is not None else self.positions.device
        dt = resolve_dtype(dtype) if dtype is not None else self.positions.dtype
        return dataclasses.replace(
            self,
            positions=self.positions.to(dev, dt),
            numbers=self.numbers.to(dev),
            cell=self.cell.to(dev, dt),
            pbc=self.pbc.to(dev),
            edge_index=self.edge_index.to(dev),
            shifts=self.shifts.to(dev, dt),
            batch=self.batch.to(dev),
            ptr=self.ptr.to(dev),
        )

    def edge_vectors(self) -> torch.Tensor:
        """``r_ij`` (Å), ``shape=(n_edges_total, 3)``; differentiable in positions and cell."""
        return edge_vectors(self.positions, self.edge_index, self.shifts, self.cell, self.batch)


def edge_vectors(
    positions: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edge vectors ``r_ij = r_j - r_i + shifts @ cell`` computed in torch.

    Parameters
    ----------
    positions : torch.Tensor, shape=(n_atoms, 3)
        Å.
    edge_index : torch.Tensor, shape=(2, n_edges), dtype=int64
        ``[neighbour j, centre i]``.
    shifts : torch.Tensor, shape=(n_edges, 3)
        Integer lattice translations.
    cell : torch.Tensor, shape=(3, 3) or (n_structures, 3, 3)
        Lattice vectors as rows, Å.
    batch : torch.Tensor, shape=(n_atoms,), dtype=int64, optional
        Structure of each atom; needed when ``cell`` is batched.

    Returns
    -------
    torch.Tensor, shape=(n_edges, 3)
        Differentiable with respect to ``positions`` and ``cell``.
    """
    j, i = edge_index[0], edge_index[1]
    vec = positions[j] - positions[i]
    shifts = shifts.to(positions.dtype)
    if cell.dim() == 2:
        return vec + shifts @ cell.to(positions.dtype)
    if batch is None:
        if cell.shape[0] != 1:
            raise ValueError("a batched cell needs the batch index of every atom")
        return vec + shifts @ cell[0].to(positions.dtype)
    cell_e = cell.to(positions.dtype)[batch[i]]  # (n_edges, 3, 3)
    return vec + torch.einsum("ek,ekc->ec", shifts, cell_e)


def collate(
    graphs: Sequence[AtomicGraph],
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float64",
) -> GraphBatch:
    """Concatenate per-structure graphs into one :class:`GraphBatch`.

    Parameters
    ----------
    graphs : sequence of AtomicGraph
    device : str or torch.device
    dtype : str or torch.dtype
        Floating dtype of positions, cell and shifts (``"float32"`` or ``"float64"``).
    """
    if len(graphs) == 0:
        raise ValueError("cannot collate an empty list of graphs")
    cutoffs = {(float(g.r_max), float(g.r_min)) for g in graphs}
    if len(cutoffs) > 1:
        raise ValueError(f"graphs built with different cutoffs (r_max, r_min): {sorted(cutoffs)}")
    ((r_max, r_min),) = cutoffs
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    n_atoms = np.array([g.n_atoms for g in graphs], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(n_atoms)])
    edge_index = np.concatenate([g.edge_index + off for g, off in zip(graphs, ptr[:-1])], axis=1)
    batch = np.repeat(np.arange(len(graphs), dtype=np.int64), n_atoms)
    return GraphBatch(
        positions=torch.as_tensor(
            np.concatenate([g.positions for g in graphs]), dtype=dt, device=dev
        ),
        numbers=torch.as_tensor(np.concatenate([g.numbers for g in graphs]), device=dev),
        cell=torch.as_tensor(np.stack([g.cell for g in graphs]), dtype=dt, device=dev),
        pbc=torch.as_tensor(np.stack([g.pbc for g in graphs]), device=dev),
        edge_index=torch.as_tensor(edge_index, device=dev),
        shifts=torch.as_tensor(np.concatenate([g.shifts for g in graphs]), dtype=dt, device=dev),
        batch=torch.as_tensor(batch, device=dev),
        ptr=torch.as_tensor(ptr, device=dev),
        n_structures=len(graphs),
        r_max=r_max,
        r_min=r_min,
    )


def batch_from_atoms(
    atoms_list: Atoms | Sequence[Atoms],
    r_max: float = DEFAULT_R_MAX,
    r_min: float = DEFAULT_R_MIN,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float64",
    method: str = "vesin",
) -> GraphBatch:
    """Neighbour lists + collation of one or several :class:`ase.Atoms` in one call.

    See :func:`build_graph` and :func:`collate` for the arguments.
    """
    if isinstance(atoms_list, Atoms):
        atoms_list = [atoms_list]
    graphs = [build_graph(a, r_max, r_min, method=method) for a in atoms_list]
    return collate(graphs, device=device, dtype=dtype)


__all__ = [
    "DEFAULT_R_MAX",
    "DEFAULT_R_MIN",
    "AtomicGraph",
    "GraphBatch",
    "batch_from_atoms",
    "build_graph",
    "collate",
    "edge_vectors",
    "minimum_image_edges_baseline",
    "neighbor_list",
]
