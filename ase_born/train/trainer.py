"""The training loop for Equivar (paper recipe by default), single process or DDP.

Recipe (REFERENCE.md "Training recipe", defaults of :class:`TrainConfig`)
------------------------------------------------------------------------
L1 loss on all 9 components between the network output and the sum-rule-corrected
target (``loss_on="raw"``: the output before the correction, as in the paper, where the
correction follows the network; errors are reported after it), AdamW with initial
learning rate 5e-3, a 0.8/0.2
train/validation split of the non-TEST structures, the checkpoint with the best
validation MAE, final numbers on TEST (never used for selection).

Outputs in ``config.out``
-------------------------
``config.yaml``              the resolved configuration
``splits.json``              structure IDs of train / val / test
``log.csv``                  one row per epoch (row 0: the initial weights): train loss, val
                             metrics, learning rate, wall time, best flag
``checkpoints/last.pt``      every ``checkpoint_every`` epochs (resume point)
``checkpoints/best.pt``      whenever the validation MAE improves
``model.pt``                 best-validation weights, :meth:`Equivar.save` format
``metrics.json``             val + TEST metrics of ``model.pt``, best epoch, stop reason
``parity_val.png``, ``parity_test.png``, ``training_curve.png``   (``plots: true``)

Checkpoint format: :mod:`ase_born.train.checkpoint`.

Reproducibility and resume
--------------------------
The seed fixes the initial weights (``torch.manual_seed`` before the model is built), the
splits and the per-epoch shuffling (``DistributedSampler`` seeded with ``seed + epoch``,
also in single-process runs), so an epoch does not depend on how the run got there.
``resume=True`` restores weights, optimizer, scheduler, EMA, history, best metric and RNG
states from ``checkpoints/last.pt``; on CPU the resumed run ends bit-for-bit where an
uninterrupted one does. A checkpoint from another model, config (other than
:data:`~ase_born.train.config.RESUMABLE_CHANGES`) or dataset is refused with
:class:`~ase_born.train.checkpoint.CheckpointMismatchError`.

Multi-GPU / multi-process
-------------------------
Launch with ``torchrun --nproc_per_node N -m ase_born.cli.main train CONFIG.yaml``: the
process group is initialised from the environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``...; NCCL on CUDA, gloo on CPU), the model is wrapped in
``DistributedDataParallel``, each process trains on its ``DistributedSampler`` shard
(``batch_size`` is per process), each process's loss is weighted by its share of the
step's atoms (so the averaged gradient is the mean over all of them, as one process with
the whole batch gets, also when the shards hold structures of different sizes),
validation is sharded and the metric sums are all-reduced. Only rank 0 writes files.

Non-finite loss
---------------
A NaN/inf loss (on any process) stops training before the bad step is applied; the best
checkpoint is kept and exported, ``metrics.json`` records the reason and
:class:`TrainingResult.status` is ``"non_finite_loss"``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ase_born.models.equivar import Equivar, EquivarConfig
from ase_born.models.utils import dtype_name, resolve_dtype
from ase_born.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointMismatchError,
    atomic_torch_save,
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    set_rng_state,
    versions,
)
from ase_born.train.config import RESUMABLE_CHANGES, TrainConfig, config_differences
from ase_born.train.dataset import Collater, DataSplits, collate_samples, load_splits
from ase_born.train.evaluation import evaluate, forward_batch
from ase_born.train.metrics import MetricAccumulator

logger = logging.getLogger("ase_born.train")

#: columns of ``log.csv``
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_mae",
    "val_rmse",
    "val_mae_diag",
    "val_mae_offdiag",
    "val_rmspe_diag",
    "val_asr_violation_mae",
    "lr",
    "time_s",
    "best",
)


# ---------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------
def make_loss(name: str, huber_delta: float = 0.01):
    """``loss(pred, target)``: mean over atoms and the 9 components."""
    if name == "l1":
        return nn.L1Loss()
    if name == "mse":
        return nn.MSELoss()
    if name == "huber":
        return nn.HuberLoss(delta=huber_delta)
    raise ValueError(f"unknown loss {name!r}")


class EMA:
    """Exponential moving average of floating-point weights: ``w̄ ← d w̄ + (1 - d) w``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.shadow = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise CheckpointMismatchError("EMA state has different parameter names than the model")
        for k, v in state.items():
            self.shadow[k].copy_(v)


