"""The Born-charge model protocol.

A *Born-charge model* is anything that, given an :class:`ase.Atoms`, returns the
Born effective charges ``Z*`` with ``shape=(n_atoms, 3, 3)`` in units of e and in
the index order of :data:`ase_born.conventions.BORN_INDEX_ORDER`
(``Z*[k, b, a]``: b = field direction, a = displacement direction).

Two levels
----------
numpy level (required)
    ``get_born_charges(atoms) -> numpy.ndarray`` of ``shape=(n_atoms, 3, 3)``,
    ``dtype=float64``.
torch level (optional, needed by ``BornFieldCalculator(mode="conservative")``)
    ``get_born_charges_torch(atoms, positions, cell) -> torch.Tensor`` of
    ``shape=(n_atoms, 3, 3)``, differentiable with respect to ``positions``
    (``shape=(n_atoms, 3)``, Å) and ``cell`` (``shape=(3, 3)``, rows are lattice
    vectors, Å).  ``atoms`` supplies everything else (numbers, pbc).  Models that
    provide it set ``supports_torch = True``.

Models must not enforce the acoustic sum rule silently unless documented; the
:class:`~ase_born.calculators.field.BornFieldCalculator` applies its own ``asr``
switch on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from ase import Atoms


class BornChargeModel:
    """Base class of Born-charge models (see module docstring for the protocol).

    Subclasses implement :meth:`get_born_charges`; differentiable models also
    implement :meth:`get_born_charges_torch` and set ``supports_torch = True``.
    """

    #: True when :meth:`get_born_charges_torch` is implemented and differentiable.
    supports_torch: bool = False

    def get_born_charges(self, atoms: Atoms) -> np.ndarray:
        """Return Z* for ``atoms``.

        Returns
        -------
        numpy.ndarray, shape=(n_atoms, 3, 3), dtype=float64
            Born effective charges in e, ``Z*[k, b, a]``.
        """
        raise NotImplementedError

    def get_born_charges_torch(
        self, atoms: Atoms, positions: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable Z* (see module docstring). Optional."""
        raise NotImplementedError(
            f"{type(self).__name__} has no differentiable torch level; "
            "conservative mode needs a model with supports_torch = True"
        )

    def todict(self) -> dict[str, Any]:
        """JSON-serialisable description (used when saving calculator state)."""
        return {"class": type(self).__name__}


def check_born_charges(z: Any, n_atoms: int, source: str = "born model") -> np.ndarray:
    """Validate a Born-charge array and return it as a new ``float64`` ``(n_atoms, 3, 3)`` array
    (a copy: callers may cache it without sharing memory with the model's own arrays).

    Raises
    ------
    ValueError
        Wrong shape or non-finite values, with a message naming ``source``.
    """
    arr = np.array(z, dtype=float)  # copy
    if arr.shape != (n_atoms, 3, 3):
        raise ValueError(
            f"{source} returned Born charges of shape {arr.shape}; expected ({n_atoms}, 3, 3)"
        )
    if not np.all(np.isfinite(arr)):
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{source} returned NaN/inf Born charges for atoms {bad.tolist()}")
    return arr


def bool_parameter(name: str, value: Any) -> bool:
    """A calculator switch as a Python bool; anything but a bool is refused (a quoted
    ``"false"`` from a config file would be truthy).

    Raises
    ------
    TypeError
        Naming the parameter and the value given.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)
