"""The model learns: a non-trivial analytic Z*(R) target, validation MAE down >= 10x.

Target: :func:`ase_born.train.synthetic.analytic_born_charges` (species charges + a
coordination term + a neighbour-weighted traceless quadrupole-like term + an
antisymmetric part from a two-hop pseudovector; equivariant by construction, checked
here), on strained, displaced and tilted periodic CaTiO3 cells. Besides the >= 10x drop
from the initial weights, the trained model must beat the best geometry-blind predictor
(per-species mean tensor of the training targets) by a wide margin on validation AND on
TEST, so it has learned the dependence on positions, not only the species.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from train_helpers import one_torch_thread  # noqa: F401 - autouse fixture

from ase_born.io.extxyz import write_frames
from ase_born.train.config import TrainConfig
from ase_born.train.dataset import BornDataset
from ase_born.train.synthetic import analytic_born_charges, synthetic_frames
from ase_born.train.trainer import train


def test_analytic_target_is_equivariant_and_not_trivial():
    atoms = synthetic_frames(3, kinds=("tilt10",))[2]
    z0 = analytic_born_charges(atoms)
    for matrix in (Rotation.random(random_state=3).as_matrix(), -np.eye(3)):
        moved = atoms.copy()
        moved.positions = atoms.positions @ matrix.T
        moved.cell = atoms.cell.array @ matrix.T
        z1 = analytic_born_charges(moved)
        np.testing.assert_allclose(z1, np.einsum("ij,kjl,ml->kim", matrix, z0, matrix), atol=1e-12)
    antisym = 0.5 * (z0 - z0.transpose(0, 2, 1))
    assert np.abs(antisym).max() > 1e-2  # the 1e part is present
    traceless = (
        0.5 * (z0 + z0.transpose(0, 2, 1))
        - np.trace(z0, axis1=1, axis2=2)[:, None, None] * np.eye(3) / 3
    )
    assert np.abs(traceless).max() > 1.0  # strong 2e part


def _species_mean_mae(train: BornDataset, other: BornDataset) -> float:
    """MAE of the geometry-blind predictor: per-species mean of the (corrected) train targets."""
    nums = np.concatenate([s.graph.numbers for s in train.samples])
    tgt = np.concatenate([s.target for s in train.samples])
    means = {z: tgt[nums == z].mean(axis=0) for z in np.unique(nums)}
    errs = []
    for s in other.samples:
        pred = np.stack([means[z] for z in s.graph.numbers])
        pred -= pred.mean(axis=0)  # the same sum-rule correction as the model output
        errs.append(np.abs(pred - s.target).ravel())
    return float(np.concatenate(errs).mean())


def test_validation_mae_drops_tenfold(tmp_path):
    frames = synthetic_frames(80, kinds=("cubic5", "tilt10"), seed=7)
    data = tmp_path / "analytic.extxyz"
    write_frames(data, frames)
    cfg = TrainConfig(
        model={"embedding_dim": 8, "num_radial": 8, "int_num_feat": 16, "num_interactions": 2},
        train_files=[str(data)],
        epochs=40,
        batch_size=8,
        lr=1e-2,
        device="cpu",
        seed=1,
        out=str(tmp_path / "run"),
        progress=False,
        plots=False,
    )
    t0 = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - t0
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").read_text().splitlines()))
    initial = float(rows[0]["val_mae"])
    assert rows[0]["epoch"] == "0" and len(rows) == 41
    assert result.status == "completed"
    assert result.best_val_mae == pytest.approx(result.val["mae"], rel=1e-5)
    assert initial / result.val["mae"] >= 10.0, (initial, result.val["mae"])

    from ase_born.train.dataset import load_splits

    splits = load_splits([str(data)], seed=1)
    assert splits.test is not None and len(splits.test) >= 8
    blind_val = _species_mean_mae(splits.train, splits.val)
    blind_test = _species_mean_mae(splits.train, splits.test)
    assert result.val["mae"] < 0.25 * blind_val, (result.val["mae"], blind_val)
    assert result.test["mae"] < 0.25 * blind_test, (result.test["mae"], blind_test)
    # trained on the raw output: the network itself learns charge neutrality
    assert result.val["asr_violation_mae"] < 0.5
    print(
        f"\nlearning: {elapsed:.1f} s, val MAE {initial:.3f} -> {result.val['mae']:.4f} e "
        f"(x{initial / result.val['mae']:.0f}; species-mean predictor {blind_val:.3f}), "
        f"TEST MAE {result.test['mae']:.4f} e, raw ASR violation {result.val['asr_violation_mae']:.3f} e"
    )
