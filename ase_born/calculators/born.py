"""Born-charge model with fixed per-atom tensors: :class:`FixedBornCharges`.

Sources
-------
* an array ``shape=(n_atoms, 3, 3)`` (``Z*[k, b, a]``, b = field, a = displacement);
* a phonopy ``BORN`` file plus the primitive cell it belongs to
  (:meth:`FixedBornCharges.from_born_file`, read with phonopy's own
  :func:`phonopy.file_IO.parse_BORN`, which expands the symmetry-independent atoms
  listed in the file to all atoms of the primitive cell);
* an extxyz frame carrying ``born_effective_charges``
  (:meth:`FixedBornCharges.from_extxyz`, :meth:`FixedBornCharges.from_atoms`).

Supercells (position matching)
------------------------------
When the model knows the cell its tensors belong to (``primitive``), it maps them onto
any structure that is a supercell of that cell in the SAME orientation and origin (e.g.
``primitive.repeat((2, 2, 2))`` or ``make_supercell``; cell = M · primitive cell with
an integer M, up to a homogeneous strain): every atom's position is expressed in
fractional coordinates of the primitive lattice as it sits in the structure's cell,
taken modulo 1, and matched to the nearest primitive atom of the same species within
``match_tolerance`` (Å, minimum image).  A cell that is not such a supercell, an atom
that matches nothing or matches ambiguously, or atoms not spread evenly over the
primitive atoms raise :class:`ValueError` naming the problem.  A structure with the
same number of atoms and the same species order as ``primitive`` is taken atom by atom
(no matching).  The map is cached per species sequence and kept as long as every atom
stays within half the distance between same-species primitive sites of its matched
site, so thermal displacements and NpT cell changes during MD never break it (a
differently ordered supercell triggers a new match); :meth:`FixedBornCharges.map_to`
returns the explicit per-atom array.

Index order of phonopy's BORN file
----------------------------------
Each BORN line holds 9 numbers ``Z_xx Z_xy Z_xz Z_yx ... Z_zz`` of one independent
atom.  phonopy's documentation (doc/formulation.md, "Non-analytical term correction")
writes the NAC term with ``Σ_γ q_γ Z*_{j,γα}``: the FIRST index γ is contracted with the
wave-vector/field direction and the second α is the displacement index of the dynamical
matrix, and phonopy's code does the same (``A = np.dot(q, born)`` in
``phonopy/harmonic/dynamical_matrix.py``).  That is this package's ``Z*[k, b, a]``
order, so the BORN rows are read without a transpose (tested on a non-symmetric tensor
against phonopy's own NAC dynamical matrix).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from ase_born.calculators.base import BornChargeModel, check_born_charges

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: default tolerance (Å) of the supercell position matching
DEFAULT_MATCH_TOLERANCE = 0.3


def primitive_lattice_in(atoms: Atoms, primitive: Atoms, max_strain: float = 0.15) -> np.ndarray:
    """The primitive lattice as it sits inside ``atoms``' (possibly strained) cell.

    ``atoms.cell = M · h_prim`` must hold with an integer matrix ``M`` (up to a
    homogeneous strain below ``max_strain``); returns ``M⁻¹ · atoms.cell``, rows are the
    three current primitive lattice vectors in Å.  This makes the matching exact under
    homogeneous strain (NpT): fractional coordinates are taken in the strained lattice.

    Raises
    ------
    ValueError
        If ``atoms`` has no non-singular 3D cell or its cell is not an integer
        multiple of the primitive one (other orientation, different lattice).
    """
    hp = np.asarray(primitive.cell.array, dtype=float)
    h = np.asarray(atoms.cell.array, dtype=float)
    if atoms.cell.rank != 3 or abs(np.linalg.det(h)) < 1e-12:
        raise ValueError(
            "mapping Born charges onto a supercell needs a structure with a full 3D cell"
        )
    m = h @ np.linalg.inv(hp)
    mi = np.rint(m)
    if (
        np.abs(m - mi).max() > max_strain * max(1.0, np.abs(mi).max())
        or abs(np.linalg.det(mi)) < 0.5
    ):
        raise ValueError(
            "the structure's cell is not a supercell of the primitive cell (cell = M · primitive cell needs "
            f"an integer M, got M = {np.round(m, 3).tolist()}); same orientation required"
        )
    return np.linalg.inv(mi) @ h


def _site_distances(frac_t: np.ndarray, sp: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Minimum-image distances (Å) between fractional points ``frac_t`` (n, 3) and ``sp`` (m, 3)."""
    d = frac_t[:, None, :] - sp[None, :, :]
    d -= np.rint(d)
    return np.linalg.norm(d @ lat, axis=-1)


