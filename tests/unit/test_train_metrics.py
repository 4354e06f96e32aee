"""Metrics against direct NumPy formulas (paper section 4 / SI definitions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ase_born.train.metrics import MetricAccumulator, compute_metrics


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_struct, per = 4, 5
    numbers = np.tile([20, 22, 8, 8, 8], n_struct)
    batch = np.repeat(np.arange(n_struct), per)
    raw_t = rng.normal(size=(n_struct * per, 3, 3)) + np.eye(3) * 2.0
    raw_p = raw_t + 0.1 * rng.normal(size=raw_t.shape) + 0.3

    def corr(z):
        return z - np.stack([z[batch == s].mean(0) for s in range(n_struct)])[batch]

    return corr(raw_p), corr(raw_t), raw_p, raw_t, numbers, batch


def test_metrics_match_direct_formulas():
    pred, target, raw_p, raw_t, numbers, batch = _data()
    m = compute_metrics(pred, target, numbers, pred_raw=raw_p, target_raw=raw_t, batch=batch)
    err = pred - target
    diag = np.eye(3, dtype=bool)
    assert m["mae"] == pytest.approx(np.abs(err).mean())
    assert m["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert m["mae_diag"] == pytest.approx(np.abs(err[:, diag]).mean())
    assert m["mae_offdiag"] == pytest.approx(np.abs(err[:, ~diag]).mean())
    assert m["rmse_diag"] == pytest.approx(np.sqrt((err[:, diag] ** 2).mean()))
    assert m["rmse_offdiag"] == pytest.approx(np.sqrt((err[:, ~diag] ** 2).mean()))
    td = target[:, diag]
    ok = np.abs(td) >= 0.05
    assert m["rmspe_diag"] == pytest.approx(
        100 * np.sqrt(((err[:, diag][ok] / td[ok]) ** 2).mean())
    )
    assert m["n_rmspe"] == ok.sum()
    for sym, z in (("Ca", 20), ("Ti", 22), ("O", 8)):
        assert m["mae_per_species"][sym] == pytest.approx(np.abs(err[numbers == z]).mean())
        assert m["mae_diag_per_species"][sym] == pytest.approx(
            np.abs(err[numbers == z][:, diag]).mean()
        )
        assert m["mae_offdiag_per_species"][sym] == pytest.approx(
            np.abs(err[numbers == z][:, ~diag]).mean()
        )
    # paper SI: (1/(9 N_struct)) sum_s sum_ab |sum_{i in s} Z*_i,ab| of the RAW output
    n_struct = batch.max() + 1
    viol = sum(np.abs(raw_p[batch == s].sum(0)).sum() for s in range(n_struct)) / (9 * n_struct)
    assert m["asr_violation_mae"] == pytest.approx(viol)
    viol_t = sum(np.abs(raw_t[batch == s].sum(0)).sum() for s in range(n_struct)) / (9 * n_struct)
    assert m["target_asr_violation_mae"] == pytest.approx(viol_t)
    assert (m["n_structures"], m["n_atoms"]) == (4, 20)
    # the same number as the model module's batched helper
    from ase_born.models.equivar import asr_violation

    per_struct = asr_violation(torch.as_tensor(raw_p), torch.as_tensor(batch), int(n_struct))
    assert m["asr_violation_mae"] == pytest.approx(per_struct.mean().item())


def test_accumulating_in_batches_equals_all_at_once():
    pred, target, raw_p, raw_t, numbers, batch = _data(1)
    whole = compute_metrics(pred, target, numbers, pred_raw=raw_p, target_raw=raw_t, batch=batch)
    acc = MetricAccumulator()
    t = torch.as_tensor
    for lo, hi in ((0, 2), (2, 3), (3, 4)):
        sel = (batch >= lo) & (batch < hi)
        acc.update(
            t(pred[sel]), t(target[sel]), t(numbers[sel]), pred_raw=t(raw_p[sel]), target_raw=t(raw_t[sel]),
            batch=t(batch[sel] - lo), n_structures=hi - lo,
        )  # fmt: skip
    parts = acc.compute()
    for key in ("mae", "rmse", "mae_diag", "mae_offdiag", "rmspe_diag", "asr_violation_mae"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)
    assert parts["mae_per_species"] == pytest.approx(whole["mae_per_species"])


def test_perfect_prediction_and_missing_raw():
    _, target, _, _, numbers, batch = _data(2)
    m = compute_metrics(target, target, numbers, batch=batch)
    assert m["mae"] == 0.0 and m["rmse"] == 0.0 and m["rmspe_diag"] == 0.0
    assert m["asr_violation_mae"] is None