@dataclass
class DistInfo:
    """Process-group facts (a single process: world_size 1, rank 0)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> DistInfo:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(
                dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
            )
        return cls()


def init_distributed(device: str = "auto") -> bool:
    """Initialise ``torch.distributed`` from torchrun's environment if ``WORLD_SIZE > 1``.

    Backend: NCCL when the run uses CUDA, gloo otherwise. Returns True if this call
    created the process group (the caller then destroys it).
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    use_cuda = _wants_cuda(device)
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return True


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def resolve_train_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` if CUDA is available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


@dataclass
class TrainingResult:
    """What :func:`train` returns (also in ``metrics.json``)."""

    status: str
    out: Path
    best_epoch: int
    best_val_mae: float
    epochs_completed: int
    val: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    stopped_reason: str | None = None
    folds: list[TrainingResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "status": self.status,
            "stopped_reason": self.stopped_reason,
            "out": str(self.out),
            "best_epoch": self.best_epoch,
            "best_val_mae": self.best_val_mae,
            "epochs_completed": self.epochs_completed,
            "val": self.val,
            "test": self.test,
        }
        if self.folds:
            d["folds"] = [f.to_dict() for f in self.folds]
        return d


# ---------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------
class Trainer:
    """One training run (one fold). Use :func:`train` for the whole job.

    Parameters
    ----------
    config : TrainConfig
    out : path-like, optional
        Output directory (default ``config.out``).
    fold : int
        Validation fold when ``config.folds > 1``.
    resume : bool
        Continue from ``<out>/checkpoints/last.pt``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        out: str | os.PathLike | None = None,
        fold: int = 0,
        resume: bool = False,
    ) -> None:
        self.cfg = config
        self.out = Path(out if out is not None else config.out)
        self.fold = int(fold)
        self.resume = bool(resume)
        self.dist = DistInfo.current()
        self.device = resolve_train_device(config.device, self.dist.local_rank)
        self.dtype = resolve_dtype(config.dtype)
        self.model_config: EquivarConfig = config.model_config()
        self.autocast = config.mixed_precision == "bf16"
        self.loss_fn = make_loss(config.loss, config.huber_delta)
        self.history: list[dict[str, Any]] = []
        self.best_metric = math.inf
        self.best_epoch = -1
        self.epoch = 0

    # ------------------------------------------------------------------ paths
    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        if self.resume and not self.last_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {self.last_path} does not exist")
        if not self.resume and self.last_path.exists():
            raise FileExistsError(
                f"{self.last_path} exists: pass resume=True (--resume) to continue that run, or choose another out"
            )
        seed_everything(cfg.seed)
        mc = self.model_config
        self.splits: DataSplits = load_splits(
            cfg.train_files,
            val_file=cfg.val_file,
            test_file=cfg.test_file,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            folds=cfg.folds,
            fold=self.fold,
            r_max=mc.r_max,
            r_min=mc.r_min,
            num_species=mc.num_species,
        )
        self.fingerprint = self.splits.fingerprint()
        self.model = Equivar.from_config(
            mc, tp_impl=cfg.tp_impl, device=self.device, dtype=self.dtype
        )
        self.model.train()
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self._eval_model = (
            Equivar.from_config(mc, tp_impl=cfg.tp_impl, device=self.device, dtype=self.dtype)
            if self.ema is not None
            else None
        )
        if self.resume:
            self._restore(load_checkpoint(self.last_path, map_location="cpu"))
        self.net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        self.sampler = DistributedSampler(
            self.splits.train,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=False,
        )
        self.loader = DataLoader(
            self.splits.train,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            collate_fn=Collater(self.dtype),
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        # validation shard of this process, collated once
        val = self.splits.val.samples[self.dist.rank :: self.dist.world_size]
        bs = max(cfg.batch_size, 16)
        self._val_batches = [
            collate_samples(val[k : k + bs], device=self.device, dtype=self.dtype)
            for k in range(0, len(val), bs)
        ]
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.last_path.parent.glob(".*.pt.tmp*"):  # left by a killed run
                stale.unlink(missing_ok=True)
            cfg.to_yaml(self.out / "config.yaml")
            splits = {
                name: (None if ds is None else ds.structure_ids)
                for name, ds in (
                    ("train", self.splits.train),
                    ("val", self.splits.val),
                    ("test", self.splits.test),
                )
            }
            if self.splits.val_is_train:
                splits["val_is_train"] = True  # final fit: no held-out validation
            atomic_write_text(json.dumps(splits, indent=1), self.out / "splits.json")
        logger.info(
            "data: %d train / %d val / %s test structures (%d / %d atoms); elements %s; device %s, %d process(es)",
            len(self.splits.train), len(self.splits.val),
            "no" if self.splits.test is None else len(self.splits.test),
            self.splits.train.n_atoms, self.splits.val.n_atoms, self.splits.elements,
            self.device, self.dist.world_size,
        )  # fmt: skip

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(
                self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )
        return torch.optim.Adam(self.model.parameters(), lr=cfg.lr)

    def _make_scheduler(self):
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=cfg.epochs, eta_min=cfg.lr_min
            )
        if cfg.lr_schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                min_lr=cfg.lr_min,
            )
        return None

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "model_config": self.model_config.to_dict(),
            "model_dtype": dtype_name(self.dtype),
            "train_config": self.cfg.to_dict(),
            "model_state": {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            },
            "ema_state": None if self.ema is None else self.ema.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": None if self.scheduler is None else self.scheduler.state_dict(),
            "best_metric": float(self.best_metric),
            "best_epoch": int(self.best_epoch),
            "history": [dict(h) for h in self.history],
            "rng": get_rng_state(),
            "elements": self.splits.elements,
            "train_elements": self.splits.train.elements,  # what an exported model knows
            "normalisation": None,
            "data_fingerprint": self.fingerprint,
            "fold": self.fold,
            "world_size": self.dist.world_size,
            "versions": versions(),
        }

    def _save(self, path: Path) -> None:
        if self.dist.is_main:
            atomic_torch_save(self._checkpoint(), path)

    def _restore(self, ckpt: Mapping[str, Any]) -> None:
        """Check that ``ckpt`` belongs to this run, then load every state from it."""
        where = str(self.last_path)
        mc = ckpt.get("model_config")
        if mc != self.model_config.to_dict():
            diff = {
                k: (mc.get(k) if isinstance(mc, Mapping) else None, v)
                for k, v in self.model_config.to_dict().items()
                if not isinstance(mc, Mapping) or mc.get(k) != v
            }
            raise CheckpointMismatchError(
                f"{where} was written for another model: differing hyperparameters (checkpoint, config) {diff}"
            )
        if ckpt.get("model_dtype") != dtype_name(self.dtype):
            raise CheckpointMismatchError(
                f"{where} was trained in {ckpt.get('model_dtype')}, the config asks for {dtype_name(self.dtype)}"
            )
        try:  # fields that may change on resume are not compared: the current ones stand in
            # (epochs is kept: the cosine schedule's length and the epochs trained check use it)
            stored = {**dict(ckpt["train_config"]),
                      **{k: getattr(self.cfg, k) for k in RESUMABLE_CHANGES if k != "epochs"}}
            old = TrainConfig.from_dict(stored)
        except (ValueError, TypeError) as exc:
            raise CheckpointMismatchError(f"{where}: unreadable train_config ({exc})") from exc
        diff = config_differences(old, self.cfg)
        if self.cfg.lr_schedule == "cosine" and old.epochs != self.cfg.epochs:
            diff["epochs (cosine schedule length)"] = (old.epochs, self.cfg.epochs)
        if diff:
            lines = ", ".join(f"{k}: {old_v!r} -> {new_v!r}" for k, (old_v, new_v) in diff.items())
            raise CheckpointMismatchError(
                f"{where} was written with a different training config ({lines}); "
                "resume with the original config or start a new run in another out directory"
            )
        if int(ckpt.get("epoch", 0)) > self.cfg.epochs:
            raise CheckpointMismatchError(
                f"{where} is from epoch {int(ckpt['epoch'])}, beyond the {self.cfg.epochs} epochs asked "
                "for: its model would be exported as a shorter run's; resume with --epochs >= "
                f"{int(ckpt['epoch'])}, or train anew in another out directory"
            )
        if ckpt.get("data_fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"{where} was written for different data (train/val/test structures or targets changed); "
                "start a new run"
            )
        if int(ckpt.get("world_size", 1)) != self.dist.world_size:
            logger.warning(
                "resuming a %s-process checkpoint with %d process(es): the run will not be bit-identical",
                ckpt.get("world_size"), self.dist.world_size,
            )  # fmt: skip
        try:
            self.model.load_state_dict(ckpt["model_state"], strict=True)
        except RuntimeError as exc:
            raise CheckpointMismatchError(
                f"{where}: model weights do not fit the model ({exc})"
            ) from exc
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema_state"])
        self.epoch = int(ckpt["epoch"])
        self.best_metric = float(ckpt["best_metric"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.history = [dict(h) for h in ckpt["history"]]
        set_rng_state(ckpt["rng"])
        self._adopt_newer_best()
        logger.info(
            "resumed %s at epoch %d (best val MAE %.5g at epoch %d)",
            where, self.epoch, self.best_metric, self.best_epoch,
        )  # fmt: skip

    def _adopt_newer_best(self) -> None:
        """``best.pt`` is written at every improvement, ``last.pt`` every ``checkpoint_every``
        epochs: after a kill, best.pt can be from an epoch after last.pt. Its weights stay the
        best (the export reads that file), so its metric and epoch are adopted; an exact replay
        (CPU) finds the same epoch again, an inexact one (GPU, other world size) must beat it."""
        if not self.best_path.is_file():
            return
        best = load_checkpoint(self.best_path, map_location="cpu")
        if int(best.get("epoch", -1)) > self.epoch and float(best["best_metric"]) < self.best_metric:
            logger.info(
                "best.pt is from epoch %d (after last.pt's %d): keeping it as the best (val MAE %.5g)",
                int(best["epoch"]), self.epoch, float(best["best_metric"]),
            )  # fmt: skip
            self.best_metric = float(best["best_metric"])
            self.best_epoch = int(best["best_epoch"])

    # ------------------------------------------------------------------ steps
    def _step_sync(self, bad: bool, n_atoms: int) -> tuple[bool, float]:
        """Whether ``bad`` holds on any process, and the share of this process's ``n_atoms``
        in the step's atoms times the process count: its loss, scaled by that, makes DDP's
        gradient average the mean over all the step's atoms (each process's loss is the mean
        over its own atoms; structures of 5, 10 and 20 atoms give the shards different
        counts).  ``(bad, 1.0)`` in a single process."""
        if not self.dist.enabled:
            return bad, 1.0
        import torch.distributed as dist

        t = torch.tensor([1.0 if bad else 0.0, float(n_atoms)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return bool(t[0].item() > 0), n_atoms * self.dist.world_size / float(t[1].item())

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def train_epoch(self) -> tuple[float, str | None]:
        """One pass over this process's shard. Returns (atom-weighted mean loss, problem or None)."""
        from tqdm.auto import tqdm

        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        n_sum = 0
        show = self.cfg.progress and self.dist.is_main
        bar = tqdm(
            self.loader,
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            leave=False,
            disable=not show,
        )
        for step, batch in enumerate(bar):
            batch = batch.to(self.device)
            z, z_raw = forward_batch(self.net, batch, autocast=self.autocast)
            loss = self.loss_fn(z_raw if self.cfg.loss_on == "raw" else z, batch.target)
            n = batch.graph.n_atoms
            bad, share = self._step_sync(not bool(torch.isfinite(loss.detach())), n)
            if bad:
                return math.nan, f"non-finite loss at epoch {self.epoch + 1}, step {step}"
            self.optimizer.zero_grad(set_to_none=True)
            (loss * share).backward()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            loss_sum += loss.detach().double() * n
            n_sum += n
            if show:
                bar.set_postfix(loss=f"{loss.item():.4g}")
        totals = torch.stack(
            [loss_sum, torch.tensor(float(n_sum), dtype=torch.float64, device=self.device)]
        )
        if self.dist.enabled:
            import torch.distributed as dist

            totals = totals.to(self._comm_device())
            dist.all_reduce(totals)
        return float(totals[0] / totals[1]), None

    def _validation_model(self) -> Equivar:
        if self._eval_model is not None and self.ema is not None:
            self._eval_model.load_state_dict(self.ema.shadow)
            return self._eval_model
        return self.model

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Metrics on the validation set (sharded over processes, sums all-reduced)."""
        model = self._validation_model()
        was = model.training
        model.eval()
        acc = MetricAccumulator(num_species=self.model_config.num_species)
        for batch in self._val_batches:
            z, z_raw = forward_batch(model, batch)
            g = batch.graph
            acc.update(
                z, batch.target, g.numbers, pred_raw=z_raw, target_raw=batch.target_raw,
                batch=g.batch, n_structures=g.n_structures,
            )  # fmt: skip
        model.train(was)
        acc.all_reduce()
        return acc.compute()

    # ------------------------------------------------------------------ logging
    def _row(
        self, train_loss: float, val: Mapping[str, Any], lr: float, dt: float, best: bool
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_mae": val["mae"],
            "val_rmse": val["rmse"],
            "val_mae_diag": val["mae_diag"],
            "val_mae_offdiag": val["mae_offdiag"],
            "val_rmspe_diag": val["rmspe_diag"],
            "val_asr_violation_mae": val["asr_violation_mae"],
            "lr": lr,
            "time_s": dt,
            "best": best,
        }

    def _write_log(self) -> None:
        if not self.dist.is_main:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
        w.writeheader()
        for row in self.history:
            w.writerow({k: row.get(k) for k in LOG_COLUMNS})
        atomic_write_text(buf.getvalue(), self.out / "log.csv")

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainingResult:
        """Train (or resume), then export the best model and evaluate it."""
        self._setup()
        cfg = self.cfg
        status, reason = "completed", None
        if self.epoch == 0 and not self.history:
            t0 = time.perf_counter()
            val = self.validate()
            best = self._consider_best(val)
            lr = self.optimizer.param_groups[0]["lr"]
            self.history.append(self._row(math.nan, val, lr, time.perf_counter() - t0, best))
            self._write_log()
            logger.info("epoch 0 (initial weights): val MAE %.5g", val["mae"])
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            self.sampler.set_epoch(self.epoch + 1)
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, problem = self.train_epoch()
            if problem is not None:
                status, reason = "non_finite_loss", problem
                logger.error(
                    "%s: training stopped; the best checkpoint (epoch %d) is kept",
                    problem,
                    self.best_epoch,
                )
                break
            self.epoch += 1
            val = self.validate()
            if not _finite(val["mae"]):
                status, reason = (
                    "non_finite_loss",
                    f"non-finite validation metrics at epoch {self.epoch}",
                )
                logger.error(
                    "%s: training stopped; the best checkpoint (epoch %d) is kept",
                    reason,
                    self.best_epoch,
                )
                break
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(val["mae"])
            elif self.scheduler is not None:
                self.scheduler.step()
            improved = self._consider_best(val)
            self.history.append(self._row(train_loss, val, lr, time.perf_counter() - t0, improved))
            if improved:
                self._save(self.best_path)
            self._write_log()
            if self.epoch % cfg.checkpoint_every == 0 or self.epoch == cfg.epochs:
                self._save(self.last_path)
            logger.info(
                "epoch %d: train loss %.5g, val MAE %.5g, RMSE %.5g, lr %.3g, %.1f s%s",
                self.epoch, train_loss, val["mae"], val["rmse"], lr, time.perf_counter() - t0,
                " (best)" if improved else "",
            )  # fmt: skip
        return self._finish(status, reason)

    def _consider_best(self, val: Mapping[str, Any]) -> bool:
        # the replay of a best epoch adopted from best.pt (_adopt_newer_best) is still the best
        replay = self.epoch == self.best_epoch and _finite(val["mae"]) and val["mae"] <= self.best_metric
        if replay or (_finite(val["mae"]) and val["mae"] < self.best_metric):
            self.best_metric = float(val["mae"])
            self.best_epoch = self.epoch
            if self.epoch == 0:
                self._save(self.best_path)
            return True
        return False

    def _finish(self, status: str, reason: str | None) -> TrainingResult:
        self._barrier()
        result = TrainingResult(
            status=status,
            out=self.out,
            best_epoch=self.best_epoch,
            best_val_mae=self.best_metric,
            epochs_completed=self.epoch,
            stopped_reason=reason,
        )
        if self.dist.is_main:
            result = self._export(result)
        self._barrier()
        # drop the DDP wrapper (it holds the process group) before train() destroys the
        # group: a wrapper still alive then aborted a gloo process at interpreter exit
        # ("terminate called without an active exception", ~15 % of 2-process runs)
        self.net = self.model
        return result

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist

            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def _export(self, result: TrainingResult) -> TrainingResult:
        """Rank 0: best weights -> model.pt, metrics.json, plots."""
        if not self.best_path.is_file():
            atomic_write_text(
                json.dumps(_jsonable(result.to_dict()), indent=1), self.out / "metrics.json"
            )
            raise RuntimeError(
                f"training stopped ({result.stopped_reason}) before any finite validation result; no model exported"
            )
        best = load_checkpoint(self.best_path, map_location="cpu")
        model = model_from_checkpoint(  # the calculator warns for elements not trained on
            best, elements=self.splits.train.elements, tp_impl=self.cfg.tp_impl,
            device=self.device, dtype=self.dtype,
        )
        model.save(self.out / "model.pt")
        bs = max(self.cfg.batch_size, 16)
        val, val_pred = evaluate(model, self.splits.val, batch_size=bs, return_predictions=True)
        test, test_pred = (None, None)
        if self.splits.test is not None:
            test, test_pred = evaluate(
                model, self.splits.test, batch_size=bs, return_predictions=True
            )
        result.val, result.test = val, test
        payload = result.to_dict()
        payload.update(
            {
                "model_file": "model.pt",
                "n_train": len(self.splits.train),
                "n_val": len(self.splits.val),
                "val_is_train": self.splits.val_is_train,
                "n_test": 0 if self.splits.test is None else len(self.splits.test),
                "elements": self.splits.elements,
                "fold": self.fold if self.cfg.folds > 1 else None,
                "train_config": self.cfg.to_dict(),
                "versions": versions(),
            }
        )
        atomic_write_text(json.dumps(_jsonable(payload), indent=1), self.out / "metrics.json")
        if self.cfg.plots:
            from ase_born.train.plots import parity_plot, training_curve

            parity_plot(val_pred.pred, val_pred.target, val_pred.numbers, self.out / "parity_val.png",
                        title=("training set (no held-out validation)" if self.splits.val_is_train
                               else "validation") + f": MAE {val['mae']:.4f} e")  # fmt: skip
            if test_pred is not None:
                parity_plot(test_pred.pred, test_pred.target, test_pred.numbers, self.out / "parity_test.png",
                            title=f"TEST: MAE {test['mae']:.4f} e")  # fmt: skip
            training_curve(self.history, self.out / "training_curve.png", title=str(self.out.name))
        logger.info(
            "best epoch %d: val MAE %.5g; TEST MAE %s -> %s",
            self.best_epoch, val["mae"], "n/a" if test is None else f"{test['mae']:.5g}", self.out / "model.pt",
        )  # fmt: skip
        return result


def _jsonable(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> python (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def train(
    config: TrainConfig | str | os.PathLike,
    *,
    resume: bool = False,
    **overrides: Any,
) -> TrainingResult:
    """Run a training job (all folds when ``folds > 1``).

    Parameters
    ----------
    config : TrainConfig or path to a YAML file
    resume : bool
        Continue from the checkpoints in ``out`` (each fold's own).
    **overrides
        Config fields to change (e.g. ``epochs=10, device="cpu"``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is created here if needed.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_yaml(config)
    if overrides:
        config = config.replace(**overrides)
    created = init_distributed(config.device)
    try:
        if config.folds == 1:
            return Trainer(config, resume=resume).fit()
        results = []
        for k in range(config.folds):
            out = Path(config.out) / f"fold_{k}"
            fold_resume = resume and (out / "checkpoints" / "last.pt").exists()
            results.append(Trainer(config, out=out, fold=k, resume=fold_resume).fit())
        return _summarise_folds(config, results)
    finally:
        if created:
            import gc

            import torch.distributed as dist

            gc.collect()  # a DDP wrapper in a reference cycle must go before its group
            dist.destroy_process_group()


def _summarise_folds(config: TrainConfig, results: list[TrainingResult]) -> TrainingResult:
    """Mean and standard deviation over folds of the validation (and TEST) metrics."""

    def stats(key: str, part: str) -> dict[str, float] | None:
        parts = [getattr(r, part) for r in results]
        vals = [p[key] for p in parts if p is not None and p.get(key) is not None]
        if not vals:
            return None
        return {
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals)),
            "values": [float(v) for v in vals],
        }

    keys = ("mae", "rmse", "mae_diag", "mae_offdiag", "rmspe_diag", "asr_violation_mae")
    cv = {part: {k: stats(k, part) for k in keys} for part in ("val", "test")}
    status = "completed" if all(r.status == "completed" for r in results) else "non_finite_loss"
    summary = TrainingResult(
        status=status,
        out=Path(config.out),
        best_epoch=-1,
        best_val_mae=float(np.mean([r.best_val_mae for r in results])),
        epochs_completed=min(r.epochs_completed for r in results),
        val=cv["val"],
        test=cv["test"],
        stopped_reason=None if status == "completed" else "a fold stopped on a non-finite loss",
        folds=results,
    )
    if DistInfo.current().is_main:
        payload = summary.to_dict()
        payload["cross_validation"] = {
            "folds": config.folds,
            "train_config": config.to_dict(),
            "versions": versions(),
        }
        atomic_write_text(
            json.dumps(_jsonable(payload), indent=1), Path(config.out) / "metrics.json"
        )
    return summary


__all__ = [
    "EMA",
    "LOG_COLUMNS",
    "DistInfo",
    "Trainer",
    "TrainingResult",
    "init_distributed",
    "make_loss",
    "resolve_train_device",
    "seed_everything",
    "train",
]
