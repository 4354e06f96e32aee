"""Model loading for the workflows: MACE force field, Equivar Born model, stand-ins, defaults.

The workflow functions take a force field and a Born model as objects or as factories
``callable(atoms) -> object`` (stand-ins are tied to a structure's sites).  This module turns
command-line specifications into those:

``--force-field PATH``
    a MACE model file, loaded with :class:`mace.calculators.MACECalculator`;
``--born-model PATH``
    an Equivar model file, loaded with ``ase_born.models.EquivarCalculator``; an extxyz
    frame carrying ``born_effective_charges`` (or a phonopy ``BORN`` file, ``BORN*``, whose
    primitive cell is the workflow's structure) gives fixed tensors
    (:class:`~ase_born.calculators.born.FixedBornCharges`);
``standin``
    the CaTiO3 stand-ins of :mod:`ase_born.workflows.standins` (springs to the relaxed sites,
    nominal Z*): for tests and demonstrations only;
omitted (``None``)
    the shipped default model of that kind (``ase_born.defaults.load_force_field`` /
    ``load_born_model``), imported lazily.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

from ase import Atoms

STANDIN = "standin"
# written into os.environ by ``import mace`` (mace-torch 0.3.x); undone by mace_calculator
_MACE_ENV_FLAG = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def is_factory(model: Any) -> bool:
    """A class, or a callable that is not itself a calculator / Born model."""
    if isinstance(model, type):
        return True
    return (
        callable(model)
        and not hasattr(model, "get_property")
        and not hasattr(model, "get_born_charges")
    )


def resolve(model: Any, atoms: Atoms) -> Any:
    """The object for ``atoms``: call a factory (:func:`is_factory`) or return the object as is."""
    return model(atoms) if is_factory(model) else model


def describe(model: Any) -> str:
    """Short description stored in ``settings.json`` (class or factory name)."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if is_factory(model):
        return f"factory {getattr(model, '__qualname__', type(model).__name__)}"
    return type(model).__name__


_DEFAULTS_HINT = (
    "Pass --force-field PATH (a MACE model file) and --born-model PATH (an Equivar model "
    "file), or 'standin' for the stand-in test models"
)


def _defaults_module() -> Any:
    """:mod:`ase_born.defaults`, imported lazily; ``None`` if that module is missing."""
    try:
        return importlib.import_module("ase_born.defaults")
    except ModuleNotFoundError as exc:
        if exc.name != "ase_born.defaults":
            raise
        return None


def _load_default(what: str, device: str, dtype: str) -> Any:
    """``ase_born.defaults.<what>(device=, dtype=)``; a missing install is a RuntimeError with
    a hint to pass explicit model files."""
    mod = _defaults_module()
    if mod is None:
        raise RuntimeError(
            f"no default models: ase_born.defaults is not available. {_DEFAULTS_HINT}"
        )
    try:
        return getattr(mod, what)(device=device, dtype=dtype)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{str(exc).rstrip('.')}. {_DEFAULTS_HINT}") from exc


def load_default_models(device: str = "cpu", dtype: str = "float64") -> tuple[Any, Any]:
    """``(force_field, born_model)`` shipped in ``data/models`` (:mod:`ase_born.defaults`).

    Raises
    ------
    RuntimeError
        No default models are installed (or the defaults module is missing), with a hint to
        pass explicit model files.
    """
    return _load_default("load_force_field", device, dtype), _load_default(
        "load_born_model", device, dtype
    )


def default_epsilon_inf() -> Any:
    """ε∞ (3x3) shipped with the default models, or ``None`` (no defaults installed / no
    value in the card); a malformed card entry raises (``ValueError``), it is not ignored."""
    mod = _defaults_module()
    if mod is None:
        return None
    try:
        return mod.default_epsilon_inf()
    except FileNotFoundError:
        return None


def load_force_field(
    spec: str | os.PathLike | None, *, device: str = "cpu", dtype: str = "float64"
) -> Any:
    """Force field (or factory) from a specification (module docstring); ``None`` → defaults."""
    if spec is None:
        return _load_default("load_force_field", device, dtype)
    if str(spec) == STANDIN:
        from ase_born.workflows.standins import standin_force_field

        return standin_force_field
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"force-field model file not found: {path} (a MACE model, or 'standin')"
        )
    return mace_calculator(path, device=device, dtype=dtype)


