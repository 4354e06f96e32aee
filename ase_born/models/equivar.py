r"""Equivar: the equivariant graph network for Born effective charges.

Re-implementation of the network of Kutana *et al.*, "Representing Born effective
charges with equivariant graph convolutional neural networks" (paper section 2,
SI Table S1), built on ``e3nn`` 0.4.4 primitives. Output: ``Z*`` with
``shape=(n_atoms, 3, 3)`` in e, index order ``Z*[k, b, a]`` (b = field, a =
displacement; :data:`ase_born.conventions.BORN_INDEX_ORDER`).

Architecture (hyperparameters: E ``embedding_dim``, n ``num_radial``, F ``int_num_feat``,
``edge_sh_lmax``, L ``num_interactions``, ``r_max``)
------------------------------------------------------------------------------------
1. **Embedding.** ``nn.Embedding(100, E)`` indexed directly by the atomic number
   (valid Z: 1..99). An equivariant linear layer maps the E scalars to the node
   features; only ``0e -> 0e`` carries weights, so the geometric (``1o, 2e, ...``)
   node features start at zero, as in the paper.
2. **Edges** (see :mod:`ase_born.models.graph`): all periodic images with
   ``r_min < r < r_max`` (0.1 Å, 3.0 Å). Radial basis, as in the published
   evaluation code: n Gaussians ``R_k(r) = exp(-0.5 (r - mu_k)^2 / Delta^2)``,
   ``mu = linspace(0, r_max, n)``, ``Delta = r_max / (n - 1)`` (the paper's
   ``exp(-gamma (r - mu)^2)`` with ``gamma = 1 / (2 Delta^2)``). Angular basis: real
   spherical harmonics ``Y_l`` of the unit vector centre -> neighbour,
   ``e3nn.o3.spherical_harmonics(..., normalize=True, normalization="integral")``
   (the e3nn default, as the published code's ``SphericalHarmonics(..., normalize=True)``).
   Edge attributes: for ``l = 0..edge_sh_lmax`` the outer product ``R ⊗ Y_l``, i.e.
   the irreps ``n x (0e + 1o + 2e [+ 3o + 4e])``.
3. **Interaction block** (L times; node and edge descriptors have the same type and
   size F x (0e + 1o + 2e), as in the paper):

   * edge features: equivariant linear ``n x (0e+1o+2e) -> F x (0e+1o+2e)`` with a bias
     on the scalars, then shifted softplus ``log(1 + e^x) - log 2`` on the scalars;
   * message from neighbour j to centre i: weighted ``'uvu'`` tensor product of the node
     features of j (``F x (0e+1o+2e)``, channel u) with the edge features
     (``F x (0e+1o+2e)``, channel v) on all 19 Clebsch-Gordan paths, producing
     ``F x (0e + 1o + 2e + 1e + 2o + 3o + 3e + 4e)`` (paths with the same output irrep
     are summed);
   * aggregation: sum over the neighbours of i, divided by ``avg_num_neighbors``;
   * ResNet-style update ``x <- x + m`` of all node irreps, plus a learnable bias on
     the scalar channels.

   Only the ``0e, 1o, 2e`` parts of the node features enter the next tensor product.
4. **Readout.** Equivariant linear from ``F x (0e + 2e + 1e)`` node features to
   ``0e + 2e + 1e`` (9 numbers, bias on 0e), then Cartesian 3x3 (below).
5. **Acoustic sum rule** (on by default, ``asr=True``): subtract the per-structure mean
   over atoms (the paper's "subsequent correction"); the raw output stays available
   (``return_raw=True``) for :func:`acoustic_sum` (raw ``Σ_k Z*_k``) and the paper's
   violation metric :func:`asr_violation`.

Where the antisymmetric (1e) part of Z* comes from
--------------------------------------------------
Node features that only carry ``0e, 1o, 2e`` cannot feed a ``1e`` output through a linear
layer. The 19-path tensor product produces ``1e`` outputs (``1o ⊗ 1o`` and
``2e ⊗ 2e``); they are accumulated in the node features by the residual update of every
layer and read by the final linear layer together with ``0e`` and ``2e``. The ``2o, 3o,
3e, 4e`` outputs are accumulated as well but are never read: their 6 paths per layer
carry weights (they are part of the paper's parameter count) that do not influence the
output. The fast implementation does not compute them.

Parameter count (Table S1, exact for all 20 rows; checked by the test-suite)
---------------------------------------------------------------------------
``params = 100 E + E F + L (19 F^2 + 3 n F + 2 F) + 4 F + 1`` with:

=================  =================  =================================================
term               count              where
=================  =================  =================================================
``100 E``          embedding table    ``embedding.weight`` (100, E)
``E F``            input linear       ``node_in_weight`` (E, F): E x 0e -> F x 0e
``F`` (of 4F+1)    input bias         ``node_in_bias`` (F,): bias of the scalar node features
``3 n F`` / layer  edge linear        ``layers.k.edge_weight``: n x l -> F x l for l = 0e, 1o,
                                      2e (``l = 3o, 4e`` edge attributes of ``edge_sh_lmax=4``
                                      have no matching output irrep, hence no weights: lmax 4
                                      has the same count as lmax 2)
``F`` / layer      edge bias          ``layers.k.edge_bias``: bias of the scalar edge
                                      features, before the shifted softplus
``19 F^2`` / layer tensor product     ``layers.k.tp_weight``: one F x F ``'uvu'`` weight per
                                      Clebsch-Gordan path
``F`` / layer      node bias          ``layers.k.node_bias``: bias of the scalar update
``3 F`` (of 4F+1)  readout            ``readout_weight``: F x (0e, 2e, 1e) -> 1 x (0e, 2e, 1e)
``1``              readout bias       ``readout_bias``: bias of the 0e output
=================  =================  =================================================

The biases (2F per layer, F + 1 outside) are this implementation's choice: the paper
pins only the total. All weights are stored in e3nn's flat layouts (``o3.Linear`` and
``o3.TensorProduct`` instruction order), so that the stock e3nn modules can run the same
state dict.

Two implementations of the tensor product (same parameters, same results)
-------------------------------------------------------------------------
``tp_impl="e3nn"`` (reference)
    Stock ``e3nn.o3.Linear`` on the paper's flattened edge attributes and stock
    ``e3nn.o3.TensorProduct`` with 19 weighted ``'uvu'`` instructions (e3nn 0.4.4
    defaults: ``irrep_normalization="component"``, ``path_normalization="element"``).
    Slow on CPU (1-2.5 s per 1000 edges per layer at F = 32 on 2 shared cores).
``tp_impl="compiled"``
    The fast form below through ``torch.compile(dynamic=True)`` (TorchInductor fuses the
    memory-bound per-path message assembly; needs a C++ compiler on CPU, Triton on CUDA).
    Compiled lazily on the first call (20-75 s on CPU without gradients, depending on
    TorchInductor's on-disk cache; once per process and model; changing the number of
    atoms or edges does not recompile). Measured on 2-core CPU, BM2, 640 atoms, 1 thread:
    1.8-1.9x the eager fast path, same Z* to ~1e-6 (``bench/bench_equivar_impl.py``).
    Worth it for MD runs of thousands of steps.
``tp_impl="fast"`` (default)
    Edge features are products ``a_{v,l}(r) Y_lm(r̂)`` of a radial channel vector and the
    spherical harmonics (true by construction: the edge linear acts on the radial index
    of ``R ⊗ Y_l`` and the activation on scalars only). Hence the 'uvu' product
    ``out_{u,k} = c_p Σ_{v,i,j} w_p[u,v] C_p[i,j,k] x_{u,i} a_v Y_j`` is computed as a
    per-path F x F matmul on the edge radial channels, ``b_p = a @ w_pᵀ``, followed by a
    channel-wise Clebsch-Gordan contraction with the per-edge matrix
    ``G_p[i,k] = c_p Σ_j C_p[i,j,k] Y_j`` (``C_p = e3nn.o3.wigner_3j``, precomputed
    buffers; ``c_p`` reproduces e3nn's normalisation). Paths whose outputs are never read,
    and paths whose node input is still zero (first layer), are skipped.
:class:`ChannelwiseTensorProduct` is the same fast form for general (not factorised)
second operands; tests compare all of them to e3nn in float64.

Smooth cutoff
-------------
The paper's Gaussians are cut abruptly at ``r_max``: an atom crossing the cutoff sphere
makes ``Z*(R)`` jump (so do field forces in MD and the conservative-mode energy).
``cutoff_envelope="polynomial"`` multiplies the edge features (after the activation) by
``u(r) = 1 - 28 d^6 + 48 d^7 - 21 d^8`` (``d = r / r_max``; DimeNet's p = 6 envelope),
so that messages vanish at ``r_max`` with continuous first and second derivatives.
No parameters are added; a model trained with one setting must be used with it.
``"none"`` (default) is the paper's choice.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ase_born.models._e3nn import E3NN_VERSION, o3
from ase_born.models.graph import DEFAULT_R_MAX, DEFAULT_R_MIN, GraphBatch, edge_vectors
from ase_born.models.utils import dtype_name, resolve_device, resolve_dtype

# ---------------------------------------------------------------------------
# Irreps bookkeeping
# ---------------------------------------------------------------------------
#: irreps (l, parity) of node/edge descriptors entering the tensor product: 0e, 1o, 2e
TP_IN_IRREPS: tuple[tuple[int, int], ...] = ((0, 1), (1, -1), (2, 1))
#: irreps (l, parity) produced by the 19 paths, in the order of the e3nn ``irreps_out``
TP_OUT_IRREPS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, -1), (2, 1), (1, 1), (2, -1), (3, -1), (3, 1), (4, 1),
)  # fmt: skip


def _irrep_name(ir: tuple[int, int]) -> str:
    return f"{ir[0]}{'e' if ir[1] == 1 else 'o'}"


def _tp_paths() -> list[tuple[int, int, int]]:
    """The 19 instructions ``(i_in1, i_in2, i_out)``: for i1, for i2, for l_out ascending."""
    paths = []
    for i1, (l1, p1) in enumerate(TP_IN_IRREPS):
        for i2, (l2, p2) in enumerate(TP_IN_IRREPS):
            for lo in range(abs(l1 - l2), l1 + l2 + 1):
                paths.append((i1, i2, TP_OUT_IRREPS.index((lo, p1 * p2))))
    return paths


#: the 19 Clebsch-Gordan paths as (index in TP_IN_IRREPS (node), index (edge), index in TP_OUT_IRREPS)
TP_PATHS: tuple[tuple[int, int, int], ...] = tuple(_tp_paths())
assert len(TP_PATHS) == 19

#: indices in TP_OUT_IRREPS of 0e, 1o, 2e, 1e (the only outputs that are ever read)
_I0E, _I1O, _I2E, _I1E = 0, 1, 2, 3
#: readout input irreps (indices in TP_OUT_IRREPS), paper order 0e + 2e + 1e
_READOUT_IN = (_I0E, _I2E, _I1E)
#: fast path message layout along the last axis: 0e | 1o | 2e | 1e
_NODE_OFFSETS = (0, 1, 4, 9, 12)
_NODE_DIM = 12


def _path_coefficients(mul: int) -> list[float]:
    """e3nn 0.4.4 normalisation of each 'uvu' path (component irreps, element paths).

    ``alpha = dim(out) / Σ_{paths q with the same output} mul_in2``, coefficient ``sqrt(alpha)``
    (unit input variances, ``path_weight = 1``).
    """
    coefs = []
    for _, _, io in TP_PATHS:
        n_same = sum(1 for q in TP_PATHS if q[2] == io)
        dim_out = 2 * TP_OUT_IRREPS[io][0] + 1
        coefs.append(math.sqrt(dim_out / (n_same * mul)))
    return coefs


def irreps_string(mul: int, irreps: Sequence[tuple[int, int]]) -> str:
    """``"Fx0e+Fx1o+..."`` for e3nn."""
    return "+".join(f"{mul}x{_irrep_name(ir)}" for ir in irreps)


# ---------------------------------------------------------------------------
# Cartesian conversion
# ---------------------------------------------------------------------------
def irreps_to_cartesian_matrix(
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Change of basis from ``0e + 2e + 1e`` (9 numbers) to a row-major 3x3 tensor.

    ``t = M @ o`` with rows ``t11, t12, t13, t21, ..., t33`` (REFERENCE "published
    evaluation code"; ``s2 = 1/√2, s3 = 1/√3, s6 = 1/√6``)::

        t11 = s3 o0 - s6 o3 - s2 o5    t22 = s3 o0 + 2 s6 o3    t33 = s3 o0 - s6 o3 + s2 o5
        t12 = s2 o2 + s2 o8            t21 = s2 o2 - s2 o8
        t13 = s2 o1 - s2 o7            t31 = s2 o1 + s2 o7
        t23 = s2 o4 + s2 o6            t32 = s2 o4 - s2 o6

    It is orthogonal, equals ``e3nn.io.CartesianTensor("ij")`` after reordering
    ``0e+2e+1e -> 0e+1e+2e`` (tested), and satisfies ``t(D(R) o) = R t(o) Rᵀ`` for e3nn's
    Wigner matrices ``D``. The antisymmetric part is ``(t - tᵀ)/2 = s2 ε_{ijk} o1e_k``
    with ``o1e = (o6, o7, o8)`` in (x, y, z) order.

    Returns
    -------
    torch.Tensor, shape=(9, 9)
    """
    s2, s3, s6 = 1 / math.sqrt(2), 1 / math.sqrt(3), 1 / math.sqrt(6)
    m = torch.zeros(9, 9, dtype=torch.float64)
    rows = {
        0: {0: s3, 3: -s6, 5: -s2},  # t11
        1: {2: s2, 8: s2},  # t12
        2: {1: s2, 7: -s2},  # t13
        3: {2: s2, 8: -s2},  # t21
        4: {0: s3, 3: 2 * s6},  # t22
        5: {4: s2, 6: s2},  # t23
        6: {1: s2, 7: s2},  # t31
        7: {4: s2, 6: -s2},  # t32
        8: {0: s3, 3: -s6, 5: s2},  # t33
    }
    for r, cols in rows.items():
        for c, v in cols.items():
            m[r, c] = v
    return m.to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
