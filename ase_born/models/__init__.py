"""Machine-learned Born-charge models.

Public API (imported lazily: ``import ase_born.models`` does not import torch/e3nn)
--------------------------------------------------------------------------------
Equivar, EquivarConfig, BM1, BM2
    The Equivar network (:mod:`ase_born.models.equivar`) and the paper's base models.
EquivarCalculator
    ASE calculator / Born-charge model around an Equivar network
    (:mod:`ase_born.calculators.equivar`).
TorchScriptEquivar
    Adapter for the paper's published TorchScript BM1/BM2 files
    (:mod:`ase_born.models.torchscript`).
GraphBatch, AtomicGraph, build_graph, collate, batch_from_atoms
    Neighbour lists (vesin) and batching (:mod:`ase_born.models.graph`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Equivar": "ase_born.models.equivar",
    "EquivarConfig": "ase_born.models.equivar",
    "BM1": "ase_born.models.equivar",
    "BM2": "ase_born.models.equivar",
    "PRESETS": "ase_born.models.equivar",
    "EquivarCalculator": "ase_born.calculators.equivar",
    "TorchScriptEquivar": "ase_born.models.torchscript",
    "GraphBatch": "ase_born.models.graph",
    "AtomicGraph": "ase_born.models.graph",
    "build_graph": "ase_born.models.graph",
    "collate": "ase_born.models.graph",
    "batch_from_atoms": "ase_born.models.graph",
}

__all__ = [
    "BM1",
    "BM2",
    "PRESETS",
    "AtomicGraph",
    "Equivar",
    "EquivarCalculator",
    "EquivarConfig",
    "GraphBatch",
    "TorchScriptEquivar",
    "batch_from_atoms",
    "build_graph",
    "collate",
]
assert sorted(__all__) == sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ase_born.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
