"""Structural analysis of perovskite MD: octahedral tilts, pseudo-cubic lattice, phases.

Octahedral tilt order parameters
--------------------------------
:class:`TiltAnalyzer` is built once from a reference structure (any supercell of the
pseudo-cubic ABO3 lattice, e.g. the Pnma cell and its repeats).  It finds

* the pseudo-cubic frame: the three B–B lattice vectors ``A_i`` (rows, Å) averaged over all
  B sites, and the closest orthonormal frame ``e_i`` (polar decomposition);
* each B site's integer pseudo-cubic coordinates ``n`` (relative to the first B site);
* each octahedron's six X neighbours, one along each of ``±e_i``.

For a structure it fits, per octahedron, the rotation ``R_n`` that best maps the ideal
octahedron ``±A_i/2`` (strained with the cell, ``A_i → A_i F`` with ``F = h0⁻¹h``) onto the
actual B→X vectors (Kabsch), and takes its rotation vector ``ω_n`` (degrees, components
along ``e_i``).  The order parameters are the Fourier components of ``ω`` at the zone-boundary
points of the pseudo-cubic lattice::

    M_i = (1/N) Σ_n ω_{n,i} (−1)^(n_j + n_k)       in-phase tilt about i   (M3+, Glazer "+")
    R_i = (1/N) Σ_n ω_{n,i} (−1)^(n_x + n_y + n_z)  out-of-phase tilt about i (R4+, Glazer "−")

in degrees (signed; the sign only says which of the two domains).  A component whose wave
vector does not fit the supercell (e.g. an in-phase tilt about the pseudo-cubic axes lying
in the a–c plane of the Pnma cell) is reported as NaN.  For Pnma CaTiO3 (a−b+a−): ``M``
about the pseudo-cubic axis along b, ``R`` about the two axes in the a–c plane.

Phase identification
--------------------
:func:`classify_tilts` turns ``(M, R)`` into a Glazer pattern and a space group (Howard &
Stokes, Acta Cryst. B 54, 782 (1998)): ``000`` Pm-3m, ``00−`` I4/mcm, ``00+`` P4/mbm,
``−+−`` with equal ``−`` Pnma, ``0−−`` equal Imma, ``−−−`` equal R-3c, ...  The symmetry of a
time-averaged structure is found independently with spglib (:func:`space_group`).

Pseudo-cubic lattice parameters
-------------------------------
:func:`pseudocubic_lattice` divides each supercell vector by the norm of its integer
pseudo-cubic coordinates: for the Pnma setting ``a/√2``, ``b/2``, ``c/√2`` per 20-atom cell
(``a/(√2 n_a)`` etc. for a repeat), for a cubic-axes supercell ``a/n_a``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

#: Glazer pattern in the canonical order of :func:`classify_tilts` (untilted axes first, then
#: out-of-phase, then in-phase, larger tilts first) -> (space group symbol, number), Howard &
#: Stokes (1998): all 23 Glazer systems (equal magnitudes of different kinds need no letter of
#: their own), so two equal tilts of one kind appear both ways (``a-b-b-``/``a-a-c-``)
GLAZER_SPACE_GROUPS = {
    "a0a0a0": ("Pm-3m", 221),
    "a0a0c-": ("I4/mcm", 140),
    "a0a0c+": ("P4/mbm", 127),
    "a0b-b-": ("Imma", 74),
    "a0b-c-": ("C2/m", 12),
    "a0b+b+": ("I4/mmm", 139),
    "a0b-c+": ("Cmcm", 63),  # a0b+c- in Howard & Stokes' order
    "a-a-a-": ("R-3c", 167),
    "a-b-b-": ("C2/c", 15),
    "a-a-c-": ("C2/c", 15),  # a-b-b- with the equal pair the larger
    "a-b-c-": ("P-1", 2),
    "a-a-c+": ("Pnma", 62),
    "a-b-c+": ("P21/m", 11),
    "a+a+a+": ("Im-3", 204),
    "a+b+c+": ("Immm", 71),
    "a+b+b+": ("Immm", 71),
    "a+a+c+": ("Immm", 71),  # a+b+b+ with the equal pair the larger
    "a0b+c+": ("Immm", 71),
    "a-b+b+": ("P42/nmc", 137),  # a+a+c-
    "a-b+c+": ("Pmmn", 59),  # a+b+c-
}

#: experimental transition temperatures of CaTiO3 (K), Yashima & Ali 2009 (seed ref. 24)
EXPERIMENTAL_TRANSITIONS_K = {"Pnma -> I4/mcm": 1512.0, "I4/mcm -> Pm-3m": 1635.0}


def _min_image(d_frac: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    return d_frac - np.rint(d_frac) * np.asarray(pbc, dtype=float)


def _kabsch_rotations(ideal: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Best rotations ``R`` with ``R d ≈ v`` per octahedron; ideal/actual shape (n, 6, 3)."""
    h = np.einsum("nja,njb->nab", ideal, actual)  # Σ_j d_j ⊗ v_j
    u, _, vt = np.linalg.svd(h)
    v = np.swapaxes(vt, 1, 2)
    ut = np.swapaxes(u, 1, 2)
    d = np.sign(np.linalg.det(v @ ut))
    d[d == 0] = 1.0
    corr = np.tile(np.eye(3), (len(h), 1, 1))
    corr[:, 2, 2] = d
    return v @ corr @ ut