RADIAL_BASES = ("gaussian", "bessel")
CUTOFF_ENVELOPES = ("none", "polynomial")


@dataclass(frozen=True)
class EquivarConfig:
    """Hyperparameters of :class:`Equivar` (names follow SI Table S1).

    Attributes
    ----------
    embedding_dim : int
        E, size of the learnable element embedding.
    num_radial : int
        n, number of radial basis functions (``num_rad``).
    int_num_feat : int
        F, multiplicity of every irrep of node and edge descriptors.
    edge_sh_lmax : int
        Highest spherical-harmonic degree of the edge attributes (>= 2; degrees above
        2 have no path into the F x (0e+1o+2e) edge features).
    num_interactions : int
        L, number of interaction blocks.
    r_max : float
        Radial cutoff, Å (paper: 3.0).
    r_min : float
        Pairs closer than this (Å) are not edges (published code: 0.1).
    radial_basis : {"gaussian", "bessel"}
        ``"gaussian"``: the paper's (module docstring). ``"bessel"``: NequIP's
        ``sqrt(2/r_max) sin(k π r / r_max) / r``, ``k = 1..n`` (no extra parameters).
    cutoff_envelope : {"none", "polynomial"}
        ``"none"``: the paper's abrupt cutoff. ``"polynomial"``: smooth (module docstring).
    avg_num_neighbors : float
        Aggregated messages are divided by this constant (1.0: plain sum).
    num_species : int
        Rows of the embedding table (paper: 100; valid atomic numbers ``0 < Z < num_species``).
    asr : bool
        Enforce the acoustic sum rule in the output (default True).
    """

    embedding_dim: int = 32
    num_radial: int = 32
    int_num_feat: int = 32
    edge_sh_lmax: int = 2
    num_interactions: int = 6
    r_max: float = DEFAULT_R_MAX
    r_min: float = DEFAULT_R_MIN
    radial_basis: str = "gaussian"
    cutoff_envelope: str = "none"
    avg_num_neighbors: float = 1.0
    num_species: int = 100
    asr: bool = True

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "num_radial", "int_num_feat", "num_species"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_interactions < 0:
            raise ValueError(f"num_interactions must be >= 0, got {self.num_interactions}")
        if self.edge_sh_lmax < 2:
            raise ValueError(
                f"edge_sh_lmax must be >= 2 (edge descriptors are F x (0e+1o+2e)), got {self.edge_sh_lmax}"
            )
        if not self.r_max > self.r_min >= 0:
            raise ValueError(f"need r_max > r_min >= 0, got {self.r_max}, {self.r_min}")
        if self.radial_basis not in RADIAL_BASES:
            raise ValueError(
                f"radial_basis must be one of {RADIAL_BASES}, got {self.radial_basis!r}"
            )
        if self.cutoff_envelope not in CUTOFF_ENVELOPES:
            raise ValueError(
                f"cutoff_envelope must be one of {CUTOFF_ENVELOPES}, got {self.cutoff_envelope!r}"
            )
        if not self.avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors must be > 0, got {self.avg_num_neighbors}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EquivarConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown EquivarConfig keys: {sorted(unknown)}")
        return cls(**dict(d))


