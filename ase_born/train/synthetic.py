r"""An analytic, equivariant stand-in for DFPT Born charges (tests, demos, benchmarks).

:func:`analytic_born_charges` gives every atom ``k`` (species ``s_k``) the tensor

.. math::

    Z^*_k = \Big(q_{s_k} + \gamma \sum_j w^0_{s_j} f(r_{kj})\Big) I
          + \alpha \sum_j w^2_{s_j} f(r_{kj}) \big(\hat r_{kj}\hat r_{kj}^T - I/3\big)
          + \beta\, [p_k]_\times,
    \qquad p_k = \sum_j g(r_{kj})\, u_j \times \hat r_{kj},
    \quad u_j = \sum_m g(r_{jm})\, \hat r_{jm}

with sums over ALL periodic images within ``r_cut`` (the complete neighbour list of
:func:`ase_born.models.graph.neighbor_list`), smooth radial functions that vanish at
``r_cut`` (``f(r) = ½(1 + cos πr/r_c)``, ``g(r) = f(r) r / r_c``) and
``[p]_×[b, a] = ε_{bac} p_c`` (antisymmetric). ``p_k`` is a pseudovector (cross product of
two polar vectors), so ``Z*`` is a true rank-2 tensor with 0e + 1e + 2e parts and
``Z*(R x) = R Z*(x) Rᵀ`` for every rotation and inversion. It is NOT physics: it is a
non-trivial target the Equivar network can represent (two message-passing steps), used
to check that training learns geometry. Default coefficients give CaTiO3-like values
(cubic cell: Ca 2.6, Ti 7.2, O∥ −5.6, O⊥ −2.2 e; antisymmetric parts ~0.1 e in
displaced cells). The values are RAW: they do not
satisfy the sum rule, like real DFT output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from ase_born.io.extxyz import set_born_charges
from ase_born.models.graph import neighbor_list


@dataclass(frozen=True)
class AnalyticBornModel:
    """Coefficients of :func:`analytic_born_charges` (keys: chemical symbols; others 0)."""

    q: Mapping[str, float] = field(default_factory=lambda: {"Ca": 2.6, "Ti": 7.0, "O": -3.2})
    w0: Mapping[str, float] = field(default_factory=lambda: {"Ca": 0.05, "Ti": -0.25, "O": 0.1})
    w2: Mapping[str, float] = field(default_factory=lambda: {"Ca": 1.0, "Ti": -6.0, "O": 1.0})
    gamma: float = 1.0
    alpha: float = 1.0
    beta: float = 20.0
    r_cut: float = 3.0


def analytic_born_charges(atoms: Atoms, model: AnalyticBornModel | None = None) -> np.ndarray:
    """Z* of the analytic model (module docstring).

    Returns
    -------
    numpy.ndarray, shape=(n_atoms, 3, 3)
        ``Z*[k, b, a]`` in e (raw; no sum-rule correction).
    """
    m = model or AnalyticBornModel()
    n = len(atoms)
    symbols = atoms.get_chemical_symbols()
    (j, i), shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, m.r_cut, 1e-8)
    vec = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array  # centre i -> j
    r = np.linalg.norm(vec, axis=1)
    rhat = vec / r[:, None]
    f = 0.5 * (1.0 + np.cos(np.pi * r / m.r_cut))
    g = f * r / m.r_cut
    q = np.array([m.q.get(s, 0.0) for s in symbols])
    w0 = np.array([m.w0.get(s, 0.0) for s in symbols])
    w2 = np.array([m.w2.get(s, 0.0) for s in symbols])

    iso = q.copy()
    np.add.at(iso, i, m.gamma * w0[j] * f)
    z = iso[:, None, None] * np.eye(3)
    outer = rhat[:, :, None] * rhat[:, None, :] - np.eye(3) / 3.0
    np.add.at(z, i, m.alpha * (w2[j] * f)[:, None, None] * outer)

    u = np.zeros((n, 3))
    np.add.at(u, i, g[:, None] * rhat)
    p = np.zeros((n, 3))
    np.add.at(p, i, g[:, None] * np.cross(u[j], rhat))
    eps = np.zeros((3, 3, 3))
    eps[0, 1, 2] = eps[1, 2, 0] = eps[2, 0, 1] = 1.0
    eps[0, 2, 1] = eps[2, 1, 0] = eps[1, 0, 2] = -1.0
    z += m.beta * np.einsum("bac,kc->kba", eps, p)
    return z


def synthetic_frames(
    n_structures: int,
    *,
    seed: int = 0,
    kinds: Sequence[str] = ("cubic5",),
    model: AnalyticBornModel | None = None,
) -> list[Atoms]:
    """CaTiO3 structures of :func:`ase_born.dft.sampler.make_structure` labelled by the model.

    Structure IDs and the TEST tag (``info["split"]``) come from the sampler (a pure
    function of the ID); kinds are cycled. ``seed`` changes the geometries, not the IDs.
    """
    from ase_born.dft.sampler import make_structure

    frames = []
    counters = dict.fromkeys(kinds, 0)
    for k in range(n_structures):
        kind = kinds[k % len(kinds)]
        atoms = make_structure(kind, counters[kind], seed=seed)
        counters[kind] += 1
        atoms.info.pop("sampling", None)
        set_born_charges(atoms, analytic_born_charges(atoms, model))
        frames.append(atoms)
    return frames


__all__ = ["AnalyticBornModel", "analytic_born_charges", "synthetic_frames"]
