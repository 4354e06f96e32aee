"""Evaluate a trained Equivar model on a dataset, and predict Z* for structures."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from ase_born.models.equivar import Equivar, enforce_asr
from ase_born.models.graph import build_graph, collate
from ase_born.physics import asr_project
from ase_born.train.dataset import Batch, BornDataset, BornSample, collate_samples
from ase_born.train.metrics import MetricAccumulator


@dataclass(frozen=True)
class Predictions:
    """Per-atom predictions of one dataset (numpy, float64).

    Attributes
    ----------
    pred, pred_raw, target : numpy.ndarray, shape=(n_atoms_total, 3, 3)
        Sum-rule-corrected prediction, raw network output, corrected target (e).
    numbers : numpy.ndarray, shape=(n_atoms_total,)
    structure_index : numpy.ndarray, shape=(n_atoms_total,)
        Index of the structure (in dataset order) of every atom.
    structure_ids : list of str
    """

    pred: np.ndarray
    pred_raw: np.ndarray
    target: np.ndarray
    numbers: np.ndarray
    structure_index: np.ndarray
    structure_ids: list[str]


def forward_batch(
    model: torch.nn.Module, batch: Batch, *, autocast: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrected and raw ``Z*`` of a batch, ``shape=(n_atoms, 3, 3)`` each, in the batch dtype.

    ``model`` may be an :class:`Equivar` or a ``DistributedDataParallel`` around one (its
    ``forward`` is called, so DDP's gradient hooks run). The correction is applied even
    if the network's own ``asr`` switch is off.
    """
    g = batch.graph
    with torch.autocast(
        device_type=g.positions.device.type, dtype=torch.bfloat16, enabled=autocast
    ):
        z, z_raw = model(
            g.positions,
            g.numbers,
            g.edge_index,
            g.shifts,
            g.cell,
            g.batch,
            g.n_structures,
            return_raw=True,
        )
    z_raw = z_raw.to(g.positions.dtype)
    inner = getattr(model, "module", model)
    z = z.to(g.positions.dtype) if inner.asr else enforce_asr(z_raw, g.batch, g.n_structures)
    return z, z_raw


def _batches(
    samples: Sequence[BornSample], batch_size: int, device: torch.device, dtype: torch.dtype
) -> Iterator[Batch]:
    for k in range(0, len(samples), batch_size):
        yield collate_samples(samples[k : k + batch_size], device=device, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: Equivar,
    dataset: BornDataset | Sequence[BornSample],
    *,
    batch_size: int = 16,
    return_predictions: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], Predictions]:
    """Metrics (:mod:`ase_born.train.metrics`) of ``model`` on ``dataset``.

    Runs on the model's device and dtype, in eval mode, without autocast.

    Returns
    -------
    dict
        The metrics; with ``return_predictions`` also a :class:`Predictions`.
    """
    samples = dataset.samples if isinstance(dataset, BornDataset) else list(dataset)
    if not samples:
        raise ValueError("cannot evaluate on an empty dataset")
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_species=model.config.num_species)
    keep: dict[str, list[np.ndarray]] = {
        "pred": [],
        "pred_raw": [],
        "target": [],
        "numbers": [],
        "index": [],
    }
    offset = 0
    try:
        for batch in _batches(samples, batch_size, model.device, model.dtype):
            z, z_raw = forward_batch(model, batch)
            g = batch.graph
            acc.update(
                z, batch.target, g.numbers, pred_raw=z_raw, target_raw=batch.target_raw,
                batch=g.batch, n_structures=g.n_structures,
            )  # fmt: skip
            if return_predictions:
                keep["pred"].append(z.double().cpu().numpy())
                keep["pred_raw"].append(z_raw.double().cpu().numpy())
                keep["target"].append(batch.target.double().cpu().numpy())
                keep["numbers"].append(g.numbers.cpu().numpy())
                keep["index"].append(g.batch.cpu().numpy() + offset)
            offset += g.n_structures
    finally:
        model.train(was_training)
    metrics = acc.compute()
    if not return_predictions:
        return metrics
    preds = Predictions(
        pred=np.concatenate(keep["pred"]),
        pred_raw=np.concatenate(keep["pred_raw"]),
        target=np.concatenate(keep["target"]),
        numbers=np.concatenate(keep["numbers"]),
        structure_index=np.concatenate(keep["index"]),
        structure_ids=[s.structure_id for s in samples],
    )
    return metrics, preds