#: base model 1 of the paper (510,081 parameters)
BM1 = EquivarConfig(
    embedding_dim=32, num_radial=32, int_num_feat=64, edge_sh_lmax=2, num_interactions=6
)
#: base model 2 of the paper (139,905 parameters; the main text's "131k" conflicts with the SI)
BM2 = EquivarConfig(
    embedding_dim=32, num_radial=32, int_num_feat=32, edge_sh_lmax=2, num_interactions=6
)
PRESETS: dict[str, EquivarConfig] = {"BM1": BM1, "BM2": BM2}


def paper_parameter_count(config: EquivarConfig) -> int:
    """``100 E + E F + L (19 F² + 3 n F + 2 F) + 4 F + 1`` (Table S1 formula)."""
    E, n, F, L = (
        config.embedding_dim,
        config.num_radial,
        config.int_num_feat,
        config.num_interactions,
    )
    return config.num_species * E + E * F + L * (19 * F * F + 3 * n * F + 2 * F) + 4 * F + 1


# ---------------------------------------------------------------------------
# Functional pieces
# ---------------------------------------------------------------------------
def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x) - log 2`` (SchNet), zero at zero."""
    return nn.functional.softplus(x) - math.log(2.0)


def gaussian_radial_basis(r: torch.Tensor, r_max: float, n: int) -> torch.Tensor:
    """Published-code Gaussians: centres ``linspace(0, r_max, n)``, width = spacing.

    Parameters
    ----------
    r : torch.Tensor, shape=(n_edges,)
        Distances, Å.

    Returns
    -------
    torch.Tensor, shape=(n_edges, n)
        ``exp(-0.5 (r - mu_k)^2 / Delta^2)``.
    """
    mu = torch.linspace(0.0, r_max, n, dtype=r.dtype, device=r.device)
    delta = r_max / (n - 1) if n > 1 else r_max
    return torch.exp(-0.5 * ((r[:, None] - mu[None, :]) / delta) ** 2)


def bessel_radial_basis(r: torch.Tensor, r_max: float, n: int) -> torch.Tensor:
    """``sqrt(2/r_max) sin(k π r / r_max) / r``, ``k = 1..n``; ``shape=(n_edges, n)``."""
    k = torch.arange(1, n + 1, dtype=r.dtype, device=r.device)
    return (
        math.sqrt(2.0 / r_max) * torch.sin(k[None, :] * math.pi * r[:, None] / r_max) / r[:, None]
    )


def polynomial_envelope(r: torch.Tensor, r_max: float, p: int = 6) -> torch.Tensor:
    """DimeNet envelope ``1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)``, 0 beyond.

    ``shape`` as ``r``; C² at ``d = r / r_max = 1``.
    """
    d = r / r_max
    u = (
        1.0
        - (p + 1) * (p + 2) / 2 * d**p
        + p * (p + 2) * d ** (p + 1)
        - p * (p + 1) / 2 * d ** (p + 2)
    )
    return torch.where(d < 1.0, u, torch.zeros_like(u))


def enforce_asr(z: torch.Tensor, batch: torch.Tensor, n_structures: int) -> torch.Tensor:
    """Subtract the per-structure mean over atoms (acoustic sum rule).

    The mean runs over the whole structure, so the correction is not local: it couples
    atoms farther apart than ``r_max`` (in a bulk crystal, one connected graph, that is the
    sum rule itself).  For parts that do not interact (a molecule far from a slab, atoms in
    vacuum) each part's sum is not zero on its own, and a lone atom with no neighbours gets
    ``Z* = 0`` by itself but a nonzero ``Z*`` beside any other atom at any distance
    (measured with the shipped model: Ca alone 0, Ca with an O 10 or 50 Å away +1.34 e,
    with a Ti 50 Å away −0.70 e).  Model such systems as separate structures.

    Parameters
    ----------
    z : torch.Tensor, shape=(n_atoms, 3, 3)
    batch : torch.Tensor, shape=(n_atoms,), dtype=int64
    n_structures : int

    Returns
    -------
    torch.Tensor, shape=(n_atoms, 3, 3)
        ``Σ_{k in s} Z*_k = 0`` for every structure ``s`` (to rounding).
    """
    total = acoustic_sum(z, batch, n_structures)
    counts = torch.bincount(batch, minlength=n_structures).to(z.dtype).clamp_min(1.0)
    return z - (total / counts[:, None, None])[batch]


def acoustic_sum(z: torch.Tensor, batch: torch.Tensor, n_structures: int) -> torch.Tensor:
    """Per-structure raw acoustic sum ``Σ_{k in s} Z*_k``, ``shape=(n_structures, 3, 3)`` (e).

    Batched torch version of :func:`ase_born.physics.acoustic_sum` (zero when the sum rule
    holds).
    """
    out = torch.zeros(n_structures, 3, 3, dtype=z.dtype, device=z.device)
    return out.index_add(0, batch, z)


def asr_violation(z: torch.Tensor, batch: torch.Tensor, n_structures: int) -> torch.Tensor:
    """Per-structure violation ``(1/9) Σ_ab |Σ_{k in s} Z*_k,ab|``, ``shape=(n_structures,)`` (e).

    Batched torch version of :func:`ase_born.physics.asr_violation`; its mean over
    structures of the raw output is the seed SI's "ASR violation MAE" (0.154 BM1, 0.173 BM2).
    """
    return acoustic_sum(z, batch, n_structures).abs().mean(dim=(1, 2))


# ---------------------------------------------------------------------------
# Fast channel-wise tensor product (general form)
# ---------------------------------------------------------------------------
class ChannelwiseTensorProduct(nn.Module):
    """Fast form of e3nn's weighted 'uvu' tensor product on F x (0e+1o+2e) ⊗ F x (0e+1o+2e).

    Same inputs, weights layout, outputs and normalisation as::

        o3.TensorProduct(Fx0e+Fx1o+Fx2e, Fx0e+Fx1o+Fx2e,
                         Fx0e+Fx1o+Fx2e+Fx1e+Fx2o+Fx3o+Fx3e+Fx4e,
                         [(i1, i2, io, "uvu", True) for (i1, i2, io) in TP_PATHS],
                         internal_weights=False, shared_weights=True)

    computed per path as an F x F matmul on the second operand followed by a channel-wise
    Clebsch-Gordan contraction: ``out_u = c_p Σ_ij C_p[i,j,k] x1_{u,i} (w_p x2)_{u,j}``.

    Attributes
    ----------
    irreps_in1, irreps_in2, irreps_out : e3nn.o3.Irreps
    weight_numel : int
        ``19 F²``.
    """

    def __init__(
        self,
        mul: int,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__()
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        self.mul = int(mul)
        self.irreps_in1 = o3.Irreps(irreps_string(mul, TP_IN_IRREPS))
        self.irreps_in2 = o3.Irreps(irreps_string(mul, TP_IN_IRREPS))
        self.irreps_out = o3.Irreps(irreps_string(mul, TP_OUT_IRREPS))
        self.weight_numel = len(TP_PATHS) * mul * mul
        self._coefs = _path_coefficients(mul)
        for p, (i1, i2, io) in enumerate(TP_PATHS):
            l1, l2, lo = TP_IN_IRREPS[i1][0], TP_IN_IRREPS[i2][0], TP_OUT_IRREPS[io][0]
            cg = o3.wigner_3j(l1, l2, lo, dtype=torch.float64) * self._coefs[p]
            self.register_buffer(f"cg_{p}", cg.to(device=dev, dtype=dt), persistent=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Evaluate.

        Parameters
        ----------
        x1, x2 : torch.Tensor, shape=(batch, 9 F)
            e3nn layout (mul-major per irrep).
        weight : torch.Tensor, shape=(19 F²,)

        Returns
        -------
        torch.Tensor, shape=(batch, 40 F)
        """
        F = self.mul
        b = x1.shape[0]
        dims = [2 * l + 1 for l, _ in TP_IN_IRREPS]
        x1s = [t.reshape(b, F, d) for t, d in zip(torch.split(x1, [F * d for d in dims], -1), dims)]
        x2s = [t.reshape(b, F, d) for t, d in zip(torch.split(x2, [F * d for d in dims], -1), dims)]
        w = weight.view(len(TP_PATHS), F, F)
        outs: list[torch.Tensor | None] = [None] * len(TP_OUT_IRREPS)
        for p, (i1, i2, io) in enumerate(TP_PATHS):
            y = torch.einsum("uv,bvj->buj", w[p], x2s[i2])  # F x F matmul, edge side
            cg = getattr(self, f"cg_{p}")
            r = torch.einsum("ijk,bui,buj->buk", cg, x1s[i1], y)  # channel-wise CG
            outs[io] = r if outs[io] is None else outs[io] + r
        return torch.cat([o.reshape(b, -1) for o in outs], dim=-1)  # type: ignore[union-attr]


