"""Born-charge datasets: validated frames -> precomputed graphs + sum-rule-corrected targets.

Targets (CONVENTIONS.md "Datasets")
-----------------------------------
Files store the RAW DFT ``Z*`` (which violates the acoustic sum rule). A
:class:`BornSample` keeps it (``target_raw``) and the training target ``target``,
corrected exactly as the model output is (:func:`ase_born.models.equivar.enforce_asr`:
subtract the per-structure mean over atoms), so no model is asked to reproduce a
violation; metrics are computed against ``target``.

Splits
------
* TEST: frames with ``info["split"] == "test"`` in the training files, plus every frame
  of an explicit test file. Never used for model selection.
* The remaining frames are split into train/validation BY STRUCTURE ID
  (``info["structure_id"]``; frames sharing an ID stay together): the sorted unique IDs are
  permuted with ``numpy.random.default_rng(seed)`` and the first
  ``round(val_fraction * n_ids)`` (at least 1) validate. ``k``-fold: the permuted IDs are
  cut into ``k`` nearly equal folds (:func:`kfold_by_structure`).
* A frame without ``structure_id`` gets ``"<file name>#<frame index>"``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from ase_born.conventions import KEY_BORN
from ase_born.io.extxyz import get_born_charges, read_frames
from ase_born.models.graph import (
    DEFAULT_R_MAX,
    DEFAULT_R_MIN,
    AtomicGraph,
    GraphBatch,
    build_graph,
    collate,
)

#: allowed values of ``info["split"]``
SPLIT_TAGS = ("train", "test")


class DatasetError(ValueError):
    """Invalid training data (the message names the file, frame and structure ID)."""


@dataclass(frozen=True)
class BornSample:
    """One structure, ready for training.

    Attributes
    ----------
    graph : AtomicGraph
        Neighbour list built with the model's ``r_max``/``r_min``.
    target : numpy.ndarray, shape=(n_atoms, 3, 3)
        ``Z*[k, b, a]`` in e, sum rule enforced (per-structure mean subtracted).
    target_raw : numpy.ndarray, shape=(n_atoms, 3, 3)
        As stored in the file.
    structure_id : str
    source : str
        ``"<file>#<frame index>"``.
    """

    graph: AtomicGraph
    target: np.ndarray
    target_raw: np.ndarray
    structure_id: str
    source: str

    @property
    def n_atoms(self) -> int:
        return self.graph.n_atoms


@dataclass(frozen=True)
class Batch:
    """A collated batch (torch tensors on one device).

    Attributes
    ----------
    graph : GraphBatch
    target, target_raw : torch.Tensor, shape=(n_atoms_total, 3, 3)
        Corrected and raw ``Z*`` (e), dtype of the graph.
    structure_ids : tuple of str
    """

    graph: GraphBatch
    target: torch.Tensor
    target_raw: torch.Tensor
    structure_ids: tuple[str, ...]

    def to(self, device: str | torch.device) -> Batch:
        return Batch(
            graph=self.graph.to(device),
            target=self.target.to(device),
            target_raw=self.target_raw.to(device),
            structure_ids=self.structure_ids,
        )


def correct_asr(z: np.ndarray) -> np.ndarray:
    """Subtract the mean over atoms (one structure): ``shape=(n_atoms, 3, 3)``."""
    return z - z.mean(axis=0, keepdims=True)


def validate_frame(atoms: Atoms, *, where: str, num_species: int = 100) -> np.ndarray:
    """Check one frame and return its raw ``Z*`` (``shape=(n_atoms, 3, 3)``, float64).

    Raises
    ------
    DatasetError
        No atoms, no Born charges, a wrong shape, non-finite values (Z*, positions, cell)
        or an element outside the embedding table (``0 < Z < num_species``).
    """
    n = len(atoms)
    if n == 0:
        raise DatasetError(f"{where}: frame has no atoms")
    try:
        z = get_born_charges(atoms)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if z is None:
        raise DatasetError(
            f"{where}: frame has no '{KEY_BORN}' (expected per-atom Z* with shape ({n}, 3, 3); "
            "read the file with ase_born.io.extxyz.read_frames)"
        )
    if not np.all(np.isfinite(z)):
        bad = np.unique(np.nonzero(~np.isfinite(z))[0])
        raise DatasetError(
            f"{where}: non-finite (NaN/inf) Born charges on atoms {bad.tolist()[:10]}"
        )
    if not np.all(np.isfinite(atoms.positions)):
        raise DatasetError(f"{where}: non-finite positions")
    if not np.all(np.isfinite(atoms.cell.array)):
        raise DatasetError(f"{where}: non-finite cell")
    numbers = np.asarray(atoms.numbers)
    bad = numbers[(numbers < 1) | (numbers >= num_species)]
    if bad.size:
        raise DatasetError(
            f"{where}: atomic numbers {sorted(set(bad.tolist()))} are outside the model's embedding "
            f"table (valid: 1..{num_species - 1})"
        )
    return z


def _structure_id(atoms: Atoms, source: str) -> str:
    sid = atoms.info.get("structure_id")
    return source if sid is None else str(sid)


class BornDataset(torch.utils.data.Dataset):
    """A list of :class:`BornSample` (graphs precomputed once).

    Build with :meth:`from_frames` or :meth:`from_files`.
    """

    def __init__(self, samples: Sequence[BornSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> BornSample:
        return self.samples[index]

    @classmethod
    def from_frames(
        cls,
        frames: Iterable[Atoms],
        *,
        r_max: float = DEFAULT_R_MAX,
        r_min: float = DEFAULT_R_MIN,
        num_species: int = 100,
        source: str = "frames",
        allow_empty: bool = False,
    ) -> BornDataset:
        """Validate frames, build their graphs and (sum-rule-corrected) targets.

        Parameters
        ----------
        frames : iterable of ase.Atoms
            With ``atoms.arrays["born_effective_charges"]`` (``(n_atoms, 3, 3)``, e).
        r_max, r_min : float
            Edge cutoffs (Å): the model's.
        num_species : int
            Rows of the model's embedding table.
        source : str
            Name used in error messages and in :attr:`BornSample.source`.
        allow_empty : bool
            Otherwise an empty dataset raises :class:`DatasetError`.
        """
        samples = []
        for idx, atoms in enumerate(frames):
            src = f"{source}#{idx}"
            sid = _structure_id(atoms, src)
            where = f"{source}, frame {idx} (structure_id={sid})"
            z = validate_frame(atoms, where=where, num_species=num_species)
            try:
                graph = build_graph(atoms, r_max, r_min)
            except ValueError as exc:
                raise DatasetError(f"{where}: {exc}") from exc
            samples.append(BornSample(graph, correct_asr(z), z.copy(), sid, src))
        if not samples and not allow_empty:
            raise DatasetError(f"{source}: no frames")
        return cls(samples)

    @classmethod
    def from_files(
        cls, paths: str | os.PathLike | Sequence[str | os.PathLike], **kwargs
    ) -> BornDataset:
        """:meth:`from_frames` on the frames of one or several extxyz files."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        samples: list[BornSample] = []
        for p in paths:
            samples.extend(cls.from_frames(read_extxyz(p), source=str(p), **kwargs).samples)
        return cls(samples)

    def subset(self, indices: Sequence[int]) -> BornDataset:
        return BornDataset([self.samples[i] for i in indices])

    @property
    def structure_ids(self) -> list[str]:
        return [s.structure_id for s in self.samples]

    @property
    def n_atoms(self) -> int:
        return int(sum(s.n_atoms for s in self.samples))

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        return sorted({int(z) for s in self.samples for z in np.unique(s.graph.numbers)})

    def fingerprint(self) -> str:
        """SHA-256 of the structure IDs, species, positions, cells, periodicity and targets
        (detects changed data; the cell and pbc change the graph)."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(s.structure_id.encode())
            h.update(np.ascontiguousarray(s.graph.numbers).tobytes())
            h.update(np.ascontiguousarray(s.graph.positions).round(10).tobytes())
            h.update(np.ascontiguousarray(s.graph.cell, dtype=np.float64).round(10).tobytes())
            h.update(np.ascontiguousarray(s.graph.pbc, dtype=bool).tobytes())
            h.update(np.ascontiguousarray(s.target_raw).round(10).tobytes())
        return h.hexdigest()


def read_extxyz(path: str | os.PathLike) -> list[Atoms]:
    """:func:`ase_born.io.extxyz.read_frames` with clear errors for missing/empty files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file")
    try:
        return read_frames(path)
    except DatasetError:
        raise
    except Exception as exc:  # ASE's parser raises many types
        raise DatasetError(
            f"{path}: cannot be read as extxyz ({type(exc).__name__}: {exc})"
        ) from exc