@torch.no_grad()
def predict_born_charges(
    model: Equivar,
    structures: Atoms | Sequence[Atoms],
    *,
    batch_size: int = 16,
    asr: bool = True,
) -> list[np.ndarray]:
    """Predicted ``Z*[k, b, a]`` (e) of every structure.

    Parameters
    ----------
    asr : bool
        Enforce the acoustic sum rule per structure (subtract the mean over atoms), as the
        trainer's validation/TEST metrics and :func:`evaluate` do: the Z* the metrics
        describe.  ``False``: the network's raw output (sum rule enforced only if
        ``model.asr``).

    Returns
    -------
    list of numpy.ndarray, each shape=(n_atoms, 3, 3), float64
    """
    if isinstance(structures, Atoms):
        structures = [structures]
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for k in range(0, len(structures), batch_size):
            chunk = structures[k : k + batch_size]
            graphs = [build_graph(a, model.r_max, model.r_min) for a in chunk]
            g = collate(graphs, device=model.device, dtype=model.dtype)
            z = model.forward_graph(g).double().cpu().numpy()
            ptr = g.ptr.cpu().numpy()
            for s in range(len(chunk)):
                zs = z[ptr[s] : ptr[s + 1]]
                out.append(asr_project(zs) if asr else zs)
    finally:
        model.train(was_training)
    return out


def equilibrium_check(
    pred: np.ndarray,
    reference: np.ndarray,
    numbers: Sequence[int] | np.ndarray,
    *,
    diag_rel_tol: float = 0.05,
    offdiag_abs_tol: float = 0.1,
) -> dict[str, Any]:
    """Atom-by-atom check of predicted ``Z*`` against DFPT on one structure.

    The default model's acceptance test on the equilibrium Pnma cell: every
    atom's diagonal elements within ``diag_rel_tol`` (relative) of the reference
    and every off-diagonal element within ``offdiag_abs_tol`` (e).  NaN reference
    elements (field directions not computed yet) are not checked.

    Parameters
    ----------
    pred, reference : numpy.ndarray, shape=(n_atoms, 3, 3)
        ``Z*[k, b, a]`` (e).
    numbers : sequence of int, shape=(n_atoms,)

    Returns
    -------
    dict
        ``passed``, the worst relative diagonal and absolute off-diagonal errors
        with the atoms they occur on, and per-atom rows (``index``, ``symbol``,
        ``max_rel_diag``, ``max_abs_offdiag``, predicted and reference diagonal).
    """
    pred, reference = np.asarray(pred, dtype=float), np.asarray(reference, dtype=float)
    if pred.shape != reference.shape or pred.ndim != 3 or pred.shape[1:] != (3, 3):
        raise ValueError(f"pred {pred.shape} and reference {reference.shape} must both be (n_atoms, 3, 3)")
    numbers = np.asarray(numbers, dtype=int)
    if numbers.shape != (len(pred),):
        raise ValueError(f"numbers {numbers.shape} must be ({len(pred)},)")
    idx = np.arange(3)
    known = ~np.isnan(reference)
    if not known.any():
        raise ValueError("the reference has no known element")
    ref_diag, pred_diag = reference[:, idx, idx], pred[:, idx, idx]
    if np.any(np.abs(ref_diag[known[:, idx, idx]]) < 1e-6):
        raise ValueError("a reference diagonal Z* is zero: the relative error is undefined")
    with np.errstate(invalid="ignore"):
        rel = np.abs(pred_diag - ref_diag) / np.abs(ref_diag)
    off = np.abs(pred - reference)
    off[:, idx, idx] = 0.0
    # a NaN prediction fails; an unknown (NaN) reference element is not checked
    rel = np.where(known[:, idx, idx], np.nan_to_num(rel, nan=np.inf), 0.0)
    off = np.where(known, np.nan_to_num(off, nan=np.inf), 0.0)
    off_max = off.reshape(len(pred), 9).max(axis=1)
    atoms_rows = [
        {
            "index": int(k),
            "symbol": chemical_symbols[numbers[k]],
            "max_rel_diag": float(rel[k].max()),
            "max_abs_offdiag": float(off_max[k]),
            "pred_diag": pred_diag[k].tolist(),
            "ref_diag": ref_diag[k].tolist(),
        }
        for k in range(len(pred))
    ]
    worst_d, worst_o = int(rel.max(axis=1).argmax()), int(off_max.argmax())
    return {
        "passed": bool(rel.max() <= diag_rel_tol and off_max.max() <= offdiag_abs_tol),
        "n_elements_checked": int(known.sum()),
        "diag_rel_tol": diag_rel_tol,
        "offdiag_abs_tol": offdiag_abs_tol,
        "max_rel_diag": float(rel.max()),
        "max_rel_diag_atom": worst_d,
        "max_abs_offdiag": float(off_max.max()),
        "max_abs_offdiag_atom": worst_o,
        "n_atoms_failing": int(np.sum((rel.max(axis=1) > diag_rel_tol) | (off_max > offdiag_abs_tol))),
        "atoms": atoms_rows,
    }


__all__ = ["Predictions", "equilibrium_check", "evaluate", "forward_batch", "predict_born_charges"]
