"""Adapter for the paper's published TorchScript Equivar models (BM1, BM2).

The authors distribute their trained networks as TorchScript files (data DOI
10.17632/hx8kcpjh84.1, evaluation scripts github.com/equivar/equivar_eval). This module
runs such a file as a Born-charge model of this package. The input/output convention is
the one described in the project's REFERENCE notes ("The paper's published evaluation
code"):

Input: a ``Dict[str, Tensor]`` built like a torch_geometric batch
    ``edge_index``   ``shape=(2, E)``, int64: ``[neighbour j, centre i]`` for pairs with
                     ``r_min < r < r_max`` (0.1 Å, 3.0 Å);
    ``edge_attr``    ``shape=(E, n (lmax + 1)^2)``: for ``l = 0..lmax`` the row-major
                     flattened outer product ``radial ⊗ Y_l`` (``n x (2l+1)``), concatenated
                     over l. Radial: Gaussians, centres ``linspace(0, r_max, n)``,
                     ``exp(-0.5 (r - mu)^2 / Delta^2)``, Delta = spacing. ``Y_l``: e3nn
                     ``spherical_harmonics(l, r_ij, normalize=True)`` (``"integral"``
                     normalisation, the e3nn default) of the vector from centre i to
                     neighbour j;
    ``Z``            ``shape=(N,)``, int64 atomic numbers;
    ``vol``          ``shape=(1,)``: cell volume, Å^3 (0 for a non-periodic structure);
    ``num_nodes``    0-d int64 tensor, N;
    ``batch``        ``shape=(N,)``, int64 zeros;
    ``structure_id`` ``shape=(1,)``, int64 zero.
    Shapes of ``vol``, ``num_nodes`` and ``structure_id`` are not documented by the
    authors; ``extra_inputs`` can override or add entries.

Output: ``shape=(N, 9)`` in the irreps order ``0e, 2e (5), 1e (3)``, mapped to the
Cartesian ``t`` (rows t11, t12, ..., t33) with the explicit matrix of
:func:`ase_born.models.equivar.irreps_to_cartesian_matrix`. Which index of ``t`` is the
field direction is not stated in the published code (it follows their VASP training
data); this adapter ASSUMES ``t_ij = Z*[k, i (field), j (displacement)]`` (the seed's
eq. 1 order, this package's convention) and offers ``transpose=True`` for the other
reading.

Neighbours: the published code takes ONE minimum image per pair. ``neighbors=
"all_images"`` (default) uses the complete neighbour list instead, which is identical
for cells longer than ``2 r_max`` in every direction and correct for smaller ones;
``neighbors="minimum_image"`` reproduces the published behaviour.

Security: a TorchScript file is a program; loading it runs code from the file. Loading is
refused unless ``trust=True`` is passed explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from ase_born.calculators.base import BornChargeModel
from ase_born.models._e3nn import o3
from ase_born.models.equivar import enforce_asr, gaussian_radial_basis, irreps_to_cartesian_matrix
from ase_born.models.graph import DEFAULT_R_MAX, DEFAULT_R_MIN, build_graph, edge_vectors
from ase_born.models.utils import resolve_device, resolve_dtype

NEIGHBOR_MODES = ("all_images", "minimum_image")


class TorchScriptEquivar(BornChargeModel):
    """Run a published Equivar TorchScript module as a Born-charge model.

    Parameters
    ----------
    module : torch.nn.Module or torch.jit.ScriptModule
        Callable ``module(inputs: Dict[str, Tensor]) -> Tensor (N, 9)``. Use :meth:`load`
        for files.
    r_max, r_min : float
        Edge cutoffs, Å (published defaults 3.0, 0.1).
    num_radial : int
        Number of Gaussians (published default 32).
    lmax : int
        Highest spherical-harmonic degree of ``edge_attr`` (published default 2).
    transpose : bool
        False: ``Z*[k, b, a] = t[b, a]`` (assumed); True: ``Z*[k, b, a] = t[a, b]``.
    asr : bool
        Subtract the per-structure mean (the paper's "subsequent correction"); default True.
    neighbors : {"all_images", "minimum_image"}
        Complete neighbour list (default) or the published single minimum image.
    device : str or torch.device
    dtype : str or torch.dtype
        Floating dtype of the inputs fed to the module (published files: float32).
    extra_inputs : mapping of str to torch.Tensor, optional
        Entries added to / overriding the input dict.
    """

    supports_torch = True

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        r_max: float = DEFAULT_R_MAX,
        r_min: float = DEFAULT_R_MIN,
        num_radial: int = 32,
        lmax: int = 2,
        transpose: bool = False,
        asr: bool = True,
        neighbors: str = "all_images",
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        extra_inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if neighbors not in NEIGHBOR_MODES:
            raise ValueError(f"neighbors must be one of {NEIGHBOR_MODES}, got {neighbors!r}")
        self.module = module
        self.r_max, self.r_min = float(r_max), float(r_min)
        self.num_radial, self.lmax = int(num_radial), int(lmax)
        self.transpose, self.asr, self.neighbors = bool(transpose), bool(asr), neighbors
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        self.extra_inputs = dict(extra_inputs or {})

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        trust: bool = False,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> TorchScriptEquivar:
        """Load a TorchScript file (``torch.jit.load``). Requires ``trust=True``.

        Raises
        ------
        PermissionError
            Without ``trust=True``: a TorchScript file contains code that runs when it
            is loaded and called; only load files from a source you trust.
        """
        if not trust:
            raise PermissionError(
                f"refusing to load TorchScript file {path}: TorchScript files contain "
                "executable code. Pass trust=True if you trust its source (e.g. the "
                "authors' published BM1/BM2 files)."
            )
        dev = resolve_device(device)
        module = torch.jit.load(str(path), map_location=dev)
        module.eval()
        return cls(module, device=dev, **kwargs)

    # ------------------------------------------------------------------ inputs
    def edge_attributes(self, edge_vec: torch.Tensor) -> torch.Tensor:
        """Published ``edge_attr`` from edge vectors.

        Parameters
        ----------
        edge_vec : torch.Tensor, shape=(E, 3)
            Vectors from centre i to neighbour j, Å.

        Returns
        -------
        torch.Tensor, shape=(E, num_radial * (lmax + 1)^2)
        """
        r = torch.linalg.norm(edge_vec, dim=-1)
        radial = gaussian_radial_basis(r, self.r_max, self.num_radial)
        ls = list(range(self.lmax + 1))
        sh = o3.spherical_harmonics(ls, edge_vec, normalize=True, normalization="integral")
        blocks, start = [], 0
        for l in ls:
            y = sh[:, start : start + 2 * l + 1]
            start += 2 * l + 1
            n_edges, width = edge_vec.shape[0], radial.shape[1] * (2 * l + 1)  # explicit: E may be 0
            blocks.append((radial[:, :, None] * y[:, None, :]).reshape(n_edges, width))
        return torch.cat(blocks, dim=-1)

    def build_inputs(
        self,
        atoms: Atoms,
        positions: torch.Tensor | None = None,
        cell: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The input dict of the published models for ``atoms`` (module docstring).

        ``positions`` (``shape=(N, 3)``, Å) and ``cell`` (``shape=(3, 3)``) default to those
        of ``atoms``; pass tensors that require grad to differentiate through ``edge_attr``.
        """
        dev, dt = self.device, self.dtype
        if positions is None:
            positions = torch.as_tensor(atoms.positions, dtype=dt, device=dev)
        if cell is None:
            cell = torch.as_tensor(atoms.cell.array, dtype=dt, device=dev)
        probe = atoms.copy()
        probe.calc = None
        probe.positions = positions.detach().cpu().double().numpy()
        probe.cell = cell.detach().cpu().double().numpy()
        method = "vesin" if self.neighbors == "all_images" else "minimum_image_baseline"
        g = build_graph(probe, self.r_max, self.r_min, method=method)
        edge_index = torch.as_tensor(g.edge_index, device=dev)
        shifts = torch.as_tensor(g.shifts, dtype=dt, device=dev)
        pos = positions.to(device=dev, dtype=dt)
        c = cell.to(device=dev, dtype=dt)
        vec = edge_vectors(pos, edge_index, shifts, c)
        n = len(atoms)
        vol = float(abs(np.linalg.det(g.cell))) if atoms.pbc.any() else 0.0
        inputs = {
            "edge_index": edge_index,
            "edge_attr": self.edge_attributes(vec),
            "Z": torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.long, device=dev),
            "vol": torch.tensor([vol], dtype=dt, device=dev),
            "num_nodes": torch.tensor(n, dtype=torch.long, device=dev),
            "batch": torch.zeros(n, dtype=torch.long, device=dev),
            "structure_id": torch.zeros(1, dtype=torch.long, device=dev),
        }
        inputs.update(self.extra_inputs)
        return inputs

    # ------------------------------------------------------------------ outputs
    def output_to_born(self, out: torch.Tensor) -> torch.Tensor:
        """``(N, 9)`` irreps ``0e, 2e, 1e`` -> ``Z*`` ``(N, 3, 3)`` (``transpose`` applied)."""
        if out.dim() != 2 or out.shape[1] != 9:
            raise ValueError(
                f"the TorchScript module returned shape {tuple(out.shape)}; expected (N, 9)"
            )
        m = irreps_to_cartesian_matrix(out.dtype, out.device)
        t = (out @ m.T).reshape(-1, 3, 3)
        return t.transpose(1, 2) if self.transpose else t

    def get_born_charges_torch(
        self, atoms: Atoms, positions: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable Z*, ``shape=(N, 3, 3)``, in the dtype/device of ``positions``."""
        inputs = self.build_inputs(atoms, positions, cell)
        z = self.output_to_born(self.module(inputs))
        if self.asr:
            z = enforce_asr(z, inputs["batch"], 1)
        return z.to(device=positions.device, dtype=positions.dtype)

    def get_born_charges(self, atoms: Atoms) -> np.ndarray:
        """Z*, ``shape=(N, 3, 3)``, float64, e (``Z*[k, b, a]``, see ``transpose``)."""
        with torch.no_grad():
            inputs = self.build_inputs(atoms)
            z = self.output_to_born(self.module(inputs))
            if self.asr:
                z = enforce_asr(z, inputs["batch"], 1)
        return z.detach().cpu().numpy().astype(np.float64)

    def todict(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "r_max": self.r_max,
            "r_min": self.r_min,
            "num_radial": self.num_radial,
            "lmax": self.lmax,
            "transpose": self.transpose,
            "asr": self.asr,
            "neighbors": self.neighbors,
        }


__all__ = ["NEIGHBOR_MODES", "TorchScriptEquivar"]