def mace_calculator(path: str | os.PathLike, *, device: str = "cpu", dtype: str = "float64") -> Any:
    """``mace.calculators.MACECalculator`` for a model file, without global side effects.

    MACE's calculator sets torch's global default dtype, and importing mace-torch writes
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` into ``os.environ`` (which switches off
    ``torch.load``'s safe mode for the whole process); both are restored here.  The model
    file (a pickled module: load only files you trust) is read with ``weights_only=False``
    explicitly and handed to the calculator, so the environment variable is not needed.
    """
    import torch

    # e3nn first, through the project's one scoped import: mace-torch imports it after setting
    # the flag, and e3nn's torch.load of its constants then warns about the flag
    import ase_born.models._e3nn  # noqa: F401

    previous = torch.get_default_dtype()
    environ_before = os.environ.get(_MACE_ENV_FLAG)
    try:
        try:
            from mace.calculators import MACECalculator
        except ImportError as exc:  # pragma: no cover - mace is a dependency
            raise ImportError(
                "loading a MACE model needs mace-torch (pip install mace-torch)"
            ) from exc
        from ase_born.models.utils import resolve_device

        resolve_device(device)
        try:
            model = torch.load(str(path), map_location=device, weights_only=False)
        except (pickle.UnpicklingError, KeyError, EOFError) as exc:  # not a torch file (text, truncated)
            raise ValueError(f"{path} is not a MACE model file (torch.load: {type(exc).__name__}: {exc})") from exc
        if not isinstance(model, torch.nn.Module):  # e.g. an Equivar file (a dict of weights): bad input
            raise ValueError(  # noqa: TRY004
                f"{path} is not a MACE model file: it holds a {type(model).__name__}, not a pickled model"
            )
        return MACECalculator(models=model, device=device, default_dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
        if environ_before is None:
            os.environ.pop(_MACE_ENV_FLAG, None)
        else:
            os.environ[_MACE_ENV_FLAG] = environ_before


def load_born_model(
    spec: str | os.PathLike | None, *, device: str = "cpu", dtype: str = "float64"
) -> Any:
    """Born model (or factory) from a specification (module docstring); ``None`` → defaults."""
    if spec is None:
        return _load_default("load_born_model", device, dtype)
    if str(spec) == STANDIN:
        from ase_born.workflows.standins import standin_born_model

        return standin_born_model
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"Born-model file not found: {path} (an Equivar model, an extxyz frame, or 'standin')"
        )
    from ase_born.calculators.born import FixedBornCharges

    if path.suffix in (".xyz", ".extxyz"):
        return FixedBornCharges.from_extxyz(path)
    if path.name.startswith("BORN"):
        return lambda atoms: FixedBornCharges.from_born_file(path, atoms)
    try:
        models = importlib.import_module("ase_born.models")
        cls = models.EquivarCalculator
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            "ase_born.models.EquivarCalculator is not available in this installation; "
            "cannot load the Equivar model file " + str(path)
        ) from exc
    return cls(str(path), device=device, dtype=dtype)  # Equivar.load: ValueError for a non-model file


def model_sha256(spec: str | os.PathLike | None, kind: str) -> str | None:
    """SHA-256 of the file a model specification loads (``kind``: ``"force_field"`` or
    ``"born_model"``): the card's hash for the default (``None``), the file's for a path,
    ``None`` for the stand-ins. Run directories lock it, so a resume after a retrained default
    or another file at the same path is refused instead of mixing two models."""
    if spec is None:
        from ase_born import defaults

        try:
            entry = defaults.model_card().get(kind) or {}
        except FileNotFoundError:
            return None
        return entry.get("sha256")
    if str(spec) == STANDIN or not Path(spec).is_file():
        return None
    from ase_born.defaults import sha256

    return sha256(spec)


def load_models(
    force_field: str | os.PathLike | None,
    born_model: str | os.PathLike | None,
    *,
    device: str = "cpu",
    dtype: str = "float64",
) -> tuple[Any, Any]:
    """Both models; when both are omitted the defaults are loaded once."""
    if force_field is None and born_model is None:
        return load_default_models(device, dtype)
    return (
        load_force_field(force_field, device=device, dtype=dtype),
        load_born_model(born_model, device=device, dtype=dtype),
    )


__all__ = [
    "STANDIN",
    "default_epsilon_inf",
    "describe",
    "is_factory",
    "load_born_model",
    "load_default_models",
    "load_force_field",
    "load_models",
    "mace_calculator",
    "model_sha256",
    "resolve",
]
