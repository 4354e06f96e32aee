"""Training configuration: a frozen dataclass that round-trips through YAML.

Defaults follow the paper's recipe (REFERENCE.md "Training recipe"): L1 loss on all 9
components of the sum-rule-corrected Z*, AdamW, initial learning rate 5e-3, a 0.8/0.2
train/validation split of the non-TEST structures, the best-validation checkpoint, final
numbers on TEST.

Example YAML::

    model: BM2                      # preset name, or a dict of EquivarConfig fields,
                                    # optionally {preset: BM2, r_max: 3.5, ...}
    train_files: [data/dft/catio3_dfpt.extxyz]
    test_file: null                 # TEST = frames with info["split"] == "test" (+ this file)
    val_fraction: 0.2
    seed: 0
    epochs: 500
    batch_size: 8
    lr: 5.0e-3
    out: runs/equivar_bm2_catio3

Relative paths are resolved against the current working directory when the run starts
(run the example configs from the repository root).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase_born.models.equivar import TP_IMPLS, EquivarConfig, preset

LOSSES = ("l1", "mse", "huber")
LOSS_ON = ("raw", "corrected")
OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("none", "cosine", "plateau")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
MIXED_PRECISION = ("none", "bf16")

#: fields that may differ between a checkpoint and the config that resumes it
RESUMABLE_CHANGES = frozenset(
    {"epochs", "device", "out", "num_workers", "checkpoint_every", "plots", "progress"}
)


#: annotation of a numeric field -> its Python type (checked and converted in __post_init__)
_NUMERIC_FIELDS = {"float": float, "int": int, "float | None": float, "int | None": int}


def _number(name: str, value: Any, kind: type) -> float | int:
    """``value`` as ``kind``, or a ValueError naming the field.  YAML 1.1 (PyYAML) reads
    ``5e-3`` (no dot) as a string: such strings are accepted and converted."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
        if kind is int:
            if not number.is_integer():
                raise ValueError
            return int(number)
        return number
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes
    ----------
    model : str or EquivarConfig
        Preset name (``"BM1"``, ``"BM2"``) or the network hyperparameters. In YAML: the
        name, or a mapping of :class:`~ase_born.models.equivar.EquivarConfig` fields,
        optionally with ``preset:`` as the base that the other keys override.
    train_files : tuple of str
        extxyz files (:func:`ase_born.io.extxyz.read_frames`) with per-atom
        ``born_effective_charges``. Frames with ``info["split"] == "test"`` form the TEST
        set; the others are split into train/validation by structure ID.
    val_file : str, optional
        Explicit validation file: then ``val_fraction`` is not used and all non-TEST
        frames of ``train_files`` train. Must not contain TEST frames.
    test_file : str, optional
        Extra TEST frames (all frames of this file are TEST, whatever their tag).
    val_fraction : float
        Fraction of the non-TEST structure IDs used for validation (paper: 0.2).
        ``0``: final fit on ALL non-TEST structures with no held-out validation (for a
        dataset too small to hold any out, or a refit once hyperparameters are fixed);
        the "validation" metrics are then training-set metrics, the best checkpoint is the
        lowest training-set MAE, and ``splits.json`` / ``metrics.json`` say so.
    folds : int
        k-fold cross-validation over the non-TEST structure IDs (1 = off). Each fold
        trains in ``<out>/fold_<i>`` and ``<out>/metrics.json`` summarises them.
    seed : int
        Seeds the initialisation, the splits and the per-epoch shuffling.
    epochs : int
        Paper: 250 (hyperparameter study), 500 (BM1/BM2).
    batch_size : int
        Structures per optimisation step (per process under DDP; the paper does not
        state its batch size).
    lr : float
        Initial learning rate (paper: 5e-3).
    optimizer : {"adamw", "adam"}
    weight_decay : float
        Decoupled weight decay of AdamW (torch's default 0.01; ignored for Adam).
    loss : {"l1", "mse", "huber"}
        Mean over atoms and the 9 components (paper: L1). The target is always the
        sum-rule-corrected Z*.
    loss_on : {"raw", "corrected"}
        Which network output enters the loss. ``"raw"`` (default, the paper's order: the
        correction is applied after the network): the output before the sum-rule
        correction, so the network itself learns charge neutrality and the reported
        ``asr_violation_mae`` is meaningful (paper SI: 0.154 BM1, 0.173 BM2).
        ``"corrected"``: the corrected output (the per-structure mean is then a free
        direction of the network and its raw sum-rule violation is arbitrary). Reported
        errors always use the corrected output.
    huber_delta : float
        Transition point of the Huber loss, e.
    lr_schedule : {"none", "cosine", "plateau"}
        Constant (paper), cosine annealing to ``lr_min`` over ``epochs``, or
        reduce-on-plateau of the validation MAE.
    lr_min : float
        Floor of the cosine and plateau schedules.
    plateau_factor, plateau_patience : float, int
        ``ReduceLROnPlateau`` settings.
    ema_decay : float, optional
        Exponential moving average of the weights (e.g. 0.99); validation, the best
        checkpoint and the exported model then use the averaged weights. ``None``: off.
    grad_clip : float, optional
        Clip the global gradient norm to this value.
    device : {"auto", "cpu", "cuda"}
        ``"auto"``: CUDA when available. Under ``torchrun`` each process takes
        ``cuda:LOCAL_RANK``.
    dtype : {"float32", "float64"}
    mixed_precision : {"none", "bf16"}
        ``"bf16"``: bfloat16 autocast for the training forward pass (meant for CUDA; also runs
        on CPU, usually slower there). Parameters, optimizer and loss stay in ``dtype``, and
        validation, TEST and the exported model run in ``dtype``; but the network output
        the loss sees carries bf16 rounding (measured on a trained CaTiO3 model: 0.007 e mean,
        0.085 e max difference from float32), a floor for the training fit near the
        0.02 e goal: prefer ``"none"`` for final models.
    tp_impl : {"fast", "compiled", "e3nn"}
        Implementation of the equivariant layers (same parameters; ``"compiled"`` adds a
        one-off ``torch.compile`` of forward and backward).
    num_workers : int
        DataLoader worker processes (graphs are precomputed; 0 is usually enough).
    out : str
        Output directory (checkpoints, CSV log, plots, ``model.pt``, ``metrics.json``).
    checkpoint_every : int
        Write ``checkpoints/last.pt`` every this many epochs (1: a kill loses at most one).
    plots : bool
        Parity and training-curve PNGs at the end.
    progress : bool
        tqdm progress bars (rank 0 only).
    """

    model: str | EquivarConfig = "BM2"
    train_files: tuple[str, ...] = ()
    val_file: str | None = None
    test_file: str | None = None
    val_fraction: float = 0.2
    folds: int = 1
    seed: int = 0
    epochs: int = 500
    batch_size: int = 8
    lr: float = 5e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    loss: str = "l1"
    loss_on: str = "raw"
    huber_delta: float = 0.01
    lr_schedule: str = "none"
    lr_min: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    ema_decay: float | None = None
    grad_clip: float | None = None
    device: str = "auto"
    dtype: str = "float32"
    mixed_precision: str = "none"
    tp_impl: str = "fast"
    num_workers: int = 0
    out: str = "runs/equivar"
    checkpoint_every: int = 1
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind = _NUMERIC_FIELDS.get(str(f.type))
            if kind is not None and not (getattr(self, f.name) is None and "None" in str(f.type)):
                object.__setattr__(self, f.name, _number(f.name, getattr(self, f.name), kind))
            if str(f.type) == "bool" and not isinstance(getattr(self, f.name), bool):
                # a quoted "false" in YAML is a true string: refused, not taken as on
                raise ValueError(f"{f.name} must be true or false, got {getattr(self, f.name)!r}")
        model = self.model
        if isinstance(model, Mapping):
            object.__setattr__(self, "model", _model_from_mapping(model))
        elif isinstance(model, str):
            preset(model)  # raises ValueError for an unknown name
        elif not isinstance(model, EquivarConfig):
            raise TypeError(f"model must be a preset name or an EquivarConfig, got {type(model)}")
        files = self.train_files
        if isinstance(files, (str, Path)):
            files = (files,)
        object.__setattr__(self, "train_files", tuple(str(f) for f in files))
        for name in ("val_file", "test_file"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, str(v))
        object.__setattr__(self, "out", str(self.out))
        _choice("loss", self.loss, LOSSES)
        _choice("loss_on", self.loss_on, LOSS_ON)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("device", self.device.split(":")[0], DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("tp_impl", self.tp_impl, TP_IMPLS)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction == 0.0 and (self.val_file is not None or self.folds > 1):
            raise ValueError("val_fraction 0 (final fit, no held-out validation) excludes val_file and folds > 1")
        for name in ("epochs", "batch_size", "checkpoint_every", "folds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.folds > 1 and self.val_file is not None:
            raise ValueError(
                "folds > 1 (cross-validation) and an explicit val_file exclude each other"
            )
        if not self.huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if self.lr_min < 0:
            raise ValueError(f"lr_min must be >= 0, got {self.lr_min}")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.plateau_patience < 0:
            raise ValueError(f"plateau_patience must be >= 0, got {self.plateau_patience}")

    # ------------------------------------------------------------------ model
    def model_config(self) -> EquivarConfig:
        """The resolved :class:`EquivarConfig` (preset names looked up)."""
        return preset(self.model) if isinstance(self.model, str) else self.model

    # ------------------------------------------------------------------ dict / YAML
    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON/``torch.load(weights_only=True)``-safe) dict."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "model":
                v = v if isinstance(v, str) else v.to_dict()
            elif f.name == "train_files":
                v = list(v)
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`. Accepts ``train_file`` (one path) for ``train_files``.

        Raises
        ------
        ValueError
            Unknown keys (typos must not be ignored silently).
        """
        d = dict(d)
        if "train_file" in d:
            if "train_files" in d:
                raise ValueError("give either train_file or train_files, not both")
            d["train_files"] = d.pop("train_file")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}; known: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file written by hand or by :meth:`to_yaml`."""
        import yaml

        with open(path) as fh:
            try:
                d = yaml.safe_load(fh)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        if d is None:
            d = {}
        if not isinstance(d, Mapping):  # bad input (a file's content), reported as such
            raise ValueError(  # noqa: TRY004
                f"{path}: a training config must be a YAML mapping, got {type(d).__name__}"
            )
        return cls.from_dict(d)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of :meth:`to_dict`; also written to ``path`` if given."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def _model_from_mapping(d: Mapping[str, Any]) -> EquivarConfig:
    d = dict(d)
    base = d.pop("preset", None)
    if base is None:
        return EquivarConfig.from_dict(d)
    cfg = preset(str(base))
    names = {f.name for f in dataclasses.fields(EquivarConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown EquivarConfig keys: {sorted(unknown)}")
    return dataclasses.replace(cfg, **d)


def unused_fields(cfg: TrainConfig) -> frozenset[str]:
    """Fields that have no effect with ``cfg``'s other settings (the plateau schedule's
    factor and patience without it, ``lr_min`` without a schedule, ``huber_delta`` without
    the Huber loss, ``weight_decay`` with Adam)."""
    unused = set()
    if cfg.lr_schedule != "plateau":
        unused |= {"plateau_factor", "plateau_patience"}
    if cfg.lr_schedule == "none":
        unused.add("lr_min")
    if cfg.loss != "huber":
        unused.add("huber_delta")
    if cfg.optimizer != "adamw":
        unused.add("weight_decay")
    return frozenset(unused)


def config_differences(
    a: TrainConfig, b: TrainConfig, *, ignore: frozenset[str] = RESUMABLE_CHANGES
) -> dict[str, tuple[Any, Any]]:
    """Fields (other than ``ignore``, and those unused by both, :func:`unused_fields`) whose
    values differ: ``{name: (a_value, b_value)}``.

    The model field is compared through the resolved :class:`EquivarConfig`, so ``"BM2"``
    and the equivalent explicit dict are the same.
    """
    diff: dict[str, tuple[Any, Any]] = {}
    da, db = a.to_dict(), b.to_dict()
    ignore = ignore | (unused_fields(a) & unused_fields(b))
    for key in sorted(set(da) | set(db)):
        if key in ignore:
            continue
        if key == "model":
            ma, mb = a.model_config().to_dict(), b.model_config().to_dict()
            for k in sorted(set(ma) | set(mb)):
                if ma.get(k) != mb.get(k):
                    diff[f"model.{k}"] = (ma.get(k), mb.get(k))
            continue
        if da.get(key) != db.get(key):
            diff[key] = (da.get(key), db.get(key))
    return diff


__all__ = [
    "LOSSES",
    "LOSS_ON",
    "LR_SCHEDULES",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "config_differences",
]
