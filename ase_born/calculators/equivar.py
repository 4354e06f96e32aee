"""ASE calculator for Born effective charges predicted by an Equivar network.

:class:`EquivarCalculator` is both

* an ASE :class:`~ase.calculators.calculator.Calculator` with the property
  ``born_effective_charges`` (``shape=(n_atoms, 3, 3)``, e, ``Z*[k, b, a]`` with b the
  field and a the displacement direction), ``acoustic_sum`` (``shape=(3, 3)``, e:
  ``Σ_k Z*_k`` of the raw network output, before the sum-rule correction) and
  ``asr_violation`` (float, e: ``(1/9) Σ_ab |acoustic_sum_ab|``, the seed SI metric), and
* a Born-charge model (:class:`~ase_born.calculators.base.BornChargeModel`) with the
  numpy level ``get_born_charges(atoms)`` and the differentiable torch level
  ``get_born_charges_torch(atoms, positions, cell)`` (``supports_torch = True``), so it
  can serve as the ``born_model`` of the field calculator, conservative mode included.

The acoustic sum rule follows the model's own switch by default (``model.asr``, saved with
the model; ``True`` unless it was trained with ``asr: false``): per-structure mean over
atoms subtracted, as in the paper. ``asr=True/False`` overrides it; change it later with
``calc.set(asr=False)``, which clears cached results. As the ``born_model`` of the field
calculator, which applies its own ``asr`` correction and reports the violation of what it
receives, pass ``asr=False`` here to see the network's raw violation there; Z* and forces
are the same either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ase_born.calculators.base import BornChargeModel, bool_parameter
from ase_born.conventions import KEY_ACOUSTIC_SUM, KEY_ASR_VIOLATION, KEY_BORN
from ase_born.models.equivar import Equivar, enforce_asr
from ase_born.models.graph import build_graph, collate
from ase_born.models.utils import dtype_name, resolve_device, resolve_dtype


def _symbols(numbers) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in sorted(numbers)]


class EquivarCalculator(Calculator, BornChargeModel):
    """Born effective charges from an :class:`~ase_born.models.equivar.Equivar` model.

    Parameters
    ----------
    model : Equivar or str or Path
        A model object, or the path of a file written by :meth:`Equivar.save`. A model
        object is shared when it already has the requested device, dtype and ``tp_impl``
        and is in eval mode; otherwise the calculator works on a converted copy
        (:meth:`Equivar.converted`), and the caller's object is never modified.
    device : str or torch.device
        Where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    dtype : str or torch.dtype
        ``"float64"`` (default: reproducible finite differences and MD) or ``"float32"``.
    asr : bool, optional
        Enforce the acoustic sum rule. Default: the model's own ``asr`` (so the calculator
        and :meth:`Equivar.forward_graph` give the same Z*). An ASE parameter:
        ``calc.set(asr=...)``.
    tp_impl : {"fast", "compiled", "e3nn"}, optional
        Tensor-product implementation (same results; ``"e3nn"`` is the slow reference,
        ``"compiled"`` is ``"fast"`` through ``torch.compile``: 1.8-1.9x faster on CPU after a
        one-off compilation of 20-75 s, for long MD runs). Default: a model object's own,
        ``"fast"`` for a file.
    trust : bool
        Passed to :meth:`Equivar.load` when ``model`` is a path: allow full unpickling of
        a file that is not a plain-tensor model file (can execute code; see there).
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.
    """

    implemented_properties: ClassVar[list[str]] = [KEY_BORN, KEY_ACOUSTIC_SUM, KEY_ASR_VIOLATION]
    default_parameters: ClassVar[dict[str, Any]] = {"asr": True}
    supports_torch = True

    def __init__(
        self,
        model: Equivar | str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float64",
        asr: bool | None = None,
        *,
        tp_impl: str | None = None,
        trust: bool = False,
        **kwargs: Any,
    ) -> None:
        dev, dt = resolve_device(device), resolve_dtype(dtype)
        if isinstance(model, (str, Path)):
            net = Equivar.load(model, device=dev, dtype=dt, tp_impl=tp_impl or "fast", trust=trust)
        elif isinstance(model, Equivar):
            net = model
            impl = model.tp_impl if tp_impl is None else tp_impl
            if net.device != dev or net.dtype != dt or net.tp_impl != impl or net.training:
                net = model.converted(device=dev, dtype=dt, tp_impl=impl)
        else:
            raise TypeError(f"model must be an Equivar or a path, got {type(model).__name__}")
        net.eval()
        self.model: Equivar = net
        self._warned: set[int] = set()  # elements outside the training data, warned once each
        self.device = dev
        self.dtype = dt
        Calculator.__init__(self, asr=net.asr if asr is None else asr, **kwargs)

    # ------------------------------------------------------------------ helpers
    @property
    def asr(self) -> bool:
        """Whether the sum rule is enforced (the ``asr`` parameter)."""
        return bool(self.parameters.get("asr", True))

    def _check_numbers(self, atoms: Atoms) -> None:
        numbers = np.asarray(atoms.numbers)
        n_species = self.model.config.num_species
        bad = sorted(set(numbers[(numbers < 1) | (numbers >= n_species)].tolist()))
        if bad:
            raise ValueError(
                f"atomic numbers {bad} are outside the model's embedding table (1..{n_species - 1})"
            )
        known = self.model.elements
        if known is not None:
            unseen = set(numbers.tolist()) - set(known) - self._warned
            if unseen:
                self._warned |= unseen
                warnings.warn(
                    f"this Equivar model was trained on {_symbols(known)} only; its Born charges "
                    f"for {_symbols(unseen)} are extrapolations",
                    stacklevel=4,
                )

    def _raw(self, atoms_list: Sequence[Atoms]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Raw network output ``(n_atoms_total, 3, 3)``, the batch index, n_structures."""
        for a in atoms_list:
            self._check_numbers(a)
        graphs = [build_graph(a, self.model.r_max, self.model.r_min) for a in atoms_list]
        g = collate(graphs, device=self.device, dtype=self.dtype)
        _, z_raw = self.model.forward_graph(g, return_raw=True)
        return z_raw, g.batch, g.n_structures

    # ------------------------------------------------------------------ ASE protocol
    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Set parameters (``asr``, a bool); any change clears the cached results."""
        if "asr" in kwargs:
            kwargs["asr"] = bool_parameter("asr", kwargs["asr"])
        changed = Calculator.set(self, **kwargs)
        if changed:
            self.reset()
        return changed

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] | None = None,
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Fill ``self.results``: ``born_effective_charges``, ``acoustic_sum``, ``asr_violation``."""
        Calculator.calculate(self, atoms, properties, system_changes)
        with torch.no_grad():
            z_raw, batch, n_s = self._raw([self.atoms])
            z = enforce_asr(z_raw, batch, n_s) if self.asr else z_raw
        self.results[KEY_BORN] = z.detach().cpu().numpy().astype(np.float64)
        total = z_raw.sum(dim=0).detach().cpu().numpy().astype(np.float64)
        self.results[KEY_ACOUSTIC_SUM] = total
        self.results[KEY_ASR_VIOLATION] = float(np.abs(total).mean())

    # ------------------------------------------------------------------ BornChargeModel
    def get_born_charges(self, atoms: Atoms) -> np.ndarray:
        """Z* of ``atoms``.

        Returns
        -------
        numpy.ndarray, shape=(n_atoms, 3, 3), dtype=float64
            ``Z*[k, b, a]`` in e (sum rule enforced if ``asr``).
        """
        return np.asarray(self.get_property(KEY_BORN, atoms), dtype=np.float64)

    def get_acoustic_sum(self, atoms: Atoms) -> np.ndarray:
        """``Σ_k Z*_k`` of the raw output, ``shape=(3, 3)``, e."""
        return np.asarray(self.get_property(KEY_ACOUSTIC_SUM, atoms), dtype=np.float64)

    def get_asr_violation(self, atoms: Atoms) -> float:
        """``(1/9) Σ_ab |Σ_k Z*_k,ab|`` of the raw output, e (seed SI metric)."""
        return float(self.get_property(KEY_ASR_VIOLATION, atoms))

    def get_born_charges_torch(
        self, atoms: Atoms, positions: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable Z* (torch level of the Born-model protocol).

        The graph (which pairs are neighbours, their lattice shifts) is built from the
        *values* of ``positions`` and ``cell``; the edge vectors are then recomputed in
        torch, so the result is differentiable with respect to both.

        Parameters
        ----------
        atoms : ase.Atoms
            Supplies the atomic numbers and ``pbc``.
        positions : torch.Tensor, shape=(n_atoms, 3)
            Å.
        cell : torch.Tensor, shape=(3, 3)
            Lattice vectors as rows, Å.

        Returns
        -------
        torch.Tensor, shape=(n_atoms, 3, 3)
            ``Z*[k, b, a]`` in e, in the dtype and on the device of ``positions``
            (computed in the calculator's dtype/device).
        """
        self._check_numbers(atoms)
        if positions.shape != (len(atoms), 3):
            raise ValueError(
                f"positions must have shape ({len(atoms)}, 3), got {tuple(positions.shape)}"
            )
        probe = atoms.copy()
        probe.calc = None
        probe.positions = positions.detach().cpu().double().numpy()
        probe.cell = cell.detach().cpu().double().numpy()
        graph = build_graph(probe, self.model.r_max, self.model.r_min)
        g = collate([graph], device=self.device, dtype=self.dtype)
        pos = positions.to(device=self.device, dtype=self.dtype)
        c = cell.to(device=self.device, dtype=self.dtype).reshape(1, 3, 3)
        _, z_raw = self.model(
            pos, g.numbers, g.edge_index, g.shifts, c, g.batch, 1, return_raw=True
        )
        z = enforce_asr(z_raw, g.batch, 1) if self.asr else z_raw
        return z.to(device=positions.device, dtype=positions.dtype)

    # ------------------------------------------------------------------ batches
    def predict_many(
        self, atoms_list: Sequence[Atoms], *, batch_size: int = 16
    ) -> list[np.ndarray]:
        """Z* of many structures, evaluated ``batch_size`` structures at a time.

        Returns
        -------
        list of numpy.ndarray, each shape=(n_atoms_i, 3, 3), dtype=float64
            Sum rule enforced per structure if ``asr``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(atoms_list), batch_size):
                chunk = list(atoms_list[start : start + batch_size])
                z_raw, batch, n_s = self._raw(chunk)
                z = enforce_asr(z_raw, batch, n_s) if self.asr else z_raw
                z_np = z.detach().cpu().numpy().astype(np.float64)
                counts = [len(a) for a in chunk]
                offsets = np.concatenate([[0], np.cumsum(counts)])
                out += [z_np[offsets[s] : offsets[s + 1]].copy() for s in range(len(chunk))]
        return out

    def todict(self, skip_default: bool = True) -> dict[str, Any]:
        """JSON-serialisable description: class, model config, device, dtype, parameters."""
        d = Calculator.todict(self, skip_default=False)
        d.update(
            {
                "class": type(self).__name__,
                "model_config": self.model.config.to_dict(),
                "device": str(self.device),
                "dtype": dtype_name(self.dtype),
            }
        )
        return d


__all__ = ["EquivarCalculator"]
