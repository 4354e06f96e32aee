r"""Error metrics of predicted Born effective charges (paper section 4 / SI).

All errors compare the sum-rule-CORRECTED prediction with the sum-rule-corrected target
(CONVENTIONS.md "Datasets"); units e, except RMSPE (%).

================================  ===========================================================
key                               definition
================================  ===========================================================
``mae``, ``rmse``                 over all atoms and all 9 components
``mae_diag``, ``mae_offdiag``     over the 3 diagonal / 6 off-diagonal components
``rmse_diag``, ``rmse_offdiag``   likewise
``rmspe_diag``                    ``100 sqrt(mean(((pred - true) / true)^2))`` over diagonal
                                  elements with ``|true| >= rmspe_min_abs`` (default 0.05 e;
                                  smaller ones would dominate a relative error; the number
                                  used is ``n_rmspe``)
``mae_per_species``               ``{symbol: MAE over that species' atoms, 9 components}``
``mae_diag_per_species`` ...      likewise for diagonal / off-diagonal components
``asr_violation_mae``             paper SI: ``(1/(9 N_struct)) Σ_s Σ_ab |Σ_{i∈s} Z*_i,ab|`` of
                                  the RAW model output (before the correction)
``target_asr_violation_mae``      the same for the raw data (for reference)
================================  ===========================================================

:class:`MetricAccumulator` accumulates sums batch by batch (constant memory) and can be
summed across processes (:meth:`MetricAccumulator.all_reduce`) before :meth:`compute`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

#: default threshold (e) below which diagonal targets are left out of the RMSPE
RMSPE_MIN_ABS: float = 0.05

_DIAG = torch.eye(3, dtype=torch.bool).reshape(9)

# layout of the scalar sums
_SCALARS = (
    "abs", "sq", "n",
    "abs_diag", "sq_diag", "n_diag",
    "abs_off", "sq_off", "n_off",
    "pct_sq", "n_pct",
    "asr", "asr_target", "n_struct",
)  # fmt: skip


class MetricAccumulator:
    """Running sums for the metrics of the module docstring.

    Parameters
    ----------
    num_species : int
        Size of the per-species tables (atomic numbers ``< num_species``).
    rmspe_min_abs : float
        Diagonal targets with ``|Z*| <`` this (e) are left out of the RMSPE.
    """

    def __init__(self, num_species: int = 100, rmspe_min_abs: float = RMSPE_MIN_ABS) -> None:
        self.num_species = int(num_species)
        self.rmspe_min_abs = float(rmspe_min_abs)
        # [scalars | per-species abs, n | abs_diag, n_diag | abs_off, n_off] in float64
        self.sums = torch.zeros(len(_SCALARS) + 6 * self.num_species, dtype=torch.float64)
        self._has_raw = False
        self._has_target_raw = False

    def _sp(self, k: int) -> slice:
        o = len(_SCALARS) + k * self.num_species
        return slice(o, o + self.num_species)

    @torch.no_grad()
    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        numbers: torch.Tensor,
        *,
        pred_raw: torch.Tensor | None = None,
        target_raw: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        n_structures: int = 1,
    ) -> None:
        """Add one batch.

        Parameters
        ----------
        pred, target : torch.Tensor, shape=(n_atoms, 3, 3)
            Sum-rule-corrected prediction and target, e.
        numbers : torch.Tensor, shape=(n_atoms,), dtype=int64
        pred_raw, target_raw : torch.Tensor, shape=(n_atoms, 3, 3), optional
            Before the correction (for the sum-rule violation metrics).
        batch : torch.Tensor, shape=(n_atoms,), dtype=int64, optional
            Structure index of every atom (default: one structure).
        n_structures : int
        """
        dev = self.sums.device
        p = pred.detach().to(dev, torch.float64).reshape(-1, 9)
        t = target.detach().to(dev, torch.float64).reshape(-1, 9)
        z = numbers.detach().to(dev).long()
        err = p - t
        a, s = err.abs(), err.square()
        d = _DIAG.to(dev)
        S = dict(zip(_SCALARS, range(len(_SCALARS))))
        v = self.sums
        v[S["abs"]] += a.sum()
        v[S["sq"]] += s.sum()
        v[S["n"]] += a.numel()
        v[S["abs_diag"]] += a[:, d].sum()
        v[S["sq_diag"]] += s[:, d].sum()
        v[S["n_diag"]] += a[:, d].numel()
        v[S["abs_off"]] += a[:, ~d].sum()
        v[S["sq_off"]] += s[:, ~d].sum()
        v[S["n_off"]] += a[:, ~d].numel()
        td = t[:, d]
        ok = td.abs() >= self.rmspe_min_abs
        v[S["pct_sq"]] += ((err[:, d][ok] / td[ok]) ** 2).sum()
        v[S["n_pct"]] += ok.sum()
        if (z < 0).any() or (z >= self.num_species).any():
            raise ValueError(f"atomic numbers outside 0..{self.num_species - 1}")
        ones = torch.ones_like(a[:, 0])
        v[self._sp(0)] += torch.zeros(self.num_species, dtype=v.dtype, device=dev).index_add(
            0, z, a.sum(1)
        )
        v[self._sp(1)] += torch.zeros(self.num_species, dtype=v.dtype, device=dev).index_add(
            0, z, 9 * ones
        )
        v[self._sp(2)] += torch.zeros(self.num_species, dtype=v.dtype, device=dev).index_add(
            0, z, a[:, d].sum(1)
        )
        v[self._sp(3)] += torch.zeros(self.num_species, dtype=v.dtype, device=dev).index_add(
            0, z, 3 * ones
        )
        v[self._sp(4)] += torch.zeros(self.num_species, dtype=v.dtype, device=dev).index_add(
            0, z, a[:, ~d].sum(1)
        )
        v[self._sp(5)] += torch.zeros(self.num_species, dtype=v.dtype, device=dev).index_add(
            0, z, 6 * ones
        )
        if batch is None:
            batch = torch.zeros(p.shape[0], dtype=torch.long, device=dev)
        batch = batch.detach().to(dev).long()
        v[S["n_struct"]] += n_structures
        for key, raw in (("asr", pred_raw), ("asr_target", target_raw)):
            if raw is not None:
                r = raw.detach().to(dev, torch.float64).reshape(-1, 9)
                tot = torch.zeros(n_structures, 9, dtype=torch.float64, device=dev).index_add(
                    0, batch, r
                )
                v[S[key]] += tot.abs().sum()
        self._has_raw = self._has_raw or pred_raw is not None
        self._has_target_raw = self._has_target_raw or target_raw is not None

    def all_reduce(self, group: Any = None) -> None:
        """Sum the accumulators of all processes (``torch.distributed``), in place."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend(group)
            buf = self.sums.to("cuda") if backend == "nccl" else self.sums
            flags = torch.tensor(
                [float(self._has_raw), float(self._has_target_raw)],
                dtype=torch.float64,
                device=buf.device,
            )
            dist.all_reduce(buf, group=group)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
            self.sums = buf.to(self.sums.device)
            self._has_raw, self._has_target_raw = bool(flags[0] > 0), bool(flags[1] > 0)

    def compute(self) -> dict[str, Any]:
        """The metrics (module docstring) as plain Python numbers."""
        v = self.sums.tolist()
        S = {k: v[i] for i, k in enumerate(_SCALARS)}

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else math.nan

        out: dict[str, Any] = {
            "n_structures": int(S["n_struct"]),
            "n_atoms": int(S["n"] // 9),
            "mae": ratio(S["abs"], S["n"]),
            "rmse": math.sqrt(ratio(S["sq"], S["n"])) if S["n"] else math.nan,
            "mae_diag": ratio(S["abs_diag"], S["n_diag"]),
            "mae_offdiag": ratio(S["abs_off"], S["n_off"]),
            "rmse_diag": math.sqrt(ratio(S["sq_diag"], S["n_diag"])) if S["n_diag"] else math.nan,
            "rmse_offdiag": math.sqrt(ratio(S["sq_off"], S["n_off"])) if S["n_off"] else math.nan,
            "rmspe_diag": 100.0 * math.sqrt(ratio(S["pct_sq"], S["n_pct"]))
            if S["n_pct"]
            else math.nan,
            "n_rmspe": int(S["n_pct"]),
        }
        sp = [self.sums[self._sp(k)].tolist() for k in range(6)]
        for name, (num, den) in (
            ("mae_per_species", (sp[0], sp[1])),
            ("mae_diag_per_species", (sp[2], sp[3])),
            ("mae_offdiag_per_species", (sp[4], sp[5])),
        ):
            out[name] = {
                chemical_symbols[z]: num[z] / den[z] for z in range(self.num_species) if den[z] > 0
            }
        n_s = S["n_struct"]
        out["asr_violation_mae"] = S["asr"] / (9 * n_s) if self._has_raw and n_s else None
        out["target_asr_violation_mae"] = (
            S["asr_target"] / (9 * n_s) if self._has_target_raw and n_s else None
        )
        return out


def compute_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    numbers: np.ndarray | torch.Tensor,
    *,
    pred_raw: np.ndarray | torch.Tensor | None = None,
    target_raw: np.ndarray | torch.Tensor | None = None,
    batch: np.ndarray | torch.Tensor | None = None,
    rmspe_min_abs: float = RMSPE_MIN_ABS,
) -> dict[str, Any]:
    """All metrics at once for arrays of ``shape=(n_atoms, 3, 3)`` (see the module docstring).

    ``batch`` (``shape=(n_atoms,)``) gives the structure of every atom (default: one).
    """

    def t(x):
        return (
            None if x is None else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        )

    b = t(batch)
    n_struct = int(b.max()) + 1 if b is not None and b.numel() else 1
    acc = MetricAccumulator(rmspe_min_abs=rmspe_min_abs)
    acc.update(
        t(pred), t(target), t(numbers), pred_raw=t(pred_raw), target_raw=t(target_raw),
        batch=b, n_structures=n_struct,
    )  # fmt: skip
    return acc.compute()


__all__ = ["RMSPE_MIN_ABS", "MetricAccumulator", "compute_metrics"]