def _rotvec(rot: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rot).as_rotvec()


def perovskite_sites(atoms: Atoms) -> tuple[str, str] | None:
    """``(B, X)`` symbols of an ABX3 perovskite from its composition, or ``None``.

    Three species in the ratio 1:1:3; X is the threefold one and B, of the other two, the one
    closer to its nearest X (the octahedron centre: Ti–O ≈ 1.95 Å vs Ca–O ≥ 2.3 Å in CaTiO3).
    """
    syms = np.array(atoms.get_chemical_symbols())
    species, counts = np.unique(syms, return_counts=True)
    if len(species) != 3 or atoms.cell.rank < 3:
        return None
    n = counts.min()
    if sorted(counts.tolist()) != [n, n, 3 * n]:
        return None
    x = str(species[np.argmax(counts)])
    x_idx = np.nonzero(syms == x)[0]
    nearest = {}
    for c in species:
        if c == x:
            continue
        i = int(np.nonzero(syms == c)[0][0])
        nearest[str(c)] = float(atoms.get_distances(i, x_idx, mic=True).min())
    return min(nearest, key=nearest.get), x


class TiltAnalyzer:
    """Octahedral tilt order parameters of ABO3 perovskite structures (module docstring).

    Parameters
    ----------
    reference : ase.Atoms
        A supercell of the pseudo-cubic perovskite lattice (tilted or not) with a 3D cell;
        the topology (octahedra, B-site lattice coordinates) is taken from it and reused for
        every analysed structure with the same atom order.
    b_site, anion : str, optional
        Chemical symbols of the octahedron centre (B) and of the anion (X); by default
        inferred from the composition (:func:`perovskite_sites`, e.g. Zr and O for
        CaZrO3), else Ti and O.
    bond_cutoff : float
        Largest B–X distance (Å) considered when finding the octahedra of the reference.

    Attributes
    ----------
    axes : numpy.ndarray, shape=(3, 3)
        Orthonormal pseudo-cubic frame, rows ``e_x, e_y, e_z`` (Cartesian).
    lattice_vectors : numpy.ndarray, shape=(3, 3)
        Mean B–B vectors ``A_i`` of the reference (rows, Å).
    commensurate : dict
        ``{"M": bool array (3,), "R": bool array (3,)}``: which components fit the cell.
    cell_in_pseudocubic : numpy.ndarray, shape=(3, 3), int
        Supercell vectors in integer pseudo-cubic coordinates (rows).
    """

    def __init__(
        self,
        reference: Atoms,
        b_site: str | None = None,
        anion: str | None = None,
        bond_cutoff: float = 2.6,
    ) -> None:
        if reference.cell.rank < 3:
            raise ValueError("TiltAnalyzer needs a structure with a 3D cell")
        if b_site is None or anion is None:
            b_guess, x_guess = perovskite_sites(reference) or ("Ti", "O")
            b_site = b_guess if b_site is None else b_site
            anion = x_guess if anion is None else anion
        syms = np.array(reference.get_chemical_symbols())
        self.b_idx = np.nonzero(syms == b_site)[0]
        self.x_idx = np.nonzero(syms == anion)[0]
        if len(self.b_idx) == 0 or len(self.x_idx) != 3 * len(self.b_idx):
            raise ValueError(
                f"expected an ABX3 perovskite with B={b_site!r}, X={anion!r}: found {len(self.b_idx)} "
                f"{b_site} and {len(self.x_idx)} {anion}"
            )
        self.numbers = reference.numbers.copy()
        self.cell0 = np.asarray(reference.cell.array, dtype=float).copy()
        pbc = reference.pbc
        pos = reference.positions
        cell = self.cell0
        inv = np.linalg.inv(cell)

        # --- B–B lattice vectors (27 images, 6 nearest of every B site)
        images = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)
        bpos = pos[self.b_idx]
        d = (bpos[None, :, :] - bpos[:, None, :]) @ inv
        d = _min_image(d, pbc)
        vec = (d[:, :, None, :] + images[None, None]) @ cell  # (nb, nb, 27, 3)
        vec = vec.reshape(len(bpos), -1, 3)
        dist = np.linalg.norm(vec, axis=-1)
        dist[dist < 0.5] = np.inf
        order = np.argsort(dist, axis=1)[:, :6]
        near = np.take_along_axis(vec, order[:, :, None], axis=1)  # (nb, 6, 3)
        # axes from the first B site: three mutually non-parallel pairs
        first = near[0]
        dirs: list[np.ndarray] = []
        for v in first:
            u = v / np.linalg.norm(v)
            if all(abs(u @ w / np.linalg.norm(w)) < 0.7 for w in dirs):
                dirs.append(v)
        if len(dirs) != 3:
            raise ValueError(
                "could not find three pseudo-cubic B–B directions; is this a perovskite?"
            )
        guess = np.array(dirs)
        # assign to x, y, z by best alignment with the Cartesian axes, positive components
        best = max(
            itertools.permutations(range(3)),
            key=lambda p: sum(abs(guess[p[i], i]) / np.linalg.norm(guess[p[i]]) for i in range(3)),
        )
        guess = guess[list(best)]
        for i in range(3):
            if guess[i, i] < 0 or (abs(guess[i, i]) < 1e-8 and guess[i].sum() < 0):
                guess[i] = -guess[i]
        # average over all B sites: the neighbour vector closest to each +guess direction
        gn = guess / np.linalg.norm(guess, axis=1)[:, None]
        cos = np.einsum("bja,ia->bij", near / np.linalg.norm(near, axis=-1)[..., None], gn)
        pick = np.argmax(cos, axis=2)  # (nb, 3)
        if np.min(np.take_along_axis(cos, pick[:, :, None], axis=2)) < 0.8:
            raise ValueError("B sites do not form a pseudo-cubic lattice (B–B directions differ)")
        lat = near[np.arange(len(near))[:, None], pick]  # (nb, 3, 3)
        self.lattice_vectors = lat.mean(axis=0)
        uu, _, vt = np.linalg.svd(self.lattice_vectors)
        self.axes = uu @ vt  # rows: closest orthonormal frame
        if np.linalg.det(self.axes) < 0:  # keep a right-handed frame
            self.axes[2] *= -1
            self.lattice_vectors[2] *= -1
        lat_inv = np.linalg.inv(self.lattice_vectors)

        # --- integer pseudo-cubic coordinates of B sites and of the supercell vectors
        rel = (bpos - bpos[0]) @ lat_inv
        self.b_coords = np.rint(rel).astype(int)
        if np.max(np.abs(rel - self.b_coords)) > 0.25:
            raise ValueError("B sites are not on a pseudo-cubic lattice")
        cell_pc = cell @ lat_inv
        self.cell_in_pseudocubic = np.rint(cell_pc).astype(int)
        if np.max(np.abs(cell_pc - self.cell_in_pseudocubic)) > 0.2:
            raise ValueError(
                "the cell is not a supercell of the pseudo-cubic perovskite lattice "
                f"(cell vectors in pseudo-cubic units: {np.round(cell_pc, 3).tolist()})"
            )
        m = self.cell_in_pseudocubic
        self.commensurate = {
            "R": np.array([bool(np.all(m.sum(1) % 2 == 0))] * 3),
            "M": np.array([bool(np.all((m.sum(1) - m[:, i]) % 2 == 0)) for i in range(3)]),
        }
        nb = self.b_coords
        self.phase_R = (-1.0) ** nb.sum(1)
        self.phase_M = np.stack([(-1.0) ** (nb.sum(1) - nb[:, i]) for i in range(3)], axis=1)

        # --- octahedra: the X neighbour along each of ±e_i
        xpos = pos[self.x_idx]
        dfrac = _min_image((xpos[None, :, :] - bpos[:, None, :]) @ inv, pbc)  # (nb, nx, 3)
        # all 27 images: in one-formula-unit cells the same X sits at +a/2 and -a/2
        dx = (dfrac[:, :, None, :] + images[None, None]) @ cell  # (nb, nx, 27, 3)
        r = np.linalg.norm(dx, axis=-1)
        targets = np.concatenate([self.lattice_vectors / 2, -self.lattice_vectors / 2])  # (6, 3)
        self.octahedra = np.empty((len(bpos), 6), dtype=int)
        self.bond_vectors = np.empty((len(bpos), 6, 3))
        rows = np.arange(len(bpos))
        for j, t in enumerate(targets):
            dist_t = np.linalg.norm(dx - t, axis=-1).reshape(len(bpos), -1)
            dist_t[r.reshape(len(bpos), -1) > bond_cutoff] = np.inf
            k = np.argmin(dist_t, axis=1)
            best = dist_t[rows, k]
            if np.any(~np.isfinite(best)) or np.any(best > 0.6 * np.linalg.norm(t)):
                which = int(np.argmax(np.where(np.isfinite(best), best, np.inf)))
                raise ValueError(
                    f"could not find the octahedron of {b_site} atom {int(self.b_idx[which])}: no {anion} "
                    f"within {bond_cutoff} Å near the pseudo-cubic direction {np.round(t, 2).tolist()}"
                )
            ix, im = np.divmod(k, len(images))
            self.octahedra[:, j] = self.x_idx[ix]
            self.bond_vectors[:, j] = dx[rows, ix, im]
        self.ideal = targets  # (6, 3) in the reference cell

    # ------------------------------------------------------------------ analysis
    def _check(self, atoms: Atoms) -> None:
        if len(atoms) != len(self.numbers) or not np.array_equal(atoms.numbers, self.numbers):
            raise ValueError(
                "structure does not match the TiltAnalyzer reference (atom count/order)"
            )

    def rotation_vectors(self, atoms: Atoms) -> np.ndarray:
        """Per-octahedron rotation vectors in degrees, components along :attr:`axes`, shape (n_B, 3)."""
        self._check(atoms)
        h = np.asarray(atoms.cell.array, dtype=float)
        f_def = np.linalg.solve(self.cell0, h)
        inv = np.linalg.inv(h)
        b = atoms.positions[self.b_idx]
        x = atoms.positions[self.octahedra]  # (nb, 6, 3)
        v_ref = self.bond_vectors @ f_def  # reference bonds, strained with the cell (images kept)
        v = v_ref + _min_image((x - b[:, None, :] - v_ref) @ inv, atoms.pbc) @ h
        ideal = np.broadcast_to(self.ideal @ f_def, v.shape)
        rot = _kabsch_rotations(ideal, v)
        # orthonormal frame of the strained lattice
        uu, _, vt = np.linalg.svd(self.lattice_vectors @ f_def)
        axes = uu @ vt
        if np.linalg.det(axes) < 0:
            axes[2] *= -1
        return np.degrees(_rotvec(rot) @ axes.T)

    def order_parameters(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """``{"M": (3,), "R": (3,)}`` tilt amplitudes in degrees (NaN where incommensurate)."""
        w = self.rotation_vectors(atoms)
        m = np.mean(w * self.phase_M, axis=0)
        r = np.mean(w * self.phase_R[:, None], axis=0)
        m[~self.commensurate["M"]] = np.nan
        r[~self.commensurate["R"]] = np.nan
        return {"M": m, "R": r}


def pseudocubic_lattice(cell: Any, cell_in_pseudocubic: Any) -> np.ndarray:
    """Pseudo-cubic lattice parameters along the supercell axes, shape (3,), Å.

    Parameters
    ----------
    cell : array, shape=(3, 3)
        Current supercell (rows, Å).
    cell_in_pseudocubic : array, shape=(3, 3)
        Integer pseudo-cubic coordinates of the supercell vectors
        (:attr:`TiltAnalyzer.cell_in_pseudocubic`); e.g. ``[[1,0,1],[0,2,0],[1,0,-1]]`` for
        the 20-atom Pnma cell, giving ``(a/√2, b/2, c/√2)``.
    """
    c = np.asarray(cell, dtype=float)
    m = np.asarray(cell_in_pseudocubic, dtype=float)
    return np.linalg.norm(c, axis=1) / np.linalg.norm(m, axis=1)


def classify_tilts(
    m: Sequence[float], r: Sequence[float], threshold_deg: float = 2.0, equal_rtol: float = 0.25
) -> dict[str, Any]:
    """Glazer pattern and space group from tilt amplitudes.

    Parameters
    ----------
    m, r : 3 floats
        In-phase and out-of-phase amplitudes about the pseudo-cubic axes (degrees; NaN
        counts as zero).
    threshold_deg : float
        Amplitudes with ``|.| <= threshold_deg`` count as no tilt.
    equal_rtol : float
        Two tilts of the same kind (both in-phase or both out-of-phase) count as equal (same
        Glazer letter) when their magnitudes differ by less than ``equal_rtol`` times the
        larger, against every tilt already under that letter (no chaining).  Tilts of
        different kinds always get different letters (``a−a−c+`` is Pnma
        whatever the in-phase magnitude).

    Returns
    -------
    dict
        ``glazer`` (per axis, e.g. ``"a-b+a-"``), ``pattern`` (sorted canonical form used for
        the lookup, e.g. ``"a-a-c+"``), ``phase`` (space-group symbol or ``"other"``),
        ``space_group_number`` (or ``None``), ``tilt_axes`` (per axis ``"0"``, ``"+"``, ``"-"``,
        or ``"?"`` when both in- and out-of-phase tilts exceed the threshold).
    """
    m = np.nan_to_num(np.abs(np.asarray(m, dtype=float)))
    r = np.nan_to_num(np.abs(np.asarray(r, dtype=float)))
    sign = []
    mag = []
    for i in range(3):
        hm, hr = m[i] > threshold_deg, r[i] > threshold_deg
        if hm and hr:
            sign.append("?")
            mag.append(max(m[i], r[i]))
        elif hm:
            sign.append("+")
            mag.append(m[i])
        elif hr:
            sign.append("-")
            mag.append(r[i])
        else:
            sign.append("0")
            mag.append(0.0)

    def groups(order: Sequence[int]) -> list[int]:
        """Per axis, the first axis (in ``order``) of its Glazer letter group: tilts visited
        in ``order`` join the first group of their kind whose EVERY member they equal (no
        chaining: a≈b and b≈c with a and c apart are not one letter); untilted axes are
        all one group."""
        head = [-1, -1, -1]
        seen: list[int] = []
        for i in order:
            for j in seen:
                if head[j] != j or sign[j] != sign[i]:
                    continue
                members = [k for k in seen if head[k] == j]
                if sign[i] == "0" or all(abs(mag[k] - mag[i]) <= equal_rtol * max(mag[k], mag[i]) for k in members):
                    head[i] = j
                    break
            else:
                head[i] = i
            seen.append(i)
        return head

    def spell(head: Sequence[int], order: Sequence[int]) -> str:
        """The letters in ``order``: a group's letter is the position of its first member
        (Glazer: a new letter is the axis' own letter)."""
        pos = {axis: n for n, axis in enumerate(order)}
        return "".join("abc"[pos[head[i]]] + sign[i] for i in order)

    if "?" in sign:
        glazer = spell(groups(range(3)), range(3))
        return {
            "glazer": glazer,
            "pattern": glazer,
            "phase": "other",
            "space_group_number": None,
            "tilt_axes": sign,
        }
    # canonical: untilted axes first, then out-of-phase, then in-phase; larger tilts first.
    # One grouping (in that order) for both spellings, so that the per-axis string and the
    # pattern name the same odd axis.
    key = {"0": 0, "-": 1, "+": 2}
    idx = sorted(range(3), key=lambda i: (key[sign[i]], -mag[i]))
    head = groups(idx)
    glazer = spell([min(k for k in range(3) if head[k] == head[i]) for i in range(3)], range(3))
    pattern = spell(head, idx)
    sym, num = GLAZER_SPACE_GROUPS.get(pattern, ("other", None))
    return {
        "glazer": glazer,
        "pattern": pattern,
        "phase": sym,
        "space_group_number": num,
        "tilt_axes": sign,
    }


def space_group(atoms: Atoms, symprec: float = 0.1) -> tuple[str, int]:
    """International symbol and number of ``atoms`` found by spglib at ``symprec`` (Å)."""
    import spglib

    ds = spglib.get_symmetry_dataset(
        (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec
    )
    if ds is None:
        return ("P1", 1)
    return (str(ds.international), int(ds.number))


def time_averaged_structure(frames: Sequence[Atoms], reference: Atoms) -> Atoms:
    """Average of MD frames: mean cell and mean fractional positions (unwrapped about the reference).

    Each frame's fractional coordinates are taken relative to the reference sites
    (minimum image), the rigid shift of the whole crystal is removed, and the results are
    averaged; the mean cell is the average of the cells.

    Parameters
    ----------
    frames : sequence of ase.Atoms
        Same atoms and order as ``reference``.
    reference : ase.Atoms
        Sites used to unwrap.
    """
    if len(frames) == 0:
        raise ValueError("no frames to average")
    s0 = reference.get_scaled_positions(wrap=False)
    acc = np.zeros_like(s0)
    cells = np.zeros((3, 3))
    for f in frames:
        if len(f) != len(reference) or not np.array_equal(f.numbers, reference.numbers):
            raise ValueError("frame does not match the reference (atom count/order)")
        ds = _min_image(f.get_scaled_positions(wrap=False) - s0, f.pbc)
        ds -= ds.mean(0)
        acc += ds
        cells += f.cell.array
    out = reference.copy()
    out.calc = None
    out.set_cell(cells / len(frames), scale_atoms=False)
    out.set_scaled_positions(s0 + acc / len(frames))
    return out


def identify_phase(
    atoms: Atoms,
    analyzer: TiltAnalyzer | None = None,
    *,
    threshold_deg: float = 2.0,
    symprec: float = 0.1,
) -> dict[str, Any]:
    """Tilt-based phase label plus the spglib space group of one (e.g. time-averaged) structure.

    Returns
    -------
    dict
        ``classify_tilts`` output plus ``M_deg``, ``R_deg`` (lists), ``spglib_symbol``,
        ``spglib_number``, ``symprec`` and ``agree`` (tilt-based and spglib space-group
        numbers equal).
    """
    ana = analyzer if analyzer is not None else TiltAnalyzer(atoms)
    op = ana.order_parameters(atoms)
    out = classify_tilts(op["M"], op["R"], threshold_deg=threshold_deg)
    sym, num = space_group(atoms, symprec=symprec)
    out.update(
        M_deg=[float(x) for x in op["M"]],
        R_deg=[float(x) for x in op["R"]],
        spglib_symbol=sym,
        spglib_number=num,
        symprec=symprec,
        agree=bool(out["space_group_number"] == num),
    )
    return out


def estimate_transitions(
    temperatures_K: Sequence[float], phases: Sequence[str]
) -> list[dict[str, Any]]:
    """Phase changes between consecutive temperature windows.

    Parameters
    ----------
    temperatures_K : sequence of float
        Window centres in the order the run visited them (increasing for heating, decreasing
        for cooling): each entry goes ``from`` the earlier phase ``to`` the later one.
    phases : sequence of str
        Phase label of each window.

    Returns
    -------
    list of dict
        ``{"from", "to", "temperature_K"}`` at the midpoint of the two windows, in order; a
        phase that comes back later (switching back and forth, as in the seed paper's
        run) shows up as several entries.
    """
    out = []
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            out.append(
                {
                    "from": phases[i - 1],
                    "to": phases[i],
                    "temperature_K": 0.5
                    * (float(temperatures_K[i - 1]) + float(temperatures_K[i])),
                }
            )
    return out


def order_parameter_vanishing(
    temperatures_K: Sequence[float], amplitude_deg: Sequence[float], threshold_deg: float
) -> float | None:
    """Temperature (K) above which an order parameter stays at or below the threshold.

    The midpoint between the last window with ``|amplitude| > threshold`` and the next one;
    ``None`` if it never vanishes, or if it is never above the threshold.
    """
    t = np.asarray(temperatures_K, dtype=float)
    a = np.nan_to_num(np.abs(np.asarray(amplitude_deg, dtype=float)))
    above = np.nonzero(a > threshold_deg)[0]
    if len(above) == 0 or above[-1] == len(t) - 1:
        return None
    i = int(above[-1])
    return float(0.5 * (t[i] + t[i + 1]))


__all__ = [
    "EXPERIMENTAL_TRANSITIONS_K",
    "GLAZER_SPACE_GROUPS",
    "TiltAnalyzer",
    "classify_tilts",
    "estimate_transitions",
    "identify_phase",
    "order_parameter_vanishing",
    "perovskite_sites",
    "pseudocubic_lattice",
    "space_group",
    "time_averaged_structure",
]