def _exact_w3j(module: nn.Module) -> nn.Module:
    """Recompute e3nn's codegen Clebsch-Gordan buffers (``*._w3j_l1_l2_l3``) in their dtype.

    e3nn builds them in the default dtype (float32); after ``.double()`` they keep float32
    rounding (~1e-7), which would break float64 comparisons and equivariance checks.
    """
    with torch.no_grad():
        for name, buf in module.named_buffers():
            m = re.search(r"_w3j_(\d+)_(\d+)_(\d+)$", name)
            if m is not None:
                l1, l2, l3 = (int(g) for g in m.groups())
                buf.copy_(o3.wigner_3j(l1, l2, l3, dtype=torch.float64).to(buf.dtype))
    return module


def stock_uvu_tensor_product(
    mul: int, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float64"
) -> nn.Module:
    """The stock ``e3nn.o3.TensorProduct`` equivalent of :class:`ChannelwiseTensorProduct`.

    19 weighted ``'uvu'`` instructions :data:`TP_PATHS`, external shared weights
    (``forward(x1, x2, weight)``), e3nn 0.4.4 default normalisation; Clebsch-Gordan
    buffers recomputed in ``dtype``.
    """
    tp = o3.TensorProduct(
        irreps_string(mul, TP_IN_IRREPS),
        irreps_string(mul, TP_IN_IRREPS),
        irreps_string(mul, TP_OUT_IRREPS),
        [(i1, i2, io, "uvu", True) for (i1, i2, io) in TP_PATHS],
        internal_weights=False,
        shared_weights=True,
    )
    return _exact_w3j(tp.to(device=resolve_device(device), dtype=resolve_dtype(dtype)))


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------
class Interaction(nn.Module):
    """Parameters of one interaction block (the computation lives in :class:`Equivar`).

    Attributes
    ----------
    edge_weight : torch.nn.Parameter, shape=(3 n F,)
        Edge linear ``n x (0e,1o,2e) -> F x (0e,1o,2e)``, e3nn ``o3.Linear`` layout: three
        row-major ``(n, F)`` blocks for 0e, 1o, 2e.
    edge_bias : torch.nn.Parameter, shape=(F,)
        Bias of the scalar edge features (before the shifted softplus).
    tp_weight : torch.nn.Parameter, shape=(19 F²,)
        e3nn ``TensorProduct`` layout: one row-major ``(F_node u, F_edge v)`` block per path
        of :data:`TP_PATHS`.
    node_bias : torch.nn.Parameter, shape=(F,)
        Bias added to the scalar node update.
    """

    def __init__(
        self, num_radial: int, mul: int, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.irreps_in = o3.Irreps(irreps_string(mul, TP_OUT_IRREPS))
        self.irreps_out = o3.Irreps(irreps_string(mul, TP_OUT_IRREPS))
        self.edge_weight = nn.Parameter(torch.randn(3 * num_radial * mul, **kw))
        self.edge_bias = nn.Parameter(torch.zeros(mul, **kw))
        self.tp_weight = nn.Parameter(torch.randn(len(TP_PATHS) * mul * mul, **kw))
        self.node_bias = nn.Parameter(torch.zeros(mul, **kw))


TP_IMPLS = ("fast", "compiled", "e3nn")
FORMAT_NAME = "ase_born.equivar"
FORMAT_VERSION = 1


class Equivar(nn.Module):
    """The Equivar network (see the module docstring for the architecture).

    Parameters
    ----------
    config : EquivarConfig or str, optional
        Hyperparameters, or a preset name (``"BM1"``, ``"BM2"``). Default: BM2.
    tp_impl : {"fast", "compiled", "e3nn"}
        Implementation of the equivariant layers; all use the same parameters.
    device : str or torch.device
    dtype : str or torch.dtype
        ``"float32"`` or ``"float64"``.

    Attributes
    ----------
    irreps_in : e3nn.o3.Irreps
        ``E x 0e`` (embedding).
    irreps_out : e3nn.o3.Irreps
        ``0e + 2e + 1e`` (before the Cartesian change of basis).
    asr : bool
        Enforce the acoustic sum rule in :meth:`forward` (initialised from the config).
    elements : tuple of int or None
        Atomic numbers of the training data (set by the trainer, kept by :meth:`save` /
        :meth:`load`); ``None`` when unknown. :class:`~ase_born.calculators.equivar.EquivarCalculator`
        warns for structures with other elements.
    """

    def __init__(
        self,
        config: EquivarConfig | str | None = None,
        *,
        tp_impl: str = "fast",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__()
        if config is None:
            config = BM2
        if isinstance(config, str):
            config = preset(config)
        if not isinstance(config, EquivarConfig):
            raise TypeError(f"config must be an EquivarConfig or a preset name, got {type(config)}")
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        kw = {"device": dev, "dtype": dt}
        self._config = config
        self.asr = bool(config.asr)
        E, n, F = config.embedding_dim, config.num_radial, config.int_num_feat
        self.irreps_in = o3.Irreps(f"{E}x0e")
        self.irreps_out = o3.Irreps("0e+2e+1e")

        self.embedding = nn.Embedding(config.num_species, E, **kw)
        self.node_in_weight = nn.Parameter(torch.randn(E, F, **kw))
        self.node_in_bias = nn.Parameter(torch.zeros(F, **kw))
        self.layers = nn.ModuleList(
            [Interaction(n, F, device=dev, dtype=dt) for _ in range(config.num_interactions)]
        )
        self.readout_weight = nn.Parameter(torch.randn(3 * F, **kw))
        self.readout_bias = nn.Parameter(torch.zeros(1, **kw))

        # constant buffers (not in the state dict)
        coefs = _path_coefficients(F)
        for p, (i1, i2, io) in enumerate(TP_PATHS):
            l1, l2, lo = TP_IN_IRREPS[i1][0], TP_IN_IRREPS[i2][0], TP_OUT_IRREPS[io][0]
            cg = o3.wigner_3j(l1, l2, lo, dtype=torch.float64) * coefs[p]
            self.register_buffer(f"cg_{p}", cg.to(**kw), persistent=False)
        self.register_buffer("to_cartesian", irreps_to_cartesian_matrix(dt, dev), persistent=False)

        self._e3nn_cache: dict[tuple[str, str], dict[str, nn.Module]] = {}
        self._compiled_fast: Any = None  # torch.compile of _irreps_fast, built on first use
        self.tp_impl = tp_impl
        self.elements: tuple[int, ...] | None = None

    def converted(
        self,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        tp_impl: str | None = None,
    ) -> Equivar:
        """A new model with the same weights on ``device`` / ``dtype`` (default: this model's)
        and ``tp_impl``; its constant buffers (Clebsch-Gordan, Cartesian map) are rebuilt in
        the new dtype, so a float32 model converted to float64 is exactly equivariant (``.to``
        would keep their float32 rounding). This model is not modified."""
        model = type(self)(
            self._config,
            tp_impl=self._tp_impl if tp_impl is None else tp_impl,
            device=self.device if device is None else device,
            dtype=self.dtype if dtype is None else dtype,
        )
        model.load_state_dict(self.state_dict(), strict=True)
        model.asr = self.asr
        model.elements = self.elements
        model.train(self.training)
        return model

    def __getstate__(self) -> dict[str, Any]:
        # the lazily built e3nn reference modules are a cache: never pickle / deep-copy them
        state = super().__getstate__()
        state["_e3nn_cache"] = {}
        state["_compiled_fast"] = None
        return state

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> EquivarConfig:
        """The hyperparameters (frozen dataclass), with the current ``asr`` switch."""
        return dataclasses.replace(self._config, asr=bool(self.asr))

    @classmethod
    def from_config(
        cls,
        config: EquivarConfig | Mapping[str, Any] | str,
        *,
        tp_impl: str = "fast",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> Equivar:
        """Build a freshly initialised model from a config, a config dict or a preset name."""
        if isinstance(config, Mapping):
            config = EquivarConfig.from_dict(config)
        return cls(config, tp_impl=tp_impl, device=device, dtype=dtype)

    @property
    def tp_impl(self) -> str:
        """``"fast"``, ``"compiled"`` or ``"e3nn"``; can be switched at any time (same parameters)."""
        return self._tp_impl

    @tp_impl.setter
    def tp_impl(self, value: str) -> None:
        if value not in TP_IMPLS:
            raise ValueError(f"tp_impl must be one of {TP_IMPLS}, got {value!r}")
        self._tp_impl = value

    @property
    def dtype(self) -> torch.dtype:
        return self.node_in_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.node_in_weight.device

    @property
    def r_max(self) -> float:
        return float(self._config.r_max)

    @property
    def r_min(self) -> float:
        return float(self._config.r_min)

    def num_parameters(self) -> int:
        """Number of trainable parameters (``requires_grad``), as the paper's ``model_size``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        cell: torch.Tensor,
        batch: torch.Tensor | None = None,
        n_structures: int | None = None,
        *,
        return_raw: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Born effective charges of a batch of structures.

        Parameters
        ----------
        positions : torch.Tensor, shape=(n_atoms, 3)
            Å. Cast to the model dtype (differentiably).
        numbers : torch.Tensor, shape=(n_atoms,), dtype=int64
            Atomic numbers.
        edge_index : torch.Tensor, shape=(2, n_edges), dtype=int64
            ``[neighbour j, centre i]`` (:mod:`ase_born.models.graph`).
        shifts : torch.Tensor, shape=(n_edges, 3)
            Integer lattice translations, ``r_ij = r_j - r_i + shifts @ cell``.
        cell : torch.Tensor, shape=(n_structures, 3, 3) or (3, 3)
            Lattice vectors as rows, Å.
        batch : torch.Tensor, shape=(n_atoms,), dtype=int64, optional
            Structure index per atom (default: all zero).
        n_structures : int, optional
            Default ``batch.max() + 1``.
        return_raw : bool
            Also return the output before the sum-rule correction.

        Returns
        -------
        torch.Tensor, shape=(n_atoms, 3, 3)
            ``Z*[k, b, a]`` in e (sum rule enforced if ``self.asr``); with ``return_raw``
            the tuple ``(z, z_raw)``. Differentiable in ``positions`` and ``cell``.
        """
        positions = positions.to(self.dtype)
        if batch is None:
            batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        if n_structures is None:
            n_structures = int(batch.max().item()) + 1 if batch.numel() else 1
        vec = edge_vectors(positions, edge_index, shifts, cell.to(self.dtype), batch)
        return self.forward_from_vectors(
            numbers, edge_index, vec, batch, n_structures, return_raw=return_raw
        )

    def forward_graph(
        self, graph: GraphBatch, *, return_raw: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on a :class:`~ase_born.models.graph.GraphBatch`.

        A batch that records its cutoffs (every batch :func:`~ase_born.models.graph.collate`
        makes) must have been built with this model's ``r_max`` and ``r_min``: edges missing
        inside the cutoff, or extra ones beyond it, would change Z* silently.
        """
        for name, built in (("r_max", graph.r_max), ("r_min", graph.r_min)):
            own = getattr(self, name)
            if built is not None and not math.isclose(built, own, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(
                    f"graph built with {name} = {built:g} Å, this model uses {name} = {own:g} Å: "
                    f"build it with build_graph(atoms, model.r_max, model.r_min)"
                )
        return self.forward(
            graph.positions,
            graph.numbers,
            graph.edge_index,
            graph.shifts,
            graph.cell,
            graph.batch,
            graph.n_structures,
            return_raw=return_raw,
        )

    def forward_from_vectors(
        self,
        numbers: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vec: torch.Tensor,
        batch: torch.Tensor,
        n_structures: int,
        *,
        return_raw: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Core of :meth:`forward` given the edge vectors ``r_ij`` (``shape=(n_edges, 3)``, Å)."""
        self._check_numbers(numbers)
        edge_vec = edge_vec.to(self.dtype)
        if self._tp_impl == "fast":
            o = self._irreps_fast(numbers, edge_index, edge_vec)
        elif self._tp_impl == "compiled":
            if self._compiled_fast is None:
                self._compiled_fast = torch.compile(self._irreps_fast, dynamic=True)
            o = self._compiled_fast(numbers, edge_index, edge_vec)
        else:
            o = self._irreps_e3nn(numbers, edge_index, edge_vec)
        z_raw = (o @ self.to_cartesian.T).reshape(-1, 3, 3)
        z = enforce_asr(z_raw, batch, n_structures) if self.asr else z_raw
        return (z, z_raw) if return_raw else z

    # ----------------------------------------------------------------- shared pieces
    def _radial(self, r: torch.Tensor) -> torch.Tensor:
        cfg = self._config
        if cfg.radial_basis == "gaussian":
            return gaussian_radial_basis(r, cfg.r_max, cfg.num_radial)
        return bessel_radial_basis(r, cfg.r_max, cfg.num_radial)

    def _envelope(self, r: torch.Tensor) -> torch.Tensor | None:
        if self._config.cutoff_envelope == "polynomial":
            return polynomial_envelope(r, self._config.r_max)
        return None

    def _check_numbers(self, numbers: torch.Tensor) -> None:
        """Refuse atomic numbers outside the embedding table (outside the compiled part:
        the host-side ``int()`` would break its graph)."""
        n_species = self._config.num_species
        if numbers.numel() and (int(numbers.min()) < 1 or int(numbers.max()) >= n_species):
            bad = sorted({int(z) for z in numbers.tolist() if not 1 <= z < n_species})
            raise ValueError(f"atomic numbers {bad} are outside the model's embedding table (1..{n_species - 1})")

    def _node_scalars(self, numbers: torch.Tensor) -> torch.Tensor:
        """Embedded species; ``numbers`` checked by :meth:`forward_from_vectors`."""
        h = self.embedding(numbers)
        return h @ self.node_in_weight / math.sqrt(self._config.embedding_dim) + self.node_in_bias

    # ----------------------------------------------------------------- fast path
    def _fast_plan(
        self, live: tuple[int, ...], y_l: Sequence[torch.Tensor | None], n_edges: int
    ) -> dict[str, Any]:
        """Per-edge CG matrices of the fast form for a set of live paths.

        Returns ``G`` (per node irrep ``i1``: ``shape=(E, D_i1, 2 l1 + 1)``, one block of
        ``2 lo + 1`` rows per live path reading that irrep, ``G_p[e, k, i] = c_p Σ_j
        C_p[i, j, k] Y_j(e)``), ``rows`` (row slice of each path in its block) and
        ``paths_by_edge_irrep`` (live paths grouped by edge irrep: the column order of the
        radial-channel matmul).
        """
        G: dict[int, torch.Tensor] = {}
        rows: dict[int, tuple[int, int]] = {}
        for i1 in range(3):
            blocks, start = [], 0
            for p in live:
                if TP_PATHS[p][0] != i1:
                    continue
                i2 = TP_PATHS[p][1]
                cg = getattr(self, f"cg_{p}")  # (2l1+1, 2l2+1, 2lo+1), normalisation included
                if i2 == 0:
                    g = cg[:, 0, :].T.unsqueeze(0).expand(n_edges, -1, -1)
                else:
                    g = torch.einsum("ijk,ej->eki", cg, y_l[i2])
                blocks.append(g)
                rows[p] = (start, start + g.shape[1])
                start += g.shape[1]
            if blocks:
                G[i1] = torch.cat(blocks, dim=1).contiguous()
        return {
            "G": G,
            "rows": rows,
            "paths_by_edge_irrep": [[p for p in live if TP_PATHS[p][1] == i2] for i2 in range(3)],
        }

    def _irreps_fast(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, edge_vec: torch.Tensor
    ) -> torch.Tensor:
        """Fast form (module docstring).

        Node features are kept component-major: ``xg`` (``shape=(n_atoms, 9, F)``: 0e|1o|2e
        components, the tensor-product input) and ``x1e`` (``shape=(n_atoms, 3, F)``).
        """
        cfg = self._config
        F, n = cfg.int_num_feat, cfg.num_radial
        n_atoms, n_edges = numbers.shape[0], edge_vec.shape[0]
        src, dst = edge_index[0], edge_index[1]
        r = torch.linalg.norm(edge_vec, dim=-1)
        radial = self._radial(r)  # (E, n)
        env = self._envelope(r)
        sh = o3.spherical_harmonics([1, 2], edge_vec, normalize=True, normalization="integral")
        y_l = [None, sh[:, :3], sh[:, 3:8]]
        y0 = 1.0 / math.sqrt(4.0 * math.pi)  # Y_0 in the "integral" normalisation
        inv_sqrt_n = 1.0 / math.sqrt(n)
        inv_avg = 1.0 / cfg.avg_num_neighbors

        xg = nn.functional.pad(self._node_scalars(numbers).unsqueeze(1), (0, 0, 0, 8))
        x1e = xg.new_zeros(n_atoms, 3, F)
        plans: dict[tuple[int, ...], dict[str, Any]] = {}
        n_layers = len(self.layers)
        for k, layer in enumerate(self.layers):
            # live paths: node input not identically zero, output read later
            wanted = (_I0E, _I2E, _I1E) if k == n_layers - 1 else (_I0E, _I1O, _I2E, _I1E)
            inputs = (_I0E,) if k == 0 else (_I0E, _I1O, _I2E)
            live = tuple(
                p for p, (i1, _, io) in enumerate(TP_PATHS) if io in wanted and i1 in inputs
            )
            if live not in plans:
                plans[live] = self._fast_plan(live, y_l, n_edges)
            plan = plans[live]
            # edge features a_l (E, F): linear on the radial index, softplus on scalars
            w_edge = layer.edge_weight.view(3, n, F)
            a = [
                shifted_softplus((radial * y0) @ w_edge[0] * inv_sqrt_n + layer.edge_bias),
                radial @ w_edge[1] * inv_sqrt_n,
                radial @ w_edge[2] * inv_sqrt_n,
            ]
            if env is not None:
                a = [t * env[:, None] for t in a]
            # per-path F x F matmul on the edge radial channels: b_p[e, u] = Σ_v w_p[u, v] a[e, v]
            w_tp = layer.tp_weight.view(len(TP_PATHS), F, F)
            b: dict[int, torch.Tensor] = {}
            for i2, ps in enumerate(plan["paths_by_edge_irrep"]):
                if ps:
                    wcat = torch.cat([w_tp[p].T for p in ps], dim=1)  # (F_v, len(ps) F_u)
                    bb = (a[i2] @ wcat).view(n_edges, len(ps), F)
                    for q, p in enumerate(ps):
                        b[p] = bb[:, q : q + 1, :]
            # channel-wise CG contraction with the per-edge matrices G
            xj = xg[src]  # (E, 9, F) node features of the neighbours
            ys: dict[int, torch.Tensor] = {}
            for i1, g in plan["G"].items():
                if i1 == 0:
                    ys[0] = g * xj[:, 0:1, :]  # (E, D_0, F)
                else:
                    ys[i1] = torch.bmm(g, xj[:, _NODE_OFFSETS[i1] : _NODE_OFFSETS[i1 + 1], :])
            msg = xj.new_zeros(n_edges, _NODE_DIM, F)
            for p in live:
                i1, _, io = TP_PATHS[p]
                lo, hi = plan["rows"][p]
                o_lo = _NODE_OFFSETS[io]
                msg[:, o_lo : o_lo + hi - lo, :].addcmul_(ys[i1][:, lo:hi, :], b[p])
            agg = torch.zeros(n_atoms, _NODE_DIM * F, dtype=msg.dtype, device=msg.device)
            agg = agg.index_add_(0, dst, msg.view(n_edges, _NODE_DIM * F))
            agg = agg.view(n_atoms, _NODE_DIM, F) * inv_avg
            bias = nn.functional.pad(layer.node_bias.unsqueeze(0), (0, 0, 0, 8))
            xg = xg + agg[:, :9, :] + bias
            x1e = x1e + agg[:, 9:, :]
        return self._readout_fast(xg, x1e)

    def _readout_fast(self, xg: torch.Tensor, x1e: torch.Tensor) -> torch.Tensor:
        """Node features -> ``(n_atoms, 9)`` = 0e, 2e, 1e (+ bias on 0e)."""
        F = self._config.int_num_feat
        w = self.readout_weight.view(3, F) / math.sqrt(F)
        o0 = xg[:, 0:1, :] @ w[0] + self.readout_bias
        o2 = xg[:, 4:9, :] @ w[1]
        o1 = x1e @ w[2]
        return torch.cat([o0, o2, o1], dim=-1)

    # ----------------------------------------------------------------- e3nn reference
    def _e3nn_modules(self) -> dict[str, nn.Module]:
        """Stock e3nn modules (built lazily, kept OUT of the module tree / state dict)."""
        key = (str(self.device), str(self.dtype))
        if key not in self._e3nn_cache:
            cfg = self._config
            F, n = cfg.int_num_feat, cfg.num_radial
            sh_irreps = [(l, (-1) ** l) for l in range(cfg.edge_sh_lmax + 1)]
            edge_lin = o3.Linear(
                irreps_string(n, sh_irreps),
                irreps_string(F, TP_IN_IRREPS),
                biases=True,
                internal_weights=False,
                shared_weights=True,
            )
            tp = stock_uvu_tensor_product(F, device=self.device, dtype=self.dtype)
            readout = o3.Linear(
                irreps_string(F, [TP_OUT_IRREPS[i] for i in _READOUT_IN]),
                "1x0e+1x2e+1x1e",
                biases=True,
                internal_weights=False,
                shared_weights=True,
            )
            mods = {"edge_linear": edge_lin, "tp": tp, "readout": readout}
            self._e3nn_cache[key] = {
                k: _exact_w3j(m.to(device=self.device, dtype=self.dtype)) for k, m in mods.items()
            }
        return self._e3nn_cache[key]

    def _irreps_e3nn(
        self, numbers: torch.Tensor, edge_index: torch.Tensor, edge_vec: torch.Tensor
    ) -> torch.Tensor:
        cfg = self._config
        F = cfg.int_num_feat
        mods = self._e3nn_modules()
        n_atoms, n_edges = numbers.shape[0], edge_vec.shape[0]
        src, dst = edge_index[0], edge_index[1]
        r = torch.linalg.norm(edge_vec, dim=-1)
        radial = self._radial(r)
        env = self._envelope(r)
        ls = list(range(cfg.edge_sh_lmax + 1))
        sh = o3.spherical_harmonics(ls, edge_vec, normalize=True, normalization="integral")
        # paper's edge attributes: per l the flattened outer product radial ⊗ Y_l
        blocks, start = [], 0
        for l in ls:
            y = sh[:, start : start + 2 * l + 1]
            start += 2 * l + 1
            width = radial.shape[1] * (2 * l + 1)  # explicit: reshape(0, -1) fails without edges
            blocks.append((radial[:, :, None] * y[:, None, :]).reshape(n_edges, width))
        edge_attr = torch.cat(blocks, dim=-1)

        out_dims = [F * (2 * l + 1) for l, _ in TP_OUT_IRREPS]
        x = torch.zeros(n_atoms, sum(out_dims), dtype=self.dtype, device=self.device)
        x[:, :F] = self._node_scalars(numbers)
        in_dim = F * 9  # 0e + 1o + 2e
        for layer in self.layers:
            ef = mods["edge_linear"](edge_attr, layer.edge_weight, layer.edge_bias)
            ef = torch.cat([shifted_softplus(ef[:, :F]), ef[:, F:]], dim=-1)
            if env is not None:
                ef = ef * env[:, None]
            m = mods["tp"](x[src, :in_dim], ef, layer.tp_weight)
            agg = torch.zeros_like(x).index_add(0, dst, m) / cfg.avg_num_neighbors
            bias = torch.cat([layer.node_bias, x.new_zeros(x.shape[1] - F)])
            x = x + agg + bias
        offsets = [0]
        for d in out_dims:
            offsets.append(offsets[-1] + d)
        feats = torch.cat([x[:, offsets[i] : offsets[i + 1]] for i in _READOUT_IN], dim=-1)
        return mods["readout"](feats, self.readout_weight, self.readout_bias)

    # ----------------------------------------------------------------- serialization
    def save(self, path: str | Path) -> None:
        """Write config, plain weight tensors and versions (loadable with ``weights_only=True``).

        The file holds only a dict of str / int / float / bool / tensors, so
        :meth:`load` never needs to unpickle arbitrary objects.
        """
        from ase_born import __version__

        payload = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "dtype": dtype_name(self.dtype),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            "elements": None if self.elements is None else [int(z) for z in self.elements],
            "versions": {
                "ase_born": __version__,
                "torch": str(torch.__version__),
                "e3nn": E3NN_VERSION,
            },
        }
        # temporary file + os.replace: a kill while exporting never truncates a good model file
        from ase_born.train.checkpoint import atomic_torch_save

        atomic_torch_save(payload, Path(path))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        tp_impl: str = "fast",
        trust: bool = False,
    ) -> Equivar:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
        device : str or torch.device
        dtype : str or torch.dtype, optional
            Default: the dtype the model was saved in.
        tp_impl : {"fast", "compiled", "e3nn"}
        trust : bool
            Files are read with ``torch.load(weights_only=True)``, which only rebuilds
            tensors and plain containers. Anything else (e.g. a whole pickled module, or a
            file crafted to run code: unpickling can execute arbitrary code) is REFUSED
            unless ``trust=True``, which falls back to full unpickling. Only set it for
            files you created yourself.

        Raises
        ------
        pickle.UnpicklingError
            Untrusted file with non-tensor content.
        ValueError
            Not an Equivar file, or incompatible contents.
        """
        path = Path(path)
        dev = resolve_device(device)
        try:
            payload = torch.load(path, map_location=dev, weights_only=True)
        except (KeyError, EOFError, RuntimeError) as exc:  # not a torch file at all (text, truncated zip)
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise ValueError(f"{path} is not an Equivar model file (torch.load: {type(exc).__name__}: {exc})") from exc
        except pickle.UnpicklingError as exc:
            if not trust:
                raise pickle.UnpicklingError(
                    f"{path} contains objects other than tensors and plain containers; "
                    "refusing to unpickle it because that can execute arbitrary code. "
                    "Pass trust=True only for files from a source you trust."
                ) from exc
            payload = torch.load(path, map_location=dev, weights_only=False)
        if isinstance(payload, Equivar):  # a trusted, fully pickled module
            if not hasattr(payload, "elements"):  # pickled before models knew their elements
                payload.elements = None
            return payload.converted(device=dev, dtype=dtype, tp_impl=tp_impl)
        if not isinstance(payload, Mapping) or payload.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not an Equivar model file (format {FORMAT_NAME!r})")
        if int(payload.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {payload['format_version']}; this ase_born reads <= {FORMAT_VERSION}"
            )
        versions = payload.get("versions", {})
        if versions.get("e3nn") not in (None, E3NN_VERSION):
            warnings.warn(
                f"model saved with e3nn {versions.get('e3nn')}, running with {E3NN_VERSION}",
                stacklevel=2,
            )
        config = EquivarConfig.from_dict(payload["config"])
        dt = resolve_dtype(dtype if dtype is not None else payload.get("dtype", "float32"))
        model = cls(config, tp_impl=tp_impl, device=dev, dtype=dt)
        model.load_state_dict(payload["state_dict"], strict=True)
        elements = payload.get("elements")
        model.elements = None if elements is None else tuple(int(z) for z in elements)
        return model


def preset(name: str) -> EquivarConfig:
    """The config of a named preset (``"BM1"``, ``"BM2"``)."""
    try:
        return PRESETS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


__all__ = [
    "BM1",
    "BM2",
    "PRESETS",
    "TP_PATHS",
    "ChannelwiseTensorProduct",
    "Equivar",
    "EquivarConfig",
    "acoustic_sum",
    "asr_violation",
    "bessel_radial_basis",
    "enforce_asr",
    "gaussian_radial_basis",
    "irreps_to_cartesian_matrix",
    "paper_parameter_count",
    "polynomial_envelope",
    "preset",
    "shifted_softplus",
    "stock_uvu_tensor_product",
]