def map_atoms_to_primitive(
    atoms: Atoms, primitive: Atoms, tolerance: float = DEFAULT_MATCH_TOLERANCE
) -> np.ndarray:
    """Index of the primitive-cell atom each atom of ``atoms`` is an image of.

    Positions of ``atoms`` are written in fractional coordinates of the primitive
    lattice as it sits in ``atoms``' cell (:func:`primitive_lattice_in`, so homogeneous
    strain is harmless), reduced modulo 1, and matched to the nearest primitive atom of
    the same atomic number (minimum-image distance in Å).

    Parameters
    ----------
    atoms : ase.Atoms
        Structure to map (a supercell of ``primitive`` in the same orientation and
        origin, possibly strained and with small displacements).
    primitive : ase.Atoms
        The cell the tensors belong to (full 3D cell).
    tolerance : float
        Largest accepted distance in Å between an atom and its primitive image; a
        second same-species candidate within ``tolerance`` is an error (ambiguous).

    Returns
    -------
    numpy.ndarray, shape=(len(atoms),), dtype=int64

    Raises
    ------
    ValueError
        If the cell is not a supercell, an atom matches no primitive atom or matches
        ambiguously, or the atoms are not spread evenly over the primitive atoms.
    """
    hp = np.asarray(primitive.cell.array, dtype=float)
    if primitive.cell.rank != 3 or abs(np.linalg.det(hp)) < 1e-12:
        raise ValueError("position matching needs a primitive cell with a full 3D lattice")
    lat = primitive_lattice_in(atoms, primitive)
    sp = primitive.positions @ np.linalg.inv(hp)
    inv = np.linalg.inv(lat)
    num_p = primitive.numbers
    num_t = atoms.numbers
    out = np.empty(len(atoms), dtype=np.int64)
    chunk = max(1, 200_000 // max(len(primitive), 1))
    for start in range(0, len(atoms), chunk):
        pos = atoms.positions[start : start + chunk]
        dist = _site_distances(pos @ inv, sp, lat)
        dist[num_t[start : start + chunk, None] != num_p[None, :]] = np.inf
        order = np.argsort(dist, axis=1)
        best = order[:, 0]
        rows = np.arange(len(pos))
        dbest = dist[rows, best]
        bad = np.nonzero(~(dbest <= tolerance))[0]
        if len(bad):
            i = int(bad[0])
            k = start + i
            near = f"{dbest[i]:.3g} Å away" if np.isfinite(dbest[i]) else "none of that species"
            raise ValueError(
                f"atom {k} ({atoms.get_chemical_symbols()[k]} at {np.round(atoms.positions[k], 4).tolist()} Å) "
                f"matches no atom of the primitive cell within {tolerance} Å (nearest same-species "
                f"primitive atom: {near}); the structure must be a supercell of the primitive cell "
                "in the same orientation and origin (fractional positions are matched modulo the "
                "primitive lattice)"
            )
        if len(primitive) > 1:
            second = dist[rows, order[:, 1]]
            amb = np.nonzero(second <= tolerance)[0]
            if len(amb):
                k = start + int(amb[0])
                raise ValueError(
                    f"atom {k} matches two primitive atoms within {tolerance} Å; lower match_tolerance"
                )
        out[start : start + len(pos)] = best
    counts = np.bincount(out, minlength=len(primitive))
    if len(atoms) % len(primitive) or np.any(counts != len(atoms) // len(primitive)):
        raise ValueError(
            f"{len(atoms)} atoms are not a supercell of the {len(primitive)}-atom primitive cell: "
            f"images per primitive atom {counts.tolist()} (expected equal counts)"
        )
    return out


class FixedBornCharges(BornChargeModel):
    """Born-charge model returning fixed (position-independent) tensors.

    Parameters
    ----------
    born_charges : array_like, shape=(n, 3, 3)
        Born effective charges in e, ``Z*[k, b, a]`` (b = field, a = displacement;
        see :data:`ase_born.conventions.BORN_INDEX_ORDER`).
    primitive : ase.Atoms, optional
        The structure the ``n`` tensors belong to.  When given, the model also
        applies to supercells of it by position matching (module docstring);
        without it, only structures of exactly ``n`` atoms are accepted.
    epsilon_inf : array_like, shape=(3, 3), optional
        Electronic dielectric tensor carried along (e.g. from the BORN file).  It is
        only stored: pass it to ``BornFieldCalculator(epsilon_inf=...)`` to use it.
    match_tolerance : float
        Position-matching tolerance in Å (default 0.3).

    Notes
    -----
    The torch level (:meth:`get_born_charges_torch`) returns the same constant tensors,
    so ``BornFieldCalculator(mode="conservative")`` works (and then equals ``"direct"``).
    The model does not enforce the acoustic sum rule; the calculator's ``asr`` switch does.
    """

    supports_torch = True

    def __init__(
        self,
        born_charges: Any,
        primitive: Atoms | None = None,
        *,
        epsilon_inf: Any = None,
        match_tolerance: float = DEFAULT_MATCH_TOLERANCE,
    ) -> None:
        try:
            z = np.asarray(born_charges, dtype=float)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"born_charges must be a numeric (n, 3, 3) array in e, got {born_charges!r}"
            ) from exc
        n = z.shape[0] if z.ndim >= 1 else 0
        self.born_charges = check_born_charges(z, n, "FixedBornCharges input")
        if primitive is not None:
            if not isinstance(primitive, Atoms):
                raise TypeError(f"primitive must be an ase.Atoms, got {type(primitive).__name__}")
            if len(primitive) != len(self.born_charges):
                raise ValueError(
                    f"primitive has {len(primitive)} atoms but {len(self.born_charges)} Born tensors were given"
                )
            primitive = Atoms(
                numbers=primitive.numbers,
                positions=primitive.positions,
                cell=primitive.cell,
                pbc=primitive.pbc,
            )
        self.primitive = primitive
        self.epsilon_inf = (
            None if epsilon_inf is None else np.asarray(epsilon_inf, dtype=float).reshape(3, 3)
        )
        self.match_tolerance = float(match_tolerance)
        self._maps: dict[bytes, np.ndarray] = {}
        self._radius: float | None = None

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_born_file(
        cls,
        path: str | os.PathLike,
        primitive: Atoms,
        *,
        symprec: float = 1e-5,
        is_symmetry: bool = True,
        match_tolerance: float = DEFAULT_MATCH_TOLERANCE,
    ) -> FixedBornCharges:
        """Read a phonopy ``BORN`` file for ``primitive`` (phonopy's own reader).

        Parameters
        ----------
        path : path-like
            BORN file: line 1 unit factor (ignored here), line 2 ε∞ (9 numbers), then
            one line of 9 numbers per symmetry-independent atom of ``primitive``.
        primitive : ase.Atoms
            The primitive cell the BORN file refers to, with the atom order phonopy
            would use.  phonopy finds its independent atoms and expands the tensors
            to all atoms by symmetry (``Z_i = R_cartᵀ Z_indep R_cart``).
        symprec, is_symmetry
            Passed to :func:`phonopy.file_IO.parse_BORN`.
        match_tolerance : float
            See class docstring.

        Returns
        -------
        FixedBornCharges
            With ``primitive`` set (maps onto supercells) and ``epsilon_inf`` from
            the file.  BORN rows are ``Z*[b, a]`` already (module docstring).
        """
        from phonopy.file_IO import parse_BORN
        from phonopy.structure.atoms import PhonopyAtoms

        if not isinstance(primitive, Atoms):
            raise TypeError(f"primitive must be an ase.Atoms, got {type(primitive).__name__}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"BORN file not found: {path}")
        patoms = PhonopyAtoms(
            numbers=primitive.numbers,
            cell=np.asarray(primitive.cell.array, dtype=float),
            scaled_positions=primitive.get_scaled_positions(wrap=False),
        )
        try:
            nac = parse_BORN(patoms, symprec=symprec, is_symmetry=is_symmetry, filename=str(path))
        except Exception as exc:  # phonopy raises its own parse errors
            raise ValueError(
                f"could not read BORN file {path} for a {len(primitive)}-atom primitive cell: {exc}"
            ) from exc
        return cls(
            nac["born"], primitive, epsilon_inf=nac["dielectric"], match_tolerance=match_tolerance
        )

    @classmethod
    def from_atoms(
        cls, atoms: Atoms, *, match_tolerance: float = DEFAULT_MATCH_TOLERANCE
    ) -> FixedBornCharges:
        """Use the Born charges stored on a frame (``atoms.arrays`` or ``atoms.calc``).

        The frame becomes ``primitive`` (so the model also maps onto its supercells);
        ``atoms.info["epsilon_inf"]`` is carried along when present.
        """
        from ase_born.io.extxyz import get_born_charges

        z = get_born_charges(atoms)
        if z is None:
            raise ValueError(
                "the frame has no 'born_effective_charges' (per-atom array or calculator result)"
            )
        eps = atoms.info.get("epsilon_inf")
        return cls(z, atoms, epsilon_inf=eps, match_tolerance=match_tolerance)

    @classmethod
    def from_extxyz(
        cls,
        path: str | os.PathLike,
        index: int = 0,
        *,
        match_tolerance: float = DEFAULT_MATCH_TOLERANCE,
    ) -> FixedBornCharges:
        """Read frame ``index`` of an extxyz file (:func:`ase_born.io.extxyz.read_frames`)."""
        from ase_born.io.extxyz import read_frames

        frames = read_frames(path, index=index)
        return cls.from_atoms(frames[0], match_tolerance=match_tolerance)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FixedBornCharges:
        """Inverse of :meth:`todict`."""
        prim = d.get("primitive")
        atoms = None
        if prim is not None:
            atoms = Atoms(
                numbers=prim["numbers"],
                positions=prim["positions"],
                cell=prim["cell"],
                pbc=prim["pbc"],
            )
        return cls(
            np.asarray(d["born_charges"], dtype=float),
            atoms,
            epsilon_inf=d.get("epsilon_inf"),
            match_tolerance=d.get("match_tolerance", DEFAULT_MATCH_TOLERANCE),
        )

    # ------------------------------------------------------------------ protocol
    def map_to(self, atoms: Atoms) -> np.ndarray:
        """Z* for every atom of ``atoms``, ``shape=(len(atoms), 3, 3)`` (see module docstring)."""
        n = len(atoms)
        z = self.born_charges
        if self.primitive is None:
            if n != len(z):
                raise ValueError(
                    f"FixedBornCharges holds tensors for {len(z)} atoms but the structure has {n}; "
                    "give primitive=<the cell they belong to> (or use from_born_file/from_atoms) to map "
                    "them onto supercells"
                )
            return z.copy()
        if n == len(z) and np.array_equal(atoms.numbers, self.primitive.numbers):
            return z.copy()
        key = np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes()
        idx = self._maps.get(key)
        if idx is None or not self._map_still_valid(atoms, idx):
            idx = map_atoms_to_primitive(atoms, self.primitive, self.match_tolerance)
            self._maps[key] = idx
        return z[idx]

    def _map_still_valid(self, atoms: Atoms, idx: np.ndarray) -> bool:
        """A cached map holds while every atom is closer to its site than half the
        distance between any two same-species primitive sites (thermal motion never
        breaks it; a differently ordered supercell does)."""
        try:
            lat = primitive_lattice_in(atoms, self.primitive)
        except ValueError:
            return False
        sp = self.primitive.positions @ np.linalg.inv(self.primitive.cell.array)
        d = atoms.positions @ np.linalg.inv(lat) - sp[idx]
        d -= np.rint(d)
        return bool(np.all(np.linalg.norm(d @ lat, axis=1) < self._site_radius()))

    def _site_radius(self) -> float:
        if self._radius is None:
            prim = self.primitive
            sp = prim.positions @ np.linalg.inv(prim.cell.array)
            dist = _site_distances(sp, sp, prim.cell.array)
            same = prim.numbers[:, None] == prim.numbers[None, :]
            np.fill_diagonal(same, False)
            self._radius = 0.5 * float(dist[same].min()) if same.any() else np.inf
        return self._radius

    def get_born_charges(self, atoms: Atoms) -> np.ndarray:
        """Return Z*, ``shape=(n_atoms, 3, 3)``, float64, e (``Z*[k, b, a]``)."""
        return self.map_to(atoms)

    def get_born_charges_torch(
        self, atoms: Atoms, positions: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """Constant Z* as a tensor with the dtype and device of ``positions``."""
        import torch

        return torch.as_tensor(self.map_to(atoms), dtype=positions.dtype, device=positions.device)

    def todict(self) -> dict[str, Any]:
        """JSON-serialisable description (inverse: :meth:`from_dict`)."""
        prim = None
        if self.primitive is not None:
            prim = {
                "numbers": self.primitive.numbers.tolist(),
                "positions": self.primitive.positions.tolist(),
                "cell": self.primitive.cell.array.tolist(),
                "pbc": self.primitive.pbc.tolist(),
            }
        return {
            "class": type(self).__name__,
            "born_charges": self.born_charges.tolist(),
            "primitive": prim,
            "epsilon_inf": None if self.epsilon_inf is None else self.epsilon_inf.tolist(),
            "match_tolerance": self.match_tolerance,
        }

    def __repr__(self) -> str:
        where = (
            f"primitive={self.primitive.get_chemical_formula()}"
            if self.primitive is not None
            else "no primitive"
        )
        return f"FixedBornCharges(n={len(self.born_charges)}, {where})"
