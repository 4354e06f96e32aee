"""The ONE place where :mod:`e3nn` is imported.

Why this module exists
----------------------
``e3nn`` 0.4.4 (pinned by ``mace-torch``) loads its Wigner constants at import time
with ``torch.load(.../constants.pt)``. The file contains ``slice`` objects, and since
torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses ``slice``:
a bare ``import e3nn.o3`` then fails with ``WeightsUnpickler error: Unsupported
global: GLOBAL slice``.

The import below allow-lists ``slice`` *only for the duration of the import*
(``torch.serialization.safe_globals`` is a context manager), so no global state of
torch is changed. ``slice`` is harmless to unpickle (it cannot execute code). Every
other module of :mod:`ase_born` imports e3nn from here::

    from ase_born.models._e3nn import o3, e3nn_io
"""

from __future__ import annotations

import contextlib

import torch

_safe_globals = getattr(torch.serialization, "safe_globals", None)
_ctx = _safe_globals([slice]) if _safe_globals is not None else contextlib.nullcontext()

with _ctx:
    import e3nn
    from e3nn import io as e3nn_io
    from e3nn import o3

E3NN_VERSION: str = e3nn.__version__

__all__ = ["E3NN_VERSION", "e3nn", "e3nn_io", "o3"]
