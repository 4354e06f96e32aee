"""DDP on CPU: ``torchrun`` with 2 gloo processes == one process with twice the batch.

With a training set divisible by the global batch, the two processes'
``DistributedSampler`` shards of an epoch together are exactly the batches of a single
process with ``batch_size * 2`` (both permute with ``seed + epoch``), and DDP's gradient
average equals the single-process mean over the batch's atoms: the shards mix 5- and
10-atom structures, so each process's loss must be weighted by its share of the atoms
(before session 29 it was not: the gradient weighted each shard's atoms by 1 / its own
count, and only equal-size structures, as this test then used, matched). So in float64 the DDP run must end with
the same weights and validation metrics (to summation-order rounding), which tests the
sampler, the gradient all-reduce, the sharded validation all-reduce and rank-0-only output.
About 20-25 s on a loaded 2-core box (two extra interpreters importing torch/e3nn).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ase_born.io.extxyz import write_frames
from ase_born.models.equivar import Equivar
from ase_born.train.config import TrainConfig
from ase_born.train.synthetic import synthetic_frames
from ase_born.train.trainer import train

REPO = Path(__file__).resolve().parents[2]
TINY = {"embedding_dim": 8, "num_radial": 8, "int_num_feat": 8, "num_interactions": 2}

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed unavailable"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    frames = synthetic_frames(24, kinds=("cubic5", "tilt10"), seed=4)  # 5 and 10 atoms
    for a in frames:
        a.info["split"] = "train"
    write_frames(tmp_path / "train.extxyz", frames[:16])
    write_frames(tmp_path / "val.extxyz", frames[16:21])  # 5: uneven validation shards
    write_frames(tmp_path / "test.extxyz", frames[21:])
    common = {
        "model": TINY,
        "train_files": [str(tmp_path / "train.extxyz")],
        "val_file": str(tmp_path / "val.extxyz"),
        "test_file": str(tmp_path / "test.extxyz"),
        "epochs": 3,
        "lr": 1e-2,
        "device": "cpu",
        "dtype": "float64",
        "seed": 11,
        "progress": False,
        "plots": False,
    }
    ddp_cfg = TrainConfig(**common, batch_size=4, out=str(tmp_path / "ddp"))
    ddp_cfg.to_yaml(tmp_path / "ddp.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "ase_born.cli.main", "train", str(tmp_path / "ddp.yaml"), "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    torch.set_num_threads(1)
    single = train(TrainConfig(**common, batch_size=8, out=str(tmp_path / "single")))
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["status"] == "completed" and ddp["epochs_completed"] == 3
    assert ddp["n_train"] == 16 and ddp["val"]["n_structures"] == 5
    assert ddp["best_epoch"] == single.best_epoch
    for key in ("mae", "rmse", "mae_diag", "mae_offdiag", "asr_violation_mae"):
        assert ddp["val"][key] == pytest.approx(single.val[key], rel=1e-9, abs=1e-12), key
        assert ddp["test"][key] == pytest.approx(single.test[key], rel=1e-9, abs=1e-12), key
    a = Equivar.load(tmp_path / "ddp" / "model.pt").state_dict()
    b = Equivar.load(tmp_path / "single" / "model.pt").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-11)
    # per-epoch validation in the DDP log (sharded + all-reduced) equals the single-process one
    import csv

    la = list(csv.DictReader((tmp_path / "ddp" / "log.csv").read_text().splitlines()))
    lb = list(csv.DictReader((tmp_path / "single" / "log.csv").read_text().splitlines()))
    assert [float(r["val_mae"]) for r in la] == pytest.approx(
        [float(r["val_mae"]) for r in lb], rel=1e-9
    )
    assert [float(r["train_loss"]) for r in la[1:]] == pytest.approx(
        [float(r["train_loss"]) for r in lb[1:]], rel=1e-9
    )
