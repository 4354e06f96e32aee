"""Training checkpoints: atomic writes, ``weights_only`` loading, exact-resume RNG state.

File format (``format = "ase_born.train.checkpoint"``, ``format_version = 1``)
----------------------------------------------------------------------------
A ``torch.save`` of a dict that holds only tensors, str, int, float, bool, None, lists,
tuples and dicts, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)`` (no arbitrary unpickling):

=====================  ==================================================================
key                    content
=====================  ==================================================================
``format``             ``"ase_born.train.checkpoint"``
``format_version``     ``1``
``epoch``              last completed epoch (0 = initial weights, before any step)
``model_config``       :meth:`EquivarConfig.to_dict`
``model_dtype``        ``"float32"`` / ``"float64"``
``train_config``       :meth:`TrainConfig.to_dict`
``model_state``        the network's state dict (plain CPU tensors)
``ema_state``          EMA weights (same keys) or ``None``
``optimizer_state``    ``optimizer.state_dict()``
``scheduler_state``    ``scheduler.state_dict()`` or ``None``
``best_metric``        best validation MAE so far (e), ``inf`` before any
``best_epoch``         epoch of ``best_metric`` (-1 before any)
``history``            list of per-epoch dicts (the CSV log rows)
``rng``                ``{"torch": ByteTensor, "cuda": [ByteTensor] , "numpy": {...},
                       "python": [...]}`` (numpy's MT19937 key as an int64 tensor,
                       python's state as a list), see :func:`get_rng_state`
``elements``           atomic numbers present in the data (all splits)
``train_elements``     atomic numbers of the training split (what an exported model knows)
``normalisation``      ``None`` (targets are trained in e, unscaled)
``data_fingerprint``   SHA-256 of the train/val/test structures and targets
``world_size``         number of DDP processes that wrote it
``versions``           ``{"ase_born", "torch", "e3nn"}``
=====================  ==================================================================

The weights used for validation (``ema_state`` when EMA is on, else ``model_state``) are
returned by :func:`eval_state`.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = "ase_born.train.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for another model, config or dataset."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, ``os.replace``.

    A kill at any moment leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write text through a temporary file + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy (legacy global) and python RNG states, weights_only-safe."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    FileNotFoundError
    CheckpointMismatchError
        Not a training checkpoint, or a newer format version.
    pickle.UnpicklingError
        The file holds objects other than tensors and plain containers (refused).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(
            f"{path} contains objects other than tensors and plain containers; refusing to unpickle it"
        ) from exc
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(f"{path} is not an ase_born training checkpoint")
    if int(ckpt.get("format_version", -1)) > CHECKPOINT_VERSION:
        raise CheckpointMismatchError(
            f"{path} has checkpoint format version {ckpt['format_version']}; this ase_born reads <= {CHECKPOINT_VERSION}"
        )
    return dict(ckpt)


def eval_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights that were validated: EMA weights if present, else the model's."""
    return dict(ckpt["ema_state"] if ckpt.get("ema_state") is not None else ckpt["model_state"])


def model_from_checkpoint(
    ckpt: Mapping[str, Any],
    *,
    elements: Sequence[int] | None = None,
    tp_impl: str = "fast",
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
):
    """The :class:`~ase_born.models.equivar.Equivar` of a checkpoint with its validated weights
    (:func:`eval_state`), in the checkpoint's dtype unless ``dtype`` is given.  ``elements``
    (the species the calculator does not warn about) defaults to the checkpoint's training
    elements (``train_elements``; older checkpoints: ``elements``, all splits')."""
    from ase_born.models.equivar import Equivar

    model = Equivar.from_config(
        ckpt["model_config"], tp_impl=tp_impl, device=device, dtype=dtype or ckpt["model_dtype"]
    )
    model.load_state_dict(eval_state(ckpt), strict=True)
    if elements is None:
        elements = ckpt.get("train_elements") or ckpt["elements"]
    model.elements = tuple(int(z) for z in elements)
    return model


def versions() -> dict[str, str]:
    from ase_born import __version__
    from ase_born.models._e3nn import E3NN_VERSION

    return {
        "ase_born": str(__version__),
        "torch": str(torch.__version__),
        "e3nn": str(E3NN_VERSION),
    }


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointMismatchError",
    "atomic_torch_save",
    "atomic_write_text",
    "eval_state",
    "get_rng_state",
    "load_checkpoint",
    "set_rng_state",
    "versions",
]