def collate_samples(
    samples: Sequence[BornSample],
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
) -> Batch:
    """Collate samples into one :class:`Batch` (see :func:`ase_born.models.graph.collate`)."""
    graph = collate([s.graph for s in samples], device=device, dtype=dtype)
    dt = graph.positions.dtype
    target = torch.as_tensor(
        np.concatenate([s.target for s in samples]), dtype=dt, device=graph.positions.device
    )
    raw = torch.as_tensor(
        np.concatenate([s.target_raw for s in samples]), dtype=dt, device=graph.positions.device
    )
    return Batch(graph, target, raw, tuple(s.structure_id for s in samples))


class Collater:
    """Picklable ``collate_fn`` for :class:`torch.utils.data.DataLoader` (CPU tensors)."""

    def __init__(self, dtype: str | torch.dtype = "float32") -> None:
        self.dtype = dtype

    def __call__(self, samples: Sequence[BornSample]) -> Batch:
        return collate_samples(samples, device="cpu", dtype=self.dtype)


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------
def _permuted_ids(ids: Sequence[str], seed: int) -> list[str]:
    unique = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    return [unique[k] for k in order]


def split_by_structure(
    ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of sample indices by structure ID.

    Returns
    -------
    train_indices, val_indices : list of int
        Indices into ``ids`` (ascending).
    """
    perm = _permuted_ids(ids, seed)
    if len(perm) < 2:
        raise DatasetError(
            f"need at least 2 distinct structure IDs outside TEST for a train/validation split, got {len(perm)}"
        )
    n_val = min(max(1, round(val_fraction * len(perm))), len(perm) - 1)
    val_ids = set(perm[:n_val])
    val = [i for i, s in enumerate(ids) if s in val_ids]
    train = [i for i, s in enumerate(ids) if s not in val_ids]
    return train, val


def kfold_by_structure(
    ids: Sequence[str], k: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """``k`` (train, validation) index splits; every structure ID validates exactly once."""
    perm = _permuted_ids(ids, seed)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if len(perm) < k:
        raise DatasetError(
            f"{k}-fold cross-validation needs at least {k} structure IDs, got {len(perm)}"
        )
    folds = [set(c.tolist()) for c in np.array_split(np.array(perm, dtype=object), k)]
    out = []
    for fold in folds:
        val = [i for i, s in enumerate(ids) if s in fold]
        train = [i for i, s in enumerate(ids) if s not in fold]
        out.append((train, val))
    return out


@dataclass(frozen=True)
class DataSplits:
    """The datasets of one run. ``test`` is ``None`` when the data has no TEST frames."""

    train: BornDataset
    val: BornDataset
    test: BornDataset | None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name, ds in (("train", self.train), ("val", self.val), ("test", self.test)):
            h.update(name.encode())
            h.update(b"-" if ds is None else ds.fingerprint().encode())
        return h.hexdigest()

    @property
    def val_is_train(self) -> bool:
        """Final fit (``val_fraction`` 0): the "validation" set is the training set."""
        return self.val is self.train

    @property
    def elements(self) -> list[int]:
        parts = [self.train, self.val] + ([self.test] if self.test is not None else [])
        return sorted({z for ds in parts for z in ds.elements})


def split_tag(atoms: Atoms, where: str = "frame") -> str:
    """``info["split"]`` normalised to ``"train"`` (also when absent) or ``"test"``."""
    tag = atoms.info.get("split", "train")
    tag = str(tag).strip().lower()
    if tag not in SPLIT_TAGS:
        raise DatasetError(f"{where}: info['split'] must be one of {SPLIT_TAGS}, got {tag!r}")
    return tag


def training_frames(
    frames: Iterable[Atoms], ids: Iterable[str] | None = None, *, exclude: bool = False
) -> list[Atoms]:
    """Frames outside the fixed TEST split; with ``ids``, only those whose
    ``info["structure_id"]`` is in ``ids`` (``exclude=True``: only those not in it)."""
    keep = None if ids is None else {str(i) for i in ids}
    out = []
    for atoms in frames:
        if split_tag(atoms) == "test":
            continue
        if keep is not None and (str(atoms.info.get("structure_id")) in keep) == exclude:
            continue
        out.append(atoms)
    return out


def load_splits(
    train_files: Sequence[str | os.PathLike],
    *,
    val_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    folds: int = 1,
    fold: int = 0,
    r_max: float = DEFAULT_R_MAX,
    r_min: float = DEFAULT_R_MIN,
    num_species: int = 100,
) -> DataSplits:
    """Read the files and make the TEST / train / validation datasets (module docstring).

    Parameters
    ----------
    folds, fold : int
        With ``folds > 1`` the validation set is fold ``fold`` (0-based) of the
        non-TEST structure IDs; ``val_fraction`` is then not used.

    Raises
    ------
    DatasetError
        Bad frames, empty partitions, a structure ID in two partitions, TEST frames in
        the validation file.
    """
    if not train_files:
        raise DatasetError("no training files given (train_files is empty)")
    pool: list[BornSample] = []
    test: list[BornSample] = []
    kw = {"r_max": r_max, "r_min": r_min, "num_species": num_species}
    for path in train_files:
        frames = read_extxyz(path)
        tags = [split_tag(a, f"{path}, frame {i}") for i, a in enumerate(frames)]
        ds = BornDataset.from_frames(frames, source=str(path), **kw)
        for sample, tag in zip(ds.samples, tags):
            (test if tag == "test" else pool).append(sample)
    if test_file is not None:
        test.extend(
            BornDataset.from_frames(read_extxyz(test_file), source=str(test_file), **kw).samples
        )

    if val_file is not None:
        frames = read_extxyz(val_file)
        for i, a in enumerate(frames):
            if split_tag(a, f"{val_file}, frame {i}") == "test":
                raise DatasetError(
                    f"{val_file}, frame {i}: the validation file contains a TEST frame "
                    "(info['split'] == 'test'); TEST data must never be used for model selection"
                )
        val = BornDataset.from_frames(frames, source=str(val_file), **kw)
        train = BornDataset(pool)
    else:
        ids = [s.structure_id for s in pool]
        if folds > 1:
            if not 0 <= fold < folds:
                raise ValueError(f"fold must be in [0, {folds}), got {fold}")
            tr, va = kfold_by_structure(ids, folds, seed)[fold]
        else:
            if not pool:
                raise DatasetError(
                    f"no non-TEST frames in {list(map(str, train_files))} (all frames have info['split'] == 'test')"
                )
            if val_fraction == 0.0:  # final fit: no held-out validation (config docs)
                tr, va = list(range(len(pool))), None
            else:
                tr, va = split_by_structure(ids, val_fraction, seed)
        train = BornDataset([pool[i] for i in tr])
        val = train if va is None else BornDataset([pool[i] for i in va])
    if len(train) == 0:
        raise DatasetError("the training set is empty")
    if len(val) == 0:
        raise DatasetError("the validation set is empty")
    test_ds = BornDataset(test) if test else None
    parts = {"train": train, "val": val, "test": test_ds}
    if val is train:  # final fit: val is the training set itself, not a second partition
        del parts["val"]
    _check_disjoint(parts)
    return DataSplits(train, val, test_ds)


def _geometry_key(sample: BornSample) -> str:
    """Hash of species, positions and cell (to ~1e-6): the same structure under any ID, also
    with atoms listed in another order or moved by a lattice vector (positions along the
    periodic directions are taken as fractional coordinates wrapped into [0, 1))."""
    g = sample.graph
    pos = np.asarray(g.positions, dtype=np.float64)
    cell = np.asarray(g.cell, dtype=np.float64)
    periodic = np.asarray(g.pbc, dtype=bool) & (np.linalg.norm(cell, axis=1) > 0)
    if periodic.any() and abs(np.linalg.det(cell)) > 1e-12:
        frac = np.linalg.solve(cell.T, pos.T).T
        frac[:, periodic] = np.round(frac[:, periodic] * 1e6) % 1_000_000  # wrapped, 1e-6 steps
        frac[:, ~periodic] = np.round(frac[:, ~periodic] * 1e6)
        coords = frac.astype(np.int64)
    else:
        coords = np.round(pos * 1e6).astype(np.int64)
    rows = np.column_stack([np.asarray(g.numbers, dtype=np.int64), coords])
    rows = rows[np.lexsort(rows.T[::-1])]  # by species, then coordinates: any atom order
    h = hashlib.sha256(np.ascontiguousarray(rows).tobytes())
    h.update((np.round(cell * 1e6) + 0.0).astype(np.int64).tobytes())
    return h.hexdigest()


def _check_disjoint(parts: dict[str, BornDataset | None]) -> None:
    """Splits must not share a structure ID, nor the same structure under another ID (frames
    without ``structure_id`` get one from their file name as typed, so a second copy of a
    file, or the same file under another path, would otherwise leak into TEST)."""
    present = {k: v for k, v in parts.items() if v is not None}
    ids = {k: set(v.structure_ids) for k, v in present.items()}
    geometry = {k: {_geometry_key(s): s.structure_id for s in v.samples} for k, v in present.items()}
    names = list(ids)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            common = ids[names[a]] & ids[names[b]]
            if common:
                raise DatasetError(
                    f"structure IDs {sorted(common)[:5]} are in both the {names[a]} and the {names[b]} "
                    "set: splits are by structure ID and must not overlap"
                )
            same = sorted(geometry[names[a]].keys() & geometry[names[b]].keys())
            if same:
                pairs = [f"{geometry[names[a]][k]} = {geometry[names[b]][k]}" for k in same[:3]]
                raise DatasetError(
                    f"{len(same)} structure(s) of the {names[a]} set are also in the {names[b]} set under "
                    f"another ID (same species, positions and cell), e.g. {', '.join(pairs)}: the splits "
                    "must not share structures (give frames a unique info['structure_id'])"
                )


__all__ = [
    "Batch",
    "BornDataset",
    "BornSample",
    "Collater",
    "DataSplits",
    "DatasetError",
    "collate_samples",
    "correct_asr",
    "kfold_by_structure",
    "load_splits",
    "read_extxyz",
    "split_by_structure",
    "split_tag",
    "validate_frame",
]
